"""Faults a test can switch on around a refresh: an IdP connection that stops, trickles or
comes back (``TcpProxy``), and a database whose write lock another connection holds."""

from __future__ import annotations

import contextlib
import selectors
import socket
import sqlite3
import threading
import time

import psycopg

from peers import HOST, free_port

#: bytes a trickling :class:`TcpProxy` sends between pauses: a refresh through it (TLS
#: handshake about 1.2 kB, session tickets 0.6 kB, answer 1.3 kB from the test IdP) takes 10
#: pauses
PIECE = 400


class TcpProxy:
    """A tiny TCP forwarder on 127.0.0.1 (one thread per connection) that can be stopped (the
    port then refuses connections) and started again on the same port. ``connections`` counts
    accepted connections. ``trickle``: seconds to pause after each :data:`PIECE` bytes of the
    answer (a slow server; pieces, not lines, as the answer is TLS records)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = (HOST, upstream_port)
        self.port = free_port()
        self.connections = 0
        self.trickle = 0.0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(32)
        listener.settimeout(0.05)
        self._listener = listener
        self._stopping.clear()
        self._spawn(self._accept, listener)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.connections += 1
            self._spawn(self._pipe, client)

    def _pipe(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream, timeout=5) as upstream:
            peers = {client: upstream, upstream: client}
            open_ends = 2
            with selectors.DefaultSelector() as sel:
                for sock in peers:
                    sock.setblocking(False)
                    sel.register(sock, selectors.EVENT_READ)
                while open_ends and not self._stopping.is_set():
                    for sk, _ in sel.select(timeout=0.05):
                        src = sk.fileobj
                        try:
                            data = src.recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            sel.unregister(src)
                            open_ends -= 1
                            with contextlib.suppress(OSError):
                                peers[src].shutdown(socket.SHUT_WR)
                            continue
                        try:
                            self._send(peers[src], data, slow=src is upstream)
                        except OSError:  # the other side hung up (a client's deadline)
                            return

    def _send(self, dst: socket.socket, data: bytes, *, slow: bool) -> None:
        dst.setblocking(True)
        step = PIECE if slow and self.trickle else len(data)
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            dst.sendall(piece)
            if slow and self.trickle:
                time.sleep(self.trickle)
        dst.setblocking(False)


@contextlib.contextmanager
def row_locked(db_url):
    """Another connection holds the write lock: SQLite BEGIN IMMEDIATE, a PostgreSQL row lock
    on every credential. Reads still work; claiming a lease or storing does not."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn = psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql"))
        conn.execute("SELECT id FROM mailoauth_credential FOR UPDATE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()
