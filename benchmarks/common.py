"""Shared plumbing: the host app, accounts, SQL counting, timing, the peers and the table."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import MailboxSettings, MailOAuth
from flask_mailoauth.crypto import generate_key
from flask_mailoauth.models import utcnow
from flask_mailoauth.state import MailOAuthState
from flask_mailoauth.testing import seed_account
from peers import peer_missing
from peers.dovecot import Dovecot
from peers.idp import Client, IdP
from peers.postgres import DURABLE_SETTINGS, PostgresCluster
from peers.tls import test_ca

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # every peer and proxy listens on loopback only
SCOPES = "openid email offline_access"


# ---------------------------------------------------------------------- the host app
@dataclass
class Bench:
    """A host app wired as a helpdesk wires the extension (as in ``tests/conftest.py``)."""

    app: Flask
    db: SQLAlchemy
    ext: MailOAuth

    @property
    def st(self) -> MailOAuthState:
        return self.app.extensions["mailoauth"]


def make_app(
    db_url: str, *, key: str | None = None, create: bool = True, name: str = "bench", **config: Any
) -> Bench:
    """A Flask app with Flask-SQLAlchemy on ``db_url`` and the extension; tables created.

    The local IdP's certificate is checked against this process's test CA unless ``config``
    names another ``MAILOAUTH_CA_BUNDLE`` (a spawned child: its parent's CA)."""
    app = Flask(name)
    app.config.update(
        SECRET_KEY="bench-secret-key",
        SQLALCHEMY_DATABASE_URI=db_url,
        MAILOAUTH_ENCRYPTION_KEYS=[key or generate_key()],
        MAILOAUTH_ALLOW_INSECURE_HTTP=True,  # the local IdP listens on 127.0.0.1
    )
    if "MAILOAUTH_CA_BUNDLE" not in config:
        app.config["MAILOAUTH_CA_BUNDLE"] = str(test_ca().ca_file)
    app.config.update(config)
    db = SQLAlchemy()
    db.init_app(app)
    ext = MailOAuth(app, db=db)
    ext.mailbox_loader(lambda k: MailboxSettings(address=f"{k}@example.test"))
    ext.access_check(lambda: True)
    if create:
        with app.app_context():
            db.create_all()
    return Bench(app, db, ext)


def generic_config(idp: Any | None, client_id: str) -> dict[str, str]:
    """The generic provider's IdP Config for the local IdP (or a placeholder without one)."""
    base = idp.base_url if idp is not None else "https://idp.example.test"
    metadata = idp.metadata if idp is not None else {}
    return {
        "issuer": idp.issuer if idp is not None else base,
        "client_id": client_id,
        "authorization_endpoint": metadata.get("authorization_endpoint", f"{base}/auth"),
        "token_endpoint": metadata.get("token_endpoint", f"{base}/token"),
        "jwks_uri": metadata.get("jwks_uri", f"{base}/jwks"),
        "scopes": SCOPES,
        "email_attribute": "email",
    }


@dataclass(frozen=True)
class Grant:
    """What an account holds: its key, tokens, and seconds its access token has left."""

    key: str
    access_token: str
    refresh_token: str
    expires_in: float = 3600


def add_accounts(
    bench: Bench, config: dict[str, str], client_secret: str, grants: Iterable[Grant]
) -> int:
    """Store authorized accounts as the callback would have (the extension's own
    ``flask_mailoauth.testing.seed_account``), issued an hour ago; returns how many."""
    issued = utcnow() - timedelta(hours=1)
    count = 0
    with bench.app.app_context():
        for grant in grants:
            seed_account(
                grant.key,
                address=f"{grant.key}@example.test",
                name=f"{grant.key} (mailbox)",
                config=config,
                client_secret=client_secret,
                access_token=grant.access_token,
                refresh_token=grant.refresh_token,
                expires_in=grant.expires_in,
                issued_at=issued,
                scope=SCOPES,
            )
            count += 1
    return count


# ---------------------------------------------------------------------- SQL statements
class StatementCounter:
    """Counts statements sent to ``engine`` (``before_cursor_execute``) while attached."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.count = 0

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.count += 1

    def reset(self) -> None:
        self.count = 0

    def __enter__(self) -> StatementCounter:
        sa.event.listen(self.engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._on_execute)


# ---------------------------------------------------------------------- timing
def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


@dataclass(frozen=True)
class Spread:
    """Several runs of one measurement, shown everywhere the same way: median [min, max]."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        found = tuple(values)
        if not found:
            raise ValueError("a spread needs at least one run")
        return cls(found)

    @property
    def runs(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def map(self, fn: Callable[[float], float]) -> Spread:
        """The same runs seen through ``fn`` (seconds per run to refreshes/s, say)."""
        return Spread(tuple(fn(v) for v in self.values))

    def fmt(self, render: Callable[[float], str] | None = None) -> str:
        show = render or fmt_ms
        return f"{show(self.median)} [{show(self.min)}, {show(self.max)}]"


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (another one: the IdP, say) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- the table
@dataclass
class Row:
    """One line of the table: a figure, its baseline, their ratio and the target."""

    bench: str
    figure: str
    value: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None
    note: str = ""


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    if ms < 0.1:
        return f"{ms * 1000:.2f} us"
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 10_000:
        return f"{ms:.0f} ms"
    return f"{seconds:.1f} s"


def fmt_runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def format_table(rows: list[Row]) -> str:
    """A fixed-width text table (readable in a terminal, Markdown code block and RST literal)."""
    header = ("benchmark", "figure", "flask-mailoauth", "baseline", "ratio", "target", "met")
    lines = [
        (
            r.bench,
            r.figure,
            r.value,
            r.baseline,
            r.ratio,
            r.target,
            {True: "yes", False: "NO", None: "-"}[r.met],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]

    def line(cells: Iterable[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule]
    previous = None
    for cells in lines:
        if previous is not None and cells[0] != previous:
            out.append("")
        out.append(line(cells))
        previous = cells[0]
    notes = [f"[{r.bench}] {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", *notes]
    return "\n".join(out)


# ---------------------------------------------------------------------- the IdP
def register_post_client(idp: IdP, *, rotate: bool | None = False) -> Client:
    """A confidential client authenticating with client_secret_post, as the extension does."""
    return idp.register_client(rotate=rotate, auth_method="client_secret_post")


def refresh_grant(
    http: requests.Session | Any, token_url: str, client: Any, refresh_token: str
) -> dict:
    """One refresh_token grant with client_secret_post; raises on anything but 200."""
    r = http.post(
        token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
        timeout=30,
    )
    if r.status_code != 200:
        raise RuntimeError(f"refresh refused: {r.status_code} {r.text[:200]}")
    return r.json()


class PerThreadSession:
    """A ``requests.Session`` per thread (keep-alive), all closed at the end."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._guard = threading.Lock()

    def get(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.trust_env = False  # REQUESTS_CA_BUNDLE would replace the CA below
            s.verify = str(test_ca().ca_file)  # the local IdP's CA
            with self._guard:
                self._all.append(s)
        return s

    def close(self) -> None:
        for s in self._all:
            s.close()


# ---------------------------------------------------------------------- latency
class DelayProxy:
    """A TCP proxy on 127.0.0.1 delaying every chunk by ``delay`` seconds in each direction
    (latency, not bandwidth: chunks queue up in order), charging one round trip for each new
    TCP connection and, with ``tls=True``, one more for a TLS 1.3 handshake (the model is in
    ``benchmarks/proxy.py``). It runs in a process of its own, so the benchmark's own CPU use
    cannot slow it down. ``round_trips`` counts the times a client spoke after the server (or
    first): each such turn waits for the server's answer; ``connections`` the connections."""

    def __init__(self, upstream: tuple[str, int], delay: float = 0.020, tls: bool = False) -> None:
        import multiprocessing

        from . import proxy

        ctx = multiprocessing.get_context("spawn")
        self.delay = delay
        self.tls = tls
        self._trips = ctx.Value("q", 0)
        self._connections = ctx.Value("q", 0)
        parent, child = ctx.Pipe()
        self._process = ctx.Process(
            target=proxy.serve,
            args=(upstream, delay, tls, self._trips, self._connections, child),
            daemon=True,
        )
        self._process.start()
        child.close()
        if not parent.poll(60):
            self.close()
            raise RuntimeError("the delay proxy did not start")
        self.port: int = parent.recv()
        parent.close()

    @property
    def round_trips(self) -> int:
        return self._trips.value

    @property
    def connections(self) -> int:
        return self._connections.value

    def close(self) -> None:
        if self._process.is_alive():
            self._process.terminate()  # our own child, by its PID
        self._process.join(10)


# ---------------------------------------------------------------------- the peers
@dataclass
class Peers:
    """Real local peers started on demand with the real-peer harness's classes (``peers``), in a
    temp dir, and stopped by PID (their ``stop()``) when the ``with`` block ends."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mailoauth-bench-")))
    started: list[Any] = field(default_factory=list)
    failed: bool = False  # keep the peers' logs
    _idp: IdP | None = None
    _postgres: PostgresCluster | None = None
    _dovecot: Dovecot | None = None

    def __post_init__(self) -> None:
        self.workdir.chmod(0o755)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.logs.chmod(0o777)

    @property
    def idp(self) -> IdP:
        if self._idp is None:
            _require("idp")
            self._idp = IdP("generic", self.logs)
            self.started.append(self._idp)
        return self._idp

    @property
    def postgres(self) -> PostgresCluster:
        if self._postgres is None:
            _require("postgresql")
            self._postgres = PostgresCluster(self.workdir, self.logs, DURABLE_SETTINGS)
            self.started.append(self._postgres)
        return self._postgres

    @property
    def dovecot(self) -> Dovecot:
        if self._dovecot is None:
            _require("dovecot")
            self._dovecot = Dovecot("dovecot-bench", self.idp, self.workdir, self.logs)
            self.started.append(self._dovecot)
        return self._dovecot

    @property
    def postgres_version(self) -> str | None:
        """The started cluster's major version, or None when no benchmark needed one."""
        return self._postgres.version if self._postgres is not None else None

    @property
    def idp_scheme(self) -> str | None:
        """ "http" or "https" for the started IdP, or None when no benchmark needed one."""
        return self._idp.base_url.split(":", 1)[0] if self._idp is not None else None

    def postgres_url(self) -> str:
        return self.postgres.url(self.postgres.create_database("bench"))

    def stop(self, keep_logs: bool = False) -> None:
        for peer in reversed(self.started):
            try:
                peer.stop()
            except Exception as exc:  # stop the others regardless
                print(f"could not stop {peer!r}: {exc}")
        self.started.clear()
        if keep_logs:
            dest = REPO_ROOT / "test-artifacts" / f"bench-logs-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.copytree(self.logs, dest, dirs_exist_ok=True)
            print(f"peer logs kept in {dest}")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _require(name: str) -> None:
    missing = peer_missing(name)
    if missing:
        raise PeerUnavailable(f"{name} is not installed here: {missing}")


class PeerUnavailable(RuntimeError):
    """A peer a benchmark needs is not installed (``scripts/install-peers``)."""


@contextmanager
def peers() -> Iterator[Peers]:
    """``with peers() as p: p.idp ...``: everything started is stopped at the end."""
    p = Peers()
    ok = False
    try:
        yield p
        ok = True
    finally:
        p.stop(keep_logs=not ok or p.failed or os.environ.get("MAILOAUTH_KEEP_PEER_LOGS") == "1")
