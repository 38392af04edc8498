"""Issue 15 point 2 against the real oidc-provider: a client registered for private_key_jwt
authorizes and refreshes with the product's certificate, signs in to Dovecot, and rolls over
to a new certificate without a failed refresh."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from flask_mailoauth import certificates, tokens
from flask_mailoauth.certificates import ClientCertificate
from flask_mailoauth.state import state

from .flows import authorize, certificate_fields, csrf_token, idp_fields, jwk, point_at


def refresh(host) -> str:
    with host.app.app_context():
        return tokens.refresh(state(), "support", "mailbox")


def rows(host):
    with host.app.app_context(), host.db.engine.connect() as conn:
        account = conn.execute(
            sa.text("select certificate, next_certificate from mailoauth_account")
        ).one()
        credential = conn.execute(
            sa.text("select status, failure_count from mailoauth_credential")
        ).one()
        kinds = [k for (k,) in conn.execute(sa.text("select kind from mailoauth_event"))]
    return tuple(account), tuple(credential), kinds


def imap_works(host) -> None:
    with host.app.app_context():
        imap = host.ext.connect_imap("support")
        try:
            assert imap.state == "SELECTED"
        finally:
            imap.logout()


def certificate_authorized(host, idp, pair: ClientCertificate):
    """Authorize through the modal with ``pair`` imported as a PEM file."""
    fields = certificate_fields(pair)
    del fields["client_auth"]  # authorize sets it from auth_method
    return authorize(
        host,
        idp,
        "support@example.test",
        auth_method="private_key_jwt",
        registration={"jwks": {"keys": [jwk(pair)]}},
        **fields,
    )


@pytest.mark.parametrize("shape", ["generic", "microsoft"])
def test_a_certificate_client_authorizes_refreshes_and_signs_in(make_host, request, shape):
    idp = request.getfixturevalue("generic_idp" if shape == "generic" else "ms_idp")
    dovecot = request.getfixturevalue("dovecot" if shape == "generic" else "ms_dovecot")
    host = make_host()
    pair = certificates.generate("helpdesk e2e")
    certificate_authorized(host, idp, pair)
    (current, pending), status, _ = rows(host)
    assert (current, pending, status) == (pair.certificate_pem, None, ("active", 0))
    idp.reset()
    before = refresh(host)
    assert refresh(host) != before
    assert idp.stats()["statuses"] == {"200": 2}
    point_at(host, dovecot)
    imap_works(host)


def test_a_rollover_switches_certificates_without_a_failed_refresh(make_host, generic_idp, dovecot):
    host = make_host()
    old = certificates.generate("helpdesk old")
    done = certificate_authorized(host, generic_idp, old)
    client = host.app.test_client()

    # a second certificate, made by the product while the first works
    fields = idp_fields(generic_idp, done.client_id)
    saved = client.post(
        "/mailoauth/support/mailbox",
        data={
            "csrf_token": csrf_token(client, "support", "mailbox", "generic"),
            "enabled": "1",
            "name": "support (mailbox)",
            "strict_matching": "y",
            "client_auth": "private_key_jwt",
            "certificate_action": "generate",
            **fields,
        },
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)[:2000]
    assert not saved.headers["Location"].startswith(generic_idp.base_url)  # no new consent
    (current, pending), _, _ = rows(host)
    assert current == old.certificate_pem
    assert pending is not None

    # not uploaded yet: the IdP refuses it, the current one answers, nothing failed
    generic_idp.reset()
    refresh(host)
    assert generic_idp.stats()["statuses"] == {"401": 1, "200": 1}
    (current, still_pending), status, kinds = rows(host)
    assert (current, still_pending, status) == (old.certificate_pem, pending, ("active", 0))
    assert "refresh_failed" not in kinds

    # uploaded (the downloaded certificate's key next to the old one): the switch
    downloaded = client.get("/mailoauth/support/mailbox/certificate.pem?pending=1")
    new = ClientCertificate(downloaded.get_data(as_text=True), "")
    generic_idp.update_client(done.client_id, jwks={"keys": [jwk(old), jwk(new)]})
    generic_idp.reset()
    refresh(host)
    assert generic_idp.stats()["statuses"] == {"200": 1}
    (current, pending), status, kinds = rows(host)
    assert (current, pending, status) == (new.certificate_pem, None, ("active", 0))
    assert kinds.count("certificate_switched") == 1
    assert "refresh_failed" not in kinds

    # the old key removed at the IdP: the new certificate alone carries on, mail works
    generic_idp.update_client(done.client_id, jwks={"keys": [jwk(new)]})
    generic_idp.reset()
    refresh(host)
    assert generic_idp.stats()["statuses"] == {"200": 1}
    point_at(host, dovecot)
    imap_works(host)
