"""A socket-level guard: no connection from the test process leaves loopback.

While installed, ``socket.socket.connect`` and ``connect_ex`` refuse (before any packet is sent)
every address outside 127.0.0.0/8 and ::1; AF_UNIX sockets pass. Each refused attempt is
recorded: the figures line reports them, and a test that expects one takes it with
:meth:`SocketGuard.expected`. Peers in their own processes (Chromium, Dovecot, PostgreSQL) are
not affected; they only talk to loopback anyway.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class LeftLoopback(ConnectionRefusedError):
    """A connection to a non-loopback address, refused by the test guard."""


class SocketGuard:
    """Installs itself over ``socket.socket``; :meth:`uninstall` restores it."""

    def __init__(self) -> None:
        #: (host, port) of every refused attempt nobody expected
        self.blocked: list[tuple[str, Any]] = []
        self._expected: list[tuple[str, Any]] | None = None
        self._lock = threading.Lock()
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex

    def install(self) -> None:
        """Patch ``socket.socket`` so that connects are checked first."""
        guard = self

        def connect(sock: socket.socket, address: Any) -> None:
            guard.check(sock, address)
            return guard._connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            guard.check(sock, address)
            return guard._connect_ex(sock, address)

        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Put the original methods back."""
        socket.socket.connect = self._connect  # type: ignore[method-assign]
        socket.socket.connect_ex = self._connect_ex  # type: ignore[method-assign]

    def check(self, sock: socket.socket, address: Any) -> None:
        """Raise :class:`LeftLoopback` (and record it) unless ``address`` is loopback."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        host, port = address[0], address[1]
        if _loopback(host):
            return
        with self._lock:
            (self._expected if self._expected is not None else self.blocked).append((host, port))
        raise LeftLoopback(f"test socket guard: refused a connection to {host} port {port}")

    @contextmanager
    def expected(self) -> Iterator[list[tuple[str, Any]]]:
        """Within: refused attempts are collected into the yielded list, not :attr:`blocked`."""
        taken: list[tuple[str, Any]] = []
        self._expected = taken
        try:
            yield taken
        finally:
            self._expected = None


#: the one guard of the test session, installed by ``tests/conftest.py``
GUARD = SocketGuard()


def _loopback(host: str) -> bool:
    """True when every address ``host`` stands for is loopback (names resolved locally)."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(_loopback(info[4][0]) for info in infos)
