"""``access_token()``: a fresh token from memory, the database, or one refresh shared by all.

Steady state costs no SQL: a valid token is served from a per-process LRU cache
(``MAILOAUTH_CACHE_SIZE`` tokens) for at most ``MAILOAUTH_CACHE_TTL`` seconds. Otherwise one
statement reads the row, once for all the threads of the process that want it. A refresh runs
under a lock that holds across threads (a per-account ``threading.Lock``), processes and
hosts: a lease on the credential row, taken by one ``UPDATE ... RETURNING`` that only matches
the row at the version read with no live lease (a compare-and-set). The lease holder calls
the IdP with no transaction open; N concurrent callers cause exactly one call to the IdP, and
no database lock is held while the IdP answers. Only callers whose token has really expired
wait for the holder's answer; the others keep using the current token meanwhile.

The call to the IdP has a total deadline (``2 * MAILOAUTH_HTTP_TIMEOUT``) shorter than the
lease (``3 * MAILOAUTH_HTTP_TIMEOUT + 5`` seconds), and the lease is released on every path,
exceptions included. If the database refuses the answer (stopped, locked), the process keeps
the new tokens, serves them from memory and retries storing them for up to
``MAILOAUTH_STORE_RETRY`` seconds. If the process dies between the IdP's answer and the
commit, the new tokens are lost and the lease runs out: a rotating IdP may then refuse the old
refresh token and the account shows "reauthorization required" with the IdP's code.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import certificates, metrics, signals
from .certificates import ClientCertificate
from .config import Config
from .errors import (
    AccountDisabled,
    ConfigurationError,
    NotConfigured,
    ProviderFailure,
    ReauthorizationRequired,
    TemporarilyUnavailable,
    TokenRequestFailed,
)
from .i18n import gettext
from .models import AccountMixin, CredentialMixin, cleaned, own_session, utcnow
from .oauth import TokenResponse, request_token, unexpected_failure
from .providers import registry
from .providers.base import Provider
from .state import CachedToken, MailOAuthState, token_due
from .vocabulary import REFUSED, STATUS_AFTER, CredentialStatus, EventKind, EventLevel, FailureKind

logger = logging.getLogger("flask_mailoauth")

#: a token with less left (capped at half its lifetime) is expired: no caller gets it
_LAST_SECONDS = timedelta(seconds=5)


_process_locks: dict[tuple[int, str, str], threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(st: MailOAuthState, key: str, purpose: str) -> threading.Lock:
    """One lock per account in this process: threads queue here, not on the database."""
    name = (id(st), key, purpose)
    with _process_locks_guard:
        return _process_locks.setdefault(name, threading.Lock())


_reads: dict[tuple[int, str, str], Future[tuple[CredentialMixin, AccountMixin]]] = {}


def _read_once(st: MailOAuthState, key: str, purpose: str) -> tuple[CredentialMixin, AccountMixin]:
    """The credential and account (detached), read by one thread for every thread of this
    process that wants them at the same moment: a storm of callers costs one read and one
    connection per process, not one per thread. A thread whose shared read failed reads
    again itself, so that it raises its own error."""
    name = (id(st), key, purpose)
    with _process_locks_guard:
        flight = _reads.get(name)
        leader = flight is None
        if flight is None:
            flight = _reads[name] = Future()
    if not leader:
        try:
            return flight.result(timeout=st.config.lock_timeout)
        except Exception:  # noqa: S110 - read below, and raise what that read raises
            pass
    try:
        with own_session(st.db, lock_timeout=st.config.lock_timeout) as s:
            row = _read(s, st, key, purpose, serving=True)
    except BaseException as exc:
        if leader:
            flight.set_exception(exc)
        raise
    else:
        if leader:
            flight.set_result(row)
        return row
    finally:
        if leader:
            with _process_locks_guard:
                _reads.pop(name, None)


def access_token(st: MailOAuthState, key: str, purpose: str) -> str:
    """A token valid for more than ``MAILOAUTH_REFRESH_LEEWAY`` seconds, or than half its
    lifetime when that is shorter (see module doc and ``token_due``).

    While another worker refreshes, the current token is returned at once if it is still
    valid. A database failure raises :class:`TemporarilyUnavailable`, or serves the valid token
    already read.
    """
    config = st.config
    leeway = timedelta(seconds=config.refresh_leeway)
    cached = _cached(st, key, purpose, leeway, config.cache_ttl)
    if cached:
        return cached
    entry: CachedToken | None = st.cache.get((key, purpose))  # past its TTL, or due
    current: str | None = None  # the stored token while it is valid, though due
    try:
        credential, account = _read_once(st, key, purpose)
        if credential.status in REFUSED:  # refused for good, but not expired yet
            return st.reveal(credential, "access_token")
        token = _usable(st, credential, account, leeway)
        if token:
            return token
        current = _current(st, credential)
        if entry is not None and entry.access_token == st.reveal(credential, "access_token"):
            # This process obtained the stored token and knows the IdP's clock: a host
            # clock running fast makes the row look due, the entry judges it rightly.
            if not entry.due(leeway):
                st.cache[(key, purpose)] = replace(entry, cached_at=time.monotonic())
                return entry.access_token
            current = current or (None if entry.due(_LAST_SECONDS) else entry.access_token)
        lock = _process_lock(st, key, purpose)
        if current is not None:
            if not lock.acquire(blocking=False):
                return current  # another thread of this process is refreshing it
        elif not lock.acquire(timeout=config.lock_timeout):
            raise _still_refreshing(key, purpose)
        try:
            cached = _cached(st, key, purpose, leeway, config.cache_ttl)
            if cached:
                return cached
            # Mail must go on: while the IdP is down, a still-valid token beats an error.
            row = (credential, account)  # as read above: the lease is claimed without reading again
            return _refresh(st, key, purpose, force=False, keep_valid_token=True, row=row).token
        finally:
            lock.release()
    except SQLAlchemyError as exc:
        if current is not None:
            return current
        if entry is not None and not entry.due(_LAST_SECONDS):
            return entry.access_token  # the database is down: a valid token beats an error
        raise _database_unavailable(key, purpose, exc) from None


def _still_refreshing(key: str, purpose: str) -> TemporarilyUnavailable:
    return TemporarilyUnavailable(
        gettext(
            "%(key)s (%(purpose)s): another worker has been refreshing this token for longer "
            "than MAILOAUTH_LOCK_TIMEOUT.",
            key=key,
            purpose=purpose,
        )
    )


def _database_unavailable(key: str, purpose: str, exc: Exception) -> TemporarilyUnavailable:
    """The typed error for a database that failed (stopped, locked); no SQL or data in it."""
    cause = type(getattr(exc, "orig", None) or exc).__name__
    return TemporarilyUnavailable(
        gettext(
            "%(key)s (%(purpose)s): the database is unavailable or locked (%(error)s); try again "
            "shortly, and check the database if it lasts.",
            key=key,
            purpose=purpose,
            error=cause,
        )
    )


@contextmanager
def _typed_database_errors(key: str, purpose: str) -> Iterator[None]:
    """Turn a raw SQLAlchemy error into :class:`TemporarilyUnavailable`."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise _database_unavailable(key, purpose, exc) from None


def _cached(
    st: MailOAuthState, key: str, purpose: str, leeway: timedelta, ttl: float
) -> str | None:
    """The cached token while it is within the TTL and not due; an expired entry is dropped,
    a stale or due one kept (a fallback while the database fails)."""
    entry: CachedToken | None = st.cache.get((key, purpose))
    if entry is None:
        return None
    if entry.due(_LAST_SECONDS):
        st.cache.pop((key, purpose), None)
        return None
    stale = not entry.unstored and time.monotonic() - entry.cached_at > ttl
    return None if stale or entry.due(leeway) else entry.access_token


def _select(
    session: Session, st: MailOAuthState, key: str, purpose: str
) -> sa.Row[CredentialMixin, AccountMixin] | None:
    """``(credential, account)`` in one statement, or ``None``; no lock: a lease is taken by a
    guarded ``UPDATE`` (``_take_lease``), not under a row lock."""
    m = st.models
    query = (
        sa.select(m.Credential, m.Account)
        .join(m.Account, m.Credential.account_id == m.Account.id)
        .where(m.Account.key == key, m.Account.purpose == purpose)
    )
    return session.execute(query).one_or_none()


def _read(
    session: Session,
    st: MailOAuthState,
    key: str,
    purpose: str,
    *,
    serving: bool = False,
) -> tuple[CredentialMixin, AccountMixin]:
    """The account's credential and account, in one statement; typed errors when unusable.

    ``serving``: a credential refused for good still passes while its token may be served
    (see ``_still_served``); the caller serves it and does not refresh.
    """
    row = _select(session, st, key, purpose)
    if row is None:
        raise NotConfigured(
            gettext(
                "No OAuth2 token for %(key)s (%(purpose)s): configure and authorize it in the "
                "Config modal.",
                key=repr(key),
                purpose=purpose,
            )
        )
    credential, account = row
    if not account.enabled:
        raise AccountDisabled(
            gettext("The OAuth2 account %(account)s is disabled.", account=account_label(account))
        )
    if credential.status in REFUSED and not (serving and _still_served(credential)):
        raise _refused(account_label(account), credential)
    if credential.config_signature != account.config_signature:
        raise ReauthorizationRequired(
            gettext(
                "%(account)s: the IdP Config changed since the token was issued; authorize again.",
                account=account_label(account),
            )
        )
    return credential, account


def account_label(account: AccountMixin) -> str:
    """How errors name an account: its address and purpose, as the admin knows it."""
    return f"{account.address} ({account.purpose})"


def _refused(
    name: str, credential: CredentialMixin
) -> ReauthorizationRequired | ConfigurationError:
    """The typed error for a credential the IdP refused for good."""
    error = credential.last_error or ""
    if credential.status == CredentialStatus.REAUTHORIZATION_REQUIRED:
        return ReauthorizationRequired(
            gettext(
                "%(account)s: the grant is no longer valid, an admin must authorize again. "
                "%(error)s",
                account=name,
                error=error,
            ).strip()
        )
    return ConfigurationError(
        gettext(
            "%(account)s: the identity provider refuses the application's configuration. %(error)s",
            account=name,
            error=error,
        ).strip()
    )


def _expired(
    expires_at: datetime, obtained_at: datetime | None, now: datetime | None = None
) -> bool:
    """Whether a token is too close to its end to hand out, even while a refresh runs."""
    return token_due(expires_at, obtained_at, _LAST_SECONDS, now)


def _obtained_at(credential: CredentialMixin) -> datetime | None:
    """When the token was obtained, on the IdP's clock when the answer told the skew (its
    ``expires_at`` is on that clock: the lifetime is their difference)."""
    obtained = credential.refreshed_at or credential.issued_at
    if obtained is None or not credential.clock_skew:
        return obtained
    return obtained - timedelta(seconds=credential.clock_skew)


def _current(
    st: MailOAuthState, credential: CredentialMixin, *, just_obtained: bool = False
) -> str | None:
    """The stored token while it is not expired (due or not), else ``None``.

    ``just_obtained``: the token was obtained while the caller waited (seconds ago), so the
    skew measured with it still holds: it is judged on the IdP's clock, and a host clock that
    runs fast does not make every waiter refresh again.
    """
    skew = credential.clock_skew or 0.0
    now = utcnow() - timedelta(seconds=skew) if just_obtained and skew > 0 else None
    if _expired(credential.expires_at, _obtained_at(credential), now):
        return None
    return st.reveal(credential, "access_token")


def _still_served(credential: CredentialMixin) -> bool:
    """After a refresh of a due token failed for good: its token serves until it expires.

    The IdP refused a new token, not the current one. A refusal of a token that was not yet
    due (Refresh now after a revocation) sets no ``serve_until``: the grant's tokens may have
    died with it.
    """
    until = credential.serve_until
    return until is not None and not _expired(until, _obtained_at(credential))


def _usable(
    st: MailOAuthState, credential: CredentialMixin, account: AccountMixin, leeway: timedelta
) -> str | None:
    """The stored token when valid beyond the leeway (and cache it), else ``None``."""
    if token_due(credential.expires_at, _obtained_at(credential), leeway):
        return None
    token = st.reveal(credential, "access_token")
    _remember(st, credential, account, token)
    return token


def _remember(
    st: MailOAuthState,
    credential: CredentialMixin,
    account: AccountMixin,
    token: str,
    skew: float | None = None,
) -> None:
    """Cache the stored ``token``; ``skew`` only when it was measured just now (see
    :meth:`CachedToken.now`)."""
    st.cache[(account.key, account.purpose)] = CachedToken(
        token, credential.expires_at, time.monotonic(), _obtained_at(credential), clock_skew=skew
    )


def refresh(st: MailOAuthState, key: str, purpose: str, *, force: bool = True) -> str:
    """Refresh now under the account's lease; ``force=False`` skips it if another caller did.

    ``force`` also ignores the backoff after transient failures ("Refresh now" in the Token
    tab). Unlike :func:`access_token`, a failure always raises, even a transient one while the
    current token is still valid: whoever asked for a refresh learns that it did not happen.
    A forced call that waited for another worker's refresh returns only a token that worker
    obtained; if it obtained none, this call asks the IdP itself.
    """
    with _typed_database_errors(key, purpose):
        return _refresh(st, key, purpose, force=force).token


def refresh_if_due(st: MailOAuthState, key: str, purpose: str) -> bool:
    """Refresh a due token unless another worker did meanwhile; True when this call did it."""
    with _typed_database_errors(key, purpose):
        return _refresh(st, key, purpose, force=False).asked_idp


#: what tells one obtained token from the next: the credential's uid and last refresh time
Marker = tuple[str, datetime | None]


@dataclass(frozen=True)
class _Claim:
    """What the worker that holds an account's refresh lease needs for its call to the IdP.

    ``uid``, ``version``, ``failure_count`` and ``refreshed_at`` describe the credential as it
    was when claimed: they decide whether the answer may still be stored (``_store_guard``).
    """

    uid: str
    version: int
    failure_count: int
    refreshed_at: datetime | None
    account_id: int
    #: the lease this claim set: while the row holds it, the lease is this worker's
    lease_until: datetime
    #: the credential as read when claimed (detached, shared: never changed)
    credential: CredentialMixin
    provider: Provider
    config: dict[str, str]
    client_secret: str
    refresh_token: str
    #: the account as errors name it (``account_label``)
    label: str
    #: the mailbox address (a service account's assertion names it)
    mailbox: str
    #: the certificates a ``private_key_jwt`` client tries, the pending one first
    certificates: tuple[ClientCertificate, ...] = ()

    @property
    def marker(self) -> Marker:
        return (self.uid, self.refreshed_at)

    def __repr__(self) -> str:
        return f"<_Claim {self.uid} v{self.version} {self.provider.id}>"


@dataclass(frozen=True)
class _Busy:
    """Another worker holds the lease; the credential as seen, and its token while valid."""

    marker: Marker
    current: str | None

    def __repr__(self) -> str:
        return f"<_Busy {self.marker[0]}>"


@dataclass(frozen=True)
class _Ready:
    """A token to use as it is: no call to the IdP is needed."""

    token: str

    def __repr__(self) -> str:
        return "<_Ready>"


@dataclass(frozen=True)
class _Refreshed:
    """What a refresh call hands back: the token, and whether this call asked the IdP for it."""

    token: str
    asked_idp: bool

    def __repr__(self) -> str:
        return f"<_Refreshed asked_idp={self.asked_idp}>"


def _refresh(
    st: MailOAuthState,
    key: str,
    purpose: str,
    *,
    force: bool,
    keep_valid_token: bool = False,
    row: tuple[CredentialMixin, AccountMixin] | None = None,
) -> _Refreshed:
    """The token and whether this call asked the IdP for it.

    Short transactions instead of one long one: read the row, claim a lease on it with one
    guarded ``UPDATE``, call the IdP with no transaction open, store the answer. Holding
    SQLite's write lock (or a PostgreSQL row lock) through an HTTP call would stall every other
    writer for as long as the IdP takes. Callers that find the lease taken use the current
    token while it is valid (unless ``force``), else poll the row for the holder's answer
    (``_POLLS``): a forced caller accepts only a token obtained after it started waiting
    (``since``). With ``keep_valid_token``, a failure that leaves the current token valid
    returns it. ``row``: the credential and account the caller has just read.
    """
    config = st.config
    deadline = time.monotonic() + config.lock_timeout
    pauses = _pauses()
    since: Marker | None = None
    while True:
        claimed = _claim(
            st, key, purpose, force=force, since=since, keep_valid_token=keep_valid_token, row=row
        )
        row = None
        if isinstance(claimed, _Claim):
            settled = _settle(st, key, purpose, claimed, config)
            if isinstance(settled, _Failed):
                token = _after_failure(st, key, purpose, settled, keep_valid_token)
                return _Refreshed(token, asked_idp=True)
            if settled is not None:
                return _Refreshed(settled.access_token, asked_idp=True)
            # Replaced or updated meanwhile (an admin authorized again, or another worker's
            # answer is newer): the stored state decides, so read it again.
            since = since or claimed.marker
        elif isinstance(claimed, _Busy):
            if not force and claimed.current is not None:
                return _Refreshed(claimed.current, asked_idp=False)
            since = since or claimed.marker
            time.sleep(next(pauses))
        elif isinstance(claimed, _Ready):
            return _Refreshed(claimed.token, asked_idp=False)
        # else another worker changed the row between the read and the claim: read it again
        if time.monotonic() > deadline:
            raise _still_refreshing(key, purpose)


#: how a waiter polls the row for the lease holder's answer: every ``_POLL_FIRST`` seconds for
#: the ``_POLL_FAST`` seconds an IdP usually answers in, then less and less often, up to
#: ``_POLL_MAX``. Each poll is one indexed ``SELECT``.
_POLL_FIRST, _POLL_FAST, _POLL_MAX = 0.005, 1.0, 0.25


def _pauses() -> Iterator[float]:
    """The pauses between a waiter's polls (see ``_POLL_FIRST``)."""
    for _ in range(int(_POLL_FAST / _POLL_FIRST)):
        yield _POLL_FIRST
    pause = _POLL_FIRST
    while True:
        pause = min(pause * 2, _POLL_MAX)
        yield pause


def _claim(
    st: MailOAuthState,
    key: str,
    purpose: str,
    *,
    force: bool,
    since: Marker | None,
    keep_valid_token: bool,
    row: tuple[CredentialMixin, AccountMixin] | None = None,
) -> _Ready | _Busy | _Claim | None:
    """A token to use, ``_Busy``, a new lease, or ``None`` when another worker changed the row
    between the read and the claim.

    The row is read (one ``SELECT``, unless the caller passes the ``row`` it has just read) and
    judged here; a lease is then taken with one ``UPDATE ... RETURNING`` that only matches while
    the row is still at the version read and its lease free or run out. A token is used when it
    is valid beyond the leeway (unless ``force``), or when it was obtained after ``since`` (by
    the lease holder a caller waited for, or a new consent).
    """
    config = st.config
    leeway = timedelta(seconds=config.refresh_leeway)
    if row is None:
        with own_session(st.db, lock_timeout=config.lock_timeout) as s:
            row = _read(s, st, key, purpose)
    credential, account = row
    now = utcnow()
    marker = (credential.uid, credential.refreshed_at)
    if since is not None and marker != since:
        token = _current(st, credential, just_obtained=True)
        if token:
            # Its skew was measured seconds ago: this process may judge it by it too.
            _remember(st, credential, account, token, credential.clock_skew)
            return _Ready(token)
    if not force:
        token = _usable(st, credential, account, leeway)
        if token:
            return _Ready(token)
    if credential.refresh_lease_until and credential.refresh_lease_until > now:
        return _Busy(marker, _current(st, credential))
    if not force and credential.next_retry_at and credential.next_retry_at > now:
        return _Ready(_unavailable(st, credential, keep_valid_token))
    until = now + _lease(config)
    if not _take_lease(st, credential, now, until):
        return None
    provider = registry.get(account.provider)
    method = provider.client_auth(account.config)
    return _Claim(
        uid=credential.uid,
        version=credential.version,
        failure_count=credential.failure_count,
        refreshed_at=credential.refreshed_at,
        account_id=account.id,
        lease_until=until,
        credential=credential,
        provider=provider,
        config=dict(account.config),
        client_secret=st.reveal(account, "client_secret") if account.client_secret else "",
        refresh_token=st.reveal(credential, "refresh_token"),
        label=account_label(account),
        mailbox=account.address,
        certificates=certificates.for_token_requests(st, account, method).to_try,
    )


def _take_lease(
    st: MailOAuthState, credential: CredentialMixin, now: datetime, until: datetime
) -> bool:
    """Set the lease in one statement if the row is still at the version read and its lease is
    free or ran out: an atomic compare-and-set on every backend, waiting at most
    ``MAILOAUTH_LOCK_TIMEOUT`` for another writer."""
    claim = _claim_statement(st.models.Credential.__table__)
    params: dict[str, object] = {"claim_id": credential.id, "claim_version": credential.version}
    params |= {"claim_now": now, "claim_until": until}
    with own_session(st.db, lock_timeout=st.config.lock_timeout) as s:
        return s.execute(claim, params).first() is not None


@functools.cache
def _claim_statement(table: sa.Table) -> sa.UpdateBase:
    """The claim's ``UPDATE ... RETURNING``, built once per table (parameters ``claim_id``,
    ``_version``, ``_now``, ``_until``): building a statement costs more CPU than running it.
    (A parameter may not have a column's name.)"""
    lease = table.c.refresh_lease_until
    return (
        sa.update(table)
        .where(
            table.c.id == sa.bindparam("claim_id"),
            table.c.version == sa.bindparam("claim_version"),
            sa.or_(lease.is_(None), lease <= sa.bindparam("claim_now", type_=lease.type)),
        )
        .values(refresh_lease_until=sa.bindparam("claim_until", type_=lease.type))
        .returning(table.c.id)
    )


def _idp_deadline(config: Config) -> float:
    """Seconds the whole refresh call may take (connect, send, a trickling answer)."""
    return 2 * config.http_timeout


def _lease(config: Config) -> timedelta:
    """How long a lease holds: the IdP's deadline plus time to store its answer. A dead
    holder's lease runs out; a live holder's call has ended before it does."""
    return timedelta(seconds=_idp_deadline(config) + config.http_timeout + 5)


def _settle(
    st: MailOAuthState, key: str, purpose: str, claim: _Claim, config: Config
) -> TokenResponse | _Failed | None:
    """Ask the IdP and store its answer: the new tokens, the failure as stored, or ``None``
    when the credential changed meanwhile. The lease is released on every path.

    A success the database refuses (stopped, locked) is kept: served from memory and stored
    by a background retry (``_keep_storing``). Any other exception releases the lease in its
    own short transaction, then propagates.
    """
    try:
        started = time.monotonic()
        answer = _ask_idp(claim, config)
        _count(st, claim, answer, time.monotonic() - started)
        credential = _store(st, key, purpose, claim, answer)
    except SQLAlchemyError:
        if isinstance(answer, ProviderFailure):
            _release(st, key, purpose, claim)
            raise
        _keep_storing(st, key, purpose, claim, answer, config.store_retry)
        return answer
    except BaseException:
        _release(st, key, purpose, claim)
        raise
    if credential is None:
        return None
    # Committed: signals and errors come after the state is stored.
    if isinstance(answer, ProviderFailure):
        return _Failed(answer, credential, claim.label)
    if len(claim.certificates) > 1:
        certificates.switched(st, claim.account_id, answer.client_certificate)
    signals.refreshed.send(st.extension, key=key, purpose=purpose, expires_at=answer.expires_at)
    return answer


def _count(
    st: MailOAuthState, claim: _Claim, answer: TokenResponse | ProviderFailure, seconds: float
) -> None:
    """Count the token request in this process's metrics, by provider and outcome."""
    outcome = answer.kind.value if isinstance(answer, ProviderFailure) else metrics.SUCCESS
    st.metrics.observe(claim.provider.id, outcome, seconds)


def _release(st: MailOAuthState, key: str, purpose: str, claim: _Claim) -> None:
    """Clear this worker's lease if the row still holds it (a lease taken since by another
    worker is left alone); a database that refuses even this leaves the lease to run out."""
    table = st.models.Credential.__table__
    try:
        with own_session(st.db, lock_timeout=st.config.lock_timeout) as s:
            s.execute(
                sa.update(table)
                .where(table.c.uid == claim.uid, table.c.refresh_lease_until == claim.lease_until)
                .values(refresh_lease_until=None)
            )
    except SQLAlchemyError as exc:
        logger.warning(
            "Could not release the refresh lease of %s (%s) (%s); it runs out by itself.",
            key,
            purpose,
            type(exc).__name__,
        )


def _keep_storing(
    st: MailOAuthState, key: str, purpose: str, claim: _Claim, answer: TokenResponse, seconds: float
) -> None:
    """Serve ``answer`` from memory and store it from a background thread, retrying for up to
    ``seconds``: the IdP may have rotated the refresh token, so dropping it loses the grant."""
    skew = timedelta(seconds=answer.clock_skew or 0)
    st.cache[(key, purpose)] = CachedToken(
        answer.access_token,
        answer.expires_at,
        time.monotonic(),
        utcnow() - skew,
        unstored=True,
        clock_skew=answer.clock_skew,
    )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    logger.warning(
        "The database refused the refreshed token of %s (%s); retrying for %s s.",
        key,
        purpose,
        seconds,
    )

    def retry() -> None:
        until, pause = time.monotonic() + seconds, 0.2
        with app.app_context():
            while True:
                time.sleep(pause)
                try:
                    stored = _store(st, key, purpose, claim, answer)
                except SQLAlchemyError:
                    if time.monotonic() < until:
                        pause = min(pause * 2, 5.0)
                        continue
                    logger.error(
                        "Gave up storing the refreshed token of %s (%s) after %s s.",
                        key,
                        purpose,
                        seconds,
                    )
                    st.cache.pop((key, purpose), None)
                    return
                if stored is None:
                    st.cache.pop((key, purpose), None)
                    return
                signals.refreshed.send(
                    st.extension, key=key, purpose=purpose, expires_at=answer.expires_at
                )
                return

    threading.Thread(target=retry, name=f"mailoauth-store-{key}", daemon=True).start()


def _ask_idp(claim: _Claim, config: Config) -> TokenResponse | ProviderFailure:
    """The account's grant (:meth:`Provider.token_grant`: refresh_token when delegated,
    client_credentials for application access...): the IdP's answer or the failure; any
    exception in the provider's hooks or the call is a failure, recorded like any other."""
    try:
        grant = claim.provider.token_grant(
            claim.config,
            refresh_token=claim.refresh_token,
            client_secret=claim.client_secret,
            mailbox=claim.mailbox,
        )
        answer = request_token(
            claim.provider,
            claim.config,
            claim.client_secret,
            grant,
            timeout=config.http_timeout,
            deadline=_idp_deadline(config),
            policy=config.outbound,
            requested_scopes=claim.provider.scopes(claim.config),
            certificates=claim.certificates,
        )
    except TokenRequestFailed as exc:
        return exc.failure
    except Exception as exc:  # the safety net: recorded, never raised
        return unexpected_failure(exc)
    return answer


def _store(
    st: MailOAuthState,
    key: str,
    purpose: str,
    claim: _Claim,
    answer: TokenResponse | ProviderFailure,
) -> CredentialMixin | None:
    """Record the IdP's answer if it may still be stored (``_store_guard``): the credential as
    stored (``claim.credential``, updated), or ``None`` if the answer came too late.

    One guarded ``UPDATE`` of the credential and one event ``INSERT`` in one transaction;
    on PostgreSQL one statement (the ``INSERT`` selects from the ``UPDATE ... RETURNING``).
    """
    config = st.config
    success = isinstance(answer, TokenResponse)
    if isinstance(answer, TokenResponse):
        values, event = _success(st, claim, answer)
    else:
        values, event = _failure(claim, answer, config)
    with own_session(st.db, lock_timeout=config.lock_timeout) as s:
        stored = _write(s, st, claim, success, values, event)
    if not stored:
        logger.warning(
            "Refresh of %s (%s) finished after its credential changed; result dropped.",
            key,
            purpose,
        )
        _release(st, key, purpose, claim)
        return None
    credential = _as_stored(claim.credential, values)
    if isinstance(answer, TokenResponse):
        st.cache[(key, purpose)] = CachedToken(
            answer.access_token,
            answer.expires_at,
            time.monotonic(),
            _obtained_at(credential),
            clock_skew=answer.clock_skew,
        )
    else:
        st.cache.pop((key, purpose), None)
        logger.warning(
            "Refresh failed for %s (%s): %s [%s]", key, purpose, answer.code, answer.kind
        )
    return credential


def _as_stored(credential: CredentialMixin, values: dict[str, Any]) -> CredentialMixin:
    """A new (transient) credential: ``credential`` with ``values``. The row read may be shared
    by the threads of this process (``_read_once``), so it is never changed in place."""
    columns = sa.inspect(type(credential)).column_attrs
    return type(credential)(**{a.key: getattr(credential, a.key) for a in columns} | values)


def _write(
    session: Session,
    st: MailOAuthState,
    claim: _Claim,
    success: bool,
    values: dict[str, Any],
    event: dict[str, Any],
) -> bool:
    """Update the credential where the claim still holds (``_store_statements``) and add
    ``event`` for it; whether it held."""
    credentials, events = st.models.Credential.__table__, st.models.Event.__table__
    dialect = session.get_bind().dialect.name
    update, insert = _store_statements(credentials, events, dialect, success)
    params = {
        "claim_uid": claim.uid,
        "claim_version": claim.version,
        "claim_refreshed_at": claim.refreshed_at,
        "claim_failure_count": claim.failure_count,
        "claim_account_id": claim.account_id,
        **{f"v_{k}": v for k, v in cleaned(credentials, values).items()},
        **{f"e_{k}": v for k, v in cleaned(events, event).items()},
    }
    if insert is None:  # PostgreSQL: one statement
        return session.execute(update, params).first() is not None
    if cast(sa.CursorResult[Any], session.execute(update, params)).rowcount != 1:
        return False
    session.execute(insert, params)
    return True


#: the credential columns a store sets (``_success``, ``_failure``); ``version`` goes up by one
_SUCCESS_COLUMNS = (
    "access_token",
    "refresh_token",
    "refresh_token_issued_at",
    "scope",
    "expires_at",
    "refreshed_at",
    "clock_skew",
    "status",
    "failure_count",
    "last_error",
    "last_error_code",
    "next_retry_at",
    "serve_until",
    "refresh_lease_until",
)
_FAILURE_COLUMNS = (
    "failure_count",
    "status",
    "last_error_code",
    "last_error",
    "next_retry_at",
    "serve_until",
    "refresh_lease_until",
)
#: the event columns a store sets (``_event``), and ``account_id``
_EVENT_COLUMNS = ("at", "kind", "level", "code", "message", "diagnostics")


@functools.cache
def _store_statements(
    credentials: sa.Table, events: sa.Table, dialect: str, success: bool
) -> tuple[sa.Executable, sa.Executable | None]:
    """The store's statements, built once per table, dialect and outcome: the guarded
    ``UPDATE`` and the event ``INSERT``; on PostgreSQL one ``INSERT`` selecting from the
    ``UPDATE ... RETURNING`` (and ``None``). Parameters: the claim's ``claim_uid``,
    ``_version``, ``_refreshed_at``, ``_failure_count``, ``_account_id``; the new values
    ``v_<column>``, ``e_<column>``."""
    c = credentials.c
    names = _SUCCESS_COLUMNS if success else _FAILURE_COLUMNS
    update = (
        sa.update(credentials)
        .where(_store_guard(credentials, success=success))
        .values(
            {c[n]: sa.bindparam(f"v_{n}", type_=c[n].type) for n in names}
            | {c.version: c.version + 1}
        )
    )
    values = [sa.bindparam(f"e_{n}", type_=events.c[n].type).label(n) for n in _EVENT_COLUMNS]
    if dialect == "postgresql":
        stored = update.returning(c.account_id).cte("stored")
        rows = sa.select(stored.c.account_id, *values)
        insert = sa.insert(events).from_select(["account_id", *_EVENT_COLUMNS], rows)
        return insert.returning(events.c.id), None
    insert = sa.insert(events).values(
        {events.c.account_id: sa.bindparam("claim_account_id")}
        | {events.c[n]: sa.bindparam(f"e_{n}", type_=events.c[n].type) for n in _EVENT_COLUMNS}
    )
    return update, insert


def _store_guard(credentials: sa.Table, *, success: bool) -> sa.ColumnElement[bool]:
    """Where an answer to a claim may still be stored, as SQL (the claim's ``claim_uid``,
    ``_version``, ``_refreshed_at``, ``_failure_count`` as parameters).

    Yes when nothing changed since the claim. A success also wins over failures stored
    meanwhile by workers that claimed after this one's lease ran out: they sent a refresh
    token the IdP had already rotated, and this answer holds the new one. Anything else (a new
    credential, a newer success, an admin's change) is newer than this answer.
    """
    c = credentials.c
    version = sa.bindparam("claim_version", type_=c.version.type)
    unchanged = c.version == version
    mine = c.uid == sa.bindparam("claim_uid", type_=c.uid.type)
    if not success:
        return sa.and_(mine, unchanged)
    refreshed = sa.bindparam("claim_refreshed_at", type_=c.refreshed_at.type)
    failures = sa.bindparam("claim_failure_count", type_=c.failure_count.type)
    only_failures = sa.and_(
        c.refreshed_at.is_not_distinct_from(refreshed),
        c.version > version,
        c.version - version == c.failure_count - failures,
    )
    return sa.and_(mine, sa.or_(unchanged, only_failures))


def _success(
    st: MailOAuthState, claim: _Claim, answer: TokenResponse
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The credential's new values and the event after a successful refresh."""
    now = utcnow()
    credential = claim.credential
    values: dict[str, Any] = {
        "access_token": st.sealed(credential, "access_token", answer.access_token),
        "expires_at": answer.expires_at,
        "refreshed_at": now,
        "clock_skew": answer.clock_skew,
        "status": CredentialStatus.ACTIVE,
        "failure_count": 0,
        "last_error": None,
        "last_error_code": None,
        "next_retry_at": None,
        "serve_until": None,
        "refresh_lease_until": None,
    }
    # Microsoft rotates refresh tokens: always keep the newest. Google sends none: keep ours
    # (failures stored since the claim never change it, nor the scope).
    if answer.refresh_token:
        values["refresh_token"] = st.sealed(credential, "refresh_token", answer.refresh_token)
        values["refresh_token_issued_at"] = now
    else:
        values["refresh_token"] = credential.refresh_token
        values["refresh_token_issued_at"] = credential.refresh_token_issued_at
    values["scope"] = answer.scope if answer.raw.get("scope") else credential.scope
    until = f"{answer.expires_at:%Y-%m-%d %H:%M}"
    if answer.refresh_token:
        message = gettext(
            "Access token refreshed, valid until %(time)s UTC; new refresh token stored",
            time=until,
        )
    else:
        message = gettext("Access token refreshed, valid until %(time)s UTC", time=until)
    event = _event(EventKind.REFRESHED, EventLevel.INFO, None, message, now)
    return values, event


def _failure(
    claim: _Claim, failure: ProviderFailure, config: Config
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The credential's new values and the event after a refused refresh; nothing deleted.

    Stored only while the row is as claimed (``_store_guard``), so the claim's view of it holds.
    """
    credential = claim.credential
    leeway = timedelta(seconds=config.refresh_leeway)
    was_due = token_due(credential.expires_at, _obtained_at(credential), leeway)
    failures = claim.failure_count + 1
    code = (failure.code or "")[:64] or None
    transient = failure.kind == FailureKind.TRANSIENT
    values: dict[str, Any] = {
        "failure_count": failures,
        "status": STATUS_AFTER[failure.kind],
        "last_error_code": code,
        "last_error": failure.summary(),
        "next_retry_at": (
            utcnow() + timedelta(seconds=backoff(failures, failure.retry_after, config))
            if transient
            else None
        ),
        "serve_until": credential.expires_at if not transient and was_due else None,
        "refresh_lease_until": None,
    }
    level = EventLevel.WARNING if transient else EventLevel.ERROR
    event = _event(EventKind.REFRESH_FAILED, level, code, failure.summary(), utcnow())
    return values, event | {"diagnostics": dict(failure.diagnostics) or None}


def _event(
    kind: EventKind, level: EventLevel, code: str | None, message: str, at: datetime
) -> dict[str, Any]:
    """An event row's values (its account is the claim's); no diagnostics."""
    return {
        "at": at,
        "kind": kind,
        "level": level,
        "code": code,
        "message": message,
        "diagnostics": None,
    }


def backoff(failures: int, retry_after: float | None, config: Config) -> float:
    """Seconds to wait after ``failures`` transient failures: exponential, jittered, never
    earlier than ``retry_after``, and never beyond ``MAILOAUTH_RETRY_MAX`` (whatever the IdP's
    ``Retry-After`` says)."""
    base, ceiling = config.retry_base, config.retry_max
    delay: float = min(ceiling, base * 2 ** min(failures - 1, 64))
    delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not a secret
    return min(max(delay, retry_after or 0), ceiling)


def _unavailable(st: MailOAuthState, credential: CredentialMixin, keep_valid_token: bool) -> str:
    """After a failure: the still-valid token if wanted, else the typed error."""
    token = _current(st, credential) if keep_valid_token else None
    if token:
        return token
    error = credential.last_error or ""
    if credential.next_retry_at:
        message = gettext(
            "The identity provider is unavailable; next try at %(time)s UTC. %(error)s",
            time=credential.next_retry_at.strftime("%H:%M:%S"),
            error=error,
        )
    else:
        message = gettext("The identity provider is unavailable. %(error)s", error=error)
    raise TemporarilyUnavailable(message.strip(), retry_at=credential.next_retry_at)


@dataclass(frozen=True)
class _Failed:
    """A refresh the IdP refused: its failure, the credential as stored, the account's label."""

    failure: ProviderFailure
    credential: CredentialMixin
    label: str


def _after_failure(
    st: MailOAuthState, key: str, purpose: str, failed: _Failed, keep_valid_token: bool
) -> str:
    """Signal the stored failure, then raise the typed error, or (if wanted) return the
    current token while it may still serve: after a transient failure, or after a permanent
    one of a token that was due (``_still_served``)."""
    failure, credential = failed.failure, failed.credential
    signals.refresh_failed.send(st.extension, key=key, purpose=purpose, failure=failure)
    if failure.kind == FailureKind.REAUTHORIZE:
        signals.reauthorization_required.send(
            st.extension, key=key, purpose=purpose, failure=failure
        )
    if failure.kind != FailureKind.TRANSIENT and not (
        keep_valid_token and _still_served(credential)
    ):
        if failure.kind == FailureKind.REAUTHORIZE:
            raise ReauthorizationRequired(f"{failed.label}: {failure.summary()}")
        raise ConfigurationError(f"{failed.label}: {failure.summary()}")
    return _unavailable(st, credential, keep_valid_token)
