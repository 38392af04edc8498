"""An account's mail connections: its server, signed in with a fresh token (refreshed once when
the server refuses it), and the connection test that reports each step.

``mail`` speaks the protocols; this module adds what an account brings: the host's settings,
the provider's default servers and the token.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TypeVar

from . import accounts, mail, tenant_setup, tokens
from .errors import MailAuthenticationError, MailOAuthError, NotConfigured, SetupError
from .i18n import gettext
from .logs import logger
from .models import own_session
from .providers import registry
from .providers.base import MailServer
from .settings import MailboxSettings, Purpose, ServerProtocol
from .state import MailOAuthState
from .vocabulary import AccessKind

Conn = TypeVar("Conn")


def imap(st: MailOAuthState, key: str, *, timeout: float) -> imaplib.IMAP4:
    """An IMAP connection, signed in with a fresh token, with the mailbox's folder selected."""
    settings, server = server_for(st, key, "imap", "mailbox")
    conn = signed_in(
        st,
        key,
        "mailbox",
        connect=partial(mail.open_imap, server, timeout=timeout),
        login=lambda conn, token: mail.imap_login(conn, settings.address, token),
        close=imaplib.IMAP4.shutdown,
    )
    try:
        mail.select_folder(conn, settings.folder)
    except BaseException:
        conn.shutdown()
        raise
    return conn


def pop3(st: MailOAuthState, key: str, *, timeout: float) -> poplib.POP3:
    """A POP3 connection, signed in with a fresh token."""
    settings, server = server_for(st, key, "pop3", "mailbox")
    return signed_in(
        st,
        key,
        "mailbox",
        connect=partial(mail.open_pop3, server, timeout=timeout),
        login=lambda conn, token: mail.pop3_login(conn, settings.address, token),
        close=poplib.POP3.close,
    )


def smtp(st: MailOAuthState, key: str, purpose: Purpose, *, timeout: float) -> smtplib.SMTP:
    """An SMTP connection, signed in as the mailbox's sender address with ``purpose``'s token."""
    settings, server = server_for(st, key, "smtp", purpose)
    return signed_in(
        st,
        key,
        purpose,
        connect=partial(mail.open_smtp, server, timeout=timeout),
        login=lambda conn, token: mail.smtp_login(conn, settings.sender, token),
        close=smtplib.SMTP.close,
    )


def signed_in(
    st: MailOAuthState,
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
    token = tokens.access_token(st, key, purpose)
    refreshed = False
    while True:
        conn = connect()
        try:
            login(conn, token)
            return conn
        except MailAuthenticationError as exc:
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
            token = tokens.refresh(st, key, purpose)
            refreshed = True
        except BaseException:
            with contextlib.suppress(Exception):
                close(conn)
            raise


def check(
    st: MailOAuthState, key: str, purpose: Purpose, *, timeout: float
) -> list[mail.CheckResult]:
    """Sign in for real and report each step of every protocol the account serves: IMAP or
    POP3 for ``mailbox`` (and SMTP too when the mailbox's ``smtp_purpose`` is ``"mailbox"``),
    SMTP for ``smtp``. Never raises for a refused token or an unreachable server."""
    settings = st.hooks.mailbox(key)
    if purpose == "smtp":
        return [_check_protocol(st, key, "smtp", purpose, timeout)]
    checks = [_check_protocol(st, key, settings.protocol, purpose, timeout)]
    if settings.smtp_purpose == purpose:
        checks.append(_check_protocol(st, key, "smtp", purpose, timeout))
    return checks


def _check_protocol(
    st: MailOAuthState, key: str, protocol: ServerProtocol, purpose: Purpose, timeout: float
) -> mail.CheckResult:
    """One protocol's connection check, signing in with the ``purpose`` account's token."""

    def token() -> str:
        return tokens.access_token(st, key, purpose)

    try:
        settings, server = server_for(st, key, protocol, purpose, require_account=False)
    except MailOAuthError as exc:
        step = mail.CheckStep(gettext("settings"), False, 0.0, str(exc))
        return mail.CheckResult(protocol.upper(), False, [step])
    if protocol == "smtp":
        # Sign in as the SMTP address, then try the mailbox's own address as sender: when
        # they differ (a delegate for a shared mailbox, an alias), a missing Send As right
        # shows as the "sender" step instead of passing unnoticed.
        result = mail.check_smtp(
            server, settings.sender, token, mail_from=settings.address, timeout=timeout
        )
    else:
        check = mail.check_imap if protocol == "imap" else mail.check_pop3
        result = check(server, settings.address, token, timeout=timeout)
    return _with_setup_guidance(st, key, purpose, result)


def _with_setup_guidance(
    st: MailOAuthState, key: str, purpose: Purpose, result: mail.CheckResult
) -> mail.CheckResult:
    """With application access, a refusal names the missing step of the tenant setup (the
    Token tab's PowerShell) instead of the delegated advice."""
    if result.ok or not result.steps:
        return result
    with own_session(st.db) as s:
        account = accounts.find(s, st.models, key, purpose)
        access = registry.get(account.provider).access(account.config) if account else None
    if access != AccessKind.APPLICATION:
        return result
    failed = result.steps[-1]
    step = tenant_setup.missing_step(result.protocol, len(result.steps) - 1, failed.detail)
    if step is not None:
        result.steps[-1] = replace(failed, guidance=tenant_setup.guidance(step))
    return result


def server_for(
    st: MailOAuthState,
    key: str,
    protocol: ServerProtocol,
    purpose: Purpose,
    *,
    require_account: bool = True,
) -> tuple[MailboxSettings, MailServer]:
    """The mailbox's settings and its ``protocol`` server, with the defaults of the provider
    of the account that signs in (``purpose``) filled in.

    Without that account: ``NotConfigured`` saying so, unless ``require_account`` is off
    and the host's settings name the server themselves.
    """
    settings = st.hooks.mailbox(key)
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
