"""Issue 15, point 1: Microsoft application (app-only) access against the real peers.

The Microsoft-shaped oidc-provider answers the admin consent link and issues app-only JWTs with
the client credentials grant (``roles``: the application permissions); Dovecot and Postfix
accept such a token only for the mailbox the test IdP granted the application (its
introspection answer names that mailbox; see peers/idp/server.mjs), as Exchange Online does after
``Add-MailboxPermission``. Nobody signs in as a mailbox anywhere here.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from flask_mailoauth import certificates, mail
from flask_mailoauth.errors import MailAuthenticationError
from flask_mailoauth.providers.base import MailServer
from peers import Client

from ..stored import tokens_at_once
from .flows import CALLBACK, certificate_fields, csrf_token, jwk, point_at, send_and_read_back

SUPPORT = "support@example.test"
SALES = "sales@example.test"
BOB = "bob@example.test"


def consent(
    host, idp, key: str, *, app: Client, sp_id: str = "", **fields: object
) -> list[tuple[str, str]]:
    """Save ``key`` with application access for ``app`` (the IdP client; ``fields`` change
    the form), follow the admin consent link to the IdP and its answer back to the callback;
    returns the banners."""
    client = host.app.test_client()
    tid = idp.tenant_id
    data = {
        "csrf_token": csrf_token(client, key, "mailbox", "microsoft"),
        "enabled": "1",
        "name": f"{key} (mailbox)",
        "strict_matching": "y",
        "client_secret": app.client_secret,
        "provider": "microsoft",
        "idp_access": "application",
        "idp_cloud": "global",
        "idp_tenant": tid,
        "idp_client_id": app.client_id,
        "idp_authorization_endpoint": idp.authorize_url_for(tid),
        "idp_token_endpoint": idp.token_url_for(tid),
        "idp_scopes": " ".join(idp.default_scope),
        "idp_service_principal_id": sp_id,
        **fields,
    }
    saved = client.post(
        f"/mailoauth/{key}/mailbox", data=data, headers={"Referer": f"http://localhost/{key}"}
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)[:3000]
    link = saved.headers["Location"]
    assert link.startswith(f"{idp.base_url}/{tid}/adminconsent?client_id={app.client_id}&")
    at_idp = idp.http.get(link, allow_redirects=False, timeout=5)
    assert at_idp.status_code == 302, at_idp.text
    back = urlsplit(at_idp.headers["Location"])
    assert back.query.startswith(f"admin_consent=True&tenant={tid}&state=")
    done = client.get(f"{back.path}?{back.query}")
    assert done.status_code == 303
    with client.session_transaction() as session:
        return list(session.get("_flashes", []))


def client_credentials_requests(idp) -> int:
    return sum(1 for f in idp.stats()["forms"] if f["grant_type"] == "client_credentials")


@pytest.fixture
def app_host(make_host, ms_idp, ms_dovecot, ms_postfix):
    host = make_host()
    point_at(
        host, ms_dovecot, "support", address=SUPPORT, postfix=ms_postfix, smtp_purpose="mailbox"
    )
    point_at(host, ms_dovecot, "sales", address=SALES, protocol="pop3")
    point_at(host, ms_dovecot, "bob", address=BOB)
    return host


def test_app_only_imap_and_smtp_send_after_admin_consent(app_host, ms_idp):
    """Consent, then IMAP and SMTP (the mailbox's own token) with the application's token:
    XOAUTH2/OAUTHBEARER as the mailbox address, accepted only because the app was granted it."""
    host = app_host
    app = ms_idp.register_app(CALLBACK)
    sp_id = ms_idp.grant_app_mailbox(app.client_id, SUPPORT)
    before = client_credentials_requests(ms_idp)
    banners = consent(host, ms_idp, "support", app=app, sp_id=sp_id)
    assert ("success", "OAuth2 Authorization Successful.") in banners
    assert client_credentials_requests(ms_idp) == before + 1
    assert app.client_id in [c["client_id"] for c in ms_idp.consents()]

    page = host.app.test_client().get("/mailoauth/support/mailbox?tab=token").get_data(True)
    assert "IMAP.AccessAsApp POP.AccessAsApp SMTP.SendAsApp" in page
    assert f"granted in tenant {ms_idp.tenant_id}" in page
    script = re.search(r'id="mailoauth-setup-script"[^>]*>([^<]*)<', page).group(1)
    assert script.splitlines() == [
        "Connect-ExchangeOnline",
        f"New-ServicePrincipal -AppId &#39;{app.client_id}&#39; -ObjectId &#39;{sp_id}&#39;",
        f"Add-MailboxPermission -Identity &#39;{SUPPORT}&#39; -User &#39;{sp_id}&#39; "
        "-AccessRights FullAccess",
        f"Add-RecipientPermission -Identity &#39;{SUPPORT}&#39; -Trustee &#39;{sp_id}&#39; "
        "-AccessRights SendAs -Confirm:$false",
        f"Set-CASMailbox -Identity &#39;{SUPPORT}&#39; -SmtpClientAuthenticationDisabled $false",
    ]

    with host.app.app_context():
        got = send_and_read_back(host, SUPPORT, "sent with an application token")
        checks = host.ext.test_connection("support")
    assert got["From"] == SUPPORT
    assert [(c.protocol, c.ok) for c in checks] == [("IMAP", True), ("SMTP", True)], checks


def test_app_only_pop3(app_host, ms_idp):
    app = ms_idp.register_app(CALLBACK)
    ms_idp.grant_app_mailbox(app.client_id, SALES)
    consent(app_host, ms_idp, "sales", app=app)
    with app_host.app.app_context():
        pop = app_host.ext.connect_pop3("sales")
        try:
            count, _ = pop.stat()
            assert count >= 0
        finally:
            pop.quit()
        (check,) = app_host.ext.test_connection("sales")
    assert (check.protocol, check.ok) == ("POP3", True), check


def test_a_mailbox_the_app_was_not_granted_is_refused_with_the_tenant_setup_step(
    app_host, ms_idp, ms_dovecot
):
    """The application may open support@ only: bob@ is refused by Dovecot, and Test
    connection points at New-ServicePrincipal / Add-MailboxPermission of the panel."""
    app = ms_idp.register_app(CALLBACK)
    ms_idp.grant_app_mailbox(app.client_id, SUPPORT)
    banners = consent(app_host, ms_idp, "bob", app=app)
    assert ("success", "OAuth2 Authorization Successful.") in banners
    with app_host.app.app_context(), pytest.raises(MailAuthenticationError):
        app_host.ext.connect_imap("bob")
    client = app_host.app.test_client()
    page = client.post(
        "/mailoauth/bob/mailbox/test",
        data={"csrf_token": csrf_token(client, "bob", "mailbox", "microsoft")},
    ).get_data(as_text=True)
    assert "run New-ServicePrincipal and Add-MailboxPermission ... FullAccess" in page
    assert f"Add-MailboxPermission -Identity &#39;{BOB}&#39;" in page
    # once the tenant grants it, the same token opens the mailbox
    ms_idp.grant_app_mailbox(app.client_id, BOB)
    with app_host.app.app_context():
        imap = app_host.ext.connect_imap("bob")
        imap.logout()
        token = app_host.ext.access_token("bob")
    # Exchange speaks XOAUTH2 only: user= is the mailbox address, with the application's token
    server = MailServer(ms_dovecot.host, ms_dovecot.imap_port, "none")
    conn = mail.open_imap(server)
    try:
        assert mail.imap_login(conn, BOB, token, mechanism="XOAUTH2") == "XOAUTH2"
    finally:
        conn.logout()


def test_a_token_without_the_needed_role_is_refused_and_nothing_is_stored(app_host, ms_idp):
    app = ms_idp.register_app(CALLBACK)
    ms_idp.grant_app_mailbox(app.client_id, SALES)
    ms_idp.set_app_roles(app.client_id, ["IMAP.AccessAsApp"])  # sales@ is read over POP3
    (banner,) = [text for _, text in consent(app_host, ms_idp, "sales", app=app)]
    assert "lacks the role POP.AccessAsApp (roles: IMAP.AccessAsApp)" in banner
    st = app_host.app.extensions["mailoauth"]
    with app_host.app.app_context():
        assert st.db.session.scalars(sa.select(st.models.Credential)).all() == []


def test_a_due_application_token_is_fetched_once_for_all_callers(app_host, ms_idp):
    app = ms_idp.register_app(CALLBACK)
    ms_idp.grant_app_mailbox(app.client_id, SUPPORT)
    consent(app_host, ms_idp, "support", app=app)
    st = app_host.app.extensions["mailoauth"]
    with app_host.app.app_context(), st.db.engine.begin() as conn:
        conn.execute(sa.text("update mailoauth_credential set expires_at = '2000-01-01 00:00:00'"))
    st.cache.clear()
    before = client_credentials_requests(ms_idp)
    tokens = tokens_at_once(app_host, callers=12)
    assert len(set(tokens)) == 1
    assert client_credentials_requests(ms_idp) == before + 1
    with app_host.app.app_context():
        imap = app_host.ext.connect_imap("support")
        imap.logout()


def test_app_only_with_a_certificate(app_host, ms_idp):
    """Application access authenticated with a certificate (private_key_jwt): admin consent,
    the first token, a due one fetched again, IMAP at Dovecot; no secret anywhere."""
    pair = certificates.generate("helpdesk app e2e")
    app = ms_idp.register_app(CALLBACK, auth_method="private_key_jwt", jwks={"keys": [jwk(pair)]})
    ms_idp.grant_app_mailbox(app.client_id, SUPPORT)
    before = client_credentials_requests(ms_idp)
    refused = ms_idp.stats()["statuses"].get("401", 0)
    # oidc-provider takes an assertion only for its own token URL (the /common/ one that the
    # test IdP serves every tenant's path from), where Microsoft takes the tenant's too
    banners = consent(
        app_host,
        ms_idp,
        "support",
        app=app,
        client_secret="",
        idp_token_endpoint=ms_idp.token_url_for("common"),
        **certificate_fields(pair),
    )
    assert ("success", "OAuth2 Authorization Successful.") in banners
    st = app_host.app.extensions["mailoauth"]
    with app_host.app.app_context(), st.db.engine.begin() as conn:
        conn.execute(sa.text("update mailoauth_credential set expires_at = '2000-01-01 00:00:00'"))
    with app_host.app.app_context():
        app_host.ext.access_token("support")
        imap = app_host.ext.connect_imap("support")
        try:
            assert imap.state == "SELECTED"
        finally:
            imap.logout()
    assert client_credentials_requests(ms_idp) == before + 2
    assert ms_idp.stats()["statuses"].get("401", 0) == refused  # no assertion was refused
