"""A one-connection TCP server on 127.0.0.1 that plays a script, for protocol unit tests.

The server sends a greeting, then for each :class:`Turn` reads one client line, checks it against
what the script expects, and sends the canned replies. It records every line it receives, so a
test can check what the client sent (the token never twice, an empty line after an error
challenge) and count round trips. After the script it reads at most one more line (a LOGOUT or
QUIT) and closes.

``{tag}`` in an expected line matches an IMAP tag; ``{tag}`` in a reply is replaced by the last
tag seen, so IMAP scripts need not guess imaplib's random tag prefix.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

_TAG = re.escape(b"{tag}")


@dataclass(frozen=True)
class Turn:
    """One client line the server expects, the replies it sends, then TLS or hanging up."""

    expect: bytes | re.Pattern[bytes]
    replies: Sequence[bytes] = ()
    starttls: bool = False
    hang_up: bool = False


class ScriptedServer:
    """Plays ``greeting`` then ``turns`` to the first client; use as a context manager."""

    def __init__(
        self,
        greeting: Sequence[bytes],
        turns: Sequence[Turn] = (),
        *,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.greeting = list(greeting)
        self.turns = list(turns)
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.timeout = timeout
        #: every line received, without its CRLF, including any after the script
        self.received: list[bytes] = []
        #: what went against the script (an assertion fails on exit when not empty)
        self.errors: list[str] = []
        #: a transport failure on the server side (e.g. the client refused the TLS handshake)
        self.failure: BaseException | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._thread.join(self.timeout * 2)
        self._listener.close()
        assert not self._thread.is_alive(), "scripted server still running"
        if kind is None:
            assert self.errors == [], self.errors

    def _serve(self) -> None:
        try:
            self._listener.settimeout(self.timeout)
            conn, _peer = self._listener.accept()
        except OSError as exc:
            self.failure = exc
            return
        try:
            conn.settimeout(self.timeout)
            self._play(conn)
        except OSError as exc:
            self.failure = exc
        finally:
            conn.close()

    def _play(self, conn: socket.socket) -> None:
        conn = self._wrap(conn) if self.implicit_tls else conn
        reader = conn.makefile("rb")
        try:
            tag = b""
            self._send(conn, self.greeting, tag)
            for number, turn in enumerate(self.turns, 1):
                line = reader.readline().rstrip(b"\r\n")
                self.received.append(line)
                match = _pattern(turn.expect).fullmatch(line)
                if match is None:
                    self.errors.append(f"turn {number}: expected {turn.expect!r}, got {line!r}")
                    return
                tag = match.groupdict().get("tag") or tag
                self._send(conn, turn.replies, tag)
                if turn.hang_up:
                    return
                if turn.starttls:
                    reader.close()
                    conn = self._wrap(conn)
                    reader = conn.makefile("rb")
            extra = reader.readline().rstrip(b"\r\n")
            if extra:
                self.received.append(extra)
        finally:
            reader.close()
            conn.close()

    def _wrap(self, conn: socket.socket) -> socket.socket:
        assert self.tls is not None, "TLS requested without a server context"
        return self.tls.wrap_socket(conn, server_side=True)

    @staticmethod
    def _send(conn: socket.socket, lines: Sequence[bytes], tag: bytes) -> None:
        if lines:
            conn.sendall(b"".join(line.replace(b"{tag}", tag) + b"\r\n" for line in lines))


def _pattern(expect: bytes | re.Pattern[bytes]) -> re.Pattern[bytes]:
    """A compiled pattern for an expected line; ``{tag}`` in bytes matches an IMAP tag."""
    if isinstance(expect, re.Pattern):
        return expect
    return re.compile(re.escape(expect).replace(_TAG, rb"(?P<tag>[A-Za-z]+\d+)"))
