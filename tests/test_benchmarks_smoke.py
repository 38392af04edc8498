"""The benchmarks still run: the hot path, tiny and on SQLite, without peers or timings."""

from __future__ import annotations

import importlib
import socket
import threading
import time

import pytest

from benchmarks import hot_path, report
from benchmarks.common import DelayProxy


@pytest.mark.parametrize(
    "module",
    ["run", "common", "hot_path", "storm", "imap_login", "pages", "bulk", "proxy", "report"],
)
def test_every_benchmark_module_imports(module):
    importlib.import_module(f"benchmarks.{module}")


def test_the_hot_path_issues_no_sql_in_steady_state(tmp_path):
    result = hot_path.measure(f"sqlite:///{tmp_path / 'hot.sqlite3'}", calls=200, batch=50)
    assert result.calls == 200
    assert result.first_call_statements == 1
    assert result.steady_statements == 0
    assert result.uncached_statements == 200  # Flask-Dance's get: one query per call
    assert result.cached_statements == 0  # with Flask-Caching, none after the first
    assert result.per_call.runs == 4
    rows = hot_path.rows(result, "SQLite")
    assert rows[2].value == "0 within MAILOAUTH_CACHE_TTL (60 s)"
    assert [row.met for row in rows[2:]] == [True, True]


@pytest.fixture
def echo_server():
    """A loopback echo server (one thread per connection) the proxy fronts."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()
    listener.close()


def _exchange(sock: socket.socket, payload: bytes) -> float:
    """Seconds from sending ``payload`` until its echo is back."""
    started = time.perf_counter()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        received += sock.recv(65536)
    return time.perf_counter() - started


@pytest.mark.parametrize(("tls", "setup_trips"), [(False, 1), (True, 2)])
def test_the_delay_proxy_charges_a_new_connection_not_a_reused_one(echo_server, tls, setup_trips):
    delay = 0.020  # large enough that scheduling jitter cannot blur a round trip
    rtt = 2 * delay
    proxy = DelayProxy(echo_server, delay, tls=tls)
    try:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            first = _exchange(sock, b"GET / HTTP/1.1\r\n\r\n")  # not a TLS record
            new_connection = time.perf_counter() - started
            reused = min(_exchange(sock, b"again") for _ in range(3))
        assert new_connection >= (1 + setup_trips) * rtt
        assert reused >= rtt
        assert reused < (1 + setup_trips) * rtt <= first
        assert proxy.connections == 1
    finally:
        proxy.close()


def test_a_real_tls_handshake_through_the_proxy_is_not_charged_twice(echo_server):
    delay = 0.020  # large enough that scheduling jitter cannot blur a round trip
    proxy = DelayProxy(echo_server, delay, tls=True)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            first = _exchange(sock, b"\x16\x03\x01 a ClientHello")  # relayed, not simulated
        assert 2 * (2 * delay) <= first < 2.75 * (2 * delay)
    finally:
        proxy.close()


@pytest.mark.parametrize("target", report.TARGETS, ids=lambda t: t.path.name)
def test_the_generator_replaces_exactly_the_marked_block(target):
    before, after = "# Title\n\nkept above\n\n", "\n\nkept below\n"
    old = target.render("old figures\n\nmore old figures")
    new = report.replace_block(before + old + after, target, "new figures\nline two")
    assert new.startswith(before)
    assert new.endswith(after)
    block = new[len(before) : -len(after)]
    assert block.startswith(target.begin)
    assert block.endswith(target.end)
    assert "old" not in block
    assert f"{target.indent}new figures\n{target.indent}line two\n" in block
    # generating again from the generated document is stable
    assert report.replace_block(new, target, "new figures\nline two") == new


@pytest.mark.parametrize("target", report.TARGETS, ids=lambda t: t.path.name)
def test_the_real_documents_hold_one_marked_block(target):
    document = target.path.read_text()
    assert report.replace_block(document, target, "x").count(target.begin) == 1


def test_the_generator_refuses_a_missing_or_doubled_marker():
    target = report.TARGETS[0]
    with pytest.raises(ValueError, match="expected one"):
        report.replace_block("no markers here", target, "x")
    with pytest.raises(ValueError, match="expected one"):
        report.replace_block(target.render("a") + target.render("b"), target, "x")
