"""The per-app state every module below the shell works with: the database, key ring, host
hooks and token cache of one app (``app.extensions["mailoauth"]``).

It imports nothing above it, so ``flow``, ``tokens``, ``views``, ``cli`` ... take the state
from here and never import the extension shell.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from flask import current_app
from flask_sqlalchemy import SQLAlchemy

from . import crypto
from .config import Config
from .errors import MailboxNotFound, SetupError
from .metrics import RefreshMetrics
from .models import Models, SecretRow, utcnow
from .notification import Notifier
from .settings import MailboxSettings

MailboxLoader = Callable[[str], MailboxSettings | None]
AccessCheck = Callable[[], bool]
AccountPage = Callable[[str, str], str]
#: a token cache entry's key: (mailbox key, purpose)
CacheKey = tuple[str, str]

#: a change of the wall clock against the monotonic one beyond this (seconds) is a clock step
_CLOCK_STEP = 2.0


def _wall_offset() -> float:
    """The wall clock minus the monotonic one: it changes only when the wall clock steps."""
    return time.time() - time.monotonic()


def token_due(
    expires_at: datetime,
    obtained_at: datetime | None,
    leeway: timedelta,
    now: datetime | None = None,
) -> bool:
    """Whether a token must be refreshed before use: valid for no more than the leeway.

    The leeway is capped at half the token's lifetime: a token that lives less than the leeway
    (Keycloak's default 300 s at the default leeway, the test IdP's 2 s) is used for the first
    half of its life. Otherwise it would be due the moment it is issued, every call would
    refresh, and each of N callers queued behind a refresh would refresh again. ``now``
    defaults to the host's clock.
    """
    if obtained_at is not None:
        leeway = min(leeway, max(expires_at - obtained_at, timedelta(0)) / 2)
    return expires_at - (now or utcnow()) <= leeway


@dataclass(frozen=True)
class CachedToken:
    """A token this process may hand out; past ``MAILOAUTH_CACHE_TTL`` the database is asked
    again, and the entry stays as a fallback while the database fails, until it expires."""

    access_token: str
    expires_at: datetime
    cached_at: float
    #: when the token was obtained; with ``expires_at`` it caps the leeway (:func:`token_due`)
    obtained_at: datetime | None = None
    #: the database refused it so far: served beyond the TTL while a retry stores it
    unstored: bool = False
    #: host minus IdP clock (seconds) measured when this process obtained the token
    clock_skew: float | None = None
    #: :func:`_wall_offset` when the entry was made: tells whether the wall clock stepped since
    wall_offset: float = field(default_factory=_wall_offset)

    def now(self) -> datetime:
        """Now on the clock ``expires_at`` is on: the IdP's, while the host clock that was
        measured fast has not stepped since (a later correction makes the host clock right)."""
        now = utcnow()
        skew = self.clock_skew or 0.0
        if skew > 0 and abs(_wall_offset() - self.wall_offset) < _CLOCK_STEP:
            return now - timedelta(seconds=skew)
        return now

    def due(self, leeway: timedelta) -> bool:
        """Whether it must be refreshed before use (see :func:`token_due`), on :meth:`now`'s
        clock."""
        return token_due(self.expires_at, self.obtained_at, leeway, self.now())

    def __repr__(self) -> str:
        return f"<CachedToken expires_at={self.expires_at.isoformat()}>"


class TokenCache:
    """The tokens of one app's process, least recently used first out: at most ``size``
    entries (``MAILOAUTH_CACHE_SIZE``), so a host with many mailboxes holds a bounded number of
    tokens in memory. Safe to share between threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[CacheKey, CachedToken] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, key: CacheKey) -> CachedToken | None:
        """The entry, now the most recently used; ``None`` if there is none."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def __setitem__(self, key: CacheKey, entry: CachedToken) -> None:
        with self._guard:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def pop(self, key: CacheKey, default: CachedToken | None = None) -> CachedToken | None:
        with self._guard:
            return self._entries.pop(key, default)

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()

    def keys(self) -> list[CacheKey]:
        """The keys, least recently used first."""
        with self._guard:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


@dataclass
class Hooks:
    """The host's callbacks, registered with ``MailOAuth``'s decorators.

    One ``MailOAuth`` instance owns one ``Hooks`` and shares it with the state of every app it
    serves, so a callback registered after ``init_app`` still counts.
    """

    mailbox_loader: MailboxLoader | None = None
    access_check: AccessCheck | None = None
    account_page: AccountPage | None = None
    notifier: Notifier | None = None

    def may_manage(self) -> bool:
        """Whether the current request may use the extension's views."""
        return self.access_check is not None and bool(self.access_check())

    def mailbox(self, key: str) -> MailboxSettings:
        """The host's settings for mailbox ``key``, from its ``mailbox_loader``."""
        if self.mailbox_loader is None:
            raise SetupError(
                "No mailbox loader registered: decorate a function taking a key and returning "
                "MailboxSettings with @mailoauth.mailbox_loader."
            )
        settings = self.mailbox_loader(key)
        if settings is None:
            raise MailboxNotFound(f"The mailbox loader knows no mailbox with key {key!r}.")
        if not isinstance(settings, MailboxSettings):
            raise SetupError(
                f"The mailbox loader returned {type(settings).__name__}; "
                "it must return MailboxSettings or None."
            )
        return settings


@dataclass
class MailOAuthState:
    """What one app holds in ``app.extensions["mailoauth"]``."""

    #: the ``MailOAuth`` instance: the sender of every signal
    extension: object
    db: SQLAlchemy
    models: Models
    keyring: crypto.KeyRing
    #: the checked ``MAILOAUTH_*`` settings, built once by ``init_app``
    config: Config
    hooks: Hooks
    #: this process's tokens, bounded by ``MAILOAUTH_CACHE_SIZE``
    cache: TokenCache = field(init=False)
    #: this process's token request counts and durations (the metrics endpoint)
    metrics: RefreshMetrics = field(init=False, default_factory=RefreshMetrics)

    def __post_init__(self) -> None:
        self.cache = TokenCache(self.config.cache_size)

    def seal(self, row: SecretRow, name: str, value: str) -> None:
        """Encrypt ``value`` into the secret column ``name`` of ``row``, bound to both."""
        setattr(row, name, self.sealed(row, name, value))

    def sealed(self, row: SecretRow, name: str, value: str) -> bytes:
        """``value`` encrypted for the secret column ``name`` of ``row``, for a Core statement
        that writes the column without the ORM."""
        return self.keyring.encrypt(value, aad=row.aad(name))

    def reveal(self, row: SecretRow, name: str) -> str:
        """Decrypt the secret column ``name`` of ``row``."""
        return self.keyring.decrypt(getattr(row, name), aad=row.aad(name))


def state() -> MailOAuthState:
    """The current app's extension state, with a helpful error when it is missing."""
    try:
        return cast(MailOAuthState, current_app.extensions["mailoauth"])
    except KeyError:
        raise SetupError(
            "flask-mailoauth is not registered on this app. Did you forget to call "
            "mailoauth.init_app(app, db=db)?"
        ) from None
