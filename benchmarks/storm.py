"""Refresh storm: K threads in each of P processes ask for one expired token at once.

flask-mailoauth (``MailOAuth.access_token``) is compared with a naive requests-oauthlib loop in
which every caller calls ``OAuth2Session.refresh_token`` itself. Both run in P spawned
processes of K threads against the real local IdP, which counts the refresh_token grants it
serves; the clock runs from the moment every thread is released until the last caller holds a
token (wall-clock times, comparable across processes).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from flask_mailoauth.models import own_session, utcnow

from .common import (
    Grant,
    Peers,
    Row,
    Spread,
    add_accounts,
    fmt_ratio,
    fmt_runs,
    generic_config,
    make_app,
    register_post_client,
)

KEY = "storm"


@dataclass(frozen=True)
class Job:
    """What a child process needs (picklable)."""

    mode: str  # "extension" | "naive"
    db_url: str
    encryption_key: str
    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str
    threads: int
    ca_bundle: str  # the parent's test CA: a spawned child would make another


def _child(job: Job, ready: Any, go: Any, results: Any) -> None:
    """One process of the storm: K threads that wait for ``go`` then each want a token."""
    try:
        if job.mode == "naive":
            from requests_oauthlib import OAuth2Session

            def cleanup() -> None:
                pass

            def want() -> str:
                session = OAuth2Session(
                    job.client_id,
                    token={"access_token": "expired", "refresh_token": job.refresh_token},
                )
                try:
                    token = session.refresh_token(
                        job.token_url,
                        refresh_token=job.refresh_token,
                        client_id=job.client_id,
                        client_secret=job.client_secret,
                        timeout=60,
                        verify=job.ca_bundle,
                    )
                finally:
                    session.close()
                return token["access_token"]
        else:
            bench = make_app(
                job.db_url,
                key=job.encryption_key,
                create=False,
                MAILOAUTH_LOCK_TIMEOUT=60,
                MAILOAUTH_CA_BUNDLE=job.ca_bundle,
                SQLALCHEMY_ENGINE_OPTIONS={"pool_size": job.threads},
            )
            # connect once before the clock starts
            with bench.app.app_context(), bench.db.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

            def want() -> str:
                with bench.app.app_context():
                    return bench.ext.access_token(KEY)

            def cleanup() -> None:
                with bench.app.app_context():
                    bench.db.engine.dispose()

        outcomes: list[tuple[float, str | None, str | None]] = []
        guard = threading.Lock()

        def caller() -> None:
            go.wait()
            try:
                token, error = want(), None
            except Exception as exc:  # reported in the table
                token, error = None, f"{type(exc).__name__}: {exc}"
            with guard:
                outcomes.append((time.time(), token, error))

        threads = [threading.Thread(target=caller) for _ in range(job.threads)]
        for t in threads:
            t.start()
        ready.put(os.getpid())
        for t in threads:
            t.join()
        cleanup()
        results.put(outcomes)
    except BaseException:
        ready.put(None)
        results.put([(time.time(), None, traceback.format_exc())])


@dataclass(frozen=True)
class StormRun:
    callers: int
    refreshes: int  # refresh_token grants the IdP served
    seconds: float  # release -> last caller holds a token
    tokens: int  # distinct access tokens the callers ended up with
    errors: list[str]


@dataclass(frozen=True)
class StormResult:
    """``repeats`` runs of each, alternating; times median [min, max], refresh counts the worst."""

    threads: int
    processes: int
    ours: list[StormRun]
    theirs: list[StormRun]


def _storm(job: Job, processes: int, idp: Any) -> StormRun:
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_child, args=(job, ready, go, results)) for _ in range(processes)]
    try:
        for p in procs:
            p.start()
        pids = [ready.get(timeout=120) for _ in procs]
        idp.reset()
        released = time.time()
        go.set()
        outcomes = [o for _ in procs for o in results.get(timeout=300)]
    finally:
        for p in procs:
            if p.pid is None:  # never started
                continue
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join()
    if None in pids:
        errors = [e for _, _, e in outcomes if e]
        raise RuntimeError(f"a storm process failed to start:\n{errors[0] if errors else ''}")
    return StormRun(
        callers=len(outcomes),
        refreshes=idp.refresh_count(),
        seconds=max(t for t, _, _ in outcomes) - released,
        tokens=len({tok for _, tok, _ in outcomes if tok}),
        errors=sorted({e for _, _, e in outcomes if e}),
    )


def _expire(bench: Any) -> None:
    """Make the stored access token expired again (as an hour later would)."""
    st = bench.st
    with bench.app.app_context(), own_session(st.db) as s:
        expired = utcnow() - timedelta(minutes=1)
        s.execute(sa.update(st.models.Credential).values(expires_at=expired))
    with bench.app.app_context():
        bench.db.engine.dispose()


def measure(
    peers: Peers, backend: str, threads: int = 16, processes: int = 4, repeats: int = 3
) -> StormResult:
    """The extension, then the naive loop, on one expired token stored in ``backend``."""
    idp = peers.idp
    client = register_post_client(idp, rotate=False)  # Google-like: the naive loop can succeed
    grant = idp.code_grant(client, "storm@example.test")
    if backend == "PostgreSQL":
        db_url = peers.postgres_url()
    else:
        db_url = f"sqlite:///{peers.workdir / f'storm-{time.monotonic_ns()}.sqlite3'}"
    bench = make_app(db_url)
    add_accounts(
        bench,
        generic_config(idp, client.client_id),
        client.client_secret,
        [Grant(KEY, grant["access_token"], grant["refresh_token"], expires_in=-60)],
    )
    job = Job(
        mode="extension",
        db_url=db_url,
        encryption_key=bench.app.config["MAILOAUTH_ENCRYPTION_KEYS"][0],
        token_url=idp.token_endpoint,
        client_id=client.client_id,
        client_secret=client.client_secret,
        refresh_token=grant["refresh_token"],
        threads=threads,
        ca_bundle=str(idp.ca_file),
    )
    ours, theirs = [], []
    for _ in range(repeats):
        _expire(bench)
        ours.append(_storm(job, processes, idp))
        theirs.append(_storm(replace(job, mode="naive"), processes, idp))
    return StormResult(threads, processes, ours, theirs)


def rows(result: StormResult, backend: str) -> list[Row]:
    ours, theirs = result.ours, result.theirs
    name = f"refresh storm ({backend})"
    shape = f"{result.threads} threads x {result.processes} processes"
    callers = result.threads * result.processes
    runs = f"worst of {fmt_runs(len(ours))}"
    errors = [e for r in ours for e in r.errors]
    refreshes, baseline_refreshes = max(r.refreshes for r in ours), min(r.refreshes for r in theirs)
    seconds = Spread.of(r.seconds for r in ours)
    baseline_seconds = Spread.of(r.seconds for r in theirs)
    ratio = seconds.median / baseline_seconds.median
    served = min(r.callers - len(r.errors) for r in ours)
    served_baseline = min(r.callers - len(r.errors) for r in theirs)
    tokens = max(r.tokens for r in ours)
    return [
        Row(
            name,
            f"refreshes seen by the IdP, {shape} ({runs})",
            str(refreshes),
            f"{baseline_refreshes} naive OAuth2Session",
            f"{fmt_ratio(baseline_refreshes / max(refreshes, 1))} fewer",
            "1",
            refreshes == 1 and not errors,
            f"errors: {errors[0][:200]}" if errors else "",
        ),
        Row(
            name,
            f"time until all {callers} callers hold a token ({fmt_runs(len(ours))})",
            seconds.fmt(),
            f"{baseline_seconds.fmt()} naive OAuth2Session",
            f"{fmt_ratio(ratio)} the time",
            "<= 1x",
            ratio <= 1,
        ),
        Row(
            name,
            f"callers holding a token, distinct tokens ({runs})",
            f"{served}/{callers}, {tokens} token(s)",
            f"{served_baseline}/{callers}, {max(r.tokens for r in theirs)} token(s)",
            "-",
            f"{callers}/{callers}, 1 token",
            tokens == 1 and served == callers,
        ),
    ]
