"""Issue 6: the extension's mail sign-in against Dovecot and Postfix, and Test connection in
Chromium.

IMAP and POP3 with OAUTHBEARER and XOAUTH2, SMTP sent and read back over IMAP, a shared
mailbox reached with a delegate's token, bad/expired/revoked tokens giving readable errors,
Send As refusals shown as such, the Token tab's Test connection, and the round trips of a
login counted through a recording proxy.

Dovecot answers each refused login ~0.5 s late (its delayed-failure timer), so refusals that
do not depend on each other run concurrently.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flask_mailoauth import mail
from flask_mailoauth.errors import ReauthorizationRequired
from flask_mailoauth.models import utcnow
from flask_mailoauth.providers.base import MailServer
from flask_mailoauth.sasl import xoauth2
from peers import ARTIFACTS_DIR, HOST, Client
from peers.tls import test_ca
from tests.conftest import TEST_KEY

from .flows import authorize, point_at, send_and_read_back, wait_for_subject

SUPPORT = "support@example.test"
SHARED = "shared@example.test"
DELEGATE = "delegate@example.test"
BOB = "bob@example.test"
SALES = "sales@example.test"
SCREENSHOTS = ARTIFACTS_DIR / "screenshots"


# ---------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def direct_client(generic_idp) -> Client:
    """An IdP client for tokens obtained without the extension (code_grant, revoke)."""
    return generic_idp.register_client()


@pytest.fixture(scope="module")
def expiring(generic_idp, direct_client) -> tuple[str, str, float]:
    """(user, access token, monotonic time after which it is dead) of an ``expiring-...``
    account (2 s tokens); fetched by the first test that asks, checked by a later one."""
    user = f"expiring-{uuid.uuid4().hex[:8]}@example.test"
    token = generic_idp.code_grant(direct_client, user)["access_token"]
    return user, token, time.monotonic() + 3.0


def imap_server(dovecot) -> MailServer:
    return MailServer(dovecot.host, dovecot.imap_port, "none")


def pop3_server(dovecot) -> MailServer:
    return MailServer(dovecot.host, dovecot.pop3_port, "none")


def revoke(idp, client: Client, token: str) -> None:
    """Revoke ``token`` as the extension's client (registered for client_secret_post).

    oidc-provider revokes every token of the grant with it: a refresh token takes the grant.
    """
    r = idp.http.post(
        idp.revocation_endpoint,
        data={"token": token, "client_id": client.client_id, "client_secret": client.client_secret},
        timeout=5,
    )
    r.raise_for_status()
    assert idp.introspect(token)["active"] is False


def credential(app, key: str, purpose: str = "mailbox") -> Any:
    """The stored credential row of ``key`` (call inside an app context)."""
    st = app.extensions["mailoauth"]
    m = st.models
    return st.db.session.execute(
        sa.select(m.Credential)
        .join(m.Account, m.Credential.account_id == m.Account.id)
        .where(m.Account.key == key, m.Account.purpose == purpose)
    ).scalar_one()


def stored_refresh_token(app, key: str, purpose: str = "mailbox") -> str:
    with app.app_context():
        return app.extensions["mailoauth"].reveal(credential(app, key, purpose), "refresh_token")


@contextlib.contextmanager
def imap_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every line imaplib sends while the block runs (imaplib writes one line per send)."""
    sent: list[bytes] = []
    original = imaplib.IMAP4.send

    def send(self: imaplib.IMAP4, data: bytes) -> None:
        sent.append(bytes(data))
        original(self, data)

    with monkeypatch.context() as patch:
        patch.setattr(imaplib.IMAP4, "send", send)
        yield sent


@contextlib.contextmanager
def pop3_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every line poplib sends while the block runs."""
    sent: list[bytes] = []
    original = poplib.POP3._putline

    def putline(self: poplib.POP3, line: bytes) -> None:
        sent.append(bytes(line))
        original(self, line)

    with monkeypatch.context() as patch:
        patch.setattr(poplib.POP3, "_putline", putline)
        yield sent


def refusal(attempt: Callable[[], object]) -> mail.MailAuthenticationError:
    """Run ``attempt`` and return the MailAuthenticationError it must raise."""
    with pytest.raises(mail.MailAuthenticationError) as refused:
        attempt()
    return refused.value


def imap_attempt(dovecot, user: str, token: str, mechanism: str | None = None):
    def attempt() -> None:
        conn = mail.open_imap(imap_server(dovecot), timeout=10)
        try:
            mail.imap_login(conn, user, token, mechanism=mechanism)
        finally:
            conn.shutdown()

    return attempt


def pop3_attempt(dovecot, user: str, token: str, mechanism: str | None = None):
    def attempt() -> None:
        conn = mail.open_pop3(pop3_server(dovecot), timeout=10)
        try:
            mail.pop3_login(conn, user, token, mechanism=mechanism)
        finally:
            conn.close()

    return attempt


# ---------------------------------------------------------------------- IMAP and POP3
def test_imap_and_pop3_with_both_mechanisms(make_host, generic_idp, dovecot, expiring, monkeypatch):
    """connect_imap/connect_pop3 pick OAUTHBEARER (Dovecot offers both) and IMAP sends it on
    the AUTHENTICATE line because Dovecot advertises SASL-IR; XOAUTH2 works through the
    lower-level helpers with the stored token."""
    host = make_host()
    authorize(host, generic_idp, SUPPORT)
    point_at(host, dovecot)
    with host.app.app_context():
        token = host.ext.access_token("support")
        probe = mail.open_imap(imap_server(dovecot), timeout=10)
        try:
            offered = set(probe.capabilities)
        finally:
            probe.logout()
        assert {"SASL-IR", "AUTH=OAUTHBEARER", "AUTH=XOAUTH2"} <= offered

        with imap_lines(monkeypatch) as sent:
            conn = host.ext.connect_imap("support")
        try:
            assert conn.state == "SELECTED"
            assert conn.select("INBOX", readonly=True)[0] == "OK"
        finally:
            conn.logout()
        authenticate = [line for line in sent if b" AUTHENTICATE " in line]
        # SASL-IR: one AUTHENTICATE line carrying the response, no continuation line after it
        assert len(authenticate) == 1
        assert authenticate[0].split()[2:3] == [b"OAUTHBEARER"]
        assert len(authenticate[0].split()) == 4  # tag AUTHENTICATE OAUTHBEARER <response>
        after = sent[sent.index(authenticate[0]) + 1 :]
        assert [line.split()[1] for line in after[:1]] == [b"SELECT"]

        conn = mail.open_imap(imap_server(dovecot), timeout=10)
        try:
            assert mail.imap_login(conn, SUPPORT, token, mechanism="XOAUTH2") == "XOAUTH2"
            mail.select_folder(conn, "INBOX")
            assert conn.state == "SELECTED"
        finally:
            conn.logout()

        point_at(host, dovecot, protocol="pop3")
        with pop3_lines(monkeypatch) as sent:
            pop = host.ext.connect_pop3("support")
        try:
            assert pop.stat()[0] >= 0
        finally:
            pop.quit()
        assert b"AUTH OAUTHBEARER" in sent
        assert b"AUTH XOAUTH2" not in sent

        pop = mail.open_pop3(pop3_server(dovecot), timeout=10)
        try:
            assert mail.pop3_login(pop, SUPPORT, token, mechanism="XOAUTH2") == "XOAUTH2"
            assert pop.stat()[0] >= 0
        finally:
            pop.quit()


# ---------------------------------------------------------------------- SMTP
def test_smtp_send_then_read_back_over_imap(make_host, generic_idp, dovecot, postfix):
    """connect_smtp signs in with the mailbox's token (Same as Remote Mailbox); the message
    Postfix accepts is delivered over LMTP and read back with connect_imap."""
    host = make_host()
    authorize(host, generic_idp, SUPPORT)
    point_at(host, dovecot, postfix=postfix)
    with host.app.app_context():
        got = send_and_read_back(host, SUPPORT, "sent with the extension's SMTP sign-in")
    assert got["From"] == SUPPORT
    assert got.get_content().strip() == "sent with the extension's SMTP sign-in"


def test_shared_mailbox_with_a_delegate_token(make_host, generic_idp, dovecot, postfix):
    """The delegate authorizes the shared mailbox (Strict Matching off).

    - SMTP, **the server allows it**: SMTP signs in as ``smtp_address`` (the delegate, whose
      token it is) and Postfix's sender login map lets the delegate use MAIL FROM shared@;
      Test connection's "sender" step says so, and the mail arrives From shared@.
    - IMAP, **the server does not allow it**: IMAP signs in with ``user=`` the mailbox address
      (shared@) and the delegate's token; this Dovecot only accepts a token for its own
      account, so the login is refused with a readable MailAuthenticationError.
    """
    host = make_host()
    point_at(host, dovecot, key="shared", address=SHARED, postfix=postfix, smtp_address=DELEGATE)
    authorize(host, generic_idp, DELEGATE, key="shared", strict=False)
    authorize(host, generic_idp, DELEGATE, key="shared", purpose="smtp", strict=False)
    subject = f"e2e send-as {uuid.uuid4()}"
    with host.app.app_context():
        [check] = host.ext.test_connection("shared", "smtp")
        assert check.ok, check.steps
        assert [s.name for s in check.steps] == ["token", "connect", "sign in", "sender"]
        assert check.steps[-1].detail.startswith(f"<{SHARED}> accepted as sender: 250")

        smtp = host.ext.connect_smtp("shared")
        try:
            refused = smtp.sendmail(
                SHARED, [DELEGATE], f"From: {SHARED}\r\nSubject: {subject}\r\n\r\nhello\r\n"
            )
        finally:
            smtp.quit()
        assert refused == {}

        refreshes = generic_idp.refresh_count()
        refused_login = refusal(lambda: host.ext.connect_imap("shared"))
        refreshes = generic_idp.refresh_count() - refreshes
        token = host.ext.access_token("shared")

    # Refused with the stored token, refreshed once, refused again with the new one: raised
    # after exactly one refresh, not a loop, with guidance beyond the token.
    assert refreshes == 1
    assert refused_login.refreshed
    assert "permissions" in refused_login.guidance
    assert refused_login.protocol == "IMAP"
    assert "AUTHENTICATIONFAILED" in refused_login.reply
    assert "refused" in str(refused_login)
    assert token not in str(refused_login)
    # The delegate's own mailbox, with the same token, received the mail From shared@.
    conn = mail.open_imap(imap_server(dovecot), timeout=10)
    try:
        mail.imap_login(conn, DELEGATE, token)
        got = wait_for_subject(conn, subject)
    finally:
        conn.logout()
    assert got["From"] == SHARED


def test_send_as_refusal_is_shown_as_such(make_host, generic_idp, dovecot, postfix):
    """Support signs in to SMTP (``smtp_address``) for a mailbox whose address it has no Send
    As right on: the "sender" step fails with the Send As guidance, and a real send from an
    address support may not use is refused 553 by Postfix."""
    host = make_host()
    point_at(host, dovecot, key="sales", address=SALES, postfix=postfix, smtp_address=SUPPORT)
    authorize(host, generic_idp, SUPPORT, key="sales", purpose="smtp")
    with host.app.app_context():
        [check] = host.ext.test_connection("sales", "smtp")
        smtp = host.ext.connect_smtp("sales")
        try:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                smtp.sendmail(BOB, [SUPPORT], "Subject: spoof\r\n\r\nx\r\n")
            smtp.rset()
            assert smtp.sendmail(SUPPORT, [SUPPORT], "Subject: own\r\n\r\nx\r\n") == {}
        finally:
            smtp.quit()
    assert not check.ok
    assert [(s.name, s.ok) for s in check.steps] == [
        ("token", True),
        ("connect", True),
        ("sign in", True),
        ("sender", False),
    ]
    sender = check.steps[-1]
    assert sender.detail.startswith(f"Sender <{SALES}> refused: 553")
    assert "5.7.1" in sender.detail
    assert sender.guidance == mail.SEND_AS_MISSING
    assert refused.value.smtp_code == 553
    assert b"not owned by user" in refused.value.smtp_error


# ---------------------------------------------------------------------- refused tokens
def plant_bogus_token(host, key: str, purpose: str) -> str:
    """Store an access token the IdP never issued, valid for an hour as far as the database
    knows (what a token revoked at the IdP looks like to the helpdesk); returns it."""
    bogus = f"bogus-{uuid.uuid4().hex}"
    with host.app.app_context():
        row = credential(host.app, key, purpose)
        st = host.app.extensions["mailoauth"]
        st.seal(row, "access_token", bogus)
        row.expires_at = utcnow() + timedelta(hours=1)
        host.db.session.commit()
        st.cache.clear()
    return bogus


def stored_access_token(host, key: str, purpose: str) -> str:
    with host.app.app_context():
        return host.app.extensions["mailoauth"].reveal(
            credential(host.app, key, purpose), "access_token"
        )


def test_a_token_the_mail_server_refuses_is_refreshed_once(
    make_host, db_url, generic_idp, dovecot, postfix
):
    """Dovecot and Postfix refuse an access token the database thinks valid for an hour:
    connect_imap and connect_smtp refresh it at the IdP exactly once each and sign in with the
    new token. Once the grant is revoked, the forced refresh fails: ReauthorizationRequired,
    after one refresh attempt."""
    host = make_host(db_url=db_url)
    done = authorize(host, generic_idp, SUPPORT)
    authorize(host, generic_idp, SUPPORT, purpose="smtp")
    point_at(host, dovecot, postfix=postfix)
    subject = f"e2e refreshed smtp {uuid.uuid4()}"

    bogus = plant_bogus_token(host, "support", "mailbox")
    before = generic_idp.refresh_count()
    with host.app.app_context():
        imap = host.ext.connect_imap("support")
    try:
        assert imap.state == "SELECTED"
    finally:
        imap.logout()
    assert generic_idp.refresh_count() - before == 1
    assert stored_access_token(host, "support", "mailbox") != bogus

    bogus = plant_bogus_token(host, "support", "smtp")
    before = generic_idp.refresh_count()
    with host.app.app_context():
        smtp = host.ext.connect_smtp("support")
    try:
        assert smtp.sendmail(SUPPORT, [SUPPORT], f"Subject: {subject}\r\n\r\nhello\r\n") == {}
    finally:
        smtp.quit()
    assert generic_idp.refresh_count() - before == 1
    assert stored_access_token(host, "support", "smtp") != bogus

    # Nothing refused: no refresh.
    before = generic_idp.refresh_count()
    with host.app.app_context():
        imap = host.ext.connect_imap("support")
    try:
        got = wait_for_subject(imap, subject)
    finally:
        imap.logout()
    assert got["Subject"] == subject
    assert generic_idp.refresh_count() == before

    # The grant revoked at the IdP: the forced refresh fails and says so, once.
    revoke(
        generic_idp,
        Client(done.client_id, done.client_secret),
        stored_refresh_token(host.app, "support"),
    )
    plant_bogus_token(host, "support", "mailbox")
    before = generic_idp.refresh_count()
    with host.app.app_context(), pytest.raises(ReauthorizationRequired, match="invalid_grant"):
        host.ext.connect_imap("support")
    assert generic_idp.refresh_count() - before == 1
    with host.app.app_context():
        assert credential(host.app, "support").status == "reauthorization_required"


# ---------------------------------------------------------------------- Test connection
def test_test_connection_ok_then_revoked_grant(make_host, generic_idp, dovecot):
    """All steps pass; after the grant is revoked at the IdP the stored access token, still
    valid locally, fails at the "sign in" step with guidance; once it has to be refreshed the
    "token" step fails and says to authorize again."""
    host = make_host()
    done = authorize(host, generic_idp, SUPPORT)
    point_at(host, dovecot)
    with host.app.app_context():
        [check] = host.ext.test_connection("support", "mailbox")
        assert check.protocol == "IMAP"
        assert check.ok, check.steps
        assert [s.name for s in check.steps] == ["token", "connect", "sign in", "open INBOX"]
        assert check.steps[2].detail.startswith("OAUTHBEARER accepted: ")

        client = Client(done.client_id, done.client_secret)
        revoke(generic_idp, client, stored_refresh_token(host.app, "support"))

        [check] = host.ext.test_connection("support", "mailbox")
        assert [(s.name, s.ok) for s in check.steps] == [
            ("token", True),
            ("connect", True),
            ("sign in", False),
        ]
        sign_in = check.steps[-1]
        assert "IMAP OAUTHBEARER sign-in refused: " in sign_in.detail
        assert "AUTHENTICATIONFAILED" in sign_in.detail
        assert "status invalid_token" in sign_in.detail
        assert "IMAP scopes were consented" in sign_in.guidance

        row = credential(host.app, "support")
        row.expires_at = utcnow() - timedelta(minutes=1)
        host.db.session.commit()
        host.app.extensions["mailoauth"].cache.clear()

        [check] = host.ext.test_connection("support", "mailbox")
        status = credential(host.app, "support").status
    assert not check.ok
    assert [(s.name, s.ok) for s in check.steps] == [("token", False)]
    assert "authorize again" in check.steps[0].detail
    assert "invalid_grant" in check.steps[0].detail
    assert status == "reauthorization_required"  # kept, not deleted


# ---------------------------------------------------------------------- Chromium
def test_token_tab_test_connection_in_chromium(
    page, serve_app, generic_idp, dovecot, browser_login_and_consent, tmp_path
):
    """The admin authorizes the seeded Support email in the example helpdesk, then Test
    connection on the Token tab shows green checks; after the grant is revoked at the IdP it
    shows the failed sign-in in red with guidance."""
    from example_app import create_app
    from example_app.extensions import db
    from example_app.models import SystemEmail

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'helpdesk.sqlite3'}",
            "MAILOAUTH_ALLOW_INSECURE_HTTP": True,
            "MAILOAUTH_CA_BUNDLE": str(test_ca().ca_file),
            "MAILOAUTH_ENCRYPTION_KEYS": [TEST_KEY],
        }
    )
    with app.app_context():
        support = db.session.get(SystemEmail, 1)
        assert support.address == SUPPORT
        support.host, support.port, support.security = dovecot.host, dovecot.imap_port, "none"
        support.remote_auth = "generic"
        # This test is about the IMAP check: SMTP not on the mailbox's grant, so Test
        # connection checks IMAP only (with "Same as Remote Mailbox" it would check SMTP too).
        support.smtp_auth = "none"
        db.session.commit()
    srv = serve_app(app)
    client = generic_idp.register_client(
        srv.url_for("/mailoauth/callback"), auth_method="client_secret_post"
    )

    page.goto(srv.url_for("/login"))
    page.fill("input[name=email]", "admin@example.test")
    page.fill("input[name=password]", "admin")
    page.click("main button[type=submit]")  # the header holds the language switch
    page.wait_for_url(srv.url_for("/"))
    page.goto(srv.url_for("/admin/emails/1?tab=remote"))
    page.click("#panel-remote .mailoauth-config-button")
    dialog = page.locator("dialog.mailoauth-dialog[open]")
    dialog.locator("#mailoauth-tab-idp").click()
    dialog.locator("#mailoauth-idp_issuer").fill(generic_idp.issuer)
    dialog.locator("#mailoauth-idp_client_id").fill(client.client_id)
    dialog.locator("#mailoauth-client_secret").fill(client.client_secret)
    dialog.locator("button.mailoauth-primary").click()
    browser_login_and_consent(page, SUPPORT)
    page.wait_for_url(srv.url_for("/admin/emails/1") + "*")
    assert page.get_by_text("OAuth2 Authorization Successful").is_visible()

    page.click("#panel-remote .mailoauth-config-button")
    dialog.locator("#mailoauth-tab-token").click()
    dialog.get_by_role("button", name="Test connection").click()
    checks = dialog.locator(".mailoauth-checks")
    checks.wait_for()
    assert checks.locator("h3").inner_text() == "✔ IMAP: connection works"
    ok_steps = checks.locator(".mailoauth-step-ok strong").all_inner_texts()
    assert ok_steps == ["✔ token", "✔ connect", "✔ sign in", "✔ open INBOX"]
    assert checks.locator(".mailoauth-step-failed").count() == 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "test-connection-ok.png"))

    with app.app_context():
        st = app.extensions["mailoauth"]
        refresh_token = st.reveal(credential(app, "1"), "refresh_token")
    revoke(generic_idp, client, refresh_token)

    dialog.get_by_role("button", name="Test connection").click()
    failed = dialog.locator(".mailoauth-step-failed")
    failed.wait_for()
    assert checks.locator("h3").inner_text() == "✘ IMAP: failed"
    assert failed.locator("strong").inner_text() == "✘ sign in"
    assert "AUTHENTICATIONFAILED" in failed.inner_text()
    guidance = failed.locator("em").inner_text()
    assert "IMAP scopes were consented" in guidance
    assert checks.locator(".mailoauth-step-ok strong").all_inner_texts() == [
        "✔ token",
        "✔ connect",
    ]
    page.screenshot(path=str(SCREENSHOTS / "test-connection-failed.png"))


# ---------------------------------------------------------------------- round trips
class RecordingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream``; records every client line.

    A line is recorded before it is forwarded, so once the client has the server's answer to
    a line, that line is in :attr:`client_lines`.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.client_lines: list[bytes] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
            self._sockets += [client, server]
            for args in ((client, server, True), (server, client, False)):
                pump = threading.Thread(target=self._pump, args=args, daemon=True)
                self._threads.append(pump)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record:
                    pending += data
                    *lines, pending = pending.split(b"\r\n")
                    self.client_lines.extend(lines)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def mark(self) -> int:
        return len(self.client_lines)

    def since(self, mark: int) -> list[bytes]:
        return self.client_lines[mark:]

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def proxy() -> Iterator[Callable[[tuple[str, int]], RecordingProxy]]:
    made: list[RecordingProxy] = []

    def make(upstream: tuple[str, int]) -> RecordingProxy:
        made.append(RecordingProxy(upstream))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_login_round_trips_through_a_recording_proxy(make_host, generic_idp, dovecot, proxy):
    """Client lines during each login, each of which waits for the server's answer: the
    extension's IMAP login with SASL-IR takes 1, imaplib's AUTHENTICATE takes 2, POP3 AUTH
    takes 2 (plus CAPA when the mechanism is not given)."""
    host = make_host()
    authorize(host, generic_idp, SUPPORT)
    imap_proxy = proxy((dovecot.host, dovecot.imap_port))
    pop3_proxy = proxy((dovecot.host, dovecot.pop3_port))
    point_at(host, dovecot)
    host.mailboxes["support"] = replace(host.mailboxes["support"], port=imap_proxy.port)
    with host.app.app_context():
        token = host.ext.access_token("support")

        # the extension: SASL-IR, one round trip
        conn = mail.open_imap(MailServer(HOST, imap_proxy.port, "none"), timeout=10)
        try:
            mark = imap_proxy.mark()
            assert mail.imap_login(conn, SUPPORT, token) == "OAUTHBEARER"
            sasl_ir = imap_proxy.since(mark)
        finally:
            conn.logout()

        # imaplib without SASL-IR: AUTHENTICATE, "+", the response, tagged OK
        conn = imaplib.IMAP4(HOST, imap_proxy.port, timeout=10)
        try:
            mark = imap_proxy.mark()
            typ, _ = conn.authenticate("XOAUTH2", lambda _challenge: xoauth2(SUPPORT, token))
            assert typ == "OK"
            two_step = imap_proxy.since(mark)
        finally:
            conn.logout()

        # connect_imap through the proxy: the same single AUTHENTICATE line, then SELECT
        mark = imap_proxy.mark()
        conn = host.ext.connect_imap("support")
        conn.logout()
        connect_imap_lines = imap_proxy.since(mark)

        pop_server = MailServer(HOST, pop3_proxy.port, "none")
        pop3_counts = {}
        for mechanism in ("OAUTHBEARER", None):
            pop = mail.open_pop3(pop_server, timeout=10)
            try:
                mark = pop3_proxy.mark()
                mail.pop3_login(pop, SUPPORT, token, mechanism=mechanism)
                pop3_counts[mechanism] = pop3_proxy.since(mark)
            finally:
                pop.quit()

    assert len(sasl_ir) == 1
    assert sasl_ir[0].split()[1:3] == [b"AUTHENTICATE", b"OAUTHBEARER"]
    assert len(sasl_ir[0].split()) == 4
    assert len(two_step) == 2
    assert two_step[0].split()[1:] == [b"AUTHENTICATE", b"XOAUTH2"]
    assert [line.split()[1:3] for line in connect_imap_lines] == [
        [b"CAPABILITY"],
        [b"AUTHENTICATE", b"OAUTHBEARER"],
        [b"SELECT", b"INBOX"],
        [b"LOGOUT"],
    ]
    # POP3: "AUTH <mech>", "+ ", then the response line; CAPA first to pick the mechanism
    given, chosen = pop3_counts["OAUTHBEARER"], pop3_counts[None]
    assert [line.split()[:2] for line in given[:1]] == [[b"AUTH", b"OAUTHBEARER"]]
    assert len(given) == 2
    assert [line.split()[:2] for line in chosen[:2]] == [[b"CAPA"], [b"AUTH", b"OAUTHBEARER"]]
    assert len(chosen) == 3


# ---------------------------------------------------------------------- refused tokens (last:
# the expiring token fetched by the first test is dead by now, so nobody waits)
def test_bad_expired_and_revoked_tokens_give_readable_errors(
    generic_idp, dovecot, direct_client, expiring
):
    """Each refusal is a MailAuthenticationError with Dovecot's reply and the decoded error
    challenge, never the token; the same token was accepted before it was revoked or expired."""
    idp = generic_idp
    alice = "alice@example.test"
    revoked = idp.code_grant(direct_client, alice)["access_token"]
    imap_attempt(dovecot, alice, revoked)()  # accepted while it is alive
    idp.revoke(direct_client, revoked)
    user, expired, dead_after = expiring
    time.sleep(max(0.0, dead_after - time.monotonic()))
    garbage = "garbage-" + uuid.uuid4().hex
    cases = {
        ("garbage", "imap", "OAUTHBEARER"): imap_attempt(dovecot, alice, garbage),
        ("garbage", "imap", "XOAUTH2"): imap_attempt(dovecot, alice, garbage, "XOAUTH2"),
        ("garbage", "pop3", "OAUTHBEARER"): pop3_attempt(dovecot, alice, garbage),
        ("garbage", "pop3", "XOAUTH2"): pop3_attempt(dovecot, alice, garbage, "XOAUTH2"),
        ("expired", "imap", "OAUTHBEARER"): imap_attempt(dovecot, user, expired),
        ("expired", "pop3", "XOAUTH2"): pop3_attempt(dovecot, user, expired, "XOAUTH2"),
        ("revoked", "imap", "XOAUTH2"): imap_attempt(dovecot, alice, revoked, "XOAUTH2"),
        ("revoked", "pop3", "OAUTHBEARER"): pop3_attempt(dovecot, alice, revoked),
    }
    tokens = {"garbage": garbage, "expired": expired, "revoked": revoked}
    with ThreadPoolExecutor(len(cases)) as pool:
        errors = dict(zip(cases, pool.map(refusal, cases.values()), strict=True))
    for (label, protocol, mechanism), error in errors.items():
        text = str(error)
        assert error.protocol == protocol.upper()
        assert error.mechanism == mechanism
        reply = {
            "IMAP": "[AUTHENTICATIONFAILED] Authentication failed.",
            "POP3": "-ERR [AUTH] Authentication failed.",
        }[error.protocol]
        assert error.reply == reply
        assert error.challenge is not None
        # Dovecot's error challenges: RFC 7628 for OAUTHBEARER, Google's shape for XOAUTH2
        challenge = {
            "OAUTHBEARER": ({"status": "invalid_token"}, "status invalid_token"),
            "XOAUTH2": (
                {"status": "401", "schemes": "bearer", "scope": "mail"},
                "status 401, required scope: mail, schemes: bearer",
            ),
        }[mechanism]
        assert error.challenge is not None
        assert error.challenge.raw == challenge[0]
        assert text == (
            f"{protocol.upper()} {mechanism} sign-in refused: {reply} "
            f"The server refused the token ({challenge[1]})."
        )
        assert tokens[label] not in text
        assert tokens[label] not in repr(error.args)
        assert "scopes were consented" in error.guidance
