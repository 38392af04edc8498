"""Process plumbing for the test peers: free ports, start, wait for a port, stop by PID.

Every process started here is remembered and stopped by its PID at interpreter exit too
(``atexit``), so a Ctrl-C or a crashed session does not leave servers listening.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = REPO_ROOT / ".peers"  # git-ignored: installed node modules
NODE_DIR = PEERS_DIR / "node"
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"  # git-ignored: kept logs, screenshots


class PeerError(RuntimeError):
    """A peer did not start; the message carries the tail of its log."""


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def tail(path: Path | str | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    if path is None:
        return ""
    p = Path(path)
    if not p.exists():
        return f"(no log at {p})"
    text = p.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float = 15.0,
    log: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``check`` every 20 ms; raise PeerError with the log tail on timeout or early death."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise PeerError(f"{what}: process exited before it was ready\n{tail(log)}")
        time.sleep(0.02)
    raise PeerError(f"{what}: not ready after {timeout:.0f} s\n{tail(log)}")


def wait_for_port(port: int, what: str, **kw) -> None:
    wait_until(lambda: port_open(port), f"{what} on {HOST}:{port}", **kw)


_live_pids: set[int] = set()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists": reap it if it is our child; an orphan's zombie (a daemon's,
    # e.g. the postmaster) waits for init to reap it, but it is gone for our purposes.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal one PID and wait for it to go away; SIGKILL it after ``timeout``."""
    _live_pids.discard(pid)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.02)


def track_pid(pid: int) -> None:
    """Remember a PID (e.g. a daemon's, read from its pid file) to stop at exit."""
    _live_pids.add(pid)


class Proc:
    """A child process with its output in a log file, stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C in the terminal is handled by us, not it
            )
        self.pid = self.popen.pid
        track_pid(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        _live_pids.discard(self.pid)
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid}>"


def run(argv: Sequence[str], what: str, log: Path | None = None, **kw) -> str:
    """Run a set-up command to completion; raise PeerError with its output if it fails."""
    res = subprocess.run(
        list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False, **kw
    )
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
    if res.returncode:
        raise PeerError(
            f"{what} failed ({res.returncode}): {' '.join(argv)}\n{res.stdout}{res.stderr}"
        )
    return res.stdout


@atexit.register
def _stop_leftovers() -> None:
    for pid in list(_live_pids):
        stop_pid(pid, timeout=3)
