"""Bulk refresh: ``flask mailoauth refresh --due`` over N due accounts vs the IdP's own pace.

Every account holds its own real grant (an authorization code + PKCE grant made at the local
IdP, created concurrently before the clock starts). The command is invoked as cron would
(``app.test_cli_runner().invoke(["mailoauth", "refresh", "--due"])``) with
``MAILOAUTH_REFRESH_CONCURRENCY`` workers. The baseline sends the same N refresh_token grants
with plain ``requests`` from the same number of threads (a keep-alive session per thread):
that is what the IdP can serve at this concurrency on this machine. Runs alternate; the client
is non-rotating (Google-like), so the same refresh tokens serve every run.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from flask_mailoauth.extension import DEFAULTS
from flask_mailoauth.models import own_session, utcnow

from .common import (
    HOST,
    Bench,
    DelayProxy,
    Grant,
    Peers,
    PerThreadSession,
    Row,
    StatementCounter,
    add_accounts,
    fmt_ms,
    fmt_ratio,
    generic_config,
    make_app,
    median,
    refresh_grant,
    register_post_client,
)


@dataclass
class SizeResult:
    accounts: int
    ours: list[float] = field(default_factory=list)  # seconds per run
    theirs: list[float] = field(default_factory=list)
    statements: int = 0  # per run, the last one
    idp_refreshes: int = 0  # the IdP's count for the last extension run

    @property
    def seconds(self) -> float:
        return median(self.ours)

    @property
    def baseline_seconds(self) -> float:
        return median(self.theirs)

    @property
    def ratio(self) -> float:
        """Our throughput over the IdP's."""
        return self.baseline_seconds / self.seconds


@dataclass
class BulkResult:
    concurrency: int
    grant_seconds: float
    grants: int
    sizes: list[SizeResult]


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


def _compare(
    peers: Peers,
    bench: Bench,
    config: dict[str, str],
    grants: Grants,
    size: int,
    repeats: int,
) -> SizeResult:
    """Alternate the IdP baseline and ``refresh --due`` over the same ``size`` grants."""
    idp, concurrency = peers.idp, bench.app.config["MAILOAUTH_REFRESH_CONCURRENCY"]
    refresh_tokens = _accounts(bench, config, grants, size)
    token_url = config["token_endpoint"]
    result = SizeResult(size)
    for run in range(repeats):
        idp.reset()
        result.theirs.append(_idp_baseline(token_url, grants.client, refresh_tokens, concurrency))
        if run:
            _expire_all(bench)
        idp.reset()
        seconds, statements = _cli_refresh(bench, size)
        result.ours.append(seconds)
        result.statements = statements
        result.idp_refreshes = idp.refresh_count()
    with bench.app.app_context():
        bench.db.engine.dispose()
    return result


def measure(
    peers: Peers,
    backend: str,
    grants: Grants,
    sizes: tuple[int, ...] = (100, 1000, 5000),
    repeats: dict[int, int] | None = None,
) -> BulkResult:
    """``refresh --due`` and the IdP baseline at each size, straight to the local IdP."""
    concurrency = int(DEFAULTS["MAILOAUTH_REFRESH_CONCURRENCY"])
    config = generic_config(peers.idp, grants.client.client_id)
    results = []
    for size in sizes:
        bench = make_app(_db_url(peers, backend, str(size)))
        repeat = (repeats or {}).get(size, 1)
        results.append(_compare(peers, bench, config, grants, size, repeat))
    return BulkResult(concurrency, grants.seconds, len(grants.grants), results)


def measure_latency(
    peers: Peers, backend: str, grants: Grants, accounts: int = 100, delay: float = 0.050
) -> SizeResult:
    """The same through a proxy adding ``delay`` each way to the token endpoint: an IdP as far
    away as a cloud one, where waiting, not CPU, is what concurrency has to hide."""
    idp = peers.idp
    proxy = DelayProxy((HOST, idp.port), delay)
    try:
        token_url = idp.token_endpoint.replace(f":{idp.port}/", f":{proxy.port}/", 1)
        config = generic_config(idp, grants.client.client_id) | {"token_endpoint": token_url}
        bench = make_app(_db_url(peers, backend, "latency"))
        return _compare(peers, bench, config, grants, accounts, 1)
    finally:
        proxy.close()


def _throughput_row(name: str, r: SizeResult, what: str = "") -> Row:
    runs = len(r.ours)
    label = f"median of {runs}" if runs > 1 else "1 run"
    return Row(
        name,
        f"{r.accounts:,} due accounts{what}: refreshes/s ({label})",
        f"{r.accounts / r.seconds:.0f}/s ({fmt_ms(r.seconds)})",
        f"{r.accounts / r.baseline_seconds:.0f}/s IdP ({fmt_ms(r.baseline_seconds)})",
        f"{fmt_ratio(r.ratio)} the IdP's",
        ">= 0.8x",
        r.ratio >= 0.8,
        ""
        if r.idp_refreshes == r.accounts
        else f"the IdP saw {r.idp_refreshes} refreshes for {r.accounts} accounts",
    )


def rows(result: BulkResult, backend: str) -> list[Row]:
    name = f"bulk refresh ({backend})"
    out = [_throughput_row(name, r) for r in result.sizes]
    for r in result.sizes:
        out.append(
            Row(
                name,
                f"{r.accounts:,} due accounts: time, SQL statements per account",
                f"{fmt_ms(r.seconds / r.accounts)}, {r.statements / r.accounts:.2f}",
                f"{fmt_ms(r.baseline_seconds / r.accounts)} IdP",
                "-",
                "-",
                None,
            )
        )
    if len(result.sizes) > 1:
        per_account = [r.seconds / r.accounts for r in result.sizes]
        baseline = [r.baseline_seconds / r.accounts for r in result.sizes]
        largest = result.sizes[-1].accounts
        out.append(
            Row(
                name,
                f"time per account at {largest:,} over the smallest per-account time",
                fmt_ratio(per_account[-1] / min(per_account)),
                f"{fmt_ratio(baseline[-1] / min(baseline))} IdP",
                "-",
                "~1x (linear)",
                per_account[-1] / min(per_account) <= 1.3,
            )
        )
    return out


def latency_rows(result: SizeResult, backend: str, delay: float) -> list[Row]:
    name = f"bulk refresh ({backend})"
    return [_throughput_row(name, result, f", IdP {delay * 1000:.0f} ms away each way")]
