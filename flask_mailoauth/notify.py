"""Notifications: tell the admins once when an account breaks or crosses a warning, remind them
every ``MAILOAUTH_NOTIFY_REMINDER_HOURS`` while it lasts, and tell them once more when it is
resolved.

The conditions are ``health.account_health``'s, keyed by
:class:`~flask_mailoauth.vocabulary.Condition`. What was sent lives in the ``mailoauth_notice``
table; each message is claimed there first (an ``INSERT`` the unique constraint lets one
process win, or an ``UPDATE`` whose ``WHERE`` only the first process matches), so four workers
on two hosts send one message. Channels: the host's ``@mailoauth.notifier`` callback, a signed
webhook, e-mail through a mailbox the host names. A failing channel is logged and never stops
the others, a refresh or a cron run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, cast

import requests
import sqlalchemy as sa
from flask import Flask, current_app, has_app_context

from . import connections, outbound, signals
from .errors import MailOAuthError, NotificationFailed, OutboundError
from .health import account_health
from .i18n import LazyText, lazy_gettext
from .logs import logger
from .models import AccountMixin, CredentialMixin, NoticeMixin, own_session, utcnow
from .notification import Notification
from .providers.base import check_endpoint_url
from .state import MailOAuthState
from .vocabulary import Condition, NoticeKind

#: the webhook's headers: the HMAC-SHA256 signature, the time it covers, one id per message
SIGNATURE_HEADER = "X-MailOAuth-Signature"
TIMESTAMP_HEADER = "X-MailOAuth-Timestamp"
DELIVERY_HEADER = "X-MailOAuth-Delivery"
#: webhook attempts per message, and the pause after the first failed one (doubling)
WEBHOOK_ATTEMPTS = 4
WEBHOOK_FIRST_PAUSE = 1.0

#: what broke, per condition (the message's title)
TITLES: dict[Condition, LazyText] = {
    Condition.REAUTHORIZATION_REQUIRED: lazy_gettext("Reauthorization required"),
    Condition.CONFIGURATION_ERROR: lazy_gettext("Configuration error"),
    Condition.REPEATED_FAILURES: lazy_gettext("Token refresh keeps failing"),
    Condition.REFRESH_TOKEN_IDLE: lazy_gettext("Refresh token unused"),
    Condition.REFRESH_TOKEN_ENDS: lazy_gettext("Refresh token ends on a fixed date"),
    Condition.SECRET_EXPIRING: lazy_gettext("Client secret expires soon"),
    Condition.SECRET_EXPIRED: lazy_gettext("Client secret expired"),
    Condition.CERTIFICATE_EXPIRING: lazy_gettext("Client certificate expires soon"),
    Condition.CERTIFICATE_EXPIRED: lazy_gettext("Client certificate expired"),
}
#: what to do, per condition
ACTIONS: dict[Condition, LazyText] = {
    Condition.REAUTHORIZATION_REQUIRED: lazy_gettext(
        "Open the account's Config and submit it to sign in again as the mailbox; if someone "
        "else must sign in (the mailbox's owner, a delegate), create a re-consent link on its "
        "Token tab and send it to them."
    ),
    Condition.CONFIGURATION_ERROR: lazy_gettext(
        "Open the account's Config, correct what the identity provider refused (client ID, "
        "secret, tenant, endpoints) and submit it."
    ),
    Condition.REPEATED_FAILURES: lazy_gettext(
        "The extension keeps retrying. Check the network and the identity provider's status; "
        "the Token tab lists each attempt."
    ),
    Condition.REFRESH_TOKEN_IDLE: lazy_gettext(
        "Run `flask mailoauth refresh --due` daily so the refresh token is used before the "
        "provider revokes it."
    ),
    Condition.REFRESH_TOKEN_ENDS: lazy_gettext(
        "Authorize again before that date, or publish the app (Google: In production) so its "
        "refresh tokens do not end."
    ),
    Condition.SECRET_EXPIRING: lazy_gettext(
        "Create a new client secret at the provider and paste its Value into the account's "
        "Config (no new consent needed)."
    ),
    Condition.SECRET_EXPIRED: lazy_gettext(
        "Create a new client secret at the provider and paste its Value into the account's Config."
    ),
    Condition.CERTIFICATE_EXPIRING: lazy_gettext(
        "Generate a new certificate on the account's IdP Config tab and upload it to the "
        "application at the provider: the switch happens on its first use (no new consent)."
    ),
    Condition.CERTIFICATE_EXPIRED: lazy_gettext(
        "Generate a new certificate on the account's IdP Config tab, upload it to the "
        "application at the provider and Submit."
    ),
}
#: the conditions of a refused grant (``vocabulary.REFUSED``)
_REFUSED = frozenset({Condition.REAUTHORIZATION_REQUIRED, Condition.CONFIGURATION_ERROR})
#: the conditions whose provider code (``Credential.last_error_code``) a message names
_FAILURES = _REFUSED | {Condition.REPEATED_FAILURES}


def channels(st: MailOAuthState) -> list[str]:
    """The channels configured: ``callback``, ``webhook``, ``email``."""
    notify = st.config.notify
    named = [
        ("callback", st.hooks.notifier is not None),
        ("webhook", notify.webhook_url is not None),
        ("email", bool(notify.email_to)),
    ]
    return [name for name, on in named if on]


def check(
    st: MailOAuthState,
    key: str | None = None,
    purpose: str | None = None,
    now: datetime | None = None,
) -> list[Notification]:
    """Find every enabled account's conditions (or one account's), claim what is due and send
    it; the notifications claimed. Nothing happens without a channel."""
    if not channels(st):
        return []
    m = st.models
    now = now or utcnow()
    query = sa.select(m.Account, m.Credential).outerjoin(
        m.Credential, m.Credential.account_id == m.Account.id
    )
    if key is not None:
        query = query.where(m.Account.key == key)
    if purpose is not None:
        query = query.where(m.Account.purpose == purpose)
    with own_session(st.db) as s:
        rows = s.execute(query.where(m.Account.enabled.is_(True))).all()
        notices: dict[int, list[NoticeMixin]] = {}
        ids = [account.id for account, _ in rows]
        for notice in s.scalars(sa.select(m.Notice).where(m.Notice.account_id.in_(ids))):
            notices.setdefault(notice.account_id, []).append(notice)
    sent: list[Notification] = []
    for account, credential in rows:
        for notification in _due(st, account, credential, notices.get(account.id, []), now):
            deliver(st, notification)
            sent.append(notification)
    return sent


def _due(
    st: MailOAuthState,
    account: AccountMixin,
    credential: CredentialMixin | None,
    notices: list[NoticeMixin],
    now: datetime,
) -> Iterable[Notification]:
    """The messages of one account this process claimed: new conditions, reminders,
    recoveries."""
    found = account_health(account, credential, st.config, now).conditions
    # a refusal supersedes the failures before it: their notice closes without a message
    refused = bool(found.keys() & _REFUSED)
    known = {notice.condition: notice for notice in notices}
    cadence = timedelta(hours=st.config.notify.reminder_hours)
    error_code = credential.last_error_code if credential is not None else None
    for condition, detail in found.items():
        claimed = _claim(st, account.id, condition, known.get(condition), now, now - cadence)
        if claimed is not None:
            kind, since, reminders = claimed
            code = error_code if condition in _FAILURES else None
            yield _message(st, account, kind, condition, since, now, reminders, detail, code)
    for notice in notices:
        if notice.resolved_at is not None or notice.condition in found:
            continue
        try:
            condition = Condition(notice.condition)
        except ValueError:  # written by a newer version: leave it to that one
            continue
        if _resolve(st, notice, now) and not (refused and condition in _FAILURES):
            yield _message(
                st, account, NoticeKind.RECOVERED, condition, notice.since, now, 0, "", None
            )


def _claim(
    st: MailOAuthState,
    account_id: int,
    condition: Condition,
    notice: NoticeMixin | None,
    now: datetime,
    remind_before: datetime,
) -> tuple[NoticeKind, datetime, int] | None:
    """Claim the message a condition found now calls for: ``(kind, since, reminders before)``,
    or ``None`` when none is due or another process claimed it first."""
    table = st.models.Notice.__table__
    if notice is None:
        try:
            with own_session(st.db, lock_timeout=st.config.lock_timeout) as s:
                s.execute(
                    sa.insert(table).values(
                        account_id=account_id,
                        condition=condition.value,
                        since=now,
                        notified_at=now,
                        reminders=0,
                    )
                )
        except sa.exc.IntegrityError:  # another process found it first and sends its message
            return None
        return NoticeKind.PROBLEM, now, 0
    row = table.c.id == notice.id
    if notice.resolved_at is not None:  # back after it was resolved: a new problem
        reopen = sa.update(table).where(row, table.c.resolved_at.is_not(None))
        values: dict[str, Any] = {"since": now, "notified_at": now, "reminders": 0}
        if _won(st, reopen.values(resolved_at=None, **values)):
            return NoticeKind.PROBLEM, now, 0
        return None
    if notice.notified_at > remind_before:
        return None
    remind = sa.update(table).where(
        row, table.c.resolved_at.is_(None), table.c.notified_at <= remind_before
    )
    if _won(st, remind.values(notified_at=now, reminders=table.c.reminders + 1)):
        return NoticeKind.REMINDER, notice.since, notice.reminders
    return None


def _resolve(st: MailOAuthState, notice: NoticeMixin, now: datetime) -> bool:
    """Claim the recovery message of a condition that is gone."""
    table = st.models.Notice.__table__
    statement = sa.update(table).where(table.c.id == notice.id, table.c.resolved_at.is_(None))
    return _won(st, statement.values(resolved_at=now))


def _won(st: MailOAuthState, statement: sa.Update) -> bool:
    """Run a guarded ``UPDATE`` in its own transaction: whether it changed the row (a process
    that comes second finds the guard false and changes nothing)."""
    with own_session(st.db, lock_timeout=st.config.lock_timeout) as s:
        return cast(sa.CursorResult[Any], s.execute(statement)).rowcount == 1


def _message(
    st: MailOAuthState,
    account: AccountMixin,
    kind: NoticeKind,
    condition: Condition,
    since: datetime,
    now: datetime,
    reminders: int,
    detail: str,
    code: str | None,
) -> Notification:
    """The notification of a claimed message, its text in the admin's language."""
    recovered = kind == NoticeKind.RECOVERED
    return Notification(
        kind=kind,
        condition=condition,
        key=account.key,
        purpose=account.purpose,
        account=account.name,
        address=account.address,
        provider=account.provider,
        since=since,
        at=now,
        code=code,
        title=str(TITLES[condition]),
        detail=detail,
        action="" if recovered else str(ACTIONS[condition]),
        url=_account_url(st, account),
        reminders=reminders,
    )


def _account_url(st: MailOAuthState, account: AccountMixin) -> str | None:
    """The host's page of the account, or ``None`` without a hook (or when it fails outside a
    request, as ``url_for`` without ``SERVER_NAME`` does)."""
    hook = st.hooks.account_page
    if hook is None:
        return None
    try:
        return hook(account.key, account.purpose)
    except Exception:
        logger.warning(
            "The account_page hook failed for %s (%s); the notification has no link.",
            account.key,
            account.purpose,
            exc_info=True,
        )
        return None


# ---------------------------------------------------------------------------------- channels


def deliver(st: MailOAuthState, notification: Notification) -> list[str]:
    """Send ``notification`` on every configured channel; the channels that took it. Each
    failure is logged, never raised."""
    senders: dict[str, Callable[[MailOAuthState, Notification], object]] = {
        "callback": _callback,
        "webhook": _webhook,
        "email": _email,
    }
    delivered = []
    for name in channels(st):
        try:
            senders[name](st, notification)
        except Exception as exc:
            logger.error(
                "The %s notification %r of %s (%s) was not delivered by %s: %s",
                notification.kind.value,
                notification.condition.value,
                notification.key,
                notification.purpose,
                name,
                exc,
                exc_info=not isinstance(exc, MailOAuthError),
            )
        else:
            delivered.append(name)
    return delivered


def _callback(st: MailOAuthState, notification: Notification) -> None:
    notifier = st.hooks.notifier
    if notifier is not None:
        notifier(notification)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER`: ``sha256=`` and the hex HMAC-SHA256, keyed with
    the webhook secret, of the timestamp header's value, a dot, and the body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _webhook(st: MailOAuthState, notification: Notification) -> None:
    """POST the notification as JSON, signed; retried with a doubling pause on timeouts,
    connection errors, 408, 429 and 5xx, at most :data:`WEBHOOK_ATTEMPTS` times."""
    config = st.config
    # channels() saw the URL; the config check requires the secret with it
    url, secret = cast(str, config.notify.webhook_url), cast(str, config.notify.webhook_secret)
    problem = check_endpoint_url(url, allow_insecure_http=config.allow_insecure_http)
    if problem:
        raise NotificationFailed(f"MAILOAUTH_NOTIFY_WEBHOOK_URL: {problem}")
    body = json.dumps(notification.as_dict(), sort_keys=True).encode()
    delivery = uuid.uuid4().hex
    why = ""
    # a timeout per read and a deadline per attempt; a redirect is a failure, never followed
    options: dict[str, Any] = {"allow_redirects": False}
    with outbound.session(config.outbound) as http:
        for attempt in range(WEBHOOK_ATTEMPTS):
            if attempt:
                time.sleep(WEBHOOK_FIRST_PAUSE * 2 ** (attempt - 1))
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: signature(secret, stamp, body),
                DELIVERY_HEADER: delivery,
            }
            options["timeout"] = outbound.call_timeout(config.http_timeout, 2 * config.http_timeout)
            try:
                answer = http.post(url, data=body, headers=headers, **options)
            except (requests.Timeout, requests.ConnectionError) as exc:  # a deadline too
                why = type(exc).__name__
                continue
            except OutboundError as exc:  # refused by the outbound rules: no retry helps
                raise NotificationFailed(f"MAILOAUTH_NOTIFY_WEBHOOK_URL: {exc}") from exc
            if 200 <= answer.status_code < 300:
                return
            why = f"HTTP {answer.status_code}"
            if answer.status_code < 500 and answer.status_code not in (408, 429):
                break
    raise NotificationFailed(f"the webhook failed: {why} (delivery {delivery})")


def _email(st: MailOAuthState, notification: Notification) -> None:
    """Send the notification to ``MAILOAUTH_NOTIFY_EMAIL_TO``."""
    notify = st.config.notify
    system_mail(
        st, notify.email_to, notification.subject, notification.text(), about=notification.key
    )


def system_mail(
    st: MailOAuthState, recipients: Sequence[str], subject: str, text: str, *, about: str
) -> None:
    """Send ``text`` through the SMTP account of ``MAILOAUTH_NOTIFY_MAILBOX``, unless that
    mailbox is ``about``, the one in trouble: :class:`NotificationFailed` says why not."""
    mailbox = st.config.notify.mailbox
    if mailbox is None:
        raise NotificationFailed("MAILOAUTH_NOTIFY_MAILBOX is not set: no mailbox sends e-mail")
    if about == mailbox:
        raise NotificationFailed(
            f"MAILOAUTH_NOTIFY_MAILBOX {mailbox!r} is the mailbox in trouble; not e-mailed "
            "through it"
        )
    settings = st.hooks.mailbox(mailbox)
    if settings.smtp_purpose is None:
        raise NotificationFailed(
            f"MAILOAUTH_NOTIFY_MAILBOX {mailbox!r} does not send with OAuth2 (smtp_purpose None)"
        )
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    smtp = connections.smtp(st, mailbox, settings.smtp_purpose, timeout=st.config.mail_timeout)
    try:
        smtp.send_message(message)
    finally:
        smtp.quit()


# ---------------------------------------------------------------------------------- triggers


@dataclass(frozen=True)
class _Pending:
    """An account to check after a refresh, with the app and state it belongs to."""

    app: Flask
    st: MailOAuthState
    key: str
    purpose: str


class _Backlog:
    """The accounts waiting for their check after a refresh, checked one after the other by
    one thread per process (started when work comes, gone when there is none): a bulk
    ``refresh --due`` queues each account once instead of starting a thread for each."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, str, str], _Pending] = {}
        self._guard = threading.Lock()
        self._worker: threading.Thread | None = None

    def add(self, item: _Pending) -> None:
        with self._guard:
            self._pending[(id(item.st), item.key, item.purpose)] = item
            if self._worker is None:
                # not a daemon: the interpreter waits for the checks in flight at exit
                self._worker = threading.Thread(target=self._run, name="mailoauth-notify")
                self._worker.start()

    def _run(self) -> None:
        while True:
            with self._guard:
                if not self._pending:
                    self._worker = None
                    return
                item = self._pending.pop(next(iter(self._pending)))
            try:
                with item.app.app_context():
                    check(item.st, item.key, item.purpose)
            except Exception:
                logger.exception(
                    "Checking %s (%s) for notifications failed.", item.key, item.purpose
                )

    def wait(self, timeout: float | None) -> None:
        """Wait until every queued check is done, or ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._guard:
                worker = self._worker
            if worker is None:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            worker.join(left)


_backlog = _Backlog()


def _after_refresh(sender: object, **kwargs: object) -> None:
    """After a refresh succeeded or failed: queue that account's check for a background
    thread, so a slow webhook never delays the caller that asked for a token."""
    if not has_app_context():
        return
    st = current_app.extensions.get("mailoauth")
    if st is None or st.extension is not sender or not channels(st):
        return
    # Flask types current_app as the Flask it stands for, not as the proxy it is
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    _backlog.add(_Pending(app, st, str(kwargs["key"]), str(kwargs["purpose"])))


def wait(timeout: float | None = None) -> None:
    """Wait for the checks queued after refreshes (tests; ``refresh --due`` before it exits)."""
    _backlog.wait(timeout)


signals.refreshed.connect(_after_refresh)
signals.refresh_failed.connect(_after_refresh)
