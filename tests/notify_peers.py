"""Receivers the notification tests send to, on 127.0.0.1: a webhook that checks the HMAC
signature the way the docs tell a host to (``docs/operations.rst``), and a small SMTP server
that keeps what it is given. Also :func:`check_in_child`, the body of a "spawn" process, and
:func:`refuse`, which puts an account into a condition."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa

from flask_mailoauth.models import own_session
from flask_mailoauth.vocabulary import CredentialStatus

#: the webhook secret of the tests (at least 16 characters)
SECRET = "test-webhook-secret-0123456789"


def set_credential(host, key="support", **values):
    st = host.app.extensions["mailoauth"]
    m = st.models
    with host.app.app_context(), own_session(st.db) as s:
        account = s.scalars(sa.select(m.Account).where(m.Account.key == key)).one()
        for name, value in values.items():
            setattr(account.credential if hasattr(m.Credential, name) else account, name, value)


def refuse(host, key="support"):
    set_credential(
        host,
        key,
        status=CredentialStatus.REAUTHORIZATION_REQUIRED.value,
        last_error_code="AADSTS700082",
        last_error="AADSTS700082: The refresh token has expired due to inactivity.",
        failure_count=1,
    )


@dataclass
class Delivery:
    headers: dict[str, str]
    body: dict[str, Any]
    #: whether the signature matched the body and the timestamp was fresh
    verified: bool


@dataclass
class WebhookReceiver:
    """Answers each POST with the next status of ``statuses`` (then 200) and records it."""

    url: str
    statuses: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    def accepted(self) -> list[Delivery]:
        """The deliveries answered with 2xx."""
        return [d for d in self.deliveries if d.verified and d.headers.get("X-Answer") == "200"]


def verify(secret: str, headers: dict[str, str], body: bytes, max_age: float = 300) -> bool:
    """What a receiver does: the HMAC of ``timestamp.body`` in constant time, and a fresh
    timestamp (against replays)."""
    stamp = headers.get("X-MailOAuth-Timestamp", "")
    given = headers.get("X-MailOAuth-Signature", "")
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= max_age
    return fresh and hmac.compare_digest(given, "sha256=" + mac.hexdigest())


@contextmanager
def webhook_receiver(*statuses: int, secret: str = SECRET) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="", statuses=list(statuses))
    guard = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = dict(self.headers.items())
            ok = verify(secret, headers, body)
            with guard:
                status = (receiver.statuses.pop(0) if receiver.statuses else 200) if ok else 401
                headers["X-Answer"] = str(status)
                receiver.deliveries.append(Delivery(headers, json.loads(body), ok))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/mailoauth"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class SmtpSink:
    host: str
    port: int
    #: (the AUTH line, MAIL FROM, RCPT TOs, the message's text) of each accepted message
    messages: list[tuple[str, str, list[str], str]] = field(default_factory=list)


@contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    """An SMTP server that offers AUTH XOAUTH2 without TLS, accepts any token and keeps each
    message: enough to see what the e-mail channel sends (the Postfix e2e checks the rest)."""
    sink = SmtpSink("127.0.0.1", 0)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            auth, sender, recipients = "", "", []

            def say(line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            say("220 sink ESMTP")
            while line := self.rfile.readline().decode().rstrip("\r\n"):
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    say("250-sink")
                    say("250 AUTH XOAUTH2")
                elif verb == "AUTH":
                    auth = line
                    say("235 2.7.0 Accepted")
                elif verb == "MAIL":
                    sender = line
                    say("250 OK")
                elif verb == "RCPT":
                    recipients.append(line)
                    say("250 OK")
                elif verb == "DATA":
                    say("354 go on")
                    lines = []
                    while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                        lines.append(data)
                    sink.messages.append((auth, sender, recipients, "".join(lines)))
                    say("250 queued")
                elif verb == "QUIT":
                    say("221 bye")
                    return
                else:
                    say("250 OK")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def check_in_child(
    db_url: str, key: str, ca_file: str, webhook: str, start: Any, claim: Any, out: Any
) -> None:
    """One worker process: its own app on the shared database, released with the others by
    ``start``; every worker reads the notices before any claims (``claim``), so all of them
    race for the same message. It reports how many notifications it claimed."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_mailoauth import MailboxSettings, MailOAuth, notify

    def together(step: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            claim.wait(30)
            return step(*args, **kwargs)

        return run

    notify._claim = together(notify._claim)
    notify._resolve = together(notify._resolve)
    socket.setdefaulttimeout(30)
    app = Flask("notify_child")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=db_url,
        SECRET_KEY="x",
        MAILOAUTH_ENCRYPTION_KEYS=[key],
        MAILOAUTH_ALLOW_INSECURE_HTTP=True,
        MAILOAUTH_CA_BUNDLE=ca_file,
        MAILOAUTH_NOTIFY_WEBHOOK_URL=webhook,
        MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET,
    )
    db = SQLAlchemy(app)
    ext = MailOAuth(app, db=db)
    ext.mailbox_loader({"support": MailboxSettings(address="support@example.test")}.get)
    with app.app_context():
        start.wait(30)
        sent = notify.check(app.extensions["mailoauth"])
        db.engine.dispose()
    out.put([m.kind.value for m in sent])
