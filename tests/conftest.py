"""Shared fixtures: a host app factory wired the way a helpdesk would wire the extension."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_mailoauth import MailboxSettings, MailOAuth, i18n
from flask_mailoauth.crypto import generate_key
from peers.guard import GUARD
from peers.hostile import FIGURES
from peers.tls import test_ca

from .pseudo_locale import PSEUDO, write_catalogues

pytest_plugins = ["peers.plugin", "tests.hostile_driver"]

TEST_KEY = generate_key()


@pytest.fixture(scope="session", autouse=True)
def socket_guard():
    """No connection from this process leaves loopback (``peers.guard``)."""
    GUARD.install()
    yield GUARD
    GUARD.uninstall()


def pytest_terminal_summary(terminalreporter) -> None:
    """The hostile IdP figures, when the hostile tests ran."""
    if FIGURES.inputs:
        terminalreporter.write_line(FIGURES.line(left_loopback=len(GUARD.blocked)), bold=True)
        terminalreporter.write_line(FIGURES.checks())


@dataclass
class Host:
    """A host app with its db and extension, as a helpdesk would build them."""

    app: Flask
    db: SQLAlchemy
    ext: MailOAuth
    mailboxes: dict[str, MailboxSettings]


@pytest.fixture
def make_host(tmp_path) -> Callable[..., Host]:
    """Build a host app; keyword arguments become config, ``access=False`` omits the check."""
    counter = iter(range(1000))

    def factory(*, access: bool | None = True, db_url: str | None = None, **config: Any) -> Host:
        app = Flask(f"host{next(counter)}")
        app.config.update(
            TESTING=True,
            SECRET_KEY="test-secret-key",
            SQLALCHEMY_DATABASE_URI=db_url or f"sqlite:///{tmp_path / 'host.sqlite3'}",
            MAILOAUTH_ENCRYPTION_KEYS=[TEST_KEY],
            MAILOAUTH_ALLOW_INSECURE_HTTP=True,
            MAILOAUTH_CA_BUNDLE=str(test_ca().ca_file),
        )
        app.config.update(config)
        db = SQLAlchemy()
        db.init_app(app)
        ext = MailOAuth(app, db=db)
        mailboxes = {
            "support": MailboxSettings(address="support@example.test"),
        }
        ext.mailbox_loader(mailboxes.get)
        if access is not None:
            ext.access_check(lambda: access)
        with app.app_context():
            db.create_all()
        return Host(app, db, ext, mailboxes)

    return factory


@pytest.fixture
def host(make_host) -> Host:
    """The default host: SQLite, an access check that lets everyone in."""
    return make_host()


@pytest.fixture(scope="session")
def pseudo_catalogues(tmp_path_factory) -> Path:
    """The translations folder of the pseudo-language (``tests.pseudo_locale``), built once."""
    return write_catalogues(tmp_path_factory.mktemp("translations"))


@pytest.fixture
def pseudo_locale(monkeypatch, pseudo_catalogues) -> Iterator[str]:
    """The extension reads its catalogues from the pseudo translations; yields the locale."""
    monkeypatch.setattr(i18n, "_CATALOGUES", pseudo_catalogues)
    monkeypatch.setattr(i18n, "_loaded", {})
    i18n.available_locales.cache_clear()
    yield PSEUDO
    i18n.available_locales.cache_clear()
