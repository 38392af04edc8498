"""Issue 12 point 17: the demo reads its configuration from the environment, as Flask apps do,
and ``python -m example_app --help`` prints help instead of serving."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

from example_app import create_app
from flask_mailoauth.crypto import generate_key
from flask_mailoauth.outbound import OutboundPolicy

ROOT = Path(__file__).resolve().parents[1]


def test_help_prints_the_options_and_environment_and_exits():
    done = subprocess.run(
        [sys.executable, "-m", "example_app", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for text in ("--plain", "PORT", "DATABASE_URL", "MAILOAUTH_ALLOW_INSECURE_HTTP=1", "FLASK_"):
        assert text in done.stdout, text
    assert "Running on" not in done.stdout + done.stderr


def test_mailoauth_settings_come_from_the_environment(tmp_path, monkeypatch):
    """As found: ``MAILOAUTH_ALLOW_INSECURE_HTTP=1 scripts/demo --plain`` was ignored, so the
    demo refused a newcomer's own IdP on http://127.0.0.1."""
    key = generate_key()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.setenv("MAILOAUTH_ALLOW_INSECURE_HTTP", "1")
    monkeypatch.setenv("MAILOAUTH_HTTP_TIMEOUT", "5")
    monkeypatch.setenv("MAILOAUTH_ENCRYPTION_KEYS", key)
    monkeypatch.setenv("FLASK_SESSION_COOKIE_SECURE", "true")
    app = create_app()
    assert app.config["MAILOAUTH_HTTP_TIMEOUT"] == 5
    assert app.config["MAILOAUTH_ENCRYPTION_KEYS"] == key
    assert app.config["SESSION_COOKIE_SECURE"] is True
    with app.app_context():
        policy = OutboundPolicy.current()
    assert policy.permits("127.0.0.1", ipaddress.ip_address("127.0.0.1"))


def test_without_the_environment_loopback_stays_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.delenv("MAILOAUTH_ALLOW_INSECURE_HTTP", raising=False)
    app = create_app({"MAILOAUTH_ENCRYPTION_KEYS": [generate_key()]})
    with app.app_context():
        policy = OutboundPolicy.current()
    assert not policy.permits("127.0.0.1", ipaddress.ip_address("127.0.0.1"))
