"""Drive the extension's own authorization flow against a real IdP, without a browser.

The Flask test client plays the admin (modal, save, callback); ``login_and_consent`` plays the
mailbox user at oidc-provider's login and consent pages.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import io
import json
import re
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlsplit

import jwt
import sqlalchemy as sa

from flask_mailoauth import MailboxSettings
from flask_mailoauth.certificates import ClientCertificate
from flask_mailoauth.models import own_session
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
    """The modal's IdP Config fields for ``idp`` (Microsoft-shaped, Google-shaped or generic)."""
    if idp.shape == "google":
        return {
            "provider": "google",
            "idp_client_id": client_id,
            "idp_authorization_endpoint": idp.authorization_endpoint,
            "idp_token_endpoint": idp.token_endpoint,
            "idp_scopes": scopes or " ".join(idp.default_scope),
            "idp_publishing_status": "production",
        }
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
    auth_method: str = "client_secret_post",
    registration: dict | None = None,
    **extra_fields: str,
) -> Authorized:
    """Save the modal for ``key`` and sign in at the IdP as ``email``; returns the outcome.

    ``auth_method`` is both the client's registered ``token_endpoint_auth_method`` and the
    modal's Client Authentication; ``registration`` adds client metadata (``jwks``...).
    """
    client = client or host.app.test_client()
    registered = idp.register_client(
        CALLBACK, rotate=rotate, auth_method=auth_method, **(registration or {})
    )
    fields = idp_fields(idp, registered.client_id, scopes=scopes)
    if auth_method != "client_secret_post":
        fields["client_auth"] = auth_method
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


def credential(host, key="support", purpose="mailbox"):
    """(credential row, access token, refresh token) as stored now."""
    st = host.app.extensions["mailoauth"]
    m = st.models
    with host.app.app_context(), own_session(st.db) as s:
        cred = s.scalars(
            sa.select(m.Credential)
            .join(m.Account)
            .where(m.Account.key == key, m.Account.purpose == purpose)
        ).one()
        return cred, st.reveal(cred, "access_token"), st.reveal(cred, "refresh_token")


def events(host, kind=None):
    """The account events stored now, oldest first; only those of ``kind`` when given."""
    st = host.app.extensions["mailoauth"]
    Event = st.models.Event
    with host.app.app_context(), own_session(st.db) as s:
        query = sa.select(Event).order_by(Event.id)
        if kind:
            query = query.where(Event.kind == kind)
        return list(s.scalars(query))


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


def send_and_read_back(host, address: str, text: str, key: str = "support") -> EmailMessage:
    """Send ``text`` from the mailbox ``key`` to itself with ``connect_smtp`` (the server
    checks the token at the IdP), then read it back over IMAP with ``connect_imap``; call it
    inside an app context."""
    subject = f"{text} {uuid.uuid4()}"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = address, address, subject
    msg.set_content(f"{text}\n")
    smtp = host.ext.connect_smtp(key, purpose="mailbox")
    try:
        assert smtp.send_message(msg) == {}
    finally:
        smtp.quit()
    imap = host.ext.connect_imap(key)
    try:
        return wait_for_subject(imap, subject)
    finally:
        imap.logout()


def jwk(pair: ClientCertificate) -> dict:
    """The public key of ``pair`` as a client's registered JWK (``private_key_jwt``)."""
    key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pair.certificate.public_key()))
    return {"kty": key["kty"], "n": key["n"], "e": key["e"], "use": "sig"}


def certificate_fields(pair: ClientCertificate) -> dict:
    """The modal's fields that authenticate the client with ``pair``, imported as a PEM file."""
    pem = (pair.certificate_pem + pair.private_key_pem).encode()
    return {
        "client_auth": "private_key_jwt",
        "certificate_action": "import",
        "certificate_file": (io.BytesIO(pem), "helpdesk.pem"),
    }
