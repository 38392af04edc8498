"""Issue 15, point 3: a Google service account with domain-wide delegation against the real peers.

The test IdP (oidc-provider) plays Google's token endpoint for the RFC 7523 JWT-bearer grant: it
verifies the assertion with the service account's public key and refuses a scope the Workspace
admin did not delegate (``unauthorized_client``); its token names the assertion's ``sub``, so
Dovecot and Postfix accept it for that mailbox only. Nobody signs in anywhere.
"""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from example_app.extensions import db, mailoauth
from example_app.models import SystemEmail

from ..stored import tokens_at_once
from .browser_steps import demo_helpdesk, open_config, open_remote_mailbox
from .flows import csrf_token, point_at, send_and_read_back

SUPPORT = "support@example.test"
SALES = "sales@example.test"
MAIL_SCOPE = "https://mail.google.com/"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def service_account(idp, scopes: list[str]) -> tuple[str, str]:
    """A service account at the IdP with ``scopes`` delegated; its Client ID and JSON key."""
    key = rsa.generate_private_key(65537, 2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    client = idp.register_service_account(public.decode(), scopes)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_json = {
        "type": "service_account",
        "project_id": "helpdesk",
        "private_key_id": uuid.uuid4().hex,
        "private_key": private.decode(),
        "client_email": idp.service_account_email(client),
        "client_id": client.client_id,
        "token_uri": idp.token_endpoint,
    }
    return client.client_id, json.dumps(key_json)


def submit(host, idp, key: str, client_id: str, key_json: str) -> list[tuple[str, str]]:
    """Save ``key`` with Google service account access; the banners that follow."""
    client = host.app.test_client()
    data = {
        "csrf_token": csrf_token(client, key, "mailbox", "google"),
        "provider": "google",
        "enabled": "1",
        "name": f"{key} (mailbox)",
        "strict_matching": "y",
        "client_secret": key_json,
        "idp_access": "service_account",
        "idp_client_id": client_id,
        "idp_authorization_endpoint": idp.authorization_endpoint,
        "idp_token_endpoint": idp.token_endpoint,
        "idp_scopes": "openid email https://mail.google.com/",
        "idp_publishing_status": "production",
    }
    saved = client.post(
        f"/mailoauth/{key}/mailbox", data=data, headers={"Referer": f"http://localhost/{key}"}
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)[:3000]
    assert saved.headers["Location"] == f"/{key}"  # nobody is sent anywhere to sign in
    with client.session_transaction() as session:
        return list(session.get("_flashes", []))


def jwt_bearer_requests(idp) -> int:
    return int(idp.stats()["token"].get(JWT_BEARER, 0))


@pytest.fixture(params=["generic", "google"])
def shape(request) -> str:
    """Which test IdP issues the service account's tokens: the generic one, or the Google-shaped
    one (Google's routes, its Dovecot and Postfix)."""
    return request.param


@pytest.fixture
def sa_idp(request, shape):
    return request.getfixturevalue(f"{shape}_idp")


@pytest.fixture
def sa_host(request, make_host, shape):
    prefix = "" if shape == "generic" else f"{shape}_"
    dovecot = request.getfixturevalue(f"{prefix}dovecot")
    postfix = request.getfixturevalue(f"{prefix}postfix")
    host = make_host()
    point_at(host, dovecot, "support", address=SUPPORT, postfix=postfix, smtp_purpose="mailbox")
    point_at(host, dovecot, "sales", address=SALES, protocol="pop3")
    return host


def test_service_account_reads_and_sends_for_the_mailbox(sa_host, sa_idp):
    client_id, key_json = service_account(sa_idp, [MAIL_SCOPE])
    before = jwt_bearer_requests(sa_idp)
    banners = submit(sa_host, sa_idp, "support", client_id, key_json)
    assert ("success", "OAuth2 Authorization Successful.") in banners
    assert jwt_bearer_requests(sa_idp) == before + 1
    with sa_host.app.app_context():
        got = send_and_read_back(sa_host, SUPPORT, "sent with a service account's token")
        assert got["From"] == SUPPORT
        checks = sa_host.ext.test_connection("support")
    assert [(c.protocol, c.ok) for c in checks] == [("IMAP", True), ("SMTP", True)], checks


def test_service_account_pop3_and_a_due_token_fetched_once(sa_host, sa_idp):
    """One key serves every mailbox of the domain: POP3 for sales@, and support@'s due token
    is fetched with one assertion for all callers."""
    client_id, key_json = service_account(sa_idp, [MAIL_SCOPE])
    submit(sa_host, sa_idp, "sales", client_id, key_json)
    submit(sa_host, sa_idp, "support", client_id, key_json)
    st = sa_host.app.extensions["mailoauth"]
    with sa_host.app.app_context(), st.db.engine.begin() as conn:
        conn.execute(sa.text("update mailoauth_credential set expires_at = '2000-01-01 00:00:00'"))
    st.cache.clear()
    before = jwt_bearer_requests(sa_idp)
    tokens = tokens_at_once(sa_host, callers=12)  # support@
    assert len(set(tokens)) == 1
    assert jwt_bearer_requests(sa_idp) == before + 1
    with sa_host.app.app_context():
        pop = sa_host.ext.connect_pop3("sales")
        try:
            assert pop.stat()[0] >= 0
        finally:
            pop.quit()


def test_missing_domain_wide_delegation_is_refused_with_the_admin_console_values(sa_host, sa_idp):
    client_id, key_json = service_account(sa_idp, [])  # nothing delegated
    ((kind, text),) = submit(sa_host, sa_idp, "support", client_id, key_json)
    assert kind == "error"
    assert f"Add new with Client ID {client_id} and OAuth scope {MAIL_SCOPE}" in text
    st = sa_host.app.extensions["mailoauth"]
    with sa_host.app.app_context():
        assert st.db.session.scalars(sa.select(st.models.Credential)).all() == []


@pytest.fixture
def helpdesk(tmp_path, serve_app, dovecot):
    """The demo helpdesk, its support@ mailbox on the generic IdP's Dovecot."""
    app, server = demo_helpdesk(tmp_path, serve_app)
    with app.app_context():
        email = db.session.execute(db.select(SystemEmail).filter_by(address=SUPPORT)).scalar_one()
        email.host, email.port, email.security = dovecot.host, dovecot.imap_port, "none"
        email.smtp_auth = "basic"  # SMTP is not what this test is about
        db.session.commit()
    return app, server


def test_the_key_file_is_chosen_in_chromium_and_nobody_signs_in(
    helpdesk, generic_idp, page, tmp_path
):
    app, server = helpdesk
    client_id, key_json = service_account(generic_idp, [MAIL_SCOPE])
    key_file = tmp_path / "helpdesk-key.json"
    key_file.write_text(key_json)
    open_remote_mailbox(page, server)
    page.locator("#panel-remote").get_by_label("Authentication").select_option(
        label="OAuth2 - Google"
    )
    dialog = open_config(page)
    dialog.get_by_role("tab", name="IdP Config").click()
    dialog.get_by_label("Access", exact=True).select_option(
        label="Service account (nobody signs in)"
    )
    dialog.get_by_label("Client ID", exact=True).fill(client_id)
    dialog.get_by_label("Token Endpoint", exact=True).fill(generic_idp.token_endpoint)
    dialog.get_by_label("Service account key file (JSON)").set_input_files(str(key_file))
    secret = dialog.get_by_label("Client Secret", exact=True)
    page.wait_for_function("s => s.value.length > 1000", arg=secret.element_handle())
    assert json.loads(secret.input_value())["client_id"] == client_id
    dialog.get_by_role("button", name="Submit").click()
    success = page.locator(".flash-success").first
    success.wait_for()
    assert "OAuth2 Authorization Successful" in success.inner_text()
    with app.app_context():
        imap = mailoauth.connect_imap("1")
        assert imap.state == "SELECTED"
        imap.logout()
