"""Fetch now: log in to a system email's remote mailbox and list its newest messages."""

from __future__ import annotations

import imaplib
import poplib
import ssl
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Any

from flask import current_app

from flask_mailoauth.errors import MailOAuthError

from .extensions import mailoauth
from .models import BASIC, SystemEmail

LIMIT = 10
#: what a failed login or a refused command raises besides the extension's own errors
MAIL_ERRORS = (MailOAuthError, OSError, imaplib.IMAP4.error, poplib.error_proto, UnicodeError)


@dataclass
class Message:
    sender: str
    subject: str
    date: str


@dataclass
class FetchResult:
    messages: list[Message] = field(default_factory=list)
    total: int = 0
    error: str | None = None
    #: what to do about ``error`` (the extension's errors carry it)
    guidance: str = ""


def fetch_newest(email: SystemEmail) -> FetchResult:
    """The newest messages of ``email``'s mailbox, or the reason they could not be read."""
    try:
        if email.protocol == "pop3":
            conn = _connect(email, "connect_pop3", _pop3_basic)
            try:
                return _pop3_newest(conn)
            finally:
                with suppress(*MAIL_ERRORS):
                    conn.quit()
        conn = _connect(email, "connect_imap", _imap_basic)
        try:
            return _imap_newest(conn, email.folder or "INBOX")
        finally:
            with suppress(*MAIL_ERRORS):
                conn.logout()
    except MAIL_ERRORS as exc:
        # The extension's errors never contain a secret; they say what to do.
        return FetchResult(
            error=str(exc) or type(exc).__name__, guidance=getattr(exc, "guidance", "")
        )


def _connect(
    email: SystemEmail, oauth_name: str, basic: Callable[[SystemEmail, float], Any]
) -> Any:
    if email.remote_auth == BASIC:
        return basic(email, current_app.config["MAILOAUTH_MAIL_TIMEOUT"])
    # connect_imap/connect_pop3 log in with XOAUTH2/OAUTHBEARER, refreshing the token when due.
    return getattr(mailoauth, oauth_name)(email.key)


def _imap_newest(conn: imaplib.IMAP4, folder: str) -> FetchResult:
    quoted = '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
    typ, data = conn.select(quoted, readonly=True)
    if typ != "OK":
        raise imaplib.IMAP4.error(f"SELECT {folder} failed: {_text(data)}")
    typ, data = conn.search(None, "ALL")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"SEARCH failed: {_text(data)}")
    numbers = data[0].split() if data and data[0] else []
    result = FetchResult(total=len(numbers))
    if not numbers:
        return result
    wanted = b",".join(numbers[-LIMIT:]).decode()
    typ, data = conn.fetch(wanted, "(BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"FETCH failed: {_text(data)}")
    found = [(int(part[0].split()[0]), part[1]) for part in data if isinstance(part, tuple)]
    result.messages = [_message(headers) for _, headers in sorted(found, reverse=True)]
    return result


def _pop3_newest(conn: poplib.POP3) -> FetchResult:
    count, _size = conn.stat()
    result = FetchResult(total=count)
    for number in range(count, max(count - LIMIT, 0), -1):
        _resp, lines, _octets = conn.top(number, 0)
        result.messages.append(_message(b"\r\n".join(lines)))
    return result


def _message(headers: bytes) -> Message:
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(headers)
    return Message(
        sender=str(parsed.get("From", "")),
        subject=str(parsed.get("Subject", "")) or "(no subject)",
        date=str(parsed.get("Date", "")),
    )


def _text(data) -> str:
    return " ".join(d.decode(errors="replace") for d in data or [] if isinstance(d, bytes))


# -- Basic Authentication (Legacy): the plain stdlib logins the helpdesk had before OAuth2 ---


def _imap_basic(email: SystemEmail, timeout: float) -> imaplib.IMAP4:
    context = ssl.create_default_context()
    if (email.security or "ssl") == "ssl":
        conn = imaplib.IMAP4_SSL(
            email.host, email.port or 993, ssl_context=context, timeout=timeout
        )
    else:
        conn = imaplib.IMAP4(email.host, email.port or 143, timeout=timeout)
    try:
        if email.security == "starttls":
            conn.starttls(context)
        conn.login(email.remote_username, email.remote_password)
    except BaseException:
        conn.shutdown()
        raise
    return conn


def _pop3_basic(email: SystemEmail, timeout: float) -> poplib.POP3:
    context = ssl.create_default_context()
    if (email.security or "ssl") == "ssl":
        conn = poplib.POP3_SSL(email.host, email.port or 995, timeout=timeout, context=context)
    else:
        conn = poplib.POP3(email.host, email.port or 110, timeout=timeout)
    try:
        if email.security == "starttls":
            conn.stls(context)
        conn.user(email.remote_username)
        conn.pass_(email.remote_password)
    except BaseException:
        conn.close()
        raise
    return conn
