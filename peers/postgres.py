"""A throwaway PostgreSQL cluster: initdb in a temp dir, 127.0.0.1 on a free port."""

from __future__ import annotations

import secrets
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from .availability import initdb_path
from .process import HOST, PeerError, free_port, pid_alive, run, stop_pid, track_pid, wait_until

# Tests throw the cluster away, so they skip the disk flushes; benchmarks pay them, as a
# production server does (PostgreSQL's defaults).
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
DURABLE_SETTINGS: Mapping[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}


class PostgresCluster:
    """Attributes: ``host``, ``port``, ``user`` ("postgres", trust auth), ``datadir``,
    ``socket_dir``, ``log``, ``pid`` (postmaster), ``version``, ``settings`` (the server
    settings it was started with: ``FAST_SETTINGS`` unless told ``DURABLE_SETTINGS``).

    ``url(dbname)`` is a SQLAlchemy URL ``postgresql+psycopg://postgres@127.0.0.1:PORT/dbname``;
    ``create_database()`` makes a fresh empty database and returns its name;
    ``drop_database(name)`` drops it (even with open connections).
    """

    user = "postgres"

    def __init__(
        self, workdir: Path, log_dir: Path, settings: Mapping[str, str] = FAST_SETTINGS
    ) -> None:
        initdb = initdb_path()
        if initdb is None:
            raise PeerError("no initdb under /usr/lib/postgresql/*/bin")
        bindir = Path(initdb).parent
        self.version = bindir.parent.name
        self.settings = dict(settings)
        self.host = HOST
        self.port = free_port()
        base = workdir / "postgresql"
        self.datadir = base / "data"
        self.socket_dir = base / "sock"
        self.log = log_dir / "postgresql.log"
        for d in (base, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        self.log.touch()
        shutil.chown(self.log, "postgres", "postgres")
        started = time.monotonic()
        as_pg = ["runuser", "-u", "postgres", "--"]
        run(
            [
                *as_pg,
                str(bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            "initdb",
        )
        opts = " ".join(
            [
                f"-c listen_addresses={HOST} -p {self.port} -k {self.socket_dir}",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
        )
        run(
            [
                *as_pg,
                str(bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "30",
                "-o",
                opts,
                "start",
            ],
            "pg_ctl start",
        )
        self.pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        track_pid(self.pid)
        wait_until(
            self._ready,
            f"postgresql on {HOST}:{self.port}",
            log=self.log,
            alive=lambda: pid_alive(self.pid),
        )
        self.start_seconds = time.monotonic() - started

    def _connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host=HOST,
            port=self.port,
            user=self.user,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def _ready(self) -> bool:
        try:
            with self._connect() as c:
                c.execute("select 1")
            return True
        except Exception:
            return False

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{HOST}:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        with self._connect() as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self._connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        # SIGQUIT = PostgreSQL's "immediate" shutdown: no checkpoint, the cluster is thrown away.
        stop_pid(self.pid, signal.SIGQUIT, timeout=15)

    def __repr__(self) -> str:
        return f"<PostgresCluster {self.version} {HOST}:{self.port}>"
