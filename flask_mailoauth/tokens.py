"""``access_token()``: a fresh token from memory, the database, or one refresh shared by all.

Steady state costs no SQL: a valid token is served from a small per-process cache for at most
``MAILOAUTH_CACHE_TTL`` seconds. Otherwise one statement reads the row. A refresh runs under a
lock that holds across threads (a per-account ``threading.Lock``), processes and hosts: a
lease on the credential row, taken in a short transaction under ``SELECT ... FOR UPDATE``
(PostgreSQL) or ``BEGIN IMMEDIATE`` (SQLite) after re-reading the row. The lease holder calls
the IdP with no transaction open; the others wait for its answer. N concurrent callers cause
exactly one call to the IdP, and no database lock is held while the IdP answers.

If the process dies between the IdP's answer and the commit, the new tokens are lost and the
lease runs out after ``2 * MAILOAUTH_HTTP_TIMEOUT + 5`` seconds. A non-rotating IdP (Google) is
unaffected; a rotating one may then refuse the old refresh token and the account shows
"reauthorization required" with the IdP's code on the Token tab.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from . import signals
from .errors import (
    AccountDisabled,
    ConfigurationError,
    NotConfigured,
    ProviderFailure,
    ReauthorizationRequired,
    TemporarilyUnavailable,
)
from .models import own_session, row_lock, utcnow
from .oauth import TokenRequestFailed, request_token
from .providers import registry
from .providers.base import Provider

if TYPE_CHECKING:
    from .extension import MailOAuthState

logger = logging.getLogger("flask_mailoauth")

ACTIVE, RETRYING = "active", "retrying"
REAUTHORIZE, MISCONFIGURED = "reauthorization_required", "configuration_error"
_STATUS_BY_KIND = {
    "transient": RETRYING,
    "reauthorize": REAUTHORIZE,
    "configuration": MISCONFIGURED,
}


@dataclass(frozen=True)
class CachedToken:
    """A token this process may hand out without asking the database."""

    access_token: str
    expires_at: datetime
    cached_at: float
    #: when the token was obtained; with ``expires_at`` it caps the leeway (``_due``)
    obtained_at: datetime | None = None

    def __repr__(self) -> str:
        return f"<CachedToken expires_at={self.expires_at.isoformat()}>"


_process_locks: dict[tuple[int, str, str], threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(st: MailOAuthState, key: str, purpose: str) -> threading.Lock:
    """One lock per account in this process: threads queue here, not on the database."""
    name = (id(st), key, purpose)
    with _process_locks_guard:
        return _process_locks.setdefault(name, threading.Lock())


def access_token(st: MailOAuthState, key: str, purpose: str) -> str:
    """A token valid for more than ``MAILOAUTH_REFRESH_LEEWAY`` seconds, or than half its
    lifetime when that is shorter (see module doc and ``_due``)."""
    config = current_app.config
    leeway = timedelta(seconds=config["MAILOAUTH_REFRESH_LEEWAY"])
    cached = _cached(st, key, purpose, leeway, config["MAILOAUTH_CACHE_TTL"])
    if cached:
        return cached
    with own_session(st.db) as s:
        credential, account = _read(s, st, key, purpose)
        token = _usable(st, credential, account, leeway)
    if token:
        return token
    lock = _process_lock(st, key, purpose)
    if not lock.acquire(timeout=config["MAILOAUTH_LOCK_TIMEOUT"]):
        raise _still_refreshing(key, purpose)
    try:
        cached = _cached(st, key, purpose, leeway, config["MAILOAUTH_CACHE_TTL"])
        if cached:
            return cached
        # Mail must go on: while the IdP is down, a still-valid token beats an error.
        return _refresh(st, key, purpose, force=False, keep_valid_token=True)[0]
    finally:
        lock.release()


def _still_refreshing(key: str, purpose: str) -> TemporarilyUnavailable:
    return TemporarilyUnavailable(
        f"{key} ({purpose}): another worker has been refreshing this token for longer than "
        "MAILOAUTH_LOCK_TIMEOUT."
    )


def _cached(
    st: MailOAuthState, key: str, purpose: str, leeway: timedelta, ttl: float
) -> str | None:
    entry: CachedToken | None = st.cache.get((key, purpose))
    if entry is None:
        return None
    if time.monotonic() - entry.cached_at > ttl or _due(
        entry.expires_at, entry.obtained_at, leeway
    ):
        st.cache.pop((key, purpose), None)
        return None
    return entry.access_token


def _select(session: Session, st: MailOAuthState, key: str, purpose: str, *, lock: bool):
    """``(credential, account)`` in one statement, or ``None``; ``lock`` adds FOR UPDATE."""
    m = st.models
    query = (
        sa.select(m.Credential, m.Account)
        .join(m.Account, m.Credential.account_id == m.Account.id)
        .where(m.Account.key == key, m.Account.purpose == purpose)
    )
    if lock:
        query = query.with_for_update(of=m.Credential)
    return session.execute(query).one_or_none()


def _read(session: Session, st: MailOAuthState, key: str, purpose: str, *, lock: bool = False):
    """The account's credential and account, in one statement; typed errors when unusable."""
    row = _select(session, st, key, purpose, lock=lock)
    if row is None:
        raise NotConfigured(
            f"No OAuth2 token for {key!r} ({purpose}): configure and authorize it in the "
            "Config modal."
        )
    credential, account = row
    if not account.enabled:
        raise AccountDisabled(f"The OAuth2 account {account.name!r} is disabled.")
    if credential.status == REAUTHORIZE:
        raise ReauthorizationRequired(
            f"{account.name}: the grant is no longer valid, an admin must authorize again. "
            f"{credential.last_error or ''}".strip()
        )
    if credential.status == MISCONFIGURED:
        raise ConfigurationError(
            f"{account.name}: the identity provider refuses the application's configuration. "
            f"{credential.last_error or ''}".strip()
        )
    if credential.config_signature != account.config_signature:
        raise ReauthorizationRequired(
            f"{account.name}: the IdP Config changed since the token was issued; authorize again."
        )
    return credential, account


def _due(expires_at: datetime, obtained_at: datetime | None, leeway: timedelta) -> bool:
    """Whether a token must be refreshed before use: valid for no more than the leeway.

    The leeway is capped at half the token's lifetime: a token that lives less than the leeway
    (Keycloak's default 300 s at the default leeway, the test IdP's 2 s) is used for the first
    half of its life. Otherwise it would be due the moment it is issued, every call would
    refresh, and each of N callers queued behind a refresh would refresh again.
    """
    if obtained_at is not None:
        leeway = min(leeway, max(expires_at - obtained_at, timedelta(0)) / 2)
    return expires_at - utcnow() <= leeway


def _obtained_at(credential: Any) -> datetime | None:
    return credential.refreshed_at or credential.issued_at


def _usable(st: MailOAuthState, credential: Any, account: Any, leeway: timedelta) -> str | None:
    """The stored token when valid beyond the leeway (and cache it), else ``None``."""
    obtained_at = _obtained_at(credential)
    if _due(credential.expires_at, obtained_at, leeway):
        return None
    token = st.reveal(credential, "access_token")
    st.cache[(account.key, account.purpose)] = CachedToken(
        token, credential.expires_at, time.monotonic(), obtained_at
    )
    return token


def refresh(st: MailOAuthState, key: str, purpose: str, *, force: bool = True) -> str:
    """Refresh now under the account's lease; ``force=False`` skips it if another caller did.

    ``force`` also ignores the backoff after transient failures ("Refresh now" in the Token
    tab). Unlike :func:`access_token`, a failure always raises, even a transient one while the
    current token is still valid: whoever asked for a refresh learns that it did not happen.
    """
    return _refresh(st, key, purpose, force=force)[0]


def refresh_if_due(st: MailOAuthState, key: str, purpose: str) -> bool:
    """Refresh a due token unless another worker did meanwhile; True when this call did it."""
    return _refresh(st, key, purpose, force=False)[1]


@dataclass(frozen=True)
class _Claim:
    """What the worker that holds an account's refresh lease needs for its call to the IdP.

    ``uid`` and ``version`` identify the credential as it was when claimed: the answer is
    stored only if nobody replaced or updated it meanwhile.
    """

    uid: str
    version: int
    provider: Provider
    config: dict[str, str]
    client_secret: str
    refresh_token: str

    def __repr__(self) -> str:
        return f"<_Claim {self.uid} v{self.version} {self.provider.id}>"


_BUSY = object()  # another worker holds the lease


def _refresh(
    st: MailOAuthState, key: str, purpose: str, *, force: bool, keep_valid_token: bool = False
) -> tuple[str, bool]:
    """The token and whether this call asked the IdP for it.

    Three short transactions instead of one long one: claim a lease on the row, call the IdP
    with no transaction open, store the answer. Holding SQLite's write lock (or a PostgreSQL
    row lock) through an HTTP call would stall every other writer for as long as the IdP takes.
    Workers that find the lease taken wait for its holder's answer and use it. With
    ``keep_valid_token``, a transient failure returns the current token while it is valid.
    """
    config = current_app.config
    deadline = time.monotonic() + config["MAILOAUTH_LOCK_TIMEOUT"]
    pause = 0.02
    while True:
        claimed = _claim(st, key, purpose, force=force, keep_valid_token=keep_valid_token)
        if isinstance(claimed, _Claim):
            answer, failure = _ask_idp(claimed, config)
            credential = _store(st, key, purpose, claimed, answer, failure)
            if credential is not None:
                break
            # Replaced or updated meanwhile (an admin authorized again, or a slow call lost its
            # lease to another worker): the stored state decides, so read it again.
        elif claimed is not _BUSY:
            return claimed, False
        else:
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        if time.monotonic() > deadline:
            raise _still_refreshing(key, purpose)
        force = False  # what the other worker obtained serves this caller too
    # Committed: signals and errors come after the state is stored.
    if answer is not None:
        signals.refreshed.send(st.extension, key=key, purpose=purpose, expires_at=answer.expires_at)
        return answer.access_token, True
    return _after_failure(st, key, purpose, failure, credential, keep_valid_token), True


def _claim(
    st: MailOAuthState, key: str, purpose: str, *, force: bool, keep_valid_token: bool
) -> Any:
    """In one short locked transaction: the usable token, ``_BUSY``, or a new lease."""
    config = current_app.config
    leeway = timedelta(seconds=config["MAILOAUTH_REFRESH_LEEWAY"])
    with own_session(st.db) as s, row_lock(s, config["MAILOAUTH_LOCK_TIMEOUT"]):
        credential, account = _read(s, st, key, purpose, lock=True)
        now = utcnow()
        if not force:
            token = _usable(st, credential, account, leeway)
            if token:
                return token
        if credential.refresh_lease_until and credential.refresh_lease_until > now:
            return _BUSY
        if not force and credential.next_retry_at and credential.next_retry_at > now:
            return _unavailable(st, credential, keep_valid_token)
        # Long enough for the IdP's connect and read timeouts; a dead holder's lease runs out.
        lease = timedelta(seconds=2 * config["MAILOAUTH_HTTP_TIMEOUT"] + 5)
        credential.refresh_lease_until = now + lease
        return _Claim(
            uid=credential.uid,
            version=credential.version,
            provider=registry.get(account.provider),
            config=dict(account.config),
            client_secret=st.reveal(account, "client_secret") if account.client_secret else "",
            refresh_token=st.reveal(credential, "refresh_token"),
        )


def _ask_idp(claim: _Claim, config: Any) -> tuple[Any, ProviderFailure | None]:
    """The refresh_token grant: ``(answer, None)`` or ``(None, failure)``."""
    grant = {"grant_type": "refresh_token", "refresh_token": claim.refresh_token}
    grant.update(claim.provider.refresh_params(claim.config))
    try:
        answer = request_token(
            claim.provider,
            claim.config,
            claim.client_secret,
            grant,
            timeout=config["MAILOAUTH_HTTP_TIMEOUT"],
            requested_scopes=claim.provider.scopes(claim.config),
        )
    except TokenRequestFailed as exc:
        return None, exc.failure
    return answer, None


def _store(st, key: str, purpose: str, claim: _Claim, answer: Any, failure: Any) -> Any:
    """Record the IdP's answer if the credential is still the one claimed; ``None`` if not.

    It is not when an admin re-authorized or deleted the token meanwhile, or when another
    worker stored a refresh after this one's lease ran out: a newer state already stands.
    """
    config = current_app.config
    with own_session(st.db) as s, row_lock(s, config["MAILOAUTH_LOCK_TIMEOUT"]):
        row = _select(s, st, key, purpose, lock=True)
        if row is None or (row[0].uid, row[0].version) != (claim.uid, claim.version):
            logger.warning(
                "Refresh of %s (%s) finished after its credential changed; result dropped.",
                key,
                purpose,
            )
            return None
        credential, account = row
        credential.refresh_lease_until = None
        if answer is not None:
            _record_success(st, s, credential, account, answer)
        else:
            _record_failure(st, s, credential, account, failure, config)
        return credential


def _record_success(st, session: Session, credential: Any, account: Any, answer: Any) -> None:
    now = utcnow()
    st.seal(credential, "access_token", answer.access_token)
    if answer.refresh_token:
        # Microsoft rotates refresh tokens: always keep the newest. Google sends none: keep ours.
        st.seal(credential, "refresh_token", answer.refresh_token)
        credential.refresh_token_issued_at = now
    credential.expires_at = answer.expires_at
    credential.refreshed_at = now
    if answer.raw.get("scope"):
        credential.scope = answer.scope
    credential.status = ACTIVE
    credential.failure_count = 0
    credential.last_error = credential.last_error_code = None
    credential.next_retry_at = None
    credential.version += 1
    session.add(
        st.models.Event(
            account_id=account.id,
            kind="refreshed",
            message=f"Access token refreshed, valid until {answer.expires_at:%Y-%m-%d %H:%M} UTC"
            + ("; new refresh token stored" if answer.refresh_token else ""),
        )
    )
    st.cache[(account.key, account.purpose)] = CachedToken(
        answer.access_token, answer.expires_at, time.monotonic(), now
    )


def _record_failure(st, session, credential, account, failure: ProviderFailure, config) -> None:
    """Store the failure on the credential (never deleting anything) and log the event."""
    credential.failure_count += 1
    credential.status = _STATUS_BY_KIND[failure.kind]
    credential.last_error_code = (failure.code or "")[:64] or None
    credential.last_error = failure.summary()
    credential.next_retry_at = (
        utcnow() + timedelta(seconds=backoff(credential.failure_count, failure.retry_after, config))
        if failure.kind == "transient"
        else None
    )
    credential.version += 1
    session.add(
        st.models.Event(
            account_id=account.id,
            kind="refresh_failed",
            level="warning" if failure.kind == "transient" else "error",
            code=credential.last_error_code,
            message=failure.summary(),
        )
    )
    st.cache.pop((account.key, account.purpose), None)
    logger.warning(
        "Refresh failed for %s (%s): %s [%s]",
        account.key,
        account.purpose,
        failure.code,
        failure.kind,
    )


def backoff(failures: int, retry_after: float | None, config: Any) -> float:
    """Seconds to wait after ``failures`` transient failures: exponential, jittered, capped."""
    base, ceiling = config["MAILOAUTH_RETRY_BASE"], config["MAILOAUTH_RETRY_MAX"]
    delay = min(ceiling, base * 2 ** (failures - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not a secret
    return max(delay, retry_after or 0)


def _unavailable(st, credential: Any, keep_valid_token: bool) -> str:
    """After a transient failure: the still-valid token if wanted, else the typed error."""
    if keep_valid_token and credential.expires_at > utcnow():
        return st.reveal(credential, "access_token")
    retry = (
        f"; next try at {credential.next_retry_at:%H:%M:%S} UTC" if credential.next_retry_at else ""
    )
    raise TemporarilyUnavailable(
        f"The identity provider is unavailable{retry}. {credential.last_error or ''}".strip(),
        retry_at=credential.next_retry_at,
    )


def _after_failure(
    st, key: str, purpose: str, failure: ProviderFailure, credential: Any, keep_valid_token: bool
) -> str:
    """Signal the stored failure, then raise the typed error (or, if wanted and still valid
    after a transient failure, return the current token)."""
    signals.refresh_failed.send(st.extension, key=key, purpose=purpose, failure=failure)
    if failure.kind == "reauthorize":
        signals.reauthorization_required.send(
            st.extension, key=key, purpose=purpose, failure=failure
        )
        raise ReauthorizationRequired(f"{key} ({purpose}): {failure.summary()}")
    if failure.kind == "configuration":
        raise ConfigurationError(f"{key} ({purpose}): {failure.summary()}")
    return _unavailable(st, credential, keep_valid_token)
