"""Issue 15 point 2: certificate credentials (private_key_jwt): made or imported, stored
sealed, offered for download, signing short client assertions, warned about before they end,
and rolled over without a failed refresh."""

from __future__ import annotations

import base64
import hashlib
import io
from datetime import timedelta

import jwt
import pytest
import responses
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from flask_mailoauth import certificates, tokens
from flask_mailoauth.certificates import ClientCertificate
from flask_mailoauth.errors import CertificateError
from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.state import state
from flask_mailoauth.vocabulary import Condition

from .commands import health
from .flow_steps import MODAL, callback, csrf, reauthorize, start
from .flow_steps import save as save_modal
from .oauth_fakes import CLIENT_ID, TOKEN_URL, FakeIdP

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def pair() -> ClientCertificate:
    return certificates.generate("helpdesk")


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeIdP(mock)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_key(pair: ClientCertificate, password: bytes | None = None) -> bytes:
    key = serialization.load_pem_private_key(pair.private_key_pem.encode(), None)
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def pfx(pair: ClientCertificate, password: bytes) -> bytes:
    key = serialization.load_pem_private_key(pair.private_key_pem.encode(), None)
    return pkcs12.serialize_key_and_certificates(
        b"helpdesk",
        key,
        pair.certificate,
        None,
        serialization.BestAvailableEncryption(password),
    )


# -- the certificate itself --------------------------------------------------------------------


def test_a_generated_certificate_has_thumbprints_and_an_end_date(pair):
    der = pair.certificate.public_bytes(serialization.Encoding.DER)
    assert pair.sha1_thumbprint == hashlib.sha1(der).hexdigest().upper()  # noqa: S324
    assert pair.sha256_thumbprint == hashlib.sha256(der).hexdigest().upper()
    assert timedelta(days=729) < pair.not_after - utcnow() <= timedelta(days=730)
    assert pair.subject == "CN=helpdesk"
    assert "PRIVATE" not in repr(pair)


@pytest.mark.parametrize("sha1_header", [False, True], ids=["standard", "microsoft"])
def test_a_client_assertion_is_short_lived_unique_and_names_the_certificate(pair, sha1_header):
    first = pair.assertion(CLIENT_ID, TOKEN_URL, sha1_header=sha1_header)
    second = pair.assertion(CLIENT_ID, TOKEN_URL, sha1_header=sha1_header)
    public = pair.certificate.public_key()
    claims = jwt.decode(first, public, algorithms=["RS256"], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] == claims["iat"]
    assert (
        claims["jti"] != jwt.decode(second, public, algorithms=["RS256"], audience=TOKEN_URL)["jti"]
    )
    header = jwt.get_unverified_header(first)
    der = pair.der
    assert header["x5t#S256"] == b64url(hashlib.sha256(der).digest())
    if sha1_header:
        assert header["x5t"] == b64url(hashlib.sha1(der).digest())  # noqa: S324
    else:
        assert "x5t" not in header


def test_pem_and_pfx_files_are_imported(pair):
    both = pair.certificate_pem.encode() + pem_key(pair)
    assert certificates.load(both).sha256_thumbprint == pair.sha256_thumbprint
    encrypted = pem_key(pair, b"pw") + pair.certificate_pem.encode()
    assert certificates.load(encrypted, "pw").sha1_thumbprint == pair.sha1_thumbprint
    imported = certificates.load(pfx(pair, b"s3cret"), "s3cret")
    assert imported.sha1_thumbprint == pair.sha1_thumbprint
    assert imported.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")


def expired_pem() -> bytes:
    old = certificates.generate("old", now=utcnow() - timedelta(days=800))
    return old.certificate_pem.encode() + old.private_key_pem.encode()


@pytest.mark.parametrize(
    ("data", "password", "message"),
    [
        (lambda p: pfx(p, b"right"), "wrong", "check the password"),
        (lambda p: p.certificate_pem.encode(), "", "holds no private key"),
        (lambda p: pem_key(p), "", "holds no certificate"),
        (lambda p: expired_pem(), "", "expired on"),
        (
            lambda p: (
                p.certificate_pem.encode() + certificates.generate("x").private_key_pem.encode()
            ),
            "",
            "does not belong to the certificate",
        ),
        (lambda p: pem_key(p, b"pw") + p.certificate_pem.encode(), "", "enter its password"),
        (lambda p: b"", "", "Choose a PEM or PFX file"),
    ],
    ids=[
        "pfx-wrong-password",
        "pem-without-key",
        "pem-without-cert",
        "expired",
        "other-key",
        "encrypted-key",
        "empty",
    ],
)
def test_unusable_files_are_refused_with_the_reason(pair, data, password, message):
    with pytest.raises(CertificateError, match=message):
        certificates.load(data(pair), password)


# -- the modal ------------------------------------------------------------------------------


def submit(client, **fields):
    """Save the generic account for certificate authentication."""
    return save_modal(client, secret="", client_auth="private_key_jwt", **fields)


def account_row(host):
    with host.app.app_context(), host.db.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "select certificate, private_key, next_certificate, next_private_key "
                "from mailoauth_account"
            )
        ).one_or_none()


def test_generate_stores_the_key_sealed_and_offers_the_certificate(host):
    client = host.app.test_client()
    response = submit(client, certificate_action="generate")
    assert response.status_code == 303, response.get_data(as_text=True)
    certificate, key, pending, _ = account_row(host)
    assert certificate.startswith("-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" not in bytes(key)
    assert pending is None
    facts = certificates.facts(certificate)
    page = client.get(f"{MODAL}?tab=idp").get_data(as_text=True)
    assert facts.sha1_thumbprint in page
    assert facts.sha256_thumbprint in page
    assert facts.not_after.strftime("%Y-%m-%d") in page
    pem = client.get(f"{MODAL}/certificate.pem")
    assert pem.headers["Content-Disposition"] == 'attachment; filename="support-mailbox.pem"'
    assert pem.get_data(as_text=True) == certificate
    cer = client.get(f"{MODAL}/certificate.cer")
    assert x509.load_der_x509_certificate(cer.data).subject.rfc4514_string() == facts.subject
    assert client.get(f"{MODAL}/certificate.cer?pending=1").status_code == 404
    assert client.get(f"{MODAL}/certificate.key").status_code == 404


def test_the_download_is_behind_the_access_check(make_host):
    host = make_host(access=False)
    assert host.app.test_client().get(f"{MODAL}/certificate.pem").status_code == 403


def test_a_pfx_file_is_imported_in_the_modal(host, pair):
    client = host.app.test_client()
    upload = (io.BytesIO(pfx(pair, b"pw")), "app.pfx")
    response = submit(
        client, certificate_action="import", certificate_file=upload, certificate_password="pw"
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    assert account_row(host)[0] == pair.certificate_pem


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            lambda p: {
                "certificate_action": "import",
                "certificate_file": (io.BytesIO(pfx(p, b"right")), "a.pfx"),
                "certificate_password": "wrong",
            },
            "certificate_file",
            "check the password",
        ),
        (
            lambda p: {
                "certificate_action": "import",
                "certificate_file": (io.BytesIO(p.certificate_pem.encode()), "a.pem"),
            },
            "certificate_file",
            "holds no private key",
        ),
        (
            lambda p: {
                "certificate_action": "import",
                "certificate_file": (io.BytesIO(expired_pem()), "a.pem"),
            },
            "certificate_file",
            "expired on",
        ),
        (lambda p: {}, "certificate_action", "needs a certificate"),
    ],
    ids=["pfx-wrong-password", "pem-without-key", "expired", "none-at-all"],
)
def test_bad_certificates_are_refused_and_nothing_is_stored(
    make_host, db_url, pair, fields, field, message
):
    host = make_host(db_url=db_url)
    response = submit(host.app.test_client(), **fields(pair))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = page.split(f'id="mailoauth-{field}-error"', 1)[1].split("</div>", 1)[0]
    assert message in error
    assert account_row(host) is None


# -- token requests and rollover --------------------------------------------------------------


def assertions(idp):
    """The certificate each token request was signed with (its x5t#S256), and its grant."""
    found = []
    for body in idp.token_requests:
        assert body["client_assertion_type"] == [ASSERTION_TYPE]
        assert "client_secret" not in body
        assert body["client_id"] == [CLIENT_ID]
        found.append(
            (
                jwt.get_unverified_header(body["client_assertion"][0])["x5t#S256"],
                body["grant_type"][0],
            )
        )
    return found


def x5t(pem: str) -> str:
    return b64url(hashlib.sha256(ClientCertificate(pem, "").der).digest())


def refresh(host):
    with host.app.app_context():
        return tokens.refresh(state(), "support", "mailbox")


def events(host):
    with host.app.app_context(), host.db.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.text("select kind, message from mailoauth_event order by id"))
        ]


def test_certificate_authenticates_the_code_exchange_and_the_refresh(host, idp):
    client = host.app.test_client()
    query = start(client, secret="", client_auth="private_key_jwt", certificate_action="generate")
    assert callback(client, idp, query).status_code == 303
    refresh(host)
    current = account_row(host)[0]
    assert assertions(idp) == [
        (x5t(current), "authorization_code"),
        (x5t(current), "refresh_token"),
    ]
    assertion = idp.token_requests[0]["client_assertion"][0]
    claims = jwt.decode(
        assertion,
        ClientCertificate(current, "").certificate.public_key(),
        algorithms=["RS256"],
        audience=TOKEN_URL,
    )
    assert claims["sub"] == CLIENT_ID


def test_rollover_tries_the_new_certificate_first_and_falls_back_without_a_failed_refresh(
    host, idp
):
    client = host.app.test_client()
    query = start(client, secret="", client_auth="private_key_jwt", certificate_action="generate")
    assert callback(client, idp, query).status_code == 303
    old = account_row(host)[0]
    response = submit(client, certificate_action="generate")
    assert response.status_code == 303
    assert "Location" in response.headers
    _, _, new, _ = account_row(host)
    assert new is not None
    assert new != old
    page = client.get(f"{MODAL}?tab=idp").get_data(as_text=True)
    assert "New certificate, waiting for its first use" in page
    assert 'value="discard"' in page

    # not uploaded yet: the IdP refuses the new one, the old one still works
    idp.endpoint.answers += [("error", (401, {"error": "invalid_client"}, {})), ("rotate", 3600)]
    refresh(host)
    assert assertions(idp)[1:] == [(x5t(new), "refresh_token"), (x5t(old), "refresh_token")]
    assert account_row(host)[0] == old
    assert account_row(host)[2] == new
    with host.app.app_context(), host.db.engine.connect() as conn:
        status, failures = conn.execute(
            sa.text("select status, failure_count from mailoauth_credential")
        ).one()
    assert (status, failures) == ("active", 0)
    assert not [e for e in events(host) if e[0] == "refresh_failed"]

    # uploaded: the new one succeeds and becomes current, the old one is gone
    refresh(host)
    assert assertions(idp)[3:] == [(x5t(new), "refresh_token")]
    certificate, key, pending, pending_key = account_row(host)
    assert (certificate, pending, pending_key) == (new, None, None)
    assert key is not None
    assert events(host)[-1][0] == "certificate_switched"
    refresh(host)
    assert assertions(idp)[4:] == [(x5t(new), "refresh_token")]
    with host.app.app_context():
        sealed = certificates.stored(state(), _account(host))
    assert sealed.current.certificate_pem == new
    assert sealed.pending is None


def _account(host):
    with own_session(host.db) as s:
        return s.scalars(sa.select(state().models.Account)).one()


def test_both_certificates_refused_records_one_failure(host, idp):
    client = host.app.test_client()
    query = start(client, secret="", client_auth="private_key_jwt", certificate_action="generate")
    assert callback(client, idp, query).status_code == 303
    submit(client, certificate_action="generate")
    refused = ("error", (401, {"error": "invalid_client"}, {}))
    idp.endpoint.answers += [refused, refused]
    with pytest.raises(Exception, match="invalid_client"):
        refresh(host)
    assert len(idp.token_requests) == 3
    assert [e[0] for e in events(host)].count("refresh_failed") == 1


def test_a_pending_certificate_can_be_discarded(host):
    client = host.app.test_client()
    submit(client, certificate_action="generate")
    current = account_row(host)[0]
    submit(client, certificate_action="generate")
    assert account_row(host)[2] is not None
    assert submit(client, certificate_action="discard").status_code == 303
    assert account_row(host)[0] == current
    assert account_row(host)[2:] == (None, None)


def test_the_certificate_end_date_warns_like_a_secret(host):
    client = host.app.test_client()
    submit(client, certificate_action="generate")
    soon = certificates.generate("soon", now=utcnow() - timedelta(days=710))
    with host.app.app_context():
        st = state()
        with own_session(host.db) as s:
            account = s.scalars(sa.select(st.models.Account)).one()
            account.certificate = soon.certificate_pem
            st.seal(account, "private_key", soon.private_key_pem)
    checked = health(host)[("support", "mailbox")]
    warnings = checked.warnings
    assert any("The certificate expires on" in w and "(20 days)" in w for w in warnings)
    assert not any("client secret" in w for w in warnings)
    # and it is what a notification is about, like a secret's end date
    assert list(checked.conditions) == [Condition.CERTIFICATE_EXPIRING]
    assert "The certificate expires on" in checked.conditions[Condition.CERTIFICATE_EXPIRING]


def test_csrf_is_still_required_with_a_file(host, pair):
    client = host.app.test_client()
    token = csrf(client)
    assert token
    response = client.post(
        MODAL,
        data={"certificate_action": "generate", "client_auth": "private_key_jwt"},
    )
    assert response.status_code == 400
    assert account_row(host) is None


def test_rotate_key_reencrypts_both_private_keys(make_host, tmp_path):
    from click.testing import CliRunner
    from flask.cli import ScriptInfo

    from flask_mailoauth.crypto import KeyRing, generate_key, parse_key

    from .conftest import TEST_KEY

    url = f"sqlite:///{tmp_path / 'rotate.db'}"
    old = make_host(db_url=url)
    client = old.app.test_client()
    submit(client, certificate_action="generate")
    submit(client, certificate_action="generate")
    new_key = generate_key()
    rotated = make_host(db_url=url, MAILOAUTH_ENCRYPTION_KEYS=[new_key, TEST_KEY])
    result = CliRunner().invoke(
        rotated.app.cli,
        ["mailoauth", "rotate-key"],
        obj=ScriptInfo(create_app=lambda: rotated.app),
    )
    # both keys, and the PKCE verifiers of the two authorizations each Submit started
    assert "Re-encrypted 4 secret(s)" in result.output, result.output
    only_new = KeyRing([parse_key(new_key)])
    with rotated.app.app_context():
        account = _account(rotated)
        for name in ("private_key", "next_private_key"):
            pem = only_new.decrypt(getattr(account, name), aad=account.aad(name))
            assert pem.startswith("-----BEGIN PRIVATE KEY-----")


def test_the_code_exchange_tries_the_pending_certificate_first_too(host, idp):
    client = host.app.test_client()
    query = start(client, secret="", client_auth="private_key_jwt", certificate_action="generate")
    assert callback(client, idp, query).status_code == 303
    old = account_row(host)[0]
    submit(client, certificate_action="generate")
    new = account_row(host)[2]
    idp.endpoint.answers += [("error", (401, {"error": "invalid_client"}, {})), ("rotate", 3600)]
    assert callback(client, idp, reauthorize(client)).status_code == 303
    assert assertions(idp)[1:] == [
        (x5t(new), "authorization_code"),
        (x5t(old), "authorization_code"),
    ]
    assert account_row(host)[::2] == (old, new)
    assert callback(client, idp, reauthorize(client)).status_code == 303
    assert assertions(idp)[3:] == [(x5t(new), "authorization_code")]
    assert account_row(host)[::2] == (new, None)


def test_another_client_authentication_clears_a_configuration_error(host, idp):
    client = host.app.test_client()
    query = start(client, secret="s1")
    assert callback(client, idp, query).status_code == 303
    idp.endpoint.answers.append(("error", (401, {"error": "invalid_client"}, {})))
    with pytest.raises(Exception, match="invalid_client"):
        refresh(host)
    with host.app.app_context(), host.db.engine.connect() as conn:
        assert conn.execute(sa.text("select status from mailoauth_credential")).scalar() == (
            "configuration_error"
        )
    assert submit(client, certificate_action="generate").status_code == 303
    with host.app.app_context(), host.db.engine.connect() as conn:
        assert conn.execute(sa.text("select status from mailoauth_credential")).scalar() == "active"
    refresh(host)
    last = idp.token_requests[-1]
    assert last["client_assertion_type"] == [ASSERTION_TYPE]
    assert "client_secret" not in last


def test_provider_authors_send_certificate_grants_through_the_testing_helper(pair, idp):
    from flask_mailoauth import testing
    from flask_mailoauth.providers import registry

    config = {
        "client_id": CLIENT_ID,
        "token_endpoint": TOKEN_URL,
        "authorization_endpoint": TOKEN_URL,
        "client_auth": "private_key_jwt",
    }
    answer = testing.request_token(
        registry.get("generic"),
        config,
        {"grant_type": "refresh_token", "refresh_token": "rt"},
        certificates=[pair],
    )
    assert answer.client_certificate == pair
    assert assertions(idp) == [(x5t(pair.certificate_pem), "refresh_token")]
