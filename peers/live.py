"""Run a Flask (any WSGI) app on a free 127.0.0.1 port in a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from werkzeug.serving import make_server

from .process import HOST, free_port


class LiveServer:
    """Attributes: ``app``, ``host``, ``port``, ``url`` (``http://127.0.0.1:PORT``, no slash).

    ``url_for(path)`` joins a path. ``stop()`` shuts the server down and joins its thread.
    """

    def __init__(self, app, port: int | None = None) -> None:
        self.app = app
        self.host = HOST
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._server = make_server(HOST, self.port, app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"live-server-{self.port}", daemon=True
        )
        self._thread.start()

    def url_for(self, path: str = "/") -> str:
        return self.url + (path if path.startswith("/") else "/" + path)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __repr__(self) -> str:
        return f"<LiveServer {self.url}>"


@contextlib.contextmanager
def live_server(app, port: int | None = None) -> Iterator[LiveServer]:
    """``with live_server(app) as srv: requests.get(srv.url_for("/"))``."""
    srv = LiveServer(app, port)
    try:
        yield srv
    finally:
        srv.stop()
