"""Run every benchmark and print one table: ``.venv/bin/python -m benchmarks.run [--quick]``.

``--quick`` shrinks every size for a smoke run (about a minute); ``--only NAME`` runs some of
them (hot-path, storm, imap, pages, bulk); ``--write-readme`` (a full run of everything only)
also puts the output in the generated "Latest results" blocks (``report.py``). Peers
(oidc-provider, PostgreSQL, Dovecot) are started on 127.0.0.1 in a temp dir with the real-peer
harness (``peers``) and stopped by PID at the end; a benchmark whose peer is not installed is
reported as skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from . import bulk, hot_path, imap_login, pages, report, storm
from .common import Peers, PeerUnavailable, Row, format_table, peers


@dataclass(frozen=True)
class Sizes:
    hot_path_calls: int = 10_000
    storm_threads: int = 16
    storm_processes: int = 4
    storm_repeats: int = 3
    imap_logins: int = 20
    imap_delay: float = 0.020
    page_renders: int = 200
    callbacks: int = 20
    bulk_repeats: tuple[tuple[int, int], ...] = ((100, 3), (1000, 3), (5000, 3))  # size, runs
    latency_repeats: tuple[tuple[int, int], ...] = ((100, 3), (1000, 3), (5000, 3))
    latency_delay: float = 0.050


FULL = Sizes()
QUICK = Sizes(
    hot_path_calls=1000,
    storm_threads=4,
    storm_processes=2,
    storm_repeats=1,
    imap_logins=3,
    page_renders=20,
    callbacks=3,
    bulk_repeats=((20, 1), (50, 1)),
    latency_repeats=((10, 1), (20, 1)),
)
BACKENDS = ("SQLite", "PostgreSQL")


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_hot_path(p: Peers, sizes: Sizes) -> list[Row]:
    out = []
    for backend in BACKENDS:
        _progress(f"hot path ({backend}): {sizes.hot_path_calls:,} calls each")
        if backend == "SQLite":
            url = f"sqlite:///{p.workdir / 'hot-path.sqlite3'}"
        else:
            url = p.postgres_url()
        out += hot_path.rows(hot_path.measure(url, sizes.hot_path_calls), backend)
    return out


def run_storm(p: Peers, sizes: Sizes) -> list[Row]:
    out = []
    for backend in BACKENDS:
        _progress(
            f"refresh storm ({backend}): {sizes.storm_threads} threads x "
            f"{sizes.storm_processes} processes, {sizes.storm_repeats} run(s) each"
        )
        result = storm.measure(
            p, backend, sizes.storm_threads, sizes.storm_processes, sizes.storm_repeats
        )
        out += storm.rows(result, backend)
    return out


def run_imap(p: Peers, sizes: Sizes) -> list[Row]:
    _progress(f"IMAP login: {sizes.imap_logins} sign-ins each through the delay proxy")
    return imap_login.rows(imap_login.measure(p, sizes.imap_logins, sizes.imap_delay))


def run_pages(p: Peers, sizes: Sizes) -> list[Row]:
    _progress(f"pages: {sizes.page_renders} modal renders, {sizes.callbacks} callbacks")
    return pages.rows(pages.measure(p, sizes.page_renders, sizes.callbacks))


def run_bulk(p: Peers, sizes: Sizes) -> list[Row]:
    count = max(size for size, _ in sizes.bulk_repeats + sizes.latency_repeats)
    _progress(f"bulk refresh: making {count:,} real grants at the IdP")
    grants = bulk.prepare(p, count)
    _progress(f"bulk refresh: {count:,} grants in {grants.seconds:.0f} s")
    out = []
    for backend in BACKENDS:
        local = dict(sizes.bulk_repeats)
        _progress(f"bulk refresh ({backend}), same machine: {_sizes(local)}")
        out += bulk.rows(bulk.measure(p, backend, grants, local), backend)
        away = dict(sizes.latency_repeats)
        _progress(
            f"bulk refresh ({backend}), IdP {sizes.latency_delay * 1000:.0f} ms away: "
            f"{_sizes(away)}"
        )
        latency = bulk.measure_latency(p, backend, grants, away, sizes.latency_delay)
        out += bulk.latency_rows(latency, backend)
    out.append(
        Row(
            "bulk refresh",
            "setup: real code grants made at the IdP (not timed above)",
            f"{len(grants.grants):,} in {grants.seconds:.0f} s",
        )
    )
    return out


def _sizes(repeats: dict[int, int]) -> str:
    return ", ".join(f"{size:,} accounts x {runs}" for size, runs in repeats.items())


BENCHMARKS: dict[str, Callable[[Peers, Sizes], list[Row]]] = {
    "hot-path": run_hot_path,
    "storm": run_storm,
    "imap": run_imap,
    "pages": run_pages,
    "bulk": run_bulk,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="write the output into the Latest results blocks (a full run of everything)",
    )
    args = parser.parse_args(argv)
    if args.write_readme and (args.quick or args.only):
        parser.error("--write-readme needs one full run of every benchmark")
    sizes = QUICK if args.quick else FULL
    header = report.header("quick" if args.quick else "full", report.commit())
    started = time.monotonic()
    rows: list[Row] = []
    failed = False
    with peers() as p:
        for name, bench in BENCHMARKS.items():
            if args.only and name not in args.only:
                continue
            try:
                rows += bench(p, sizes)
            except PeerUnavailable as exc:
                rows.append(Row(name, "skipped: a peer is missing", "-", note=str(exc)))
            except Exception as exc:
                failed = p.failed = True
                traceback.print_exc()
                rows.append(Row(name, "FAILED", "-", note=f"{type(exc).__name__}: {exc}"[:300]))
        postgres, idp_scheme = p.postgres_version, p.idp_scheme
    elapsed = time.monotonic() - started
    output = "\n\n".join(
        [
            header,
            report.settings(sizes.imap_delay, sizes.latency_delay, postgres, idp_scheme),
            format_table(rows),
            f"Total {elapsed:.0f} s; load average {report.load()} at the end.",
        ]
    )
    print()
    print(output)
    if args.write_readme:
        if failed:
            print("not written: a benchmark failed", file=sys.stderr)
        else:
            for path in report.write_results(output):
                _progress(f"wrote the results into {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
