"""Postfix submission with Dovecot SASL, delivering over LMTP to that Dovecot."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from string import Template

from .dovecot import Dovecot
from .process import HOST, PeerError, Proc, free_port, port_open, run, wait_until

TEMPLATES = Path(__file__).with_name("templates")
POSTFIX = "/usr/sbin/postfix"
MASTER = "/usr/lib/postfix/sbin/master"

#: Envelope sender -> SASL logins that may use it (``templates/sender_logins``).
SEND_AS_DELEGATES = {"shared@example.test": ("shared@example.test", "delegate@example.test")}


QUEUE_DIRS = {  # name: (owner, group, mode), as Postfix's post-install makes them
    **dict.fromkeys(
        (
            "active",
            "bounce",
            "corrupt",
            "defer",
            "deferred",
            "flush",
            "hold",
            "incoming",
            "private",
            "saved",
            "trace",
        ),
        ("postfix", "root", 0o700),
    ),
    "maildrop": ("postfix", "postdrop", 0o730),
    "public": ("postfix", "postdrop", 0o710),
    "pid": ("root", "root", 0o755),
}


def make_queue_dirs(queue_dir: Path) -> None:
    for name, (owner, group, mode) in QUEUE_DIRS.items():
        d = queue_dir / name
        d.mkdir(exist_ok=True)
        shutil.chown(d, owner, group)
        d.chmod(mode)


class Postfix:
    """A Postfix master (``master -d``, stopped by PID) with one submission listener.

    Attributes: ``host``, ``port`` (SMTP submission, plaintext, AUTH XOAUTH2/OAUTHBEARER via
    ``dovecot``), ``dovecot``, ``name`` (its directories' and logs' names: one per instance),
    ``config_dir``, ``log`` (Path).

    Send-As (``smtpd_sender_login_maps`` + ``reject_sender_login_mismatch``, refused at MAIL
    FROM with 553 5.7.1): every address may send as itself; ``delegate@example.test`` may also
    send as ``shared@example.test`` (see ``SEND_AS_DELEGATES``). Mail for ``@example.test`` is
    delivered to ``dovecot`` over LMTP; mail for other domains stays deferred in the queue.
    """

    def __init__(
        self, dovecot: Dovecot, workdir: Path, log_dir: Path, name: str = "postfix"
    ) -> None:
        self.dovecot = dovecot
        self.name = name
        self.host = HOST
        self.port = free_port()
        self.config_dir = workdir / name
        queue_dir = workdir / f"{name}-spool"
        data_dir = workdir / f"{name}-data"
        for d in (self.config_dir, queue_dir, data_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        shutil.chown(data_dir, "postfix")
        self.log = log_dir / f"{name}.log"
        values = {
            "queue_dir": queue_dir,
            "data_dir": data_dir,
            "log_path": self.log,
            "log_dir": log_dir,
            "lmtp_socket": dovecot.lmtp_socket,
            "auth_socket": dovecot.auth_postfix_socket,
            "sender_logins": self.config_dir / "sender_logins",
            "listen": f"{HOST}:{self.port}",
        }
        for name in ("main.cf", "master.cf", "sender_logins"):
            text = Template((TEMPLATES / name).read_text()).substitute(values)
            (self.config_dir / name).write_text(text)
            (self.config_dir / name).chmod(0o644)
            # Postfix re-reads a file modified in the last seconds until it is stable
            # (300 ms naps, ~2.5 s): date the freshly written files back.
            past = time.time() - 60
            os.utime(self.config_dir / name, (past, past))
        started = time.monotonic()
        # The queue directories `postfix check` would make (it takes 2 s), then the master in
        # the foreground so that its PID is ours to stop.
        make_queue_dirs(queue_dir)
        self.proc = Proc(
            name,
            [MASTER, "-c", str(self.config_dir), "-d"],
            log_dir / f"{name}-stdout.log",
            env={"MAIL_CONFIG": str(self.config_dir)},
        )
        try:
            wait_until(
                lambda: port_open(self.port),
                f"postfix on {HOST}:{self.port}",
                log=self.log,
                alive=self.proc.alive,
            )
        except PeerError as e:
            self.stop()
            try:  # `postfix check` says what is wrong with the configuration
                run([POSTFIX, "-c", str(self.config_dir), "check"], "postfix check", log=self.log)
            except PeerError as check:
                raise PeerError(f"{e}\n{check}") from e
            raise
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        self.proc.stop()

    def __repr__(self) -> str:
        return f"<Postfix {HOST}:{self.port} sasl+lmtp={self.dovecot.name}>"
