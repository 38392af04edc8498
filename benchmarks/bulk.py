"""Bulk refresh: ``flask mailoauth refresh --due`` over N due accounts vs the IdP's own pace.

Every account holds its own real grant (an authorization code + PKCE grant made at the local
IdP, created concurrently before the clock starts). The command is invoked as cron would
(``app.test_cli_runner().invoke(["mailoauth", "refresh", "--due"])``) with
``MAILOAUTH_REFRESH_CONCURRENCY`` workers. The baseline sends the same N refresh_token grants
with plain ``requests`` from the same number of threads (a keep-alive session per thread):
that is what the IdP can serve at this concurrency. Runs alternate; the client is
non-rotating (Google-like), so the same refresh tokens serve every run.

Twice: on the same machine, where CPU is the limit (so the process CPU per refresh is
measured, next to the IdP's CPU per grant and the bare keep-alive client's CPU per request:
the physical limit), and with the token endpoint behind the delay proxy (``proxy.py``), far
away like a cloud IdP, paying a round trip per new TCP connection and one per TLS handshake,
where waiting, not CPU, is what concurrency and keep-alive have to hide.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from flask_mailoauth.models import own_session, utcnow
from peers.idp import IdP

from .common import (
    HOST,
    Bench,
    DelayProxy,
    Grant,
    Peers,
    PerThreadSession,
    Row,
    Spread,
    StatementCounter,
    add_accounts,
    fmt_ms,
    fmt_ratio,
    fmt_runs,
    generic_config,
    make_app,
    proc_cpu_seconds,
    refresh_grant,
    register_post_client,
)

# Targets of issue 14 (benchmarks/README.md), per database where they differ.
LATENCY_TARGET = 0.9  # of the IdP's keep-alive throughput, the IdP 50 ms away
CPU_TARGET = 0.0025  # client process CPU seconds per refresh, same machine
SQL_TARGET = {"SQLite": 5, "PostgreSQL": 3}  # statements per refresh
LINEAR = 1.3  # time per account at the largest size over the smallest, at most


@dataclass
class Side:
    """One side's runs at one size: wall seconds, process CPU seconds, connections opened."""

    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)

    def rate(self, accounts: int) -> Spread:
        return Spread.of(self.seconds).map(lambda s: accounts / s)

    def per_account(self, accounts: int) -> float:
        return Spread.of(self.seconds).median / accounts

    def cpu_per_account(self, accounts: int) -> Spread:
        return Spread.of(self.cpu).map(lambda c: c / accounts)


@dataclass
class SizeResult:
    accounts: int
    ours: Side = field(default_factory=Side)
    idp: Side = field(default_factory=Side)  # the keep-alive baseline
    idp_cpu: list[float] = field(default_factory=list)  # the IdP process, baseline runs
    statements: list[int] = field(default_factory=list)  # per run
    idp_refreshes: int = 0  # the IdP's count for the last extension run

    @property
    def runs(self) -> int:
        return len(self.ours.seconds)

    @property
    def ratio(self) -> float:
        """Our throughput over the IdP's (medians)."""
        return self.idp.per_account(self.accounts) / self.ours.per_account(self.accounts)


@dataclass
class BulkResult:
    concurrency: int
    sizes: list[SizeResult]
    delay: float = 0.0  # one way, through the proxy; 0 = straight to the local IdP
    tls: bool = False


def make_grants(idp: Any, client: Any, count: int, workers: int = 8) -> list[dict]:
    """``count`` real grants for distinct users, made concurrently."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            pool.map(lambda i: idp.code_grant(client, f"bulk{i:05d}@example.test"), range(count))
        )


def _expire_all(bench: Bench) -> None:
    st = bench.st
    with bench.app.app_context(), own_session(st.db) as s:
        expired = utcnow() - timedelta(minutes=1)
        s.execute(sa.update(st.models.Credential).values(expires_at=expired))


def _cli_refresh(bench: Bench, expected: int) -> tuple[float, int]:
    """Seconds for ``flask mailoauth refresh --due``, and the SQL statements it sent."""
    runner = bench.app.test_cli_runner()
    with bench.app.app_context():
        engine = bench.db.engine
    with StatementCounter(engine) as counter:
        started = time.perf_counter()
        result = runner.invoke(args=["mailoauth", "refresh", "--due"])
        elapsed = time.perf_counter() - started
    wanted = f"Refreshed {expected} of {expected} account(s)."
    if result.exit_code != 0 or wanted not in result.output:
        raise RuntimeError(f"refresh --due failed ({result.exit_code}): {result.output[-2000:]}")
    return elapsed, counter.count


def _idp_baseline(token_url: str, client: Any, refresh_tokens: list[str], workers: int) -> float:
    sessions = PerThreadSession()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            started = time.perf_counter()
            list(
                pool.map(
                    lambda rt: refresh_grant(sessions.get(), token_url, client, rt),
                    refresh_tokens,
                )
            )
            return time.perf_counter() - started
    finally:
        sessions.close()


@dataclass(frozen=True)
class Grants:
    """Real grants at the local IdP for one non-rotating (Google-like) client."""

    client: Any
    grants: list[dict]
    seconds: float  # to make them


def prepare(peers: Peers, count: int) -> Grants:
    client = register_post_client(peers.idp, rotate=False)
    started = time.perf_counter()
    made = make_grants(peers.idp, client, count)
    return Grants(client, made, time.perf_counter() - started)


def _db_url(peers: Peers, backend: str, label: str) -> str:
    if backend == "PostgreSQL":
        return peers.postgres_url()
    return f"sqlite:///{peers.workdir / f'bulk-{label}-{time.monotonic_ns()}.sqlite3'}"


def _accounts(bench: Bench, config: dict, grants: Grants, size: int) -> list[str]:
    chosen = grants.grants[:size]
    add_accounts(
        bench,
        config,
        grants.client.client_secret,
        (
            Grant(f"bulk{i:05d}", g["access_token"], g["refresh_token"], expires_in=-60)
            for i, g in enumerate(chosen)
        ),
    )
    return [g["refresh_token"] for g in chosen]


class _Meter:
    """Wall time, this process's CPU time, the IdP's CPU time and the proxy's connections
    across one timed block."""

    def __init__(self, idp: IdP, proxy: DelayProxy | None) -> None:
        self.idp, self.proxy = idp, proxy

    def __enter__(self) -> _Meter:
        self._connections = self.proxy.connections if self.proxy else 0
        self._idp_cpu = proc_cpu_seconds(self.idp.proc.pid)
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self._cpu
        self.idp_cpu = proc_cpu_seconds(self.idp.proc.pid) - self._idp_cpu
        self.connections = (self.proxy.connections if self.proxy else 0) - self._connections


def _compare(
    peers: Peers,
    bench: Bench,
    config: dict[str, str],
    grants: Grants,
    size: int,
    repeats: int,
    proxy: DelayProxy | None = None,
) -> SizeResult:
    """Alternate the IdP baseline and ``refresh --due`` over the same ``size`` grants."""
    idp, concurrency = peers.idp, bench.st.config.refresh_concurrency
    refresh_tokens = _accounts(bench, config, grants, size)
    token_url = config["token_endpoint"]
    result = SizeResult(size)
    for run in range(repeats):
        idp.reset()
        with _Meter(idp, proxy) as meter:
            seconds = _idp_baseline(token_url, grants.client, refresh_tokens, concurrency)
        result.idp.seconds.append(seconds)
        result.idp.cpu.append(meter.cpu)
        result.idp.connections.append(meter.connections)
        result.idp_cpu.append(meter.idp_cpu)
        if run:
            _expire_all(bench)
        idp.reset()
        with _Meter(idp, proxy) as meter:
            seconds, statements = _cli_refresh(bench, size)
        result.ours.seconds.append(seconds)
        result.ours.cpu.append(meter.cpu)
        result.ours.connections.append(meter.connections)
        result.statements.append(statements)
        result.idp_refreshes = idp.refresh_count()
    with bench.app.app_context():
        bench.db.engine.dispose()
    return result


def measure(peers: Peers, backend: str, grants: Grants, repeats: dict[int, int]) -> BulkResult:
    """``refresh --due`` and the IdP baseline at each size (``repeats``: size -> runs),
    straight to the local IdP on the same machine."""
    config = generic_config(peers.idp, grants.client.client_id)
    results = []
    for size, runs in repeats.items():
        bench = make_app(_db_url(peers, backend, str(size)))
        results.append(_compare(peers, bench, config, grants, size, runs))
    return BulkResult(bench.st.config.refresh_concurrency, results)


def measure_latency(
    peers: Peers, backend: str, grants: Grants, repeats: dict[int, int], delay: float = 0.050
) -> BulkResult:
    """The same with the token endpoint behind the delay proxy, ``delay`` each way, charging
    TCP and TLS 1.3 setup (a real handshake once the IdP serves https, simulated before)."""
    idp = peers.idp
    proxy = DelayProxy((HOST, idp.port), delay, tls=True)
    try:
        token_url = idp.token_endpoint.replace(f":{idp.port}/", f":{proxy.port}/", 1)
        config = generic_config(idp, grants.client.client_id) | {"token_endpoint": token_url}
        results = []
        for size, runs in repeats.items():
            bench = make_app(_db_url(peers, backend, f"latency-{size}"))
            results.append(_compare(peers, bench, config, grants, size, runs, proxy))
        return BulkResult(bench.st.config.refresh_concurrency, results, delay, tls=True)
    finally:
        proxy.close()


def _rate(r: SizeResult, side: Side) -> str:
    return side.rate(r.accounts).fmt(lambda v: f"{v:.0f}/s")


def _linearity(name: str, sizes: list[SizeResult], where: str) -> Row:
    ours = [r.ours.per_account(r.accounts) for r in sizes]
    theirs = [r.idp.per_account(r.accounts) for r in sizes]
    growth = ours[-1] / min(ours)
    return Row(
        name,
        f"{where}time per account at {sizes[-1].accounts:,} over the smallest",
        fmt_ratio(growth),
        f"{fmt_ratio(theirs[-1] / min(theirs))} IdP",
        "-",
        f"<= {LINEAR}x (linear)",
        growth <= LINEAR,
    )


def _note(r: SizeResult) -> str:
    if r.idp_refreshes == r.accounts:
        return ""
    return f"the IdP saw {r.idp_refreshes} refreshes for {r.accounts} accounts"


def rows(result: BulkResult, backend: str) -> list[Row]:
    """Same machine: throughput (context), SQL and CPU per refresh, the physical limit."""
    name = f"bulk refresh ({backend})"
    out = []
    for r in result.sizes:
        out.append(
            Row(
                name,
                f"same machine, {r.accounts:,} due accounts: refreshes/s ({fmt_runs(r.runs)})",
                _rate(r, r.ours),
                f"{_rate(r, r.idp)} IdP keep-alive",
                f"{fmt_ratio(r.ratio)} the IdP's",
                "-",
                None,
                _note(r),
            )
        )
    for r in result.sizes:
        per = max(r.statements) / r.accounts
        out.append(
            Row(
                name,
                f"{r.accounts:,} due accounts: SQL statements per refresh (worst run)",
                f"{per:.2f}",
                "-",
                "-",
                f"<= {SQL_TARGET[backend]}",
                per <= SQL_TARGET[backend],
            )
        )
    for r in result.sizes:
        cpu = r.ours.cpu_per_account(r.accounts)
        bare = r.idp.cpu_per_account(r.accounts)
        out.append(
            Row(
                name,
                f"same machine, {r.accounts:,} due accounts: client process CPU per refresh",
                cpu.fmt(),
                f"{bare.fmt()} bare keep-alive client",
                f"{fmt_ratio(cpu.median / bare.median)} the CPU",
                f"<= {fmt_ms(CPU_TARGET)}",
                cpu.median <= CPU_TARGET,
            )
        )
    largest = result.sizes[-1]
    idp_cpu = Spread.of(largest.idp_cpu).map(lambda c: c / largest.accounts)
    bare = largest.idp.cpu_per_account(largest.accounts)
    cpus = os.cpu_count() or 1
    ceiling = min(1 / idp_cpu.median, cpus / (idp_cpu.median + bare.median))
    out.append(
        Row(
            name,
            f"physical limit at {largest.accounts:,}: IdP CPU per grant + bare client CPU",
            f"{idp_cpu.fmt()} + {fmt_ms(bare.median)}",
            "-",
            f"<= {ceiling:.0f}/s on {cpus} CPUs",
            "-",
            None,
            "the IdP (one node process) serves at most 1/its CPU per grant; the IdP and a "
            "bare keep-alive client together at most CPUs/(their CPU per refresh)",
        )
    )
    if len(result.sizes) > 1:
        out.append(_linearity(name, result.sizes, "same machine: "))
    return out


def latency_rows(result: BulkResult, backend: str) -> list[Row]:
    """The IdP far away: throughput against its keep-alive pace, connections opened."""
    name = f"bulk refresh ({backend})"
    away = f"IdP {result.delay * 1000:.0f} ms away{' + TCP/TLS setup' if result.tls else ''}"
    out = []
    for r in result.sizes:
        out.append(
            Row(
                name,
                f"{away}, {r.accounts:,} due accounts: refreshes/s ({fmt_runs(r.runs)})",
                _rate(r, r.ours),
                f"{_rate(r, r.idp)} IdP keep-alive",
                f"{fmt_ratio(r.ratio)} the IdP's",
                f">= {LATENCY_TARGET}x",
                r.ratio >= LATENCY_TARGET,
                _note(r),
            )
        )
    for r in result.sizes:
        out.append(
            Row(
                name,
                f"{away}, {r.accounts:,} due accounts: new connections per refresh",
                f"{max(r.ours.connections) / r.accounts:.2f}",
                f"{max(r.idp.connections) / r.accounts:.2f} IdP keep-alive",
                "-",
                "-",
                None,
            )
        )
    if len(result.sizes) > 1:
        out.append(_linearity(name, result.sizes, f"{away}: "))
    return out
