"""IMAP, POP3 and SMTP sign-in with OAuth2 access tokens over the stdlib clients, and the checks
behind the "Test connection" button.

Login helpers take an open ``imaplib``/``poplib``/``smtplib`` connection, a user and a token, and
run one SASL exchange (OAUTHBEARER when the server offers it, XOAUTH2 otherwise):

- IMAP sends the initial response on the ``AUTHENTICATE`` line when the server advertises
  ``SASL-IR`` (RFC 4959: one round trip) and waits for the ``+`` continuation otherwise;
- POP3 always sends ``AUTH <mech>`` and the response on a second line (Microsoft needs two);
- SMTP sends ``AUTH <mech> <initial response>`` and expects 235.

An error challenge (base64 JSON, RFC 7628 §3.2.2) is acknowledged without the token: an empty
response for XOAUTH2, a single ``^A`` for OAUTHBEARER (RFC 7628 §3.2.3). The server's final reply
and the decoded challenge end up in :class:`~flask_mailoauth.errors.MailAuthenticationError`.
No token ever appears in an exception message or a check's detail.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import poplib
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

from .errors import (
    TOKEN_STATUSES,
    MailAuthenticationError,
    MailCommandRefused,
    MailConnectionError,
    MailOAuthError,
    SetupError,
    refusal_guidance,
)
from .i18n import LazyText, gettext, lazy_gettext
from .providers.base import MailServer, MailServers
from .sasl import ErrorChallenge, decode_error_challenge, oauthbearer, xoauth2
from .settings import MailboxSettings, ServerProtocol

#: the SASL mechanisms spoken here, in order of preference
MECHANISMS = ("OAUTHBEARER", "XOAUTH2")
#: seconds to wait for the network when the caller gives no timeout
DEFAULT_TIMEOUT = 30.0

# The answer to an error challenge: never the token again.
_ACKNOWLEDGEMENT = {"XOAUTH2": b"", "OAUTHBEARER": b"\x01"}
# Errors that mean the transport failed rather than the server saying no.
_TRANSPORT_ERRORS = (OSError, imaplib.IMAP4.abort, poplib.error_proto)
# Known transport failures, most specific first: (cause, what happened, what to do). What
# happened has the placeholders protocol, host, port and error (the exception).
_NETWORK_FAILURES: tuple[tuple[type[BaseException], LazyText, LazyText], ...] = (
    (
        ssl.SSLCertVerificationError,
        lazy_gettext(
            "Could not talk to the %(protocol)s server %(host)s:%(port)s: its TLS certificate "
            "could not be verified (%(error)s)."
        ),
        lazy_gettext(
            "Check the host name is the one on the server's certificate and that the "
            "certificate is valid and trusted."
        ),
    ),
    (
        ssl.SSLError,
        lazy_gettext(
            "Could not talk to the %(protocol)s server %(host)s:%(port)s: the TLS handshake "
            "failed (%(error)s)."
        ),
        lazy_gettext(
            "Check the security setting matches the port: SSL for 993/995/465, STARTTLS for "
            "143/110/587."
        ),
    ),
    (
        socket.gaierror,
        lazy_gettext(
            "Could not talk to the %(protocol)s server %(host)s:%(port)s: its host name could "
            "not be resolved (%(error)s)."
        ),
        lazy_gettext("Check the host name."),
    ),
    (
        ConnectionRefusedError,
        lazy_gettext(
            "Could not talk to the %(protocol)s server %(host)s:%(port)s: it refused the "
            "connection (%(error)s)."
        ),
        lazy_gettext("Check the host and port, and that the mail server is running."),
    ),
    (
        TimeoutError,
        lazy_gettext(
            "Could not talk to the %(protocol)s server %(host)s:%(port)s: it did not answer in "
            "time (%(error)s)."
        ),
        lazy_gettext(
            "Check the host and port, and that no firewall blocks the helpdesk's outgoing "
            "connections to it."
        ),
    ),
)
SEND_AS_MISSING = lazy_gettext("The account lacks Send As permission on this address.")

T = TypeVar("T")
# A server's answer to one client line: True accepted, False refused, None a continuation.
_Reply = tuple[bool | None, bytes]


def _connection_error(
    protocol: str, host: str, port: int, exc: BaseException
) -> MailConnectionError:
    """Turn a transport exception into a readable error saying where and what went wrong."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    where = {"protocol": protocol, "host": host, "port": port}
    for kind, what, guidance in _NETWORK_FAILURES:
        found = next((c for c in chain if isinstance(c, kind)), None)
        if found is not None:
            return MailConnectionError(
                str(what) % {**where, "error": found},
                protocol=protocol,
                host=host,
                port=port,
                guidance=str(guidance),
            )
    return MailConnectionError(
        gettext(
            "Could not talk to the %(protocol)s server %(host)s:%(port)s: %(error)s.",
            **where,
            error=exc,
        ),
        protocol=protocol,
        host=host,
        port=port,
    )


@contextlib.contextmanager
def _transport(protocol: str, host: str, port: int) -> Iterator[None]:
    """Raise transport failures inside the block as :class:`MailConnectionError`."""
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise _connection_error(protocol, host, port, exc) from exc


# --- the SASL exchange, shared by the three protocols ---------------------------------------


class _Conversation:
    """One SASL exchange: the client's answer to each server continuation, and how it ended."""

    def __init__(
        self, protocol: str, mechanism: str, initial: bytes, *, inline: bool, token: str
    ) -> None:
        self.protocol = protocol
        self.mechanism = mechanism
        encoded = base64.b64encode(initial)
        #: the initial response sent on the command line (SASL-IR), or None
        self.inline = encoded if inline else None
        self._pending = None if inline else encoded
        #: whether the token has gone to the server (on the command line, or after a "+")
        self.sent = inline
        self._token = token
        self._cancelled = False
        self.challenge: ErrorChallenge | None = None
        self.reply = ""

    def command(self, verb: bytes) -> bytes:
        """The line that opens the exchange, carrying the initial response when inline."""
        return b" ".join(p for p in (verb, self.mechanism.encode(), self.inline) if p)

    def answer(self, continuation: bytes | None) -> bytes:
        """The initial response, then an acknowledgement of the error challenge, then a cancel."""
        if self._pending is not None:
            line, self._pending = self._pending, None
            self.sent = True
            return line
        if self.challenge is None:
            self.challenge = decode_error_challenge(continuation or b"")
            return base64.b64encode(_ACKNOWLEDGEMENT[self.mechanism])
        if not self._cancelled:
            self._cancelled = True
            return b"*"
        raise self._refused(gettext("the server kept challenging after the exchange was cancelled"))

    def finish(
        self, accepted: bool, reply: bytes | str, *, about_token: bool = False
    ) -> _Conversation:
        """Record the server's final reply; raise :class:`MailAuthenticationError` on refusal.

        ``about_token``: the reply is the protocol's "credentials refused" (not a syntax error).
        """
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        self.reply = _redact(text.strip(), self._token)
        if not accepted:
            raise self._refused(self.reply, about_token=about_token)
        return self

    def _refused(self, reply: str, *, about_token: bool = False) -> MailAuthenticationError:
        challenged = self.challenge is None or self.challenge.status in TOKEN_STATUSES
        return MailAuthenticationError(
            self.protocol,
            self.mechanism,
            reply,
            self.challenge,
            token_refused=self.sent and about_token and challenged,
        )


def _redact(text: str, token: str) -> str:
    """``text`` with every occurrence of the token masked."""
    return text.replace(token, "[token]") if token else text


def _choose(requested: str | None, offered: Sequence[str]) -> str:
    """The mechanism to use: the caller's, else OAUTHBEARER when offered, else XOAUTH2."""
    if requested is not None:
        mechanism = requested.upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"Unsupported mechanism {requested!r}: use one of {MECHANISMS}.")
        return mechanism
    offered_upper = {m.upper() for m in offered}
    return next((m for m in MECHANISMS if m in offered_upper), "XOAUTH2")


def _conversation(
    protocol: str,
    offered: Sequence[str],
    requested: str | None,
    user: str,
    token: str,
    host: str,
    port: int,
    *,
    inline: bool,
) -> _Conversation:
    """Pick the mechanism and build its initial response."""
    mechanism = _choose(requested, offered)
    if mechanism == "OAUTHBEARER":
        initial = oauthbearer(user, token, host, port)
    else:
        initial = xoauth2(user, token)
    return _Conversation(protocol, mechanism, initial, inline=inline, token=token)


def _converse(
    conv: _Conversation, send: Callable[[bytes], _Reply], about_token: Callable[[bytes], bool]
) -> _Conversation:
    """Run a line-based exchange (POP3, SMTP) to its end; ``about_token(reply)`` tells a
    refused token from other refusals."""
    accepted, data = send(conv.command(b"AUTH"))
    while accepted is None:
        accepted, data = send(conv.answer(data))
    return conv.finish(accepted, data, about_token=about_token(data))


# --- IMAP -------------------------------------------------------------------------------------


def imap_login(conn: imaplib.IMAP4, user: str, token: str, *, mechanism: str | None = None) -> str:
    """Sign in to IMAP with an OAuth2 token (SASL-IR when offered); return the mechanism used."""
    return _imap_authenticate(conn, user, token, mechanism).mechanism


def _imap_authenticate(
    conn: imaplib.IMAP4, user: str, token: str, mechanism: str | None
) -> _Conversation:
    offered = [c[5:] for c in conn.capabilities if c.startswith("AUTH=")]
    conv = _conversation(
        "IMAP",
        offered,
        mechanism,
        user,
        token,
        conn.host,
        conn.port,
        inline="SASL-IR" in conn.capabilities,
    )
    conn.untagged_responses.pop("CAPABILITY", None)
    # imaplib calls a bound-method ``literal`` for every "+" continuation and sends what it returns.
    conn.literal = conv.answer  # type: ignore[assignment]  # typeshed knows only str literals
    with _transport("IMAP", conn.host, conn.port):
        try:
            typ, data = conn._simple_command("AUTHENTICATE", conv.mechanism, conv.inline)
        except conn.abort:
            raise
        except conn.error as exc:  # a tagged BAD
            typ, data = "BAD", [str(exc).encode()]
        finally:
            _forget_logged_line(conn, conv.inline)
    conv.finish(typ == "OK", data[-1] or b"", about_token=typ == "NO")
    conn.state = "AUTH"
    capabilities = conn.untagged_responses.pop("CAPABILITY", None)
    if capabilities:
        line = cast(bytes, capabilities[-1])  # a CAPABILITY response is one line, no literal
        conn.capabilities = tuple(line.decode("ascii", "replace").upper().split())
    return conv


def _forget_logged_line(conn: imaplib.IMAP4, secret: bytes | None) -> None:
    """Drop the AUTHENTICATE line from imaplib's in-memory command log (it holds the token)."""
    log = getattr(conn, "_cmd_log", None)
    if secret and log:
        for key in [k for k, (line, _when) in log.items() if secret.decode() in line]:
            log[key] = ("> [AUTHENTICATE line removed]", log[key][1])


# --- POP3 -------------------------------------------------------------------------------------


def pop3_login(
    conn: poplib.POP3,
    user: str,
    token: str,
    *,
    host: str | None = None,
    port: int | None = None,
    mechanism: str | None = None,
) -> str:
    """Sign in to POP3 with ``AUTH`` in two steps; return the mechanism used.

    ``host``/``port`` go into the OAUTHBEARER payload and default to the connection's.
    """
    return _pop3_authenticate(conn, user, token, host, port, mechanism).mechanism


def _pop3_authenticate(
    conn: poplib.POP3,
    user: str,
    token: str,
    host: str | None,
    port: int | None,
    mechanism: str | None,
) -> _Conversation:
    host, port = host or conn.host, port or conn.port
    with _transport("POP3", host, port):
        offered = () if mechanism else _pop3_capabilities(conn).get("SASL", ())
        conv = _conversation("POP3", offered, mechanism, user, token, host, port, inline=False)
        return _converse(conv, partial(_pop3_send, conn), _pop3_refused)


def _pop3_send(conn: poplib.POP3, line: bytes) -> _Reply:
    """Send one line; ``+OK`` accepts, ``+ ``/``+`` continues, anything else refuses."""
    # poplib's own line I/O: private, so typeshed leaves it out
    conn._putline(line)  # type: ignore[attr-defined]
    reply, _octets = conn._getline()  # type: ignore[attr-defined]
    if reply == b"+" or reply.startswith(b"+ "):
        return None, reply[2:]
    return reply.startswith(b"+OK"), reply


def _pop3_refused(reply: bytes) -> bool:
    """``-ERR`` refuses the credentials (POP3 has no separate syntax-error reply)."""
    return reply.startswith(b"-ERR")


def _pop3_capabilities(conn: poplib.POP3) -> dict[str, list[str]]:
    """The server's CAPA answer; empty when it does not support CAPA."""
    try:
        return conn.capa()
    except poplib.error_proto:
        return {}


# --- SMTP -------------------------------------------------------------------------------------


def smtp_login(
    conn: smtplib.SMTP,
    user: str,
    token: str,
    *,
    host: str | None = None,
    port: int | None = None,
    mechanism: str | None = None,
) -> str:
    """Sign in to SMTP with ``AUTH <mech> <initial response>``; return the mechanism used.

    ``host``/``port`` go into the OAUTHBEARER payload and default to the connection's.
    """
    return _smtp_authenticate(conn, user, token, host, port, mechanism).mechanism


def _smtp_authenticate(
    conn: smtplib.SMTP,
    user: str,
    token: str,
    host: str | None,
    port: int | None,
    mechanism: str | None,
) -> _Conversation:
    peer = conn.sock.getpeername() if conn.sock else ("", 0)
    # smtplib keeps the connected host name only privately, so typeshed leaves it out
    host, port = host or conn._host or peer[0], port or peer[1]  # type: ignore[attr-defined]
    with _transport("SMTP", host, port):
        conn.ehlo_or_helo_if_needed()
        offered = conn.esmtp_features.get("auth", "").split()
        conv = _conversation("SMTP", offered, mechanism, user, token, host, port, inline=True)
        return _converse(conv, partial(_smtp_send, conn), _smtp_refused)


def _smtp_send(conn: smtplib.SMTP, line: bytes) -> _Reply:
    """Send one line; 235 accepts, 334 continues, anything else refuses."""
    conn.send(line + b"\r\n")
    code, message = conn.getreply()
    if code == 334:
        return None, message
    return code == 235, b"%d %s" % (code, message)


def _smtp_refused(reply: bytes) -> bool:
    """535 refuses the credentials (RFC 4954), unless it names SMTP AUTH being disabled."""
    return reply.startswith(b"535") and b"5.7.139" not in reply


# --- opening connections ----------------------------------------------------------------------


def _open(
    protocol: str,
    server: MailServer,
    ssl_context: ssl.SSLContext | None,
    *,
    connect: Callable[[ssl.SSLContext | None], T],
    secure: Callable[[T, ssl.SSLContext | None], bool],
    close: Callable[[T], object],
) -> T:
    """Connect as ``server.security`` says: implicit TLS, required STARTTLS, or plaintext."""
    context = ssl_context or ssl.create_default_context()
    with _transport(protocol, server.host, server.port):
        conn = connect(context if server.security == "ssl" else None)
        try:
            if not secure(conn, context if server.security == "starttls" else None):
                raise MailConnectionError(
                    gettext(
                        "The %(protocol)s server %(host)s:%(port)s does not offer STARTTLS; "
                        "refusing to sign in without TLS.",
                        protocol=protocol,
                        host=server.host,
                        port=server.port,
                    ),
                    protocol=protocol,
                    host=server.host,
                    port=server.port,
                    guidance=gettext(
                        "Use SSL and its port, or have STARTTLS enabled on the server."
                    ),
                )
        except BaseException:
            with contextlib.suppress(Exception):
                close(conn)
            raise
    return conn


def open_imap(
    server: MailServer,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> imaplib.IMAP4:
    """An IMAP connection, TLS-protected and certificate-verified unless the server says none."""

    def connect(context: ssl.SSLContext | None) -> imaplib.IMAP4:
        if context is not None:
            return imaplib.IMAP4_SSL(server.host, server.port, ssl_context=context, timeout=timeout)
        return imaplib.IMAP4(server.host, server.port, timeout=timeout)

    return _open(
        "IMAP",
        server,
        ssl_context,
        connect=connect,
        secure=_imap_starttls,
        close=imaplib.IMAP4.shutdown,
    )


def _imap_starttls(conn: imaplib.IMAP4, context: ssl.SSLContext | None) -> bool:
    """Upgrade with STARTTLS when a context is given; False when the server does not offer it."""
    if context is None:
        return True
    if "STARTTLS" not in conn.capabilities:
        return False
    conn.starttls(context)
    return True


class _ClosingGreeting:
    """Closes the socket when the POP3 greeting fails (poplib leaves it open)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            for name in ("file", "sock"):
                resource = getattr(self, name, None)
                if resource is not None:
                    resource.close()
            raise


class _POP3(_ClosingGreeting, poplib.POP3):
    """``poplib.POP3`` that does not leak its socket on a failed greeting."""


class _POP3SSL(_ClosingGreeting, poplib.POP3_SSL):
    """``poplib.POP3_SSL`` that does not leak its socket on a failed greeting."""


def open_pop3(
    server: MailServer,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> poplib.POP3:
    """A POP3 connection, TLS-protected and certificate-verified unless the server says none."""

    def connect(context: ssl.SSLContext | None) -> poplib.POP3:
        if context is not None:
            return _POP3SSL(server.host, server.port, timeout=timeout, context=context)
        return _POP3(server.host, server.port, timeout=timeout)

    return _open(
        "POP3", server, ssl_context, connect=connect, secure=_pop3_stls, close=poplib.POP3.close
    )


def _pop3_stls(conn: poplib.POP3, context: ssl.SSLContext | None) -> bool:
    """Upgrade with STLS when a context is given; False when the server does not offer it."""
    if context is None:
        return True
    if "STLS" not in _pop3_capabilities(conn):
        return False
    conn.stls(context)
    return True


def open_smtp(
    server: MailServer,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
) -> smtplib.SMTP:
    """An SMTP connection after EHLO, TLS-protected and certificate-verified unless told none."""

    def connect(context: ssl.SSLContext | None) -> smtplib.SMTP:
        if context is not None:
            return smtplib.SMTP_SSL(
                server.host, server.port, local_hostname, timeout=timeout, context=context
            )
        return smtplib.SMTP(server.host, server.port, local_hostname, timeout=timeout)

    return _open(
        "SMTP",
        server,
        ssl_context,
        connect=connect,
        secure=_smtp_starttls,
        close=smtplib.SMTP.close,
    )


def _smtp_starttls(conn: smtplib.SMTP, context: ssl.SSLContext | None) -> bool:
    """EHLO, then STARTTLS and EHLO again when a context is given; False when not offered."""
    conn.ehlo_or_helo_if_needed()
    if context is None:
        return True
    if not conn.has_extn("starttls"):
        return False
    conn.starttls(context=context)
    conn.ehlo_or_helo_if_needed()
    return True


# --- connection checks ------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckStep:
    """One step of a connection check: how it went, how long it took, what the server said."""

    name: str
    ok: bool
    seconds: float
    detail: str
    guidance: str = ""


@dataclass
class CheckResult:
    """A protocol's connection check: every step run, up to the first failure."""

    protocol: str
    ok: bool
    steps: list[CheckStep] = field(default_factory=list)


class _StepFailed(Exception):
    """Ends a check at its first failed step (already recorded)."""


class _Check:
    """Runs the steps of one check, timing them and recording the outcome."""

    def __init__(self, protocol: str, server: MailServer) -> None:
        self.protocol = protocol
        self.server = server
        self.steps: list[CheckStep] = []
        self.token = ""

    def step(self, name: str, action: Callable[[], tuple[T, str]]) -> T:
        """Run ``action`` (returning a value and a detail) as the step ``name``."""
        start = time.perf_counter()
        try:
            value, detail = action()
        except Exception as exc:
            self._record(name, start, exc)
            raise _StepFailed from exc
        self.steps.append(
            CheckStep(name, True, time.perf_counter() - start, _redact(detail, self.token))
        )
        return value

    def _record(self, name: str, start: float, exc: Exception) -> None:
        if isinstance(exc, _TRANSPORT_ERRORS):
            exc = _connection_error(self.protocol, self.server.host, self.server.port, exc)
        detail = str(exc) if isinstance(exc, MailOAuthError) else f"{type(exc).__name__}: {exc}"
        guidance = str(getattr(exc, "guidance", ""))
        self.steps.append(
            CheckStep(
                name, False, time.perf_counter() - start, _redact(detail, self.token), guidance
            )
        )


def _detail_only(probe: Callable[[T], str], conn: T) -> tuple[None, str]:
    """A probe as a step: nothing to return but its detail."""
    return None, probe(conn)


def _run_check(
    protocol: str,
    server: MailServer,
    token: str | Callable[[], str],
    *,
    connect: Callable[[], T],
    greeting: Callable[[T], bytes],
    login: Callable[[T, str], _Conversation],
    probes: Sequence[tuple[str, Callable[[T], str]]],
    goodbye: Callable[[T], object],
    close: Callable[[T], object],
) -> CheckResult:
    """Connect, sign in and probe, one timed step each, stopping at the first failure."""
    check = _Check(protocol, server)
    conn: T | None = None
    try:
        if callable(token):
            check.token = check.step(
                gettext("token"), lambda: (token(), gettext("Access token obtained."))
            )
        else:
            check.token = token
        conn = check.step(gettext("connect"), lambda: _connected(server, connect(), greeting))
        check.step(gettext("sign in"), lambda: (None, _signed_in(login(conn, check.token))))
        for name, probe in probes:
            check.step(name, partial(_detail_only, probe, conn))
    except _StepFailed:
        pass
    finally:
        if conn is not None:
            _goodbye(conn, goodbye, close)
    return CheckResult(protocol, bool(check.steps) and all(s.ok for s in check.steps), check.steps)


def _connected(server: MailServer, conn: T, greeting: Callable[[T], bytes]) -> tuple[T, str]:
    """The connection and a detail naming the server, the security and the greeting."""
    sock = getattr(conn, "sock", None)
    security = sock.version() if isinstance(sock, ssl.SSLSocket) else gettext("no TLS")
    words = greeting(conn).decode("utf-8", "replace").strip()
    return conn, f"{server.host}:{server.port} ({security}): {words}"


def _signed_in(conv: _Conversation) -> str:
    return gettext("%(mechanism)s accepted: %(reply)s", mechanism=conv.mechanism, reply=conv.reply)


def _goodbye(conn: T, goodbye: Callable[[T], object], close: Callable[[T], object]) -> None:
    """Say goodbye politely (which closes the connection); close it directly if that fails."""
    try:
        goodbye(conn)
    except Exception:
        with contextlib.suppress(Exception):
            close(conn)


def check_imap(
    server: MailServer,
    user: str,
    token: str | Callable[[], str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    mechanism: str | None = None,
) -> CheckResult:
    """Connect, sign in and open INBOX read-only (Exchange can accept a login and refuse use)."""
    return _run_check(
        "IMAP",
        server,
        token,
        connect=partial(open_imap, server, timeout=timeout, ssl_context=ssl_context),
        greeting=lambda conn: conn.welcome,
        login=lambda conn, tok: _imap_authenticate(conn, user, tok, mechanism),
        probes=[(gettext("open INBOX"), _imap_inbox)],
        goodbye=imaplib.IMAP4.logout,
        close=imaplib.IMAP4.shutdown,
    )


def _imap_inbox(conn: imaplib.IMAP4) -> str:
    """EXAMINE INBOX (read-only SELECT); the detail is its message count."""
    typ, data = conn.select("INBOX", readonly=True)
    reply = (data[-1] or b"").decode("utf-8", "replace")
    if typ != "OK":
        raise MailCommandRefused(
            gettext("INBOX refused: %(status)s %(reply)s", status=typ, reply=reply),
            refusal_guidance("IMAP", reply, signed_in=True),
        )
    if not reply:
        return gettext("INBOX has an unknown number of messages.")
    return gettext("INBOX has %(count)s messages.", count=reply)


def check_pop3(
    server: MailServer,
    user: str,
    token: str | Callable[[], str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    mechanism: str | None = None,
) -> CheckResult:
    """Connect, sign in and STAT the maildrop."""
    return _run_check(
        "POP3",
        server,
        token,
        connect=partial(open_pop3, server, timeout=timeout, ssl_context=ssl_context),
        greeting=poplib.POP3.getwelcome,
        login=lambda conn, tok: _pop3_authenticate(conn, user, tok, None, None, mechanism),
        probes=[("STAT", _pop3_stat)],
        goodbye=poplib.POP3.quit,
        close=poplib.POP3.close,
    )


def _pop3_stat(conn: poplib.POP3) -> str:
    """STAT; the detail is the message count and size."""
    try:
        count, size = conn.stat()
    except poplib.error_proto as exc:
        reply = str(exc)
        raise MailCommandRefused(
            gettext("STAT refused: %(reply)s", reply=reply),
            refusal_guidance("POP3", reply, signed_in=True),
        ) from exc
    return gettext("%(count)s messages, %(size)s bytes.", count=count, size=size)


def check_smtp(
    server: MailServer,
    user: str,
    token: str | Callable[[], str],
    *,
    mail_from: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    mechanism: str | None = None,
    local_hostname: str | None = None,
) -> CheckResult:
    """Connect, EHLO, sign in and, given ``mail_from``, try it as sender without sending mail."""
    probes = [(gettext("sender"), partial(_smtp_sender, address=mail_from))] if mail_from else []
    return _run_check(
        "SMTP",
        server,
        token,
        connect=partial(
            open_smtp,
            server,
            timeout=timeout,
            ssl_context=ssl_context,
            local_hostname=local_hostname,
        ),
        greeting=lambda conn: (conn.ehlo_resp or conn.helo_resp or b"").split(b"\n")[0],
        login=lambda conn, tok: _smtp_authenticate(conn, user, tok, None, None, mechanism),
        probes=probes,
        goodbye=smtplib.SMTP.quit,
        close=smtplib.SMTP.close,
    )


def _smtp_sender(conn: smtplib.SMTP, *, address: str) -> str:
    """MAIL FROM and RCPT TO the address itself, then RSET: a Send As refusal shows, no mail goes.

    RCPT TO is needed because servers often delay sender checks to it (Postfix by default).
    """
    code, message = conn.mail(address)
    if code == 250:
        code, message = conn.rcpt(address)
    conn.rset()
    reply = f"{code} {message.decode('utf-8', 'replace')}"
    if code not in (250, 251):
        raise MailCommandRefused(
            gettext("Sender <%(address)s> refused: %(reply)s", address=address, reply=reply),
            _sender_guidance(code, reply),
        )
    return gettext("<%(address)s> accepted as sender: %(reply)s", address=address, reply=reply)


def _sender_guidance(code: int, reply: str) -> str:
    """Send As refusals (553, 5.7.1, 5.7.60) and the rest."""
    if code == 553 or "5.7.60" in reply or "5.7.1 " in reply:
        return str(SEND_AS_MISSING)
    return gettext("The mail server refused this sender address.")


def resolve_server(
    settings: MailboxSettings, protocol: ServerProtocol, defaults: MailServers | None
) -> MailServer:
    """The server for ``protocol`` (imap, pop3, smtp): the host's settings over the provider's.

    Each of host, port and security falls back on its own, so a host may set only the host.
    ``MailboxSettings.port`` is the port of the mailbox's own protocol only.
    """
    prefix = "smtp_" if protocol == "smtp" else ""
    fallback: MailServer | None = getattr(defaults, protocol, None) if defaults else None
    host = getattr(settings, f"{prefix}host") or (fallback.host if fallback else None)
    if not host:
        # shown in the modal's connection test too: the admin may have left the host empty
        raise SetupError(
            gettext(
                "No %(protocol)s server for %(address)s: the provider has no default, so the "
                "mailbox loader must set MailboxSettings.%(field)s.",
                protocol=protocol.upper(),
                address=settings.address,
                field=prefix + "host",
            )
        )
    security = getattr(settings, f"{prefix}security") or (fallback.security if fallback else "ssl")
    port = (settings.smtp_port if protocol == "smtp" else settings.port_for(protocol)) or (
        fallback.port if fallback and fallback.host == host else _DEFAULT_PORTS[protocol][security]
    )
    return MailServer(host, port, security)


_DEFAULT_PORTS = {
    "imap": {"ssl": 993, "starttls": 143, "none": 143},
    "pop3": {"ssl": 995, "starttls": 110, "none": 110},
    "smtp": {"ssl": 465, "starttls": 587, "none": 25},
}


def select_folder(conn: imaplib.IMAP4, folder: str) -> None:
    """SELECT ``folder`` after login: Exchange may accept AUTHENTICATE and refuse every command."""
    typ, data = conn.select(folder)
    if typ != "OK":
        reply = (data[-1] or b"").decode("utf-8", "replace") if data else ""
        raise MailCommandRefused(
            gettext("SELECT %(folder)s refused: %(reply)s", folder=folder, reply=reply),
            refusal_guidance("IMAP", reply, signed_in=True),
        )
