"""The extension shell: ``MailOAuth``, its configuration defaults and the host's callbacks."""

from __future__ import annotations

import imaplib
import poplib
import smtplib

from flask import Flask, appcontext_pushed
from flask_sqlalchemy import SQLAlchemy

from . import cli, connections, logs, migrations, notify, tokens, views
from .config import DEFAULTS, Config, keyring
from .errors import SetupError
from .flashes import banner_kind
from .health import AccountHealth, health
from .mail import CheckResult
from .models import models_for
from .notification import Notification, Notifier
from .settings import PURPOSES, MailboxSettings, Purpose
from .state import AccessCheck, AccountPage, Hooks, MailboxLoader, MailOAuthState, state

logger = logs.logger


class MailOAuth:
    """OAuth2 for a Flask helpdesk's system mailboxes.

    ``MailOAuth(app, db=db)``, or ``MailOAuth()`` then ``init_app(app, db=db)`` in an app
    factory. The host registers two callbacks: :meth:`mailbox_loader` and :meth:`access_check`.
    One instance may serve several apps; it never keeps a reference to any of them.
    """

    def __init__(self, app: Flask | None = None, *, db: SQLAlchemy | None = None) -> None:
        self.db = db
        self._hooks = Hooks()
        if app is not None:
            self.init_app(app, db=db)

    def init_app(self, app: Flask, *, db: SQLAlchemy | None = None) -> None:
        """Register the extension on ``app``: config defaults, tables, blueprint, CLI."""
        if "mailoauth" in app.extensions:
            raise RuntimeError(
                "A 'MailOAuth' instance has already been registered on this Flask app. "
                "Import and use that instance instead."
            )
        db = db if db is not None else self.db
        if db is None:
            db = app.extensions.get("sqlalchemy")
        if db is None:
            raise SetupError(
                "MailOAuth needs the app's Flask-SQLAlchemy instance: "
                "MailOAuth(app, db=db) or mailoauth.init_app(app, db=db)."
            )
        logs.bridge_to_app_logger()
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        config = Config.from_mapping(app.config)
        with app.app_context():  # so a warning about the keys reaches app.logger's handlers
            ring = keyring(app.config)
        app.extensions["mailoauth"] = MailOAuthState(
            extension=self,
            db=db,
            models=models_for(db),
            keyring=ring,
            config=config,
            hooks=self._hooks,
        )
        app.register_blueprint(views.blueprint, url_prefix=config.url_prefix)
        app.add_template_global(views.config_button, "mailoauth_config_button")
        app.add_template_global(banner_kind, "mailoauth_banner_kind")
        app.cli.add_command(cli.mailoauth_cli)
        # Flask-Migrate may be set up before or after us: wire now and on each app context.
        migrations.install(app)
        appcontext_pushed.connect(migrations.install, app)

    # -- host callbacks -------------------------------------------------------------------

    def mailbox_loader(self, callback: MailboxLoader) -> MailboxLoader:
        """Decorator: ``callback(key)`` returns the host's :class:`MailboxSettings` or ``None``."""
        self._hooks.mailbox_loader = callback
        return callback

    def access_check(self, callback: AccessCheck) -> AccessCheck:
        """Decorator: ``callback()`` returns True when the current user may manage OAuth.

        Without one, every view of the extension answers 403.
        """
        self._hooks.access_check = callback
        return callback

    def account_page(self, callback: AccountPage) -> AccountPage:
        """Decorator: ``callback(key, purpose)`` returns the URL of the host's page for a mailbox.

        The admin lands there after authorizing. Without it, the page the modal was opened from
        is used (same origin only).
        """
        self._hooks.account_page = callback
        return callback

    def notifier(self, callback: Notifier) -> Notifier:
        """Decorator: ``callback(notification)`` gets each
        :class:`~flask_mailoauth.notification.Notification` (a condition found, a reminder, a
        recovery), once across every process.

        It runs in a background thread after a refresh, or in ``flask mailoauth notify``; what it
        raises is logged and stops no other channel (see docs/operations.rst, Notifications).
        """
        self._hooks.notifier = callback
        return callback

    # -- tokens and mail ---------------------------------------------------------------------

    def access_token(self, key: str, purpose: Purpose = "mailbox") -> str:
        """A fresh access token for mailbox ``key``: cached, read, or refreshed once for all.

        Raises :class:`~flask_mailoauth.errors.NotConfigured`, ``AccountDisabled``,
        ``ReauthorizationRequired``, ``ConfigurationError`` or ``TemporarilyUnavailable``.
        """
        return tokens.access_token(state(), key, _purpose(purpose))

    def refresh(self, key: str, purpose: Purpose = "mailbox") -> str:
        """Refresh now, ignoring the backoff after transient failures; returns the new token.

        Any failure raises (``TemporarilyUnavailable`` included), even while the current token
        is still valid: the caller asked for a refresh and learns that it did not happen.
        """
        return tokens.refresh(state(), key, _purpose(purpose))

    def notify(self) -> list[Notification]:
        """Check every account for notifications now and send what is due (what ``flask
        mailoauth notify`` does); the notifications this process sent."""
        return notify.check(state())

    def health(self) -> list[AccountHealth]:
        """Every account with its status and the warnings an admin should see."""
        return health(state())

    def connect_imap(self, key: str) -> imaplib.IMAP4:
        """An IMAP connection, signed in with a fresh token, with the mailbox's folder selected.

        Like :meth:`connect_pop3` and :meth:`connect_smtp`, a token the server refuses is
        refreshed once and tried again on a new connection; a second refusal is raised with
        guidance beyond the token.
        """
        return connections.imap(state(), key, timeout=_mail_timeout())

    def connect_pop3(self, key: str) -> poplib.POP3:
        """A POP3 connection, signed in with a fresh token."""
        return connections.pop3(state(), key, timeout=_mail_timeout())

    def connect_smtp(self, key: str, *, purpose: Purpose = "smtp") -> smtplib.SMTP:
        """An SMTP connection, signed in as the mailbox's sender address.

        ``purpose="mailbox"`` reuses the mailbox's token (a host's "Same as Remote Mailbox").
        """
        return connections.smtp(state(), key, _purpose(purpose), timeout=_mail_timeout())

    def test_connection(self, key: str, purpose: Purpose = "mailbox") -> list[CheckResult]:
        """Sign in for real and report each step of every protocol the account serves: IMAP or
        POP3 for ``mailbox`` (and SMTP too when the mailbox's ``smtp_purpose`` is ``"mailbox"``,
        a host's "Same as Remote Mailbox"), SMTP for ``smtp``.

        Never raises for a refused token or an unreachable server: the results say what failed.
        """
        return connections.check(state(), key, _purpose(purpose), timeout=_mail_timeout())

    def may_manage(self) -> bool:
        """Whether the current request may use the extension's views."""
        return self._hooks.may_manage()

    def mailbox(self, key: str) -> MailboxSettings:
        """The host's settings for mailbox ``key``, from its ``mailbox_loader``."""
        return self._hooks.mailbox(key)


def _purpose(purpose: str) -> Purpose:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be 'mailbox' or 'smtp', not {purpose!r}.")
    return purpose


def _mail_timeout() -> float:
    """Seconds for each mail server connection (``MAILOAUTH_MAIL_TIMEOUT``)."""
    return state().config.mail_timeout
