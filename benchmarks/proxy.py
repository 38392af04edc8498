"""The delay proxy's process (see ``common.DelayProxy``): kept free of heavy imports.

The model, per direction and per connection:

* every chunk is relayed ``delay`` seconds after it was read (latency, not bandwidth);
* a new TCP connection costs one round trip (``2 * delay``) before its first byte moves in
  either direction, as the SYN / SYN-ACK exchange does: the client's ``connect()`` on loopback
  returns at once, so the proxy holds the bytes instead;
* with ``tls=True`` the endpoint is taken to be TLS 1.3, whose handshake costs one more round
  trip before the first request byte. When the client's first byte opens a real TLS record
  (0x16, a ClientHello) the handshake itself flows through the proxy and pays its round trip
  there, so nothing is added; when the upstream speaks plain HTTP (a local IdP without TLS)
  the proxy adds that round trip to the client's first chunk instead.

Bytes are relayed unchanged, so TLS stays end to end between the client and the upstream.
"""

from __future__ import annotations

import queue
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.sharedctypes import Synchronized

HOST = "127.0.0.1"
TLS_HANDSHAKE = 0x16  # the content type of a TLS handshake record: a ClientHello starts with it
TLS_EXTRA_ROUND_TRIPS = 1  # TLS 1.3 full handshake; TLS 1.2 would be 2


def _bump(counter: Synchronized[int]) -> None:
    with counter.get_lock():
        counter.value += 1


def serve(
    upstream: tuple[str, int],
    delay: float,
    tls: bool,
    trips: Synchronized[int],
    connections: Synchronized[int],
    conn: Connection,
) -> None:
    """Accept on a free loopback port (sent through ``conn``) until terminated; ``trips``
    counts the times a client spoke after the server, ``connections`` the connections."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(256)
    conn.send(listener.getsockname()[1])
    conn.close()
    last_speaker = ["server"]
    try:
        while True:
            client, _ = listener.accept()
            _bump(connections)
            _relay(client, upstream, delay, tls, trips, last_speaker)
    finally:
        listener.close()


def _relay(
    client: socket.socket,
    upstream: tuple[str, int],
    delay: float,
    tls: bool,
    trips: Synchronized[int],
    last_speaker: list[str],
) -> None:
    """Relay one accepted connection in both directions, charging its setup."""
    server = socket.create_connection(upstream)
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp_ready = time.perf_counter() + 2 * delay  # the TCP handshake's round trip
    done = threading.Semaphore(0)
    tls_extra = 2 * delay * TLS_EXTRA_ROUND_TRIPS if tls else 0.0
    _pump(client, server, delay, tcp_ready, tls_extra, trips, last_speaker, done, "client")
    _pump(server, client, delay, tcp_ready, 0.0, trips, last_speaker, done, "server")
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
    ready: float,
    plain_tls_extra: float,
    trips: Synchronized[int],
    last_speaker: list[str],
    done: threading.Semaphore,
    speaker: str,
) -> None:
    """Relay ``source`` to ``sink``: nothing before ``ready`` (plus ``plain_tls_extra`` when the
    first chunk is not a TLS record), every chunk ``delay`` after it was read."""
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def read() -> None:
        nonlocal ready
        first = True
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if first and data:
                first = False
                if data[0] != TLS_HANDSHAKE:
                    ready += plain_tls_extra  # a simulated TLS handshake for a plain endpoint
            if data and speaker != last_speaker[0]:
                last_speaker[0] = speaker
                if speaker == "client":
                    _bump(trips)
            chunks.put((max(time.perf_counter(), ready) + delay, data))
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
