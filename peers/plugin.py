"""pytest fixtures and hooks for the end-to-end peers (loaded by ``tests/conftest.py``).

Session fixtures start a peer the first time a selected test asks for it and stop it by PID at
the end. A peer that is not installed skips the test with one loud line (fails it with
``CI=true``). Peer logs live in a per-session temp dir; a failing test gets the tails of the
logs of the peers it used in its report, and the whole log dir is copied to
``<repo>/test-artifacts/`` when anything failed (``MAILOAUTH_KEEP_PEER_LOGS=1``: always).
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .availability import missing_reports, require_peer
from .guard import GUARD
from .hostile import HostileIdP
from .idp import IdP, browser_login_and_consent, login_and_consent
from .live import LiveServer
from .process import ARTIFACTS_DIR, REPO_ROOT, tail

E2E_DIR = REPO_ROOT / "tests" / "e2e"

# fixture name -> the attribute of its value that holds the log to show when a test fails
PEER_FIXTURES = (
    "generic_idp",
    "ms_idp",
    "google_idp",
    "dovecot",
    "ms_dovecot",
    "google_dovecot",
    "postfix",
    "ms_postfix",
    "google_postfix",
    "postgres",
)


class _Session:
    workdir: Path | None = None
    failed = False
    timings: dict[str, float] = {}  # noqa: RUF012 - one per process, on purpose
    stop_timings: dict[str, float] = {}  # noqa: RUF012


def _stop(name: str, peer) -> None:
    t = time.monotonic()
    peer.stop()
    _Session.stop_timings[name] = time.monotonic() - t


def _safe_name(nodeid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in nodeid)[-150:]


# ---------------------------------------------------------------------- hooks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/, and every test using a peer fixture, is marked e2e."""
    peer_names = {*PEER_FIXTURES, "browser", "page", "chromium", "make_dovecot"}
    for item in items:
        path = Path(str(item.path)).resolve()
        if E2E_DIR in path.parents or peer_names & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    if rep.failed:
        _Session.failed = True
        funcargs = getattr(item, "funcargs", {})
        for name in PEER_FIXTURES:
            peer = funcargs.get(name)
            log = getattr(peer, "log", None)
            if log is not None:
                rep.sections.append((f"peer log {name}: {log} (tail)", tail(log, 30)))
    return rep


def pytest_terminal_summary(terminalreporter) -> None:
    for line in missing_reports:
        terminalreporter.write_line(line, red=True, bold=True)
    if _Session.timings:
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in _Session.timings.items())
        terminalreporter.write_line(f"e2e peer start times: {parts}")
    if _Session.stop_timings:
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in _Session.stop_timings.items())
        terminalreporter.write_line(f"e2e peer stop times: {parts}")


# ---------------------------------------------------------------------- workspace
@pytest.fixture(scope="session")
def peer_workdir() -> Iterator[Path]:
    """A per-session temp dir (mode 0755: Dovecot, Postfix, PostgreSQL users traverse it);
    logs in ``logs/``; copied to test-artifacts/ if a test failed, then removed."""
    workdir = Path(tempfile.mkdtemp(prefix="mailoauth-peers-"))
    workdir.chmod(0o755)
    (workdir / "logs").mkdir()
    (workdir / "logs").chmod(0o777)
    _Session.workdir = workdir
    yield workdir
    if _Session.failed or os.environ.get("MAILOAUTH_KEEP_PEER_LOGS") == "1":
        dest = ARTIFACTS_DIR / f"peer-logs-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(workdir / "logs", dest, dirs_exist_ok=True)
        print(f"\npeer logs kept in {dest}")
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def peer_logs(peer_workdir: Path) -> Path:
    return peer_workdir / "logs"


def _timed(name: str, started: float) -> None:
    _Session.timings[name] = time.monotonic() - started


# ---------------------------------------------------------------------- IdPs
@pytest.fixture(scope="session")
def generic_idp(peer_workdir: Path, peer_logs: Path) -> Iterator[IdP]:
    """A generic OIDC provider (oidc-provider): see ``peers.idp.IdP``."""
    require_peer("idp")
    t = time.monotonic()
    idp = IdP("generic", peer_logs)
    _timed("generic_idp", t)
    yield idp
    _stop("generic_idp", idp)


@pytest.fixture(scope="session")
def ms_idp(peer_workdir: Path, peer_logs: Path) -> Iterator[IdP]:
    """A Microsoft-shaped OIDC provider: ``/{tenant}/oauth2/v2.0/authorize|token``, issuer
    ``http://127.0.0.1:PORT/{tid}/v2.0``, AADSTS errors, rotating refresh tokens."""
    require_peer("idp")
    t = time.monotonic()
    idp = IdP("microsoft", peer_logs)
    _timed("ms_idp", t)
    yield idp
    _stop("ms_idp", idp)


@pytest.fixture(scope="session")
def google_idp(peer_workdir: Path, peer_logs: Path) -> Iterator[IdP]:
    """A Google-shaped OIDC provider: ``/o/oauth2/v2/auth``, ``/token``, ``/revoke``,
    ``/oauth2/v3/certs``, ``/v1/userinfo`` under the issuer ``https://127.0.0.1:PORT``, the
    scope ``https://mail.google.com/``, refresh tokens for ``access_type=offline`` with
    ``prompt=consent`` only, never rotated."""
    require_peer("idp")
    t = time.monotonic()
    idp = IdP("google", peer_logs)
    _timed("google_idp", t)
    yield idp
    _stop("google_idp", idp)


# ---------------------------------------------------------------------- Dovecot, Postfix
@pytest.fixture(scope="session")
def make_dovecot(peer_workdir: Path, peer_logs: Path) -> Iterator[Callable]:
    """``make_dovecot(idp, name="dovecot-<shape>") -> Dovecot``, one per name, stopped at
    the end of the session."""
    from .dovecot import Dovecot

    require_peer("dovecot")
    made: dict[str, Dovecot] = {}

    def make(idp: IdP, name: str | None = None) -> Dovecot:
        name = name or f"dovecot-{idp.shape}"
        if name not in made:
            t = time.monotonic()
            made[name] = Dovecot(name, idp, peer_workdir, peer_logs)
            _timed(name, t)
        return made[name]

    yield make
    t = time.monotonic()
    for d in made.values():  # signal all first: each Dovecot takes ~1 s to shut down
        d.proc.popen.terminate()
    for name, d in reversed(made.items()):
        _stop(name, d)
    if made:
        _Session.stop_timings["dovecots"] = time.monotonic() - t


@pytest.fixture(scope="session")
def dovecot(make_dovecot: Callable, generic_idp: IdP):
    """Dovecot IMAP/POP3/LMTP validating tokens of ``generic_idp`` (see ``Dovecot``)."""
    return make_dovecot(generic_idp, "dovecot")


@pytest.fixture(scope="session")
def ms_dovecot(make_dovecot: Callable, ms_idp: IdP):
    """Dovecot IMAP/POP3 validating tokens of ``ms_idp``."""
    return make_dovecot(ms_idp, "ms_dovecot")


@pytest.fixture(scope="session")
def google_dovecot(make_dovecot: Callable, google_idp: IdP):
    """Dovecot IMAP/POP3/LMTP validating tokens of ``google_idp``."""
    return make_dovecot(google_idp, "google_dovecot")


@pytest.fixture(scope="session")
def postfix(dovecot, peer_workdir: Path, peer_logs: Path):
    """Postfix submission (SASL by ``dovecot``, delivery to it over LMTP).

    Send-As map: each address may send as itself; ``delegate@example.test`` may also send as
    ``shared@example.test``. A mismatch is refused at MAIL FROM: 553 5.7.1.
    """
    from .postfix import Postfix

    require_peer("postfix")
    t = time.monotonic()
    pf = Postfix(dovecot, peer_workdir, peer_logs)
    _timed("postfix", t)
    yield pf
    _stop("postfix", pf)


@pytest.fixture(scope="session")
def ms_postfix(ms_dovecot, peer_workdir: Path, peer_logs: Path):
    """Postfix submission as ``postfix``, with SASL by and delivery to ``ms_dovecot`` (tokens of
    ``ms_idp``, application tokens included)."""
    yield from _postfix_for(ms_dovecot, peer_workdir, peer_logs, "ms_postfix")


@pytest.fixture(scope="session")
def google_postfix(google_dovecot, peer_workdir: Path, peer_logs: Path):
    """Postfix submission whose SASL is ``google_dovecot`` (tokens of ``google_idp``)."""
    yield from _postfix_for(google_dovecot, peer_workdir, peer_logs, "google_postfix")


def _postfix_for(dovecot, peer_workdir: Path, peer_logs: Path, name: str):
    """A Postfix named ``name`` in front of ``dovecot``, stopped when the session ends."""
    from .postfix import Postfix

    require_peer("postfix")
    t = time.monotonic()
    pf = Postfix(dovecot, peer_workdir, peer_logs, name=name)
    _timed(name, t)
    yield pf
    _stop(name, pf)


# ---------------------------------------------------------------------- databases
@pytest.fixture(scope="session")
def postgres(peer_workdir: Path, peer_logs: Path):
    """A throwaway PostgreSQL cluster (``PostgresCluster``), trust auth, user postgres."""
    from .postgres import PostgresCluster

    require_peer("postgresql")
    t = time.monotonic()
    pg = PostgresCluster(peer_workdir, peer_logs)
    _timed("postgres", t)
    yield pg
    _stop("postgres", pg)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database: a SQLite file, or a fresh PostgreSQL database
    (``postgresql+psycopg://postgres@127.0.0.1:PORT/t_xxxx``) dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    pg = request.getfixturevalue("postgres")
    name = pg.create_database()
    yield pg.url(name)
    _dispose_engines(name)
    pg.drop_database(name)


def _dispose_engines(database: str) -> None:
    """Close the pooled connections of every SQLAlchemy engine still pointing at ``database``
    (Flask-SQLAlchemy never disposes its engines), before the database is dropped: otherwise
    they are garbage-collected open, and psycopg's ResourceWarning fails a later test."""
    from sqlalchemy.engine import Engine

    for obj in gc.get_objects():
        if isinstance(obj, Engine) and obj.url.database == database:
            obj.dispose()


# ---------------------------------------------------------------------- browser, live server
@pytest.fixture(scope="session")
def chromium() -> Iterator:
    """``peers.browser.Chromium``: ``.browser`` (Playwright Browser), ``.version``."""
    from .browser import Chromium

    require_peer("chromium")
    t = time.monotonic()
    c = Chromium()
    _timed("chromium", t)
    yield c
    _stop("chromium", c)


@pytest.fixture(scope="session")
def browser(chromium):
    """The session's Playwright ``Browser`` (Debian chromium, headless)."""
    return chromium.browser


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:
    """A Playwright ``Page`` in a new browser context (fresh cookies) for each test; a
    screenshot goes to ``test-artifacts/screenshots/`` if the test fails."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    pg = context.new_page()
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        shots = ARTIFACTS_DIR / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        path = shots / f"{_safe_name(request.node.nodeid)}.png"
        try:
            pg.screenshot(path=str(path), full_page=True)
            print(f"\nscreenshot of the failing page: {path} ({pg.url})")
        except Exception as e:  # the page may be gone; the test failure is what matters
            print(f"\nno screenshot: {e}")
    context.close()


@pytest.fixture
def serve_app() -> Iterator[Callable[..., LiveServer]]:
    """``serve_app(app) -> LiveServer`` (``.url``, ``.port``, ``.url_for(path)``): the app
    runs on a free 127.0.0.1 port in a thread until the end of the test. (Not named
    ``live_server``: pytest-flask owns that name.)"""
    servers: list[LiveServer] = []

    def serve(app, port: int | None = None) -> LiveServer:
        srv = LiveServer(app, port)
        servers.append(srv)
        return srv

    yield serve
    for srv in servers:
        srv.stop()


@pytest.fixture(name="login_and_consent")
def login_and_consent_fixture() -> Callable[..., str]:
    """``login_and_consent(authorize_url, email, redirect_uri) -> callback URL``."""
    return login_and_consent


@pytest.fixture(name="browser_login_and_consent")
def browser_login_and_consent_fixture() -> Callable[..., None]:
    """``browser_login_and_consent(page, email)``: fill the IdP's login form, consent."""
    return browser_login_and_consent


# ---------------------------------------------------------------------- hostile IdP
@pytest.fixture(scope="session")
def hostile_server() -> Iterator[HostileIdP]:
    """The session's hostile OpenID Connect provider on 127.0.0.1 (``peers.hostile``)."""
    idp = HostileIdP()
    yield idp
    idp.stop()


@pytest.fixture
def hostile(hostile_server: HostileIdP) -> Iterator[HostileIdP]:
    """The hostile IdP, reset to a provider that behaves; the test fails if any connection
    tried to leave loopback meanwhile."""
    hostile_server.reset()
    blocked = len(GUARD.blocked)
    yield hostile_server
    hostile_server.reset()
    left = GUARD.blocked[blocked:]
    assert not left, f"connections tried to leave loopback: {left}"


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], None]:
    """``resolve({"name.test": "10.0.0.1"})``: those names resolve to those addresses (no DNS);
    every other name resolves as before."""
    original = socket.getaddrinfo

    def install(names: dict[str, str]) -> None:
        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            name = host.decode() if isinstance(host, bytes) else host
            if name not in names:
                return original(host, port, family, type, proto, flags)
            address = names[name]
            v6 = ":" in address
            kind = socket.AF_INET6 if v6 else socket.AF_INET
            port = {"http": 80, "https": 443}.get(str(port), port)
            port = int(port or 0)
            sockaddr = (address, port, 0, 0) if v6 else (address, port)
            return [(kind, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    return install
