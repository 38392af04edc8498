"""The real-peer harness: IdPs (incl. a hostile one), Dovecot, Postfix, PostgreSQL, Chromium.

Real software started on 127.0.0.1, shared by the tests, the demo sandbox and the benchmarks;
it is not part of the installed package. Pytest fixtures live in ``peers.plugin``
(``tests/conftest.py`` loads it); the helpers below are imported directly:
``from peers import login_and_consent, require_peer, live_server``.
"""

from .availability import peer_missing, require_peer
from .idp import (
    OUTLOOK_SCOPES,
    UNUSED_REDIRECT,
    Client,
    IdP,
    IdPError,
    browser_login_and_consent,
    login_and_consent,
    pkce_pair,
)
from .live import LiveServer, live_server
from .process import ARTIFACTS_DIR, HOST, REPO_ROOT, free_port, free_ports, wait_for_port

__all__ = [
    "ARTIFACTS_DIR",
    "HOST",
    "OUTLOOK_SCOPES",
    "REPO_ROOT",
    "UNUSED_REDIRECT",
    "Client",
    "IdP",
    "IdPError",
    "LiveServer",
    "browser_login_and_consent",
    "free_port",
    "free_ports",
    "live_server",
    "login_and_consent",
    "peer_missing",
    "pkce_pair",
    "require_peer",
    "wait_for_port",
]
