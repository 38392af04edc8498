"""Sandbox mode: the demo helpdesk with real local peers, to click through the walkthrough offline.

It starts the real-peer harness's (``peers``) Microsoft-shaped IdP (oidc-provider), a Dovecot
that validates its tokens, and a Postfix that delivers to that Dovecot, all on 127.0.0.1;
registers an application
at the IdP whose redirect URI is the demo's Callback Endpoint; points the seeded Support email at
the local Dovecot and Postfix; and drops two messages into its inbox so Fetch now has something
to list. The values the admin pastes into the IdP Config tab are printed, as the Azure portal
would show them.
"""

from __future__ import annotations

import atexit
import smtplib
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

from flask import Flask

from peers import peer_missing
from peers.dovecot import Dovecot
from peers.idp import IdP
from peers.postfix import Postfix

from .extensions import db
from .models import SystemEmail

MAILBOX = "support@example.test"
PEERS = ("idp", "dovecot", "postfix")


def missing_peers() -> list[str]:
    """Why the sandbox cannot start here (empty when it can)."""
    return [reason for name in PEERS if (reason := peer_missing(name))]


@dataclass
class Sandbox:
    """The running peers and the application registered at the IdP."""

    idp: IdP
    dovecot: Dovecot
    postfix: Postfix
    client_id: str
    client_secret: str
    workdir: tempfile.TemporaryDirectory

    def stop(self) -> None:
        """Stop every peer by its PID and remove the work directory."""
        for peer in (self.postfix, self.dovecot, self.idp):
            peer.stop()
        self.workdir.cleanup()


def start(callback_url: str) -> Sandbox:
    """Start the peers and register the demo's Callback Endpoint at the IdP."""
    workdir = tempfile.TemporaryDirectory(prefix="mailoauth-sandbox-")
    root = Path(workdir.name)
    root.chmod(0o755)  # Dovecot and Postfix run their workers as other users
    logs = root / "logs"
    logs.mkdir(mode=0o777)
    logs.chmod(0o777)
    started: list[Any] = []
    try:
        idp = IdP("microsoft", logs)
        started.append(idp)
        dovecot = Dovecot("dovecot", idp, root, logs)
        started.append(dovecot)
        postfix = Postfix(dovecot, root, logs)
        started.append(postfix)
    except BaseException:
        for peer in reversed(started):
            peer.stop()
        workdir.cleanup()
        raise
    client = idp.register_client(callback_url, auth_method="client_secret_post")
    sandbox = Sandbox(idp, dovecot, postfix, client.client_id, client.client_secret, workdir)
    atexit.register(sandbox.stop)
    _deliver_welcome(dovecot)
    return sandbox


def _deliver_welcome(dovecot: Dovecot) -> None:
    """Two messages in the Support inbox, delivered over LMTP like real mail."""
    with smtplib.LMTP(str(dovecot.lmtp_socket)) as lmtp:
        for subject in ("Printer on floor 3 is jammed", "Password reset for the VPN"):
            message = EmailMessage()
            message["From"] = "customer@example.test"
            message["To"] = MAILBOX
            message["Subject"] = subject
            message["Date"] = formatdate(localtime=False)
            message.set_content("Hello, could you help me with this?\n")
            lmtp.send_message(message)


def configure(app: Flask, sandbox: Sandbox) -> None:
    """Point the seeded Support email at the local Dovecot and Postfix (plaintext loopback)."""
    with app.app_context():
        email = db.session.scalar(db.select(SystemEmail).filter_by(address=MAILBOX))
        email.protocol, email.folder = "imap", "INBOX"
        email.host, email.port, email.security = (
            sandbox.dovecot.host,
            sandbox.dovecot.imap_port,
            "none",
        )
        email.remote_auth = "microsoft"
        email.smtp_host, email.smtp_port = sandbox.postfix.host, sandbox.postfix.port
        email.smtp_security = "none"
        db.session.commit()


def banner(url: str, sandbox: Sandbox) -> str:
    """What the newcomer needs to follow the walkthrough, as the terminal shows it."""
    idp = sandbox.idp
    return f"""
  flask-mailoauth demo helpdesk — SANDBOX mode (local IdP, Dovecot and Postfix on 127.0.0.1)

  Helpdesk:           {url}
  Admin login:        admin@example.test / admin

  Follow the walkthrough: Admin Panel > Emails > support@example.test > Remote Mailbox >
  Authentication "OAuth2 - Microsoft" > Config > IdP Config, and paste:
    Client ID:              {sandbox.client_id}
    Client Secret:          {sandbox.client_secret}
    Authorization Endpoint: {idp.authorize_url_for("common")}
    Token Endpoint:         {idp.token_url_for("common")}
  Submit, then sign in at the local IdP as the mailbox (it serves https with a certificate of a
  CA made for this run, {idp.ca_file}; your browser warns about it once: proceed to 127.0.0.1):
    Mailbox login:          {MAILBOX} (any password), then Continue to consent
  Back in the helpdesk: the green banner, Config > Token, and Fetch now on Remote Mailbox.
"""
