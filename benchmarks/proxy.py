"""The delay proxy's process (see ``common.DelayProxy``): kept free of heavy imports."""

from __future__ import annotations

import queue
import signal
import socket
import sys
import threading
import time
from typing import Any

HOST = "127.0.0.1"


def serve(upstream: tuple[str, int], delay: float, trips: Any, conn: Any) -> None:
    """Accept on a free loopback port (sent through ``conn``) until terminated."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(64)
    conn.send(listener.getsockname()[1])
    conn.close()
    last_speaker = ["server"]
    try:
        _accept(listener, upstream, delay, trips, last_speaker)
    finally:
        listener.close()


def _accept(
    listener: socket.socket,
    upstream: tuple[str, int],
    delay: float,
    trips: Any,
    last_speaker: list[str],
) -> None:
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(upstream)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = threading.Semaphore(0)
        _pump(client, server, delay, trips, last_speaker, done, client_side=True)
        _pump(server, client, delay, trips, last_speaker, done, client_side=False)
        threading.Thread(target=_close_when_done, args=(done, client, server), daemon=True).start()


def _close_when_done(done: threading.Semaphore, *sockets: socket.socket) -> None:
    done.acquire()
    done.acquire()
    for s in sockets:
        s.close()


def _pump(
    source: socket.socket,
    sink: socket.socket,
    delay: float,
    trips: Any,
    last_speaker: list[str],
    done: threading.Semaphore,
    *,
    client_side: bool,
) -> None:
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
    speaker = "client" if client_side else "server"

    def read() -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if data and speaker != last_speaker[0]:
                last_speaker[0] = speaker
                if client_side:
                    with trips.get_lock():
                        trips.value += 1
            chunks.put((time.perf_counter() + delay, data))
            if not data:
                return

    def write() -> None:
        try:
            while True:
                due, data = chunks.get()
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except OSError:
            return
        finally:
            done.release()

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=write, daemon=True).start()
