"""The extension shell: ``MailOAuth``, its configuration defaults and the host's callbacks."""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, appcontext_pushed, current_app

from . import crypto, logs, mail, migrations
from .config import DEFAULTS, Config, keyring
from .errors import MailboxNotFound, MailOAuthError, NotConfigured, SetupError
from .i18n import gettext
from .models import Models, models_for, own_session
from .providers.base import MailServer
from .settings import PURPOSES, MailboxSettings, Purpose
from .vocabulary import FlashKind

if TYPE_CHECKING:
    from .health import AccountHealth

logger = logs.logger


MailboxLoader = Callable[[str], MailboxSettings | None]
AccessCheck = Callable[[], bool]
AccountPage = Callable[[str, str], str]
Conn = TypeVar("Conn")


@dataclass
class MailOAuthState:
    """What one app holds in ``app.extensions["mailoauth"]``."""

    extension: MailOAuth
    db: Any
    models: Models
    keyring: crypto.KeyRing
    #: the checked ``MAILOAUTH_*`` settings, built once by ``init_app``
    config: Config
    cache: dict[Any, Any] = field(default_factory=dict)

    def seal(self, row: Any, name: str, value: str) -> None:
        """Encrypt ``value`` into the secret column ``name`` of ``row``, bound to both."""
        setattr(row, name, self.keyring.encrypt(value, aad=row.aad(name)))

    def reveal(self, row: Any, name: str) -> str:
        """Decrypt the secret column ``name`` of ``row``."""
        return self.keyring.decrypt(getattr(row, name), aad=row.aad(name))


class MailOAuth:
    """OAuth2 for a Flask helpdesk's system mailboxes.

    ``MailOAuth(app, db=db)``, or ``MailOAuth()`` then ``init_app(app, db=db)`` in an app
    factory. The host registers two callbacks: :meth:`mailbox_loader` and :meth:`access_check`.
    One instance may serve several apps; it never keeps a reference to any of them.
    """

    def __init__(self, app: Flask | None = None, *, db: Any = None) -> None:
        self.db = db
        self._mailbox_loader: MailboxLoader | None = None
        self._access_check: AccessCheck | None = None
        self._account_page: AccountPage | None = None
        if app is not None:
            self.init_app(app, db=db)

    def init_app(self, app: Flask, *, db: Any = None) -> None:
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

        from . import cli, views

        with app.app_context():  # so a warning about the keys reaches app.logger's handlers
            ring = keyring(app.config)
        app.extensions["mailoauth"] = MailOAuthState(
            extension=self, db=db, models=models_for(db), keyring=ring, config=config
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
        self._mailbox_loader = callback
        return callback

    def access_check(self, callback: AccessCheck) -> AccessCheck:
        """Decorator: ``callback()`` returns True when the current user may manage OAuth.

        Without one, every view of the extension answers 403.
        """
        self._access_check = callback
        return callback

    def account_page(self, callback: AccountPage) -> AccountPage:
        """Decorator: ``callback(key, purpose)`` returns the URL of the host's page for a mailbox.

        The admin lands there after authorizing. Without it, the page the modal was opened from
        is used (same origin only).
        """
        self._account_page = callback
        return callback

    # -- tokens and mail ---------------------------------------------------------------------

    def access_token(self, key: str, purpose: Purpose = "mailbox") -> str:
        """A fresh access token for mailbox ``key``: cached, read, or refreshed once for all.

        Raises :class:`~flask_mailoauth.errors.NotConfigured`, ``AccountDisabled``,
        ``ReauthorizationRequired``, ``ConfigurationError`` or ``TemporarilyUnavailable``.
        """
        from . import tokens

        return tokens.access_token(state(), key, _purpose(purpose))

    def refresh(self, key: str, purpose: Purpose = "mailbox") -> str:
        """Refresh now, ignoring the backoff after transient failures; returns the new token.

        Any failure raises (``TemporarilyUnavailable`` included), even while the current token
        is still valid: the caller asked for a refresh and learns that it did not happen.
        """
        from . import tokens

        return tokens.refresh(state(), key, _purpose(purpose))

    def health(self) -> list[AccountHealth]:
        """Every account with its status and the warnings an admin should see."""
        from .health import health

        return health(state())

    def connect_imap(self, key: str) -> imaplib.IMAP4:
        """An IMAP connection, signed in with a fresh token, with the mailbox's folder selected.

        Like :meth:`connect_pop3` and :meth:`connect_smtp`, a token the server refuses is
        refreshed once and tried again on a new connection (see :meth:`_signed_in`).
        """
        settings, server = self._server(key, "imap", "mailbox")
        conn = self._signed_in(
            key,
            "mailbox",
            connect=partial(mail.open_imap, server, timeout=_mail_timeout()),
            login=lambda conn, token: mail.imap_login(conn, settings.address, token),
            close=imaplib.IMAP4.shutdown,
        )
        try:
            mail.select_folder(conn, settings.folder)
        except BaseException:
            conn.shutdown()
            raise
        return conn

    def connect_pop3(self, key: str) -> poplib.POP3:
        """A POP3 connection, signed in with a fresh token."""
        settings, server = self._server(key, "pop3", "mailbox")
        return self._signed_in(
            key,
            "mailbox",
            connect=partial(mail.open_pop3, server, timeout=_mail_timeout()),
            login=lambda conn, token: mail.pop3_login(conn, settings.address, token),
            close=poplib.POP3.close,
        )

    def connect_smtp(self, key: str, *, purpose: Purpose = "smtp") -> smtplib.SMTP:
        """An SMTP connection, signed in as the mailbox's sender address.

        ``purpose="mailbox"`` reuses the mailbox's token (a host's "Same as Remote Mailbox").
        """
        purpose = _purpose(purpose)
        settings, server = self._server(key, "smtp", purpose)
        return self._signed_in(
            key,
            purpose,
            connect=partial(mail.open_smtp, server, timeout=_mail_timeout()),
            login=lambda conn, token: mail.smtp_login(conn, settings.sender, token),
            close=smtplib.SMTP.close,
        )

    def _signed_in(
        self,
        key: str,
        purpose: Purpose,
        *,
        connect: Callable[[], Conn],
        login: Callable[[Conn, str], object],
        close: Callable[[Conn], object],
    ) -> Conn:
        """A new connection signed in with the account's token.

        The database may hold a token the mail server no longer takes (revoked, or the server
        restarted with new keys). When the server refuses the token itself, it is refreshed
        once (forced) and tried once more on a new connection; a second refusal is raised with
        guidance beyond the token. Network, TLS and protocol errors are raised at once, and so
        is the typed error of a refresh that fails.
        """
        token = self.access_token(key, purpose)
        refreshed = False
        while True:
            conn = connect()
            try:
                login(conn, token)
                return conn
            except mail.MailAuthenticationError as exc:
                with contextlib.suppress(Exception):
                    close(conn)
                if refreshed:
                    raise exc.after_refresh() from exc
                if not exc.token_refused:
                    raise
                logger.info(
                    "The mail server refused the token of %s (%s); refreshing it once.",
                    key,
                    purpose,
                )
                # A failed refresh raises its typed error, with the refusal as its context.
                token = self.refresh(key, purpose)
                refreshed = True
            except BaseException:
                with contextlib.suppress(Exception):
                    close(conn)
                raise

    def test_connection(self, key: str, purpose: Purpose = "mailbox") -> list[mail.CheckResult]:
        """Sign in for real and report each step of every protocol the account serves: IMAP or
        POP3 for ``mailbox`` (and SMTP too when the mailbox's ``smtp_purpose`` is ``"mailbox"``,
        a host's "Same as Remote Mailbox"), SMTP for ``smtp``.

        Never raises for a refused token or an unreachable server: the results say what failed.
        """
        purpose = _purpose(purpose)
        settings = self.mailbox(key)
        if purpose == "smtp":
            return [self._check(key, "smtp", purpose)]
        checks = [self._check(key, settings.protocol, purpose)]
        if settings.smtp_purpose == purpose:
            checks.append(self._check(key, "smtp", purpose))
        return checks

    def _check(self, key: str, protocol: str, purpose: Purpose) -> mail.CheckResult:
        """One protocol's connection check, signing in with the ``purpose`` account's token."""
        timeout = state().config.mail_timeout

        def token() -> str:
            return self.access_token(key, purpose)

        try:
            settings, server = self._server(key, protocol, purpose, require_account=False)
        except MailOAuthError as exc:
            step = mail.CheckStep(gettext("settings"), False, 0.0, str(exc))
            return mail.CheckResult(protocol.upper(), False, [step])
        if protocol == "smtp":
            # Sign in as the SMTP address, then try the mailbox's own address as sender: when
            # they differ (a delegate for a shared mailbox, an alias), a missing Send As right
            # shows as the "sender" step instead of passing unnoticed.
            return mail.check_smtp(
                server, settings.sender, token, mail_from=settings.address, timeout=timeout
            )
        check = mail.check_imap if protocol == "imap" else mail.check_pop3
        return check(server, settings.address, token, timeout=timeout)

    def _server(
        self, key: str, protocol: str, purpose: Purpose, *, require_account: bool = True
    ) -> tuple[MailboxSettings, MailServer]:
        """The mailbox's settings and its ``protocol`` server, with the defaults of the provider
        of the account that signs in (``purpose``) filled in.

        Without that account: ``NotConfigured`` saying so, unless ``require_account`` is off
        and the host's settings name the server themselves.
        """
        from . import accounts
        from .providers import registry

        settings = self.mailbox(key)
        st = state()
        defaults = None
        with own_session(st.db) as s:
            account = accounts.find(s, st.models, key, purpose)
            if account is not None:
                defaults = registry.get(account.provider).mail_servers(account.config)
        if account is None and require_account:
            raise NotConfigured(_no_account(key, purpose))
        try:
            return settings, mail.resolve_server(settings, protocol, defaults)
        except SetupError:
            if account is None:
                raise NotConfigured(_no_account(key, purpose)) from None
            raise

    def may_manage(self) -> bool:
        """Whether the current request may use the extension's views."""
        return self._access_check is not None and bool(self._access_check())

    def mailbox(self, key: str) -> MailboxSettings:
        """The host's settings for mailbox ``key``, from its ``mailbox_loader``."""
        if self._mailbox_loader is None:
            raise SetupError(
                "No mailbox loader registered: decorate a function taking a key and returning "
                "MailboxSettings with @mailoauth.mailbox_loader."
            )
        settings = self._mailbox_loader(key)
        if settings is None:
            raise MailboxNotFound(f"The mailbox loader knows no mailbox with key {key!r}.")
        if not isinstance(settings, MailboxSettings):
            raise SetupError(
                f"The mailbox loader returned {type(settings).__name__}; "
                "it must return MailboxSettings or None."
            )
        return settings


def state() -> MailOAuthState:
    """The current app's extension state, with a helpful error when it is missing."""
    try:
        return current_app.extensions["mailoauth"]
    except KeyError:
        raise SetupError(
            "flask-mailoauth is not registered on this app. Did you forget to call "
            "mailoauth.init_app(app, db=db)?"
        ) from None


def flash_category(kind: FlashKind) -> str:
    """The host's flash category for ``kind`` (``MAILOAUTH_FLASH_CATEGORIES``, else the kind)."""
    return state().config.flash_categories.get(kind.value, kind.value)


def banner_kind(category: str) -> str:
    """The kind (``success``/``error``) a flashed ``category`` stands for: our own pages style
    their banners by kind, whatever category the host maps it to."""
    for kind, mapped in state().config.flash_categories.items():
        if mapped == category:
            return kind
    return category


def _purpose(purpose: str) -> Purpose:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be 'mailbox' or 'smtp', not {purpose!r}.")
    return purpose  # type: ignore[return-value]


def _no_account(key: str, purpose: Purpose) -> str:
    """What to do when ``key`` has no OAuth2 account for ``purpose``."""
    if purpose == "smtp":
        return gettext(
            "No SMTP account is configured for mailbox %(key)r: open Config next to its SMTP "
            "authentication and authorize one, or sign in to SMTP with the mailbox's own account "
            "(SMTP 'Same as Remote Mailbox'): connect_smtp(key, purpose=\"mailbox\").",
            key=key,
        )
    return gettext(
        "No OAuth2 account is configured for mailbox %(key)r: open Config next to its "
        "mailbox authentication, fill the IdP Config and Submit to authorize it.",
        key=key,
    )


def _mail_timeout() -> float:
    """Seconds for each mail server connection (``MAILOAUTH_MAIL_TIMEOUT``)."""
    return state().config.mail_timeout
