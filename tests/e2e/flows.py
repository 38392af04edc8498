"""Drive the extension's own authorization flow against a real IdP, without a browser.

The Flask test client plays the admin (modal, save, callback); ``login_and_consent`` plays the
mailbox user at oidc-provider's login and consent pages.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
import time
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlsplit

from flask_mailoauth import MailboxSettings
from peers import login_and_consent
from peers.idp import IdP

from ..conftest import Host

CALLBACK = "http://localhost/mailoauth/callback"


@dataclass
class Authorized:
    """An account authorized through the real flow; ``client`` is the IdP client used."""

    host: Host
    key: str
    purpose: str
    client_id: str
    client_secret: str
    response_location: str


def idp_fields(idp: IdP, client_id: str, *, scopes: str | None = None) -> dict[str, str]:
    """The modal's IdP Config fields for ``idp`` (Microsoft-shaped or generic)."""
    if idp.shape == "microsoft":
        return {
            "provider": "microsoft",
            "idp_cloud": "global",
            "idp_tenant": "common",
            "idp_client_id": client_id,
            "idp_authorization_endpoint": idp.authorize_url_for("common"),
            "idp_token_endpoint": idp.token_url_for("common"),
            "idp_scopes": scopes or " ".join(idp.default_scope),
        }
    return {
        "provider": "generic",
        "idp_issuer": idp.issuer,
        "idp_client_id": client_id,
        "idp_scopes": scopes or "openid email offline_access",
        "idp_email_attribute": "email",
    }


def csrf_token(client, key: str, purpose: str, provider: str) -> str:
    page = client.get(f"/mailoauth/{key}/{purpose}?provider={provider}").get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


def authorize(
    host: Host,
    idp: IdP,
    email: str,
    *,
    key: str = "support",
    purpose: str = "mailbox",
    client=None,
    rotate: bool | None = None,
    strict: bool = True,
    scopes: str | None = None,
    expect_success: bool = True,
    **extra_fields: str,
) -> Authorized:
    """Save the modal for ``key`` and sign in at the IdP as ``email``; returns the outcome."""
    client = client or host.app.test_client()
    registered = idp.register_client(CALLBACK, rotate=rotate, auth_method="client_secret_post")
    fields = idp_fields(idp, registered.client_id, scopes=scopes)
    data = {
        "csrf_token": csrf_token(client, key, purpose, fields["provider"]),
        "enabled": "1",
        "name": f"{key} ({purpose})",
        "client_secret": registered.client_secret,
        **({"strict_matching": "y"} if strict else {}),
        **fields,
        **extra_fields,
    }
    saved = client.post(
        f"/mailoauth/{key}/{purpose}",
        data=data,
        headers={"Referer": f"http://localhost/emails/{key}"},
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)[:2000]
    callback_url = login_and_consent(saved.headers["Location"], email, CALLBACK)
    parts = urlsplit(callback_url)
    done = client.get(f"{parts.path}?{parts.query}")
    assert done.status_code == 303, done.get_data(as_text=True)[:2000]
    with client.session_transaction() as session:
        flashes = session.get("_flashes", [])
    if expect_success:
        assert ("success", "OAuth2 Authorization Successful.") in flashes, flashes
    return Authorized(
        host, key, purpose, registered.client_id, registered.client_secret, done.headers["Location"]
    )


def point_at(
    host: Host, dovecot, key: str = "support", address: str | None = None, postfix=None, **settings
) -> None:
    """Make the host's mailbox ``key`` use the local Dovecot (and Postfix) in plaintext."""
    current = host.mailboxes.get(key)
    host.mailboxes[key] = MailboxSettings(
        address=address or (current.address if current else f"{key}@example.test"),
        host=dovecot.host,
        port=dovecot.pop3_port if settings.get("protocol") == "pop3" else dovecot.imap_port,
        security="none",
        smtp_host=postfix.host if postfix else None,
        smtp_port=postfix.port if postfix else None,
        smtp_security="none" if postfix else None,
        **settings,
    )


def wait_for_subject(conn: imaplib.IMAP4, subject: str, timeout: float = 10.0) -> EmailMessage:
    """Poll the selected INBOX of a signed-in ``conn`` until ``subject`` arrives (LMTP)."""
    deadline = time.monotonic() + timeout
    while True:
        typ, _ = conn.select("INBOX")
        assert typ == "OK"
        hits = conn.search(None, "SUBJECT", f'"{subject}"')[1][0].split()
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert hits, f"{subject!r} was not delivered"
    raw = conn.fetch(hits[-1], "(RFC822)")[1][0][1]
    return email.message_from_bytes(raw, policy=email.policy.default)
