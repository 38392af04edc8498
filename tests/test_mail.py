"""IMAP / POP3 / SMTP sign-in, connection openers and checks, against scripted servers."""

from __future__ import annotations

import base64
import imaplib
import json
import poplib
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import MailboxSettings
from flask_mailoauth.errors import (
    SMTP_AUTH_DISABLED,
    MailAuthenticationError,
    MailConnectionError,
    ReauthorizationRequired,
)
from flask_mailoauth.mail import (
    SEND_AS_MISSING,
    CheckResult,
    check_imap,
    check_pop3,
    check_smtp,
    imap_login,
    open_imap,
    open_pop3,
    open_smtp,
    pop3_login,
    smtp_login,
)
from flask_mailoauth.models import own_session
from flask_mailoauth.providers.base import MailServer
from flask_mailoauth.sasl import oauthbearer
from peers.tls import test_ca
from tests.mail_scripts import (
    IMAP_GUIDANCE,
    IMAP_LOGIN,
    IMAP_LOGOUT,
    POP_CAPA,
    TOKEN,
    USER,
    XOAUTH2,
    ScriptedSessions,
    at,
    b64_xoauth2,
    imap_server,
    pop3_login_script,
)
from tests.oauth_fakes import TokenEndpoint
from tests.scripted_server import ScriptedServer, Turn
from tests.stored import store_account

CHALLENGE = base64.b64encode(
    json.dumps(
        {"status": "401", "schemes": "bearer", "scope": "https://outlook.office.com/IMAP"}
    ).encode()
)
POP_GUIDANCE = IMAP_GUIDANCE.replace("IMAP", "POP")
#: a refusal at the sign-in step: no claim that the sign-in worked
IMAP_SIGNIN_GUIDANCE = (
    "The mail server refused the token at sign-in: check the IMAP scopes were consented, IMAP "
    "is enabled on the mailbox, and the account that signed in may use it."
)
POP_SIGNIN_GUIDANCE = IMAP_SIGNIN_GUIDANCE.replace("IMAP", "POP")
REVOKED_HINT = " If the grant was revoked, use Refresh now, or authorize again."
EHLO = re.compile(rb"ehlo helpdesk\.test")


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1: the harness's test CA."""
    ca = test_ca()
    return ca.server_context(), ca.client_context()


def sent_token(srv: ScriptedServer) -> int:
    """How many received lines carried the token (base64, in either mechanism's payload)."""
    return sum(1 for line in srv.received if TOKEN.encode() in _decoded(line))


def _decoded(line: bytes) -> bytes:
    word = line.split()[-1] if line.split() else b""
    try:
        return base64.b64decode(word, validate=True)
    except ValueError:
        return line


def assert_secret_free(*texts: object) -> None:
    for text in texts:
        assert TOKEN not in str(text)
        assert XOAUTH2.decode() not in str(text)


@contextmanager
def connected(
    opener: Callable[..., Any], srv: ScriptedServer, close: Callable[[Any], object], **kw: Any
) -> Iterator[Any]:
    conn = opener(at(srv), timeout=5, **kw)
    try:
        yield conn
    finally:
        with suppress(Exception):
            close(conn)


# --- IMAP -------------------------------------------------------------------------------------


def imap(srv: ScriptedServer, **kw: Any) -> Any:
    return connected(open_imap, srv, imaplib.IMAP4.shutdown, **kw)


def test_imap_sasl_ir_sends_the_response_on_the_authenticate_line() -> None:
    with (
        imap_server(
            b"AUTH=XOAUTH2 SASL-IR",
            Turn(
                b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2,
                [b"{tag} OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in"],
            ),
        ) as srv,
        imap(srv) as conn,
    ):
        assert imap_login(conn, USER, TOKEN) == "XOAUTH2"
        assert conn.state == "AUTH"
        assert conn.capabilities == ("IMAP4REV1", "IDLE", "MOVE")
        assert_secret_free(conn._cmd_log)
    assert len(srv.received[1:]) == 1


def test_imap_without_sasl_ir_uses_the_continuation() -> None:
    with (
        imap_server(
            b"AUTH=XOAUTH2",
            Turn(b"{tag} AUTHENTICATE XOAUTH2", [b"+ "]),
            Turn(XOAUTH2, [b"{tag} OK Logged in"]),
        ) as srv,
        imap(srv) as conn,
    ):
        assert imap_login(conn, USER, TOKEN) == "XOAUTH2"
        assert conn.state == "AUTH"
        assert "AUTH=XOAUTH2" in conn.capabilities  # no new capabilities: the old ones stay


@pytest.mark.parametrize(("capabilities", "round_trips"), [(b"SASL-IR", 1), (b"", 2)])
def test_imap_login_round_trips(capabilities: bytes, round_trips: int) -> None:
    """Each line the server reads during login is a round trip: the client awaits its answer."""
    if capabilities:
        turns = [Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"{tag} OK done"])]
    else:
        turns = [Turn(b"{tag} AUTHENTICATE XOAUTH2", [b"+ "]), Turn(XOAUTH2, [b"{tag} OK done"])]
    with imap_server(b"AUTH=XOAUTH2 " + capabilities, *turns) as srv, imap(srv) as conn:
        before = len(srv.received)
        imap_login(conn, USER, TOKEN)
        assert len(srv.received) - before == round_trips


@pytest.mark.parametrize("sasl_ir", [True, False])
def test_imap_error_challenge_is_answered_empty_never_with_the_token(sasl_ir: bool) -> None:
    if sasl_ir:
        start = [Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"+ " + CHALLENGE])]
    else:
        start = [
            Turn(b"{tag} AUTHENTICATE XOAUTH2", [b"+ "]),
            Turn(XOAUTH2, [b"+ " + CHALLENGE]),
        ]
    with (
        imap_server(
            b"AUTH=XOAUTH2" + (b" SASL-IR" if sasl_ir else b""),
            *start,
            Turn(b"", [b"{tag} NO AUTHENTICATE failed."]),
        ) as srv,
        imap(srv) as conn,
    ):
        with pytest.raises(MailAuthenticationError) as caught:
            imap_login(conn, USER, TOKEN)
        assert conn.state == "NONAUTH"
    error = caught.value
    assert (error.protocol, error.mechanism, error.reply) == (
        "IMAP",
        "XOAUTH2",
        "AUTHENTICATE failed.",
    )
    assert error.challenge is not None
    assert (error.challenge.status, error.challenge.scope) == (
        "401",
        "https://outlook.office.com/IMAP",
    )
    assert error.guidance == IMAP_SIGNIN_GUIDANCE + REVOKED_HINT
    assert str(error) == (
        "IMAP XOAUTH2 sign-in refused: AUTHENTICATE failed. The server refused the token "
        "(status 401, required scope: https://outlook.office.com/IMAP, schemes: bearer)."
    )
    assert srv.received[-1] == b""
    assert sent_token(srv) == 1
    assert_secret_free(error, error.args)


def test_imap_prefers_oauthbearer_and_acknowledges_its_challenge_with_ctrl_a() -> None:
    srv = imap_server(
        b"AUTH=XOAUTH2 AUTH=OAUTHBEARER SASL-IR",
        Turn(
            re.compile(rb"(?P<tag>\w+) AUTHENTICATE OAUTHBEARER (?P<ir>\S+)"), [b"+ " + CHALLENGE]
        ),
        Turn(b"AQ==", [b"{tag} NO [AUTHENTICATIONFAILED] Authentication failed."]),
    )
    with srv, imap(srv) as conn, pytest.raises(MailAuthenticationError) as caught:
        imap_login(conn, USER, TOKEN)
    payload = base64.b64decode(srv.received[1].split()[-1])
    assert payload == oauthbearer(USER, TOKEN, "127.0.0.1", srv.port)
    assert caught.value.mechanism == "OAUTHBEARER"
    assert caught.value.reply == "[AUTHENTICATIONFAILED] Authentication failed."


def test_imap_mechanism_override() -> None:
    with (
        imap_server(
            b"AUTH=OAUTHBEARER SASL-IR",
            Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"{tag} OK done"]),
        ) as srv,
        imap(srv) as conn,
    ):
        assert imap_login(conn, USER, TOKEN, mechanism="xoauth2") == "XOAUTH2"


def test_imap_unknown_mechanism_is_refused_before_sending_anything() -> None:
    with (
        imap_server(b"SASL-IR") as srv,
        imap(srv) as conn,
        pytest.raises(ValueError, match="PLAIN"),
    ):
        imap_login(conn, USER, TOKEN, mechanism="PLAIN")
    assert len(srv.received) == 1


def test_imap_bad_reply_is_an_authentication_error() -> None:
    with (
        imap_server(
            b"SASL-IR",
            Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"{tag} BAD Unsupported mechanism"]),
        ) as srv,
        imap(srv) as conn,
        pytest.raises(MailAuthenticationError, match="Unsupported mechanism") as caught,
    ):
        imap_login(conn, USER, TOKEN)
    assert caught.value.challenge is None


def test_imap_server_that_keeps_challenging_is_cancelled() -> None:
    with (
        imap_server(
            b"SASL-IR",
            Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"+ " + CHALLENGE]),
            Turn(b"", [b"+ " + CHALLENGE]),
            Turn(b"*", [b"{tag} BAD Cancelled"]),
        ) as srv,
        imap(srv) as conn,
        pytest.raises(MailAuthenticationError, match="Cancelled"),
    ):
        imap_login(conn, USER, TOKEN)
    assert sent_token(srv) == 1


def test_imap_server_that_challenges_after_the_cancel_is_refused() -> None:
    with (
        imap_server(
            b"SASL-IR",
            Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"+ " + CHALLENGE]),
            Turn(b"", [b"+ " + CHALLENGE]),
            Turn(b"*", [b"+ more?"]),
        ) as srv,
        imap(srv) as conn,
        pytest.raises(MailAuthenticationError, match="kept challenging") as caught,
    ):
        imap_login(conn, USER, TOKEN)
    assert caught.value.challenge is not None


def test_imap_connection_lost_during_login_is_a_connection_error() -> None:
    with (
        imap_server(
            b"SASL-IR", Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, hang_up=True)
        ) as srv,
        imap(srv) as conn,
        pytest.raises(MailConnectionError, match=f"IMAP server 127.0.0.1:{srv.port}"),
    ):
        imap_login(conn, USER, TOKEN)


# --- POP3 -------------------------------------------------------------------------------------


def pop3_server(*turns: Turn, **kw: Any) -> ScriptedServer:
    return ScriptedServer([b"+OK POP3 ready"], turns, **kw)


def pop3(srv: ScriptedServer, **kw: Any) -> Any:
    return connected(open_pop3, srv, poplib.POP3.close, **kw)


@pytest.mark.parametrize("prompt", [b"+ ", b"+"])
def test_pop3_auth_waits_for_the_continuation_then_sends_the_response(prompt: bytes) -> None:
    with (
        pop3_server(
            POP_CAPA,
            Turn(b"AUTH XOAUTH2", [prompt]),
            Turn(XOAUTH2, [b"+OK Logged in."]),
        ) as srv,
        pop3(srv) as conn,
    ):
        assert pop3_login(conn, USER, TOKEN) == "XOAUTH2"


def test_pop3_ok_straight_away_is_success_not_a_challenge() -> None:
    with (
        pop3_server(POP_CAPA, Turn(b"AUTH XOAUTH2", [b"+OK Welcome."])) as srv,
        pop3(srv) as conn,
    ):
        assert pop3_login(conn, USER, TOKEN) == "XOAUTH2"
    assert sent_token(srv) == 0


def test_pop3_error_challenge_gets_an_empty_line_then_err() -> None:
    with (
        pop3_server(
            POP_CAPA,
            Turn(b"AUTH XOAUTH2", [b"+ "]),
            Turn(XOAUTH2, [b"+ " + CHALLENGE]),
            Turn(b"", [b"-ERR Authentication failed."]),
        ) as srv,
        pop3(srv) as conn,
        pytest.raises(MailAuthenticationError) as caught,
    ):
        pop3_login(conn, USER, TOKEN)
    error = caught.value
    assert (error.protocol, error.reply) == ("POP3", "-ERR Authentication failed.")
    assert error.challenge is not None
    assert error.challenge.status == "401"
    assert error.guidance == POP_SIGNIN_GUIDANCE + REVOKED_HINT
    assert sent_token(srv) == 1
    assert_secret_free(error)


def test_pop3_err_at_once() -> None:
    with (
        pop3_server(POP_CAPA, Turn(b"AUTH XOAUTH2", [b"-ERR Unsupported mechanism"])) as srv,
        pop3(srv) as conn,
        pytest.raises(MailAuthenticationError, match="Unsupported mechanism") as caught,
    ):
        pop3_login(conn, USER, TOKEN)
    assert caught.value.challenge is None
    assert sent_token(srv) == 0


def test_pop3_uses_oauthbearer_when_capa_offers_it() -> None:
    capa = Turn(b"CAPA", [b"+OK", b"SASL PLAIN XOAUTH2 OAUTHBEARER", b"."])
    with (
        pop3_server(
            capa,
            Turn(b"AUTH OAUTHBEARER", [b"+ "]),
            Turn(re.compile(rb"\S+"), [b"+OK"]),
        ) as srv,
        pop3(srv) as conn,
    ):
        assert pop3_login(conn, USER, TOKEN, host="mail.example.test", port=995) == "OAUTHBEARER"
    assert base64.b64decode(srv.received[-1]) == oauthbearer(USER, TOKEN, "mail.example.test", 995)


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([Turn(b"CAPA", [b"-ERR unknown command"])], "XOAUTH2"),  # no CAPA: XOAUTH2
        ([], "OAUTHBEARER"),  # an explicit mechanism skips CAPA
    ],
)
def test_pop3_mechanism_without_capa(turns: list[Turn], expected: str) -> None:
    with (
        pop3_server(
            *turns,
            Turn(b"AUTH " + expected.encode(), [b"+ "]),
            Turn(re.compile(rb"\S+"), [b"+OK"]),
        ) as srv,
        pop3(srv) as conn,
    ):
        assert pop3_login(conn, USER, TOKEN, mechanism=None if turns else expected) == expected


# --- SMTP -------------------------------------------------------------------------------------


def smtp_server(auth: bytes, *turns: Turn, **kw: Any) -> ScriptedServer:
    return ScriptedServer(
        [b"220 mail.example.test ESMTP"],
        [Turn(EHLO, [b"250-mail.example.test", b"250 AUTH " + auth]), *turns],
        **kw,
    )


def smtp(srv: ScriptedServer, **kw: Any) -> Any:
    return connected(open_smtp, srv, smtplib.SMTP.close, local_hostname="helpdesk.test", **kw)


def test_smtp_sends_the_initial_response_and_expects_235() -> None:
    with (
        smtp_server(
            b"LOGIN XOAUTH2",
            Turn(b"AUTH XOAUTH2 " + XOAUTH2, [b"235 2.7.0 Authentication successful"]),
        ) as srv,
        smtp(srv) as conn,
    ):
        assert smtp_login(conn, USER, TOKEN) == "XOAUTH2"


def test_smtp_error_challenge_gets_an_empty_line_then_535() -> None:
    with (
        smtp_server(
            b"XOAUTH2",
            Turn(b"AUTH XOAUTH2 " + XOAUTH2, [b"334 " + CHALLENGE]),
            Turn(b"", [b"535 5.7.3 Authentication unsuccessful"]),
        ) as srv,
        smtp(srv) as conn,
        pytest.raises(MailAuthenticationError) as caught,
    ):
        smtp_login(conn, USER, TOKEN)
    error = caught.value
    assert (error.protocol, error.reply) == ("SMTP", "535 5.7.3 Authentication unsuccessful")
    assert error.challenge is not None
    assert error.challenge.schemes == "bearer"
    assert error.guidance == SMTP_AUTH_DISABLED
    assert sent_token(srv) == 1


def test_smtp_other_refusal_guidance() -> None:
    with (
        smtp_server(
            b"XOAUTH2",
            Turn(b"AUTH XOAUTH2 " + XOAUTH2, [b"535 5.7.8 Error: authentication failed"]),
        ) as srv,
        smtp(srv) as conn,
        pytest.raises(MailAuthenticationError) as caught,
    ):
        smtp_login(conn, USER, TOKEN)
    assert "SMTP send scope" in caught.value.guidance


@pytest.mark.parametrize(
    ("auth", "mechanism", "expected"),
    [
        (b"PLAIN OAUTHBEARER XOAUTH2", None, "OAUTHBEARER"),
        (b"PLAIN XOAUTH2", None, "XOAUTH2"),
        (b"PLAIN", None, "XOAUTH2"),
        (b"OAUTHBEARER", "XOAUTH2", "XOAUTH2"),
    ],
)
def test_smtp_mechanism_selection(auth: bytes, mechanism: str | None, expected: str) -> None:
    command = re.compile(b"AUTH " + expected.encode() + rb" \S+")
    with smtp_server(auth, Turn(command, [b"235 OK"])) as srv, smtp(srv) as conn:
        assert smtp_login(conn, USER, TOKEN, mechanism=mechanism) == expected
    if expected == "OAUTHBEARER":
        payload = base64.b64decode(srv.received[-1].split()[-1])
        assert payload == oauthbearer(USER, TOKEN, "127.0.0.1", srv.port)


# --- openers ----------------------------------------------------------------------------------


def test_open_imap_starttls_succeeds(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls
    srv = imap_server(
        b"STARTTLS",
        Turn(b"{tag} STARTTLS", [b"{tag} OK Begin TLS"], starttls=True),
        Turn(b"{tag} CAPABILITY", [b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2", b"{tag} OK done"]),
        tls=server_tls,
    )
    with srv:
        conn = open_imap(at(srv, "starttls"), timeout=5, ssl_context=client_tls)
        try:
            assert isinstance(conn.sock, ssl.SSLSocket)
            assert "AUTH=XOAUTH2" in conn.capabilities
        finally:
            conn.shutdown()


@pytest.mark.parametrize(
    ("opener", "greeting", "turns"),
    [
        (
            open_imap,
            [b"* OK ready"],
            [Turn(b"{tag} CAPABILITY", [b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2", b"{tag} OK done"])],
        ),
        (open_pop3, [b"+OK ready"], [Turn(b"CAPA", [b"+OK", b"SASL XOAUTH2", b"."])]),
        (
            open_smtp,
            [b"220 ready"],
            [Turn(re.compile(rb"ehlo \S+"), [b"250-mail", b"250 AUTH XOAUTH2"])],
        ),
    ],
    ids=["imap", "pop3", "smtp"],
)
def test_starttls_refused_when_not_offered(
    opener: Callable[..., Any], greeting: list[bytes], turns: list[Turn]
) -> None:
    with (
        ScriptedServer(greeting, turns) as srv,
        pytest.raises(MailConnectionError, match="does not offer STARTTLS") as caught,
    ):
        opener(at(srv, "starttls"), timeout=5)
    assert "refusing to sign in without TLS" in str(caught.value)
    assert caught.value.guidance
    assert len(srv.received) == len(turns)  # nothing more was sent: the client hung up


def test_open_pop3_stls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls
    capa = Turn(b"CAPA", [b"+OK", b"STLS", b"."])
    srv = pop3_server(capa, capa, Turn(b"STLS", [b"+OK Begin TLS"], starttls=True), tls=server_tls)
    with srv:
        conn = open_pop3(at(srv, "starttls"), timeout=5, ssl_context=client_tls)
        try:
            assert isinstance(conn.sock, ssl.SSLSocket)
        finally:
            conn.close()


def test_open_smtp_starttls_says_ehlo_again(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls
    srv = ScriptedServer(
        [b"220 ready"],
        [
            Turn(EHLO, [b"250-mail", b"250 STARTTLS"]),
            Turn(b"STARTTLS", [b"220 Go ahead"], starttls=True),
            Turn(EHLO, [b"250-mail", b"250 AUTH XOAUTH2"]),
        ],
        tls=server_tls,
    )
    with srv:
        conn = open_smtp(
            at(srv, "starttls"), timeout=5, ssl_context=client_tls, local_hostname="helpdesk.test"
        )
        try:
            assert isinstance(conn.sock, ssl.SSLSocket)
            assert conn.esmtp_features["auth"].split() == ["XOAUTH2"]
        finally:
            conn.close()


@pytest.mark.parametrize(
    ("opener", "greeting"),
    [(open_imap, b"* OK ready"), (open_pop3, b"+OK ready"), (open_smtp, b"220 ready")],
    ids=["imap", "pop3", "smtp"],
)
def test_implicit_tls_verifies_the_certificate(
    opener: Callable[..., Any], greeting: bytes, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, _client_tls = tls
    with (
        ScriptedServer([greeting], tls=server_tls, implicit_tls=True) as srv,
        pytest.raises(MailConnectionError) as caught,
    ):
        opener(at(srv, "ssl"), timeout=5)  # the default context does not trust the test CA
    assert "TLS certificate could not be verified" in str(caught.value)
    assert "certificate" in caught.value.guidance
    assert isinstance(srv.failure, ssl.SSLError)


def test_implicit_tls_with_a_trusted_certificate(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_tls, client_tls = tls
    with ScriptedServer([b"+OK ready"], tls=server_tls, implicit_tls=True) as srv:
        conn = open_pop3(at(srv, "ssl"), timeout=5, ssl_context=client_tls)
        try:
            assert conn.sock.version().startswith("TLS")
        finally:
            conn.close()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@pytest.mark.parametrize("opener", [open_imap, open_pop3, open_smtp], ids=["imap", "pop3", "smtp"])
def test_connection_refused_says_so(opener: Callable[..., Any]) -> None:
    port = _closed_port()
    with pytest.raises(MailConnectionError, match="refused the connection") as caught:
        opener(MailServer("127.0.0.1", port, "ssl"), timeout=5)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", port)
    assert "host and port" in caught.value.guidance


@pytest.mark.parametrize("opener", [open_imap, open_pop3, open_smtp], ids=["imap", "pop3", "smtp"])
def test_silent_server_times_out(opener: Callable[..., Any]) -> None:
    with (
        ScriptedServer([]) as srv,
        pytest.raises(MailConnectionError, match="did not answer in time") as caught,
    ):
        opener(at(srv), timeout=0.3)
    assert "firewall" in caught.value.guidance


# --- checks -----------------------------------------------------------------------------------


def steps(result: CheckResult) -> list[tuple[str, bool]]:
    return [(s.name, s.ok) for s in result.steps]


def assert_result_secret_free(result: CheckResult) -> None:
    assert_secret_free(repr(result))
    assert all(s.seconds >= 0 for s in result.steps)


def test_check_imap_all_good() -> None:
    with imap_server(
        b"AUTH=XOAUTH2 SASL-IR",
        IMAP_LOGIN,
        Turn(b"{tag} EXAMINE INBOX", [b"* 3 EXISTS", b"{tag} OK [READ-ONLY] done"]),
        IMAP_LOGOUT,
    ) as srv:
        result = check_imap(at(srv), USER, TOKEN, timeout=5)
    assert result.ok
    assert result.protocol == "IMAP"
    assert steps(result) == [("connect", True), ("sign in", True), ("open INBOX", True)]
    connect, sign_in, inbox = result.steps
    assert connect.detail == f"127.0.0.1:{srv.port} (no TLS): * OK IMAP4rev1 ready"
    assert sign_in.detail == "XOAUTH2 accepted: Logged in"
    assert inbox.detail == "INBOX has 3 messages."
    assert_result_secret_free(result)


def test_check_imap_login_accepted_but_inbox_refused() -> None:
    with imap_server(
        b"AUTH=XOAUTH2 SASL-IR",
        IMAP_LOGIN,
        Turn(b"{tag} EXAMINE INBOX", [b"{tag} NO User is authenticated but not connected."]),
        IMAP_LOGOUT,
    ) as srv:
        result = check_imap(at(srv), USER, TOKEN, timeout=5)
    assert not result.ok
    assert steps(result) == [("connect", True), ("sign in", True), ("open INBOX", False)]
    assert "User is authenticated but not connected." in result.steps[-1].detail
    assert result.steps[-1].guidance == IMAP_GUIDANCE


def test_check_imap_connection_lost_after_login() -> None:
    with imap_server(
        b"AUTH=XOAUTH2 SASL-IR", IMAP_LOGIN, Turn(b"{tag} EXAMINE INBOX", hang_up=True)
    ) as srv:
        result = check_imap(at(srv), USER, TOKEN, timeout=5)
    assert steps(result) == [("connect", True), ("sign in", True), ("open INBOX", False)]
    assert result.steps[-1].detail.startswith(
        f"Could not talk to the IMAP server 127.0.0.1:{srv.port}"
    )


def test_check_imap_authenticate_failed() -> None:
    with imap_server(
        b"AUTH=XOAUTH2 SASL-IR",
        Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"{tag} NO AUTHENTICATE failed."]),
        IMAP_LOGOUT,
    ) as srv:
        result = check_imap(at(srv), USER, TOKEN, timeout=5)
    assert steps(result) == [("connect", True), ("sign in", False)]
    assert result.steps[-1].detail == "IMAP XOAUTH2 sign-in refused: AUTHENTICATE failed."
    # found under "✘ sign in": the guidance must not say the sign-in worked
    assert result.steps[-1].guidance == IMAP_SIGNIN_GUIDANCE
    assert "sign-in worked" not in result.steps[-1].guidance
    assert_result_secret_free(result)


def test_check_imap_over_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls
    with imap_server(
        b"AUTH=XOAUTH2 SASL-IR",
        IMAP_LOGIN,
        Turn(b"{tag} EXAMINE INBOX", [b"* 0 EXISTS", b"{tag} OK done"]),
        tls=server_tls,
        implicit_tls=True,
    ) as srv:
        result = check_imap(at(srv, "ssl"), USER, TOKEN, timeout=5, ssl_context=client_tls)
    assert result.ok, result
    assert re.search(r"\(TLSv1\.[23]\)", result.steps[0].detail)
    assert srv.received[-1] == b"LOGOUT" or srv.received[-1].endswith(b" LOGOUT")


def test_check_pop3_all_good_and_stat_refused() -> None:
    login = [
        POP_CAPA,
        Turn(b"AUTH XOAUTH2", [b"+ "]),
        Turn(XOAUTH2, [b"+OK Logged in."]),
    ]
    with pop3_server(*login, Turn(b"STAT", [b"+OK 2 320"]), Turn(b"QUIT", [b"+OK Bye"])) as srv:
        good = check_pop3(at(srv), USER, TOKEN, timeout=5)
    assert good.ok
    assert steps(good) == [("connect", True), ("sign in", True), ("STAT", True)]
    assert good.steps[1].detail == "XOAUTH2 accepted: +OK Logged in."
    assert good.steps[2].detail == "2 messages, 320 bytes."

    with pop3_server(*login, Turn(b"STAT", [b"-ERR Mailbox locked"])) as srv:
        bad = check_pop3(at(srv), USER, TOKEN, timeout=5)
    assert steps(bad) == [("connect", True), ("sign in", True), ("STAT", False)]
    assert "Mailbox locked" in bad.steps[-1].detail
    assert bad.steps[-1].guidance == POP_GUIDANCE


def test_check_pop3_authentication_failed() -> None:
    with pop3_server(
        POP_CAPA,
        Turn(b"AUTH XOAUTH2", [b"+ "]),
        Turn(XOAUTH2, [b"-ERR [AUTH] Authentication failed."]),
    ) as srv:
        result = check_pop3(at(srv), USER, TOKEN, timeout=5)
    assert steps(result) == [("connect", True), ("sign in", False)]
    assert result.steps[-1].guidance == POP_SIGNIN_GUIDANCE
    assert_result_secret_free(result)


SMTP_LOGIN = Turn(b"AUTH XOAUTH2 " + XOAUTH2, [b"235 2.7.0 Accepted"])
SMTP_QUIT = Turn(b"quit", [b"221 Bye"])


def test_check_smtp_535_5_7_3_means_smtp_auth_disabled() -> None:
    with smtp_server(
        b"XOAUTH2",
        Turn(b"AUTH XOAUTH2 " + XOAUTH2, [b"535 5.7.3 Authentication unsuccessful"]),
        SMTP_QUIT,
    ) as srv:
        result = check_smtp(at(srv), USER, TOKEN, timeout=5, local_hostname="helpdesk.test")
    assert steps(result) == [("connect", True), ("sign in", False)]
    assert result.steps[0].detail == f"127.0.0.1:{srv.port} (no TLS): mail.example.test"
    assert result.steps[-1].guidance == SMTP_AUTH_DISABLED
    assert_result_secret_free(result)


@pytest.mark.parametrize(
    ("mail_reply", "rcpt_reply"),
    [
        (
            b"250 2.1.0 Ok",
            b"553 5.7.1 <x@example.test>: Sender address rejected: not owned by user",
        ),
        (b"550 5.7.60 SMTP; Client does not have permissions to send as this sender", None),
    ],
    ids=["postfix-553-at-rcpt", "microsoft-5.7.60-at-mail"],
)
def test_check_smtp_send_as_refused(mail_reply: bytes, rcpt_reply: bytes | None) -> None:
    turns = [SMTP_LOGIN, Turn(b"mail FROM:<x@example.test>", [mail_reply])]
    if rcpt_reply:
        turns.append(Turn(b"rcpt TO:<x@example.test>", [rcpt_reply]))
    turns += [Turn(b"rset", [b"250 Ok"]), SMTP_QUIT]
    with smtp_server(b"XOAUTH2", *turns) as srv:
        result = check_smtp(
            at(srv),
            USER,
            TOKEN,
            mail_from="x@example.test",
            timeout=5,
            local_hostname="helpdesk.test",
        )
    assert steps(result) == [("connect", True), ("sign in", True), ("sender", False)]
    assert result.steps[-1].guidance == SEND_AS_MISSING
    assert "Sender <x@example.test> refused" in result.steps[-1].detail


def test_check_smtp_other_sender_refusal() -> None:
    with smtp_server(
        b"XOAUTH2",
        SMTP_LOGIN,
        Turn(b"mail FROM:<x@example.test>", [b"451 4.3.0 Try again later"]),
        Turn(b"rset", [b"250 Ok"]),
        SMTP_QUIT,
    ) as srv:
        result = check_smtp(
            at(srv),
            USER,
            TOKEN,
            mail_from="x@example.test",
            timeout=5,
            local_hostname="helpdesk.test",
        )
    assert result.steps[-1].guidance == "The mail server refused this sender address."


def test_check_smtp_sender_accepted_sends_no_mail() -> None:
    with smtp_server(
        b"XOAUTH2",
        SMTP_LOGIN,
        Turn(b"mail FROM:<x@example.test>", [b"250 Ok"]),
        Turn(b"rcpt TO:<x@example.test>", [b"250 Ok"]),
        Turn(b"rset", [b"250 Ok"]),
        SMTP_QUIT,
    ) as srv:
        result = check_smtp(
            at(srv),
            USER,
            TOKEN,
            mail_from="x@example.test",
            timeout=5,
            local_hostname="helpdesk.test",
        )
    assert result.ok
    assert result.steps[-1].detail == "<x@example.test> accepted as sender: 250 Ok"
    assert not any(line.lower().startswith(b"data") for line in srv.received)


def test_check_with_a_token_source() -> None:
    with smtp_server(b"XOAUTH2", SMTP_LOGIN, SMTP_QUIT) as srv:
        result = check_smtp(at(srv), USER, lambda: TOKEN, timeout=5, local_hostname="helpdesk.test")
    assert steps(result) == [("token", True), ("connect", True), ("sign in", True)]
    assert_result_secret_free(result)


def test_check_stops_when_no_token_can_be_had() -> None:
    def token() -> str:
        raise ReauthorizationRequired("The grant was revoked: authorize the mailbox again.")

    result = check_imap(MailServer("127.0.0.1", _closed_port(), "ssl"), USER, token)
    assert not result.ok
    assert [(s.name, s.ok, s.detail) for s in result.steps] == [
        ("token", False, "The grant was revoked: authorize the mailbox again.")
    ]


def test_check_reports_an_unreachable_server() -> None:
    port = _closed_port()
    result = check_pop3(MailServer("127.0.0.1", port, "ssl"), USER, TOKEN, timeout=5)
    assert steps(result) == [("connect", False)]
    assert f"POP3 server 127.0.0.1:{port}: it refused the connection" in result.steps[0].detail
    assert "host and port" in result.steps[0].guidance


def test_check_reports_an_untrusted_certificate(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, _client_tls = tls
    with ScriptedServer([b"220 ready"], tls=server_tls, implicit_tls=True) as srv:
        result = check_smtp(at(srv, "ssl"), USER, TOKEN, timeout=5)
    assert steps(result) == [("connect", False)]
    assert "TLS certificate could not be verified" in result.steps[0].detail


# --- connect_*: a refused token is refreshed once ---------------------------------------------


IMAP_CAPA = Turn(
    b"{tag} CAPABILITY", [b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR", b"{tag} OK done"]
)
IMAP_SELECT = Turn(b"{tag} SELECT INBOX", [b"* 0 EXISTS", b"{tag} OK [READ-WRITE] done"])
SMTP_EHLO = Turn(re.compile(rb"ehlo \S+"), [b"250-mail.example.test", b"250 AUTH XOAUTH2"])


def imap_refused(token: str, *refusal: Turn) -> list[Turn]:
    """A script: the AUTHENTICATE line with ``token`` answered by an error challenge, then
    ``refusal`` (default: Dovecot's NO)."""
    return [
        IMAP_CAPA,
        Turn(b"{tag} AUTHENTICATE XOAUTH2 " + b64_xoauth2(token), [b"+ " + CHALLENGE]),
        *(refusal or [Turn(b"", [b"{tag} NO [AUTHENTICATIONFAILED] Authentication failed."])]),
    ]


def imap_accepted(token: str) -> list[Turn]:
    return [
        IMAP_CAPA,
        Turn(b"{tag} AUTHENTICATE XOAUTH2 " + b64_xoauth2(token), [b"{tag} OK Logged in"]),
        IMAP_SELECT,
        IMAP_LOGOUT,
    ]


def smtp_login_script(token: str, reply: bytes) -> list[Turn]:
    return [SMTP_EHLO, Turn(b"AUTH XOAUTH2 " + b64_xoauth2(token), [reply])]


@pytest.fixture
def mail_host(make_host: Callable[..., Any], db_url: str) -> Any:
    """A host with the authorized accounts support (mailbox) and support (smtp), token at-0,
    valid for an hour; a wrongly retried connection fails fast (2 s mail timeout)."""
    host = make_host(db_url=db_url, MAILOAUTH_MAIL_TIMEOUT=2)
    store_account(host)
    store_account(host, purpose="smtp")
    return host


@pytest.fixture
def idp() -> Iterator[TokenEndpoint]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield TokenEndpoint(mock)


def point(host: Any, srv: ScriptedServer, **settings: Any) -> None:
    """The mailbox support on ``srv`` (IMAP, POP3 or SMTP), in plaintext."""
    host.mailboxes["support"] = MailboxSettings(
        address=USER,
        host=srv.host,
        imap_port=srv.port,
        pop3_port=srv.port,
        security="none",
        smtp_host=srv.host,
        smtp_port=srv.port,
        smtp_security="none",
        **settings,
    )


def connect(host: Any, protocol: str) -> Any:
    """``connect_<protocol>("support")``, and the connection closed politely."""
    with host.app.app_context():
        conn = getattr(host.ext, f"connect_{protocol}")("support")
    {"imap": imaplib.IMAP4.logout, "pop3": poplib.POP3.quit, "smtp": smtplib.SMTP.quit}[protocol](
        conn
    )
    return conn


def refresh_tokens_sent(idp: TokenEndpoint) -> list[str]:
    return [call["refresh_token"][0] for call in idp.calls]


@pytest.mark.parametrize(
    ("protocol", "greeting", "first", "second"),
    [
        ("imap", b"* OK IMAP4rev1 ready", imap_refused("at-0"), imap_accepted("at-1")),
        (
            "pop3",
            b"+OK POP3 ready",
            pop3_login_script("at-0", b"-ERR [AUTH] Authentication failed."),
            [*pop3_login_script("at-1", b"+OK Logged in."), Turn(b"QUIT", [b"+OK Bye"])],
        ),
        (
            "smtp",
            b"220 mail.example.test ESMTP",
            smtp_login_script("at-0", b"535 5.7.8 Error: authentication failed"),
            [*smtp_login_script("at-1", b"235 2.7.0 Accepted"), Turn(b"quit", [b"221 Bye"])],
        ),
    ],
    ids=["imap-challenge-then-NO", "pop3-ERR", "smtp-535"],
)
def test_connect_refreshes_a_refused_token_once_and_signs_in_on_a_new_connection(
    mail_host: Any,
    idp: TokenEndpoint,
    protocol: str,
    greeting: bytes,
    first: list[Turn],
    second: list[Turn],
) -> None:
    """The database thinks at-0 valid for an hour; the server refuses it: one forced refresh,
    and the new token signs in on a second connection."""
    with ScriptedSessions([greeting], first, second) as srv:
        point(mail_host, srv)
        connect(mail_host, protocol)
    assert len(srv.sessions) == 2
    assert refresh_tokens_sent(idp) == ["rt-0"]
    purpose = "smtp" if protocol == "smtp" else "mailbox"
    stored = credential_of(mail_host, purpose)
    assert (stored.status, stored.failure_count) == ("active", 0)
    with mail_host.app.app_context():
        assert mail_host.ext.access_token("support", purpose) == "at-1"


def credential_of(host: Any, purpose: str) -> Any:
    st = host.app.extensions["mailoauth"]
    m = st.models
    with host.app.app_context(), own_session(st.db) as s:
        return s.scalars(
            sa.select(m.Credential).join(m.Account).where(m.Account.purpose == purpose)
        ).one()


@pytest.mark.parametrize(
    ("protocol", "greeting", "script"),
    [
        ("imap", b"* OK IMAP4rev1 ready", imap_refused),
        (
            "pop3",
            b"+OK POP3 ready",
            lambda token: pop3_login_script(token, b"-ERR [AUTH] Authentication failed."),
        ),
        (
            "smtp",
            b"220 mail.example.test ESMTP",
            lambda token: smtp_login_script(token, b"535 5.7.8 Error: authentication failed"),
        ),
    ],
    ids=["imap", "pop3", "smtp"],
)
def test_a_fresh_token_refused_too_raises_after_one_refresh_with_guidance(
    mail_host: Any,
    idp: TokenEndpoint,
    protocol: str,
    greeting: bytes,
    script: Callable[[str], list[Turn]],
) -> None:
    """A mailbox the account may not use: refused with at-0, refreshed once, refused with at-1,
    raised — no third connection, no second refresh."""
    with ScriptedSessions([greeting], script("at-0"), script("at-1")) as srv:
        point(mail_host, srv)
        with mail_host.app.app_context(), pytest.raises(MailAuthenticationError) as caught:
            getattr(mail_host.ext, f"connect_{protocol}")("support")
    assert len(srv.sessions) == 2
    assert refresh_tokens_sent(idp) == ["rt-0"]
    error = caught.value
    assert error.refreshed
    assert str(error).endswith("The token had just been refreshed.")
    assert error.guidance.startswith("The identity provider issued a new token and the mail")
    assert "permissions" in error.guidance
    assert "scopes were consented" in error.guidance
    assert "OAuth2 settings" in error.guidance
    assert "Refresh now" not in error.guidance
    for text in (str(error), repr(error.args), error.guidance):
        assert "at-0" not in text
        assert "at-1" not in text


def test_connect_raises_the_typed_error_when_the_forced_refresh_fails(
    mail_host: Any, idp: TokenEndpoint
) -> None:
    """The server refuses at-0 and the IdP says invalid_grant: ReauthorizationRequired, one
    call to the IdP, one connection."""
    idp.answers.append(("error", (400, {"error": "invalid_grant"}, {})))
    with ScriptedSessions([b"* OK IMAP4rev1 ready"], imap_refused("at-0")) as srv:
        point(mail_host, srv)
        with (
            mail_host.app.app_context(),
            pytest.raises(ReauthorizationRequired, match="invalid_grant") as caught,
        ):
            mail_host.ext.connect_imap("support")
    assert len(srv.sessions) == 1
    assert refresh_tokens_sent(idp) == ["rt-0"]
    assert isinstance(caught.value.__context__, MailAuthenticationError)
    assert credential_of(mail_host, "mailbox").status == "reauthorization_required"


@pytest.mark.parametrize(
    ("protocol", "greeting", "script", "raised"),
    [
        (
            "imap",
            b"* OK IMAP4rev1 ready",
            [
                IMAP_CAPA,
                Turn(b"{tag} AUTHENTICATE XOAUTH2 " + b64_xoauth2("at-0"), [b"{tag} BAD syntax"]),
            ],
            MailAuthenticationError,
        ),
        (
            "imap",
            b"* OK IMAP4rev1 ready",
            [
                IMAP_CAPA,
                Turn(
                    b"{tag} AUTHENTICATE XOAUTH2 " + b64_xoauth2("at-0"),
                    [
                        b"+ "
                        + base64.b64encode(
                            json.dumps({"status": "insufficient_scope", "scope": "mail"}).encode()
                        )
                    ],
                ),
                Turn(b"", [b"{tag} NO Authentication failed."]),
            ],
            MailAuthenticationError,
        ),
        (
            "pop3",
            b"+OK POP3 ready",
            [POP_CAPA, Turn(b"AUTH XOAUTH2", [b"-ERR Unsupported mechanism"])],
            MailAuthenticationError,
        ),
        (
            "smtp",
            b"220 mail.example.test ESMTP",
            smtp_login_script("at-0", b"504 5.5.4 Unrecognized authentication type"),
            MailAuthenticationError,
        ),
        (
            "smtp",
            b"220 mail.example.test ESMTP",
            smtp_login_script(
                "at-0",
                b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
                b"disabled for the Tenant.",
            ),
            MailAuthenticationError,
        ),
        (
            "imap",
            b"* OK IMAP4rev1 ready",
            [IMAP_CAPA, Turn(b"{tag} AUTHENTICATE XOAUTH2 " + b64_xoauth2("at-0"), hang_up=True)],
            MailConnectionError,
        ),
    ],
    ids=[
        "imap-BAD",
        "imap-insufficient_scope",
        "pop3-ERR-before-the-token",
        "smtp-504",
        "smtp-535-5.7.139",
        "connection-lost",
    ],
)
def test_refusals_a_new_token_would_not_change_are_raised_without_a_refresh(
    mail_host: Any,
    idp: TokenEndpoint,
    protocol: str,
    greeting: bytes,
    script: list[Turn],
    raised: type[Exception],
) -> None:
    with ScriptedSessions([greeting], script) as srv:
        point(mail_host, srv)
        with mail_host.app.app_context(), pytest.raises(raised) as caught:
            getattr(mail_host.ext, f"connect_{protocol}")("support")
    assert len(srv.sessions) == 1
    assert idp.calls == []
    assert not getattr(caught.value, "refreshed", False)


def test_a_tls_failure_is_raised_without_a_refresh(
    mail_host: Any, idp: TokenEndpoint, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, _client_tls = tls
    with ScriptedServer([b"* OK ready"], tls=server_tls, implicit_tls=True) as srv:
        point(mail_host, srv)
        mail_host.mailboxes["support"] = replace(mail_host.mailboxes["support"], security="ssl")
        with (
            mail_host.app.app_context(),
            pytest.raises(MailConnectionError, match="TLS certificate could not be verified"),
        ):
            mail_host.ext.connect_imap("support")
    assert idp.calls == []


@pytest.mark.parametrize(
    ("script", "token_refused"),
    [
        (imap_refused(TOKEN), True),
        ([IMAP_CAPA, Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"{tag} NO no"])], True),
        ([IMAP_CAPA, Turn(b"{tag} AUTHENTICATE XOAUTH2 " + XOAUTH2, [b"{tag} BAD no"])], False),
    ],
    ids=["challenge-401", "plain-NO", "BAD"],
)
def test_imap_refusals_say_whether_the_token_was_refused(
    script: list[Turn], token_refused: bool
) -> None:
    with (
        ScriptedServer([b"* OK ready"], script) as srv,
        imap(srv) as conn,
        pytest.raises(MailAuthenticationError) as caught,
    ):
        imap_login(conn, USER, TOKEN)
    assert caught.value.token_refused is token_refused
    assert not caught.value.refreshed
