"""Is a peer installed? ``require_peer(name)`` skips loudly (or fails, with ``CI=true``)."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys

import pytest

from .process import NODE_DIR

INSTALL_HINT = "run `scripts/install-peers` as root on Debian (apt + npm), then re-run the tests"

PEERS = ("idp", "dovecot", "postfix", "postgresql", "chromium", "axe")
#: axe-core, injected into pages by the accessibility tests
AXE_JS = NODE_DIR / "node_modules" / "axe-core" / "axe.min.js"

_announced: set[str] = set()
missing_reports: list[str] = []  # shown again in the terminal summary


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def is_root() -> bool:
    return os.geteuid() == 0


def initdb_path() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found[-1] if found else None


def _missing(name: str) -> list[str]:
    need: list[str] = []
    if name == "idp":
        if not shutil.which("node"):
            need.append("node (Debian package nodejs)")
        if not (NODE_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
            need.append(f"npm oidc-provider in {NODE_DIR}")
    elif name in ("dovecot", "postfix"):
        for binary, pkg in (
            ("/usr/sbin/dovecot", "dovecot-imapd dovecot-pop3d dovecot-lmtpd"),
            ("/usr/lib/dovecot/imap", "dovecot-imapd"),
            ("/usr/lib/dovecot/pop3", "dovecot-pop3d"),
            ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ):
            if not os.path.exists(binary):
                need.append(f"{binary} (Debian package {pkg})")
        if name == "postfix" and not os.path.exists("/usr/sbin/postfix"):
            need.append("/usr/sbin/postfix (Debian package postfix)")
        if not is_root():
            need.append("root (Dovecot and Postfix are run as root from a temp dir)")
    elif name == "postgresql":
        if initdb_path() is None:
            need.append("/usr/lib/postgresql/*/bin/initdb (Debian package postgresql)")
        if not is_root():
            need.append("root (the cluster is initialised as user postgres with runuser)")
        if importlib.util.find_spec("psycopg") is None:
            need.append("Python psycopg (pip install -e '.[e2e]')")
    elif name == "chromium":
        if not os.path.exists("/usr/bin/chromium"):
            need.append("/usr/bin/chromium (Debian package chromium)")
        if importlib.util.find_spec("playwright") is None:
            need.append("Python playwright (pip install -e '.[e2e]'; never `playwright install`)")
    elif name == "axe":
        if not AXE_JS.exists():
            need.append(f"npm axe-core in {NODE_DIR}")
    else:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return need


def peer_missing(name: str) -> str | None:
    """A one-line reason the peer can't run here, or None if it can."""
    need = _missing(name)
    if not need:
        return None
    return f"E2E PEER MISSING: {name}: needs {'; '.join(need)} — {INSTALL_HINT}"


def require_peer(name: str) -> None:
    """Skip the calling test (fail it in CI) if peer ``name`` is not installed here."""
    reason = peer_missing(name)
    if reason is None:
        return
    if name not in _announced:
        _announced.add(name)
        missing_reports.append(reason)
        print(f"\n{reason}", file=sys.stderr)
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing peer is a failure)", pytrace=False)
    pytest.skip(reason)
