"""``flask mailoauth ...``: look at accounts and look after their tokens from a shell or cron."""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from . import accounts, connections, monitoring, notify, tokens
from .errors import MailOAuthError
from .health import health, status_words
from .i18n import gettext, ngettext
from .models import SECRET_FIELDS, own_session, prune_events, utcnow
from .settings import PURPOSES, Purpose
from .state import MailOAuthState, state
from .vocabulary import CredentialStatus

logger = logging.getLogger("flask_mailoauth")

mailoauth_cli = AppGroup("mailoauth", help="Manage OAuth2 mail accounts (flask-mailoauth).")
purpose_option = click.option(
    "--purpose",
    type=click.Choice(PURPOSES),
    default=None,
    help="Only this purpose (default: every purpose of the key).",
)


@mailoauth_cli.command("list")
def list_accounts() -> None:
    """One line per account: key, purpose, provider, status, expiry."""
    for h in health(state()):
        expires = f"{h.expires_at:%Y-%m-%d %H:%M} UTC" if h.expires_at else "-"
        enabled = "" if h.enabled else " (disabled)"
        click.echo(f"{h.key}\t{h.purpose}\t{h.provider}\t{h.status}{enabled}\t{expires}\t{h.name}")


@mailoauth_cli.command("status")
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json", "openmetrics"]),
    default="text",
    help="text for people, json for scripts, openmetrics for a monitoring system.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
def status(output: str, as_json: bool) -> None:
    """Each account's status and warnings; exits 1 when an enabled one needs attention.

    A disabled account is shown as ``[off]`` with its stored status and never fails the exit
    code: the admin turned it off on purpose (for monitoring; see docs/operations.rst). The
    exit code is the same in every format.
    """
    accounts = health(state())
    if as_json or output == "json":
        click.echo(json.dumps([h.as_dict() for h in accounts], indent=2))
    elif output == "openmetrics":
        gauges = monitoring.AccountCollector(lambda: accounts, utcnow)
        body, _ = monitoring.scrape(gauges, None, monitoring.ASK_OPENMETRICS)
        click.echo(body.decode(), nl=False)
    else:
        for h in accounts:
            words = status_words(h.status)
            if not h.enabled:
                mark, words = "off", gettext("disabled (token status: %(status)s)", status=words)
            else:
                mark = "!!" if h.needs_attention else "ok"
            click.echo(f"[{mark}] {h.name} — {words}")
            for warning in h.warnings:
                click.echo(f"       {warning}")
        if not accounts:
            click.echo(gettext("No OAuth2 accounts."))
    if any(h.needs_attention for h in accounts):
        sys.exit(1)


@mailoauth_cli.command("refresh")
@click.argument("key", required=False)
@purpose_option
@click.option("--due", is_flag=True, help="Only accounts whose token expires within the leeway.")
def refresh(key: str | None, purpose: str | None, due: bool) -> None:
    """Refresh tokens now: one KEY, or every account (with --due, only those about to expire).

    Safe to run from several hosts at once: each account is refreshed under its row lease, and
    a token another host refreshed meanwhile is not refreshed again. With --due, events older
    than MAILOAUTH_EVENT_RETENTION_DAYS are pruned after the run (see ``prune``).
    """
    if key is None and not due:
        raise click.UsageError(
            gettext("Give a KEY, or --due to refresh every account about to expire.")
        )
    st = state()
    targets = _targets(st, key, purpose, due)
    # Flask types current_app as the Flask it stands for, not as the proxy it is
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def one(target: Target) -> Outcome:
        """Refresh one account; whatever goes wrong is its outcome, never the run's end."""
        with app.app_context():
            try:
                if due:
                    return Outcome(target, tokens.refresh_if_due(st, target.key, target.purpose))
                tokens.refresh(st, target.key, target.purpose)
            except MailOAuthError as exc:
                return Outcome(target, True, target.reason(str(exc)))
            except Exception as exc:
                return Outcome(target, True, _unexpected(target, exc))
        return Outcome(target, True)

    workers = st.config.refresh_concurrency
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, targets))
    failed = [r for r in results if r.error]
    for r in failed:
        click.echo(f"{r.target.label}: {r.error}", err=True)
    click.echo(_summary(results, failed))
    if due and st.config.event_retention_days is not None:
        _prune(st.config.event_retention_days)
    if due and notify.channels(st):
        _notify(st)
    if failed:
        sys.exit(1)


@mailoauth_cli.command("notify")
def notify_command() -> None:
    """Check every account for notifications and send what is due: new conditions, reminders,
    recoveries (``refresh --due`` does it too). Safe to run from several hosts at once."""
    st = state()
    if not notify.channels(st):
        click.echo(gettext("No notification channel is configured (see Notifications)."))
        return
    _notify(st)


def _notify(st: MailOAuthState) -> None:
    sent = notify.check(st)
    notify.wait()  # the checks refreshes started, so the process exits after they are done
    click.echo(ngettext("%(num)d notification sent.", "%(num)d notifications sent.", len(sent)))


@mailoauth_cli.command("prune")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=None,
    help="Keep this many days of events (default: MAILOAUTH_EVENT_RETENTION_DAYS).",
)
def prune(days: int | None) -> None:
    """Delete events older than the retention; each account keeps its latest ones."""
    days = days or state().config.event_retention_days
    if days is None:
        click.echo(gettext("Events are kept forever (MAILOAUTH_EVENT_RETENTION_DAYS is 0)."))
        return
    _prune(days)


def _prune(days: int) -> None:
    """Delete events older than ``days`` and say how many went."""
    st = state()
    deleted = prune_events(st.db, st.models.Event, days)
    click.echo(
        ngettext(
            "Deleted %(num)d event older than %(days)d days.",
            "Deleted %(num)d events older than %(days)d days.",
            deleted,
            days=days,
        )
    )


def _summary(results: list[Outcome], failed: list[Outcome]) -> str:
    """The last line of ``refresh``: how many were refreshed, skipped, failed."""
    done = sum(1 for r in results if r.refreshed and not r.error)
    skipped = sum(1 for r in results if not r.refreshed)
    sentences = [
        ngettext(
            "Refreshed %(done)d of %(num)d account(s).",
            "Refreshed %(done)d of %(num)d account(s).",
            len(results),
            done=done,
        )
    ]
    if skipped:
        sentences.append(
            ngettext(
                "%(num)d no longer due (refreshed meanwhile by another worker, or used for half "
                "their lifetime when it is shorter than the leeway).",
                "%(num)d no longer due (refreshed meanwhile by another worker, or used for half "
                "their lifetime when it is shorter than the leeway).",
                skipped,
            )
        )
    if failed:
        sentences.append(ngettext("%(num)d failed.", "%(num)d failed.", len(failed)))
    return " ".join(sentences)


@dataclass(frozen=True)
class Target:
    """An account ``refresh`` works on, named once in its output: address and purpose."""

    key: str
    purpose: str
    address: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.address} ({self.purpose})"

    def reason(self, message: str) -> str:
        """``message`` without the account name the typed errors start with (already in
        :attr:`label`)."""
        for prefix in (f"{self.key} ({self.purpose}): ", f"{self.name}: ", f"{self.label}: "):
            if message.startswith(prefix):
                return message[len(prefix) :]
        return message


@dataclass(frozen=True)
class Outcome:
    """What ``refresh`` did for one account."""

    target: Target
    #: False when another worker refreshed it meanwhile (nothing done here)
    refreshed: bool
    #: the failure, one line for the operator, or None
    error: str | None = None


def _unexpected(target: Target, exc: Exception) -> str:
    """Log and describe an exception that is not a typed error by its type alone: messages of
    database and library errors may quote stored data (SQL parameters, ciphertexts)."""
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    logger.error(
        "Refresh of %s (%s) failed with an unexpected %s; the other accounts went on.",
        target.key,
        target.purpose,
        kind,
    )
    return gettext(
        "unexpected %(error)s (message withheld: it may quote stored data). Try it again with "
        "`flask mailoauth refresh %(key)s --purpose %(purpose)s`.",
        error=kind,
        key=target.key,
        purpose=target.purpose,
    )


def _targets(st: MailOAuthState, key: str | None, purpose: str | None, due: bool) -> list[Target]:
    m = st.models
    query = sa.select(m.Account.key, m.Account.purpose, m.Account.address, m.Account.name).join(
        m.Credential, m.Credential.account_id == m.Account.id
    )
    if key is not None:
        query = query.where(m.Account.key == key)
    if purpose is not None:
        query = query.where(m.Account.purpose == purpose)
    if due:
        leeway = timedelta(seconds=st.config.refresh_leeway)
        query = query.where(
            m.Account.enabled.is_(True),
            m.Credential.status.in_((CredentialStatus.ACTIVE, CredentialStatus.RETRYING)),
            m.Credential.expires_at <= utcnow() + leeway,
            sa.or_(m.Credential.next_retry_at.is_(None), m.Credential.next_retry_at <= utcnow()),
        )
    with own_session(st.db) as s:
        targets = [Target(*row) for row in s.execute(query.order_by(m.Account.key))]
    if key is not None and not targets:
        raise click.ClickException(
            gettext("No authorized account with key %(key)s.", key=repr(key))
        )
    return targets


@mailoauth_cli.command("test")
@click.argument("key")
@purpose_option
def test(key: str, purpose: Purpose | None) -> None:  # click.Choice(PURPOSES) checks it
    """Sign in to the mail servers for real and print each step; exits 1 on a failure."""
    ok = True
    for wanted in [purpose] if purpose else PURPOSES:
        if wanted == "smtp" and purpose is None and not _has_account(key, "smtp"):
            continue
        timeout = state().config.mail_timeout
        for result in connections.check(state(), key, wanted, timeout=timeout):
            ok &= result.ok
            outcome = gettext("OK") if result.ok else gettext("FAILED")
            click.echo(f"{result.protocol}: {outcome}")
            for step in result.steps:
                mark = "ok" if step.ok else "!!"
                click.echo(f"  [{mark}] {step.name} ({step.seconds * 1000:.0f} ms): {step.detail}")
                if step.guidance:
                    click.echo(f"       {step.guidance}")
    if not ok:
        sys.exit(1)


def _has_account(key: str, purpose: str) -> bool:
    st = state()
    with own_session(st.db) as s:
        return accounts.find(s, st.models, key, purpose) is not None


@mailoauth_cli.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every stored secret with the first key of MAILOAUTH_ENCRYPTION_KEYS."""
    st = state()
    tables = {
        st.models.Account: SECRET_FIELDS["mailoauth_account"],
        st.models.Credential: SECRET_FIELDS["mailoauth_credential"],
        st.models.PendingAuthorization: SECRET_FIELDS["mailoauth_pending"],
    }
    changed = 0
    with own_session(st.db) as session:
        for model, fields in tables.items():
            for row in session.query(model).with_for_update():
                for name in fields:
                    blob = getattr(row, name)
                    if blob is not None and not st.keyring.is_primary(blob):
                        st.seal(row, name, st.reveal(row, name))
                        changed += 1
    click.echo(
        ngettext(
            "Re-encrypted %(num)d secret(s) with the primary key.",
            "Re-encrypted %(num)d secret(s) with the primary key.",
            changed,
        )
    )
