"""Google end to end, and Delete Token revoking at the real IdP (issue 15, point 4).

The Google-shaped oidc-provider (``google_idp``: Google's routes, ``https://mail.google.com/``,
refresh tokens only for ``access_type=offline`` with ``prompt=consent``, never rotated) stands
in for Google: the extension's Google provider is pointed at it (a loopback Token Endpoint
under ``MAILOAUTH_ALLOW_INSECURE_HTTP``), authorizes through its real login and consent pages,
signs in to Dovecot over IMAP and sends through Postfix with its tokens (both validate them by
introspection at that IdP), refreshes, and Delete Token revokes at its ``/revoke``: Dovecot
then refuses the old access token. The generic shape checks the same for a revocation endpoint
found by discovery.
"""

from __future__ import annotations

import contextlib
import imaplib

import pytest

from flask_mailoauth.sasl import xoauth2
from peers.idp import GMAIL_SCOPE, GOOGLE_OFFLINE, Client, IdPError

from .flows import (
    authorize,
    credential,
    csrf_token,
    events,
    point_at,
    send_and_read_back,
)

SUPPORT = "support@example.test"


def imap_login(dovecot, user: str, token: str) -> str:
    """Sign in to Dovecot directly with ``token`` (XOAUTH2); the IMAP state, or the refusal."""
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        conn.authenticate("XOAUTH2", lambda _challenge: xoauth2(user, token))
    except imaplib.IMAP4.error as refused:
        return f"refused: {refused}"
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            conn.logout()
    return "AUTH"


def delete_token(host, client, provider: str) -> tuple[str, str]:
    """Press Delete Token as the admin; the banner (kind, text)."""
    data = {"csrf_token": csrf_token(client, "support", "mailbox", provider)}
    response = client.post("/mailoauth/support/mailbox/delete", data=data)
    assert response.status_code == 303
    with client.session_transaction() as session:
        (banner,) = session.pop("_flashes", [])
    return banner


def test_google_shaped_idp_issues_refresh_tokens_only_for_offline_access_and_keeps_them(
    google_idp,
):
    """The shape itself: what the extension's Google provider relies on."""
    client = google_idp.register_client()
    online = google_idp.code_grant(client, SUPPORT)
    assert "refresh_token" not in online
    assert set(online["scope"].split()) == {"openid", "email", GMAIL_SCOPE}
    offline = google_idp.code_grant(client, SUPPORT, **GOOGLE_OFFLINE)
    refresh_token = offline["refresh_token"]
    assert "offline_access" not in offline["scope"].split()
    refreshed = google_idp.refresh(client, refresh_token)
    assert refreshed.get("refresh_token", refresh_token) == refresh_token  # not rotated
    assert google_idp.introspect(refreshed["access_token"])["email"] == SUPPORT
    assert google_idp.metadata["revocation_endpoint"] == f"{google_idp.base_url}/revoke"
    assert google_idp.metadata["jwks_uri"] == f"{google_idp.base_url}/oauth2/v3/certs"


def test_google_delegated_flow_imap_smtp_refresh_and_delete_token_revokes(
    make_host, google_idp, google_dovecot, google_postfix
):
    host = make_host()
    client = host.app.test_client()
    done = authorize(host, google_idp, SUPPORT, client=client)
    point_at(host, google_dovecot, postfix=google_postfix)
    cred, access, refresh_token = credential(host)
    assert refresh_token  # asked with access_type=offline and prompt=consent
    assert cred.resource_owner == SUPPORT
    assert set(cred.scope.split()) == {"openid", "email", GMAIL_SCOPE}

    # IMAP at Dovecot and SMTP through Postfix, both checking the token at the IdP
    with host.app.app_context():
        assert (
            send_and_read_back(host, SUPPORT, "sent with a Google-shaped token")["From"] == SUPPORT
        )

        # a refresh without rotation: a new access token, the same refresh token
        fresh = host.ext.refresh("support")
    _, stored_access, stored_refresh = credential(host)
    assert fresh == stored_access != access
    assert stored_refresh == refresh_token
    assert imap_login(google_dovecot, SUPPORT, fresh) == "AUTH"

    # Delete Token revokes at /revoke: the grant's tokens stop working at Dovecot at once
    assert delete_token(host, client, "google") == (
        "success",
        "Token deleted. The identity provider confirmed the revocation. Open Config and press "
        "Submit to authorize again; until then mail is neither fetched nor sent with OAuth2.",
    )
    assert google_idp.introspect(refresh_token)["active"] is False
    # oidc-provider revokes the whole grant with its refresh token, access tokens included
    # (RFC 7009 §2.1 says SHOULD), as Google does: introspection then says inactive
    assert google_idp.introspect(fresh)["active"] is False
    assert imap_login(google_dovecot, SUPPORT, fresh).startswith("refused:")
    with pytest.raises(IdPError) as refused:
        google_idp.refresh(Client(done.client_id, done.client_secret), refresh_token)
    assert refused.value.body["error"] in ("invalid_grant", "invalid_client")
    (deleted,) = events(host, "token_deleted")
    assert (deleted.level, deleted.message) == (
        "info",
        "Token deleted by an admin. The identity provider confirmed the revocation.",
    )


def test_generic_delete_token_revokes_at_the_discovered_endpoint(make_host, generic_idp, dovecot):
    host = make_host()
    client = host.app.test_client()
    authorize(host, generic_idp, SUPPORT, client=client)
    point_at(host, dovecot)
    _, access, refresh_token = credential(host)
    assert imap_login(dovecot, SUPPORT, access) == "AUTH"
    kind, text = delete_token(host, client, "generic")
    assert kind == "success"
    assert text.startswith("Token deleted. The identity provider confirmed the revocation.")
    assert generic_idp.introspect(refresh_token)["active"] is False
    assert generic_idp.introspect(access)["active"] is False
    assert imap_login(dovecot, SUPPORT, access).startswith("refused:")
