"""The tables, defined on the host's Flask-SQLAlchemy ``db`` (so Alembic autogenerate sees them).

Columns are declared once on mixins; :func:`models_for` binds them to a host's ``db.Model``,
once per ``db`` instance. Every datetime is timezone-aware UTC. Secret columns hold
:mod:`~flask_mailoauth.crypto` ciphertexts bound to the table, the row's ``uid`` and the field.
"""

from __future__ import annotations

import threading
import unicodedata
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, cast

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import (
    AttributeEventToken,
    Mapped,
    Session,
    declared_attr,
    mapped_column,
    relationship,
)

from .vocabulary import CredentialStatus, EventLevel

#: the secret columns of each table, re-encrypted by ``flask mailoauth rotate-key``
SECRET_FIELDS = {
    "mailoauth_account": ("client_secret", "private_key", "next_private_key"),
    "mailoauth_credential": ("access_token", "refresh_token"),
    "mailoauth_pending": ("code_verifier",),
}


#: ``Column.info`` key of the columns that hold text from outside (the IdP, its tokens, errors);
#: the value caps a ``Text`` column, a ``String(n)`` column is capped at ``n``
OUTSIDE_TEXT = "mailoauth_outside_text"
#: the characters a ``Text`` column from outside keeps when it names no cap of its own
TEXT_CAP = 4000
#: control characters that separate words: they become a space, the others are dropped
_SPACING = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029")


def clean_text(value: object, length: int) -> str | None:
    """``value`` as storable text: no NUL, control, format or surrogate characters, at most
    ``length`` characters, one line.

    PostgreSQL refuses NUL and over-long values with ``DataError``; an unpaired surrogate (a
    ``\\ud800`` escape in the IdP's JSON) cannot be encoded at all. ``None`` stays ``None``.
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    text = text[: length * 4]  # bounds the work on a huge value; controls may shrink it
    kept = [
        " " if c in _SPACING else c
        for c in text
        if c in _SPACING or unicodedata.category(c) not in ("Cc", "Cf", "Cs")
    ]
    return "".join(kept).strip()[:length].rstrip()


def outside_text(cap: int | None = None) -> dict[str, int | None]:
    """The ``info`` of a column holding outside text (see :func:`clean_text`)."""
    return {OUTSIDE_TEXT: cap}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A datetime column that only accepts aware values and always returns UTC-aware ones."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("flask-mailoauth stores timezone-aware datetimes only.")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _uid() -> str:
    return uuid.uuid4().hex


class _Row:
    """For the type checker: what the host's ``db.Model`` gives each class :func:`models_for`
    makes (a keyword constructor, the table)."""

    if TYPE_CHECKING:
        __tablename__: ClassVar[str]
        __table__: ClassVar[sa.Table]

        def __init__(self, **columns: Any) -> None: ...


class SecretRow(_Row):
    """Rows with encrypted fields: a stable ``uid`` for the associated data, a safe repr."""

    uid: Mapped[str] = mapped_column(sa.String(32), unique=True, default=_uid)

    def aad(self, field: str) -> str:
        """The associated data binding a ciphertext to this row and ``field``."""
        if not self.uid:
            self.uid = _uid()
        return f"{self.__tablename__}:{self.uid}:{field}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'id', None)} {self.uid}>"


class AccountMixin(SecretRow):
    """One OAuth2 configuration: a host mailbox (``key``) used for ``mailbox`` or ``smtp``."""

    __tablename__ = "mailoauth_account"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[sa.UniqueConstraint]:
        return (sa.UniqueConstraint("key", "purpose", name="uq_mailoauth_account_key_purpose"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), index=True)
    purpose: Mapped[str] = mapped_column(sa.String(16))
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    address: Mapped[str] = mapped_column(sa.String(320))
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    provider: Mapped[str] = mapped_column(sa.String(64))
    #: the provider's IdP Config fields (JSON: field name to value)
    config: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    client_secret: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    secret_expires_on: Mapped[date | None] = mapped_column(sa.Date, nullable=True)
    #: the certificate (PEM) of ``private_key_jwt`` client authentication, and its sealed key
    certificate: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    private_key: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    #: a rollover's pending certificate, current once a token request succeeds with it
    next_certificate: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    next_private_key: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    strict_matching: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    config_signature: Mapped[str] = mapped_column(sa.String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    if TYPE_CHECKING:  # bound by models_for, typed here
        credential: Mapped[CredentialMixin | None]
        events: Mapped[list[EventMixin]]
        pending: Mapped[list[PendingAuthorizationMixin]]
        reconsent_links: Mapped[list[ReconsentLinkMixin]]
        notices: Mapped[list[NoticeMixin]]


class CredentialMixin(SecretRow):
    """The tokens of one account and the state of their refresh."""

    __tablename__ = "mailoauth_credential"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)

    @declared_attr
    def account_id(cls) -> Mapped[int]:
        return mapped_column(
            sa.ForeignKey("mailoauth_account.id", ondelete="CASCADE"), unique=True, index=True
        )

    access_token: Mapped[bytes] = mapped_column(sa.LargeBinary)
    refresh_token: Mapped[bytes] = mapped_column(sa.LargeBinary)
    token_type: Mapped[str] = mapped_column(sa.String(32), default="Bearer", info=outside_text())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scope: Mapped[str] = mapped_column(sa.Text, default="", info=outside_text(TEXT_CAP))
    audience: Mapped[str | None] = mapped_column(sa.String(255), nullable=True, info=outside_text())
    resource_owner: Mapped[str | None] = mapped_column(
        sa.String(320), nullable=True, info=outside_text()
    )
    authorized_by: Mapped[str | None] = mapped_column(
        sa.String(320), nullable=True, info=outside_text()
    )
    subject: Mapped[str | None] = mapped_column(sa.String(255), nullable=True, info=outside_text())
    tenant: Mapped[str | None] = mapped_column(sa.String(255), nullable=True, info=outside_text())
    config_signature: Mapped[str] = mapped_column(sa.String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    refresh_token_issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(sa.String(32), default=CredentialStatus.ACTIVE.value)
    failure_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error_code: Mapped[str | None] = mapped_column(
        sa.String(64), nullable=True, info=outside_text()
    )
    last_error: Mapped[str | None] = mapped_column(
        sa.Text, nullable=True, info=outside_text(TEXT_CAP)
    )
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: while set and in the future, a worker is calling the IdP to refresh this credential
    refresh_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: after a refresh of a due token failed for good: its access token is served until then
    serve_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: host minus IdP clock in seconds, as the last token answer showed it (None: not told)
    clock_skew: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    version: Mapped[int] = mapped_column(sa.Integer, default=1)

    if TYPE_CHECKING:  # bound by models_for, typed here
        account: Mapped[AccountMixin]


class PendingAuthorizationMixin(SecretRow):
    """A started authorization waiting for its callback: single use, short-lived."""

    __tablename__ = "mailoauth_pending"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    state_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)

    @declared_attr
    def account_id(cls) -> Mapped[int]:
        return mapped_column(sa.ForeignKey("mailoauth_account.id", ondelete="CASCADE"), index=True)

    session_id: Mapped[str] = mapped_column(sa.String(64))
    code_verifier: Mapped[bytes] = mapped_column(sa.LargeBinary)
    nonce: Mapped[str] = mapped_column(sa.String(128))
    redirect_uri: Mapped[str] = mapped_column(sa.Text)
    return_url: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    @declared_attr
    def reconsent_id(cls) -> Mapped[int | None]:
        """The re-consent link this authorization was started from, if any."""
        return mapped_column(
            sa.ForeignKey("mailoauth_reconsent.id", ondelete="CASCADE"), nullable=True
        )

    if TYPE_CHECKING:  # bound by models_for, typed here
        account: Mapped[AccountMixin]


class ReconsentLinkMixin(_Row):
    """A re-consent link: whoever holds it may authorize one account again, once, before it
    expires, signed in as the identity it is pinned to. Only its token's hash is stored."""

    __tablename__ = "mailoauth_reconsent"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)

    @declared_attr
    def account_id(cls) -> Mapped[int]:
        return mapped_column(sa.ForeignKey("mailoauth_account.id", ondelete="CASCADE"), index=True)

    #: the address that must sign in: the mailbox, or a delegate of a shared mailbox
    pinned: Mapped[str] = mapped_column(sa.String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: who signed in through it, as the IdP vouched
    used_by: Mapped[str | None] = mapped_column(sa.String(320), nullable=True, info=outside_text())

    if TYPE_CHECKING:  # bound by models_for, typed here
        pending: Mapped[list[PendingAuthorizationMixin]]


#: the events the Token tab shows for an account: its latest ones, which pruning always keeps
EVENTS_SHOWN = 10


class EventMixin(_Row):
    """One line of an account's history: authorized, refreshed, a failure with its code...

    Read by account, latest first (the Token tab), and pruned by age: hence the index on
    (account, time), which also serves lookups by account alone.
    """

    __tablename__ = "mailoauth_event"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[sa.Index]:
        return (sa.Index("ix_mailoauth_event_account_id_at", "account_id", "at"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)

    @declared_attr
    def account_id(cls) -> Mapped[int]:
        return mapped_column(sa.ForeignKey("mailoauth_account.id", ondelete="CASCADE"))

    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(sa.String(40))
    level: Mapped[str] = mapped_column(sa.String(10), default=EventLevel.INFO.value)
    code: Mapped[str | None] = mapped_column(sa.String(64), nullable=True, info=outside_text())
    message: Mapped[str] = mapped_column(sa.Text, default="", info=outside_text(TEXT_CAP))
    actor: Mapped[str | None] = mapped_column(sa.String(320), nullable=True, info=outside_text())
    #: the IdP's identifiers of a failure, name -> value (``ProviderFailure.diagnostics``)
    diagnostics: Mapped[dict[str, str] | None] = mapped_column(sa.JSON, nullable=True)

    def __repr__(self) -> str:
        return f"<Event {self.kind} {self.code or ''} at {self.at}>"


class NoticeMixin(_Row):
    """What has been notified of one condition of one account (:mod:`.notify`): one row per
    account and condition, claimed by a conditional ``UPDATE`` (or the ``INSERT`` the unique
    constraint lets only one process win), so every process and host sends one message."""

    __tablename__ = "mailoauth_notice"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[sa.UniqueConstraint]:
        return (
            sa.UniqueConstraint("account_id", "condition", name="uq_mailoauth_notice_condition"),
        )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)

    @declared_attr
    def account_id(cls) -> Mapped[int]:
        return mapped_column(sa.ForeignKey("mailoauth_account.id", ondelete="CASCADE"))

    #: a :class:`~flask_mailoauth.vocabulary.Condition`
    condition: Mapped[str] = mapped_column(sa.String(40))
    #: when the condition was found (again, after it was last resolved)
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: when the last message about it went out (the first one, or a reminder)
    notified_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reminders: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: when it was found gone and the recovery message claimed; ``None`` while it lasts
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return f"<Notice {self.condition} of {self.account_id} since {self.since}>"


def prune_events(db: SQLAlchemy, event: type, days: int, now: datetime | None = None) -> int:
    """Delete the events older than ``days``, except each account's latest
    :data:`EVENTS_SHOWN` (its history never goes blank); how many went."""
    table = event.__table__  # type: ignore[attr-defined]
    rank = (
        sa.func.row_number()
        .over(partition_by=table.c.account_id, order_by=(table.c.at.desc(), table.c.id.desc()))
        .label("rank")
    )
    ranked = sa.select(table.c.id, rank).subquery()
    shown = sa.select(ranked.c.id).where(ranked.c.rank <= EVENTS_SHOWN)
    cutoff = (now or utcnow()) - timedelta(days=days)
    with own_session(db) as s:
        statement = sa.delete(table).where(table.c.at < cutoff, table.c.id.not_in(shown))
        return cast(sa.CursorResult[Any], s.execute(statement)).rowcount


@dataclass(frozen=True)
class Models:
    """The model classes bound to one host ``db``."""

    Account: type[AccountMixin]
    Credential: type[CredentialMixin]
    PendingAuthorization: type[PendingAuthorizationMixin]
    Event: type[EventMixin]
    ReconsentLink: type[ReconsentLinkMixin]
    Notice: type[NoticeMixin]


_models_by_db: weakref.WeakKeyDictionary[SQLAlchemy, Models] = weakref.WeakKeyDictionary()


def models_for(db: SQLAlchemy) -> Models:
    """The models on ``db.Model``, created on first use and shared by every app using ``db``."""
    if db in _models_by_db:
        return _models_by_db[db]

    # The host's db.Model is a value known at run time: the type checker cannot take it as a
    # base class, so each class below is typed by its mixin alone.
    class MailOAuthAccount(AccountMixin, db.Model):  # type: ignore[name-defined,misc]
        credential = relationship(
            "MailOAuthCredential",
            uselist=False,
            back_populates="account",
            cascade="all, delete-orphan",
        )
        # ORM cascades as well as ON DELETE CASCADE: SQLite enforces foreign keys only when
        # the host turns them on.
        events = relationship("MailOAuthEvent", cascade="all, delete-orphan")
        pending = relationship(
            "MailOAuthPendingAuthorization", cascade="all, delete-orphan", back_populates="account"
        )
        reconsent_links = relationship("MailOAuthReconsentLink", cascade="all, delete-orphan")
        notices = relationship("MailOAuthNotice", cascade="all, delete-orphan")

    class MailOAuthCredential(CredentialMixin, db.Model):  # type: ignore[name-defined,misc]
        account = relationship(MailOAuthAccount, back_populates="credential")

    class MailOAuthPendingAuthorization(PendingAuthorizationMixin, db.Model):  # type: ignore[name-defined,misc]
        account = relationship(MailOAuthAccount, back_populates="pending")

    class MailOAuthEvent(EventMixin, db.Model):  # type: ignore[name-defined,misc]
        pass

    class MailOAuthReconsentLink(ReconsentLinkMixin, db.Model):  # type: ignore[name-defined,misc]
        pending = relationship("MailOAuthPendingAuthorization", cascade="all, delete-orphan")

    class MailOAuthNotice(NoticeMixin, db.Model):  # type: ignore[name-defined,misc]
        pass

    models = Models(
        MailOAuthAccount,
        MailOAuthCredential,
        MailOAuthPendingAuthorization,
        MailOAuthEvent,
        MailOAuthReconsentLink,
        MailOAuthNotice,
    )
    for model in (MailOAuthCredential, MailOAuthEvent, MailOAuthReconsentLink):
        _clean_outside_text(model)
    _models_by_db[db] = models
    return models


def _clean_outside_text(model: type[_Row]) -> None:
    """Pass every value set on ``model``'s outside-text columns through :func:`clean_text`.

    An attribute event, so no writer (the callback, a refresh, a failure record) can forget it.
    """
    for column in model.__table__.columns:
        if OUTSIDE_TEXT not in column.info:
            continue
        length = _text_cap(column)

        def clean(
            target: _Row,
            value: object,
            old: object,
            initiator: AttributeEventToken,
            length: int = length,
        ) -> str | None:
            return clean_text(value, length)

        sa.event.listen(getattr(model, column.key), "set", clean, retval=True)


def cleaned(table: sa.Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` for a Core ``INSERT``/``UPDATE`` of ``table``, outside text cleaned as the
    ORM's attribute events clean it (:func:`clean_text`): Core statements bypass those events."""
    out = dict(values)
    for name, value in values.items():
        column = table.c[name]
        if OUTSIDE_TEXT in column.info:
            out[name] = clean_text(value, _text_cap(column))
    return out


def _text_cap(column: sa.Column[Any]) -> int:
    """The characters an outside-text column keeps: its declared cap, else its length."""
    cap: int | None = column.info[OUTSIDE_TEXT]
    return cap or cast(sa.String, column.type).length or TEXT_CAP


#: the lock timeout (seconds) the extension wants on the connection being checked out; ``None``
#: for a checkout that is not the extension's (the host's own sessions)
_wanted_timeout: ContextVar[float | None] = ContextVar("mailoauth_lock_timeout", default=None)
#: ``ConnectionPoolEntry.info`` keys: the timeout this extension set, the host's SQLite one
_SET_TIMEOUT = "mailoauth_lock_timeout"
_HOST_BUSY_TIMEOUT = "mailoauth_host_busy_timeout"
_watched: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_watched_guard = threading.Lock()


def _watch(engine: sa.Engine) -> None:
    """Register the pool ``checkout`` listener that sets and resets the lock timeouts, once per
    engine."""
    if engine in _watched:
        return
    with _watched_guard:
        if engine not in _watched:
            sa.event.listen(engine, "checkout", _timeouts_for(engine.dialect.name))
            _watched.add(engine)


def _timeouts_for(dialect: str) -> Callable[[Any, Any, Any], None]:
    """The ``checkout`` listener of an engine of ``dialect``.

    A connection the extension checks out gets its lock timeout (PostgreSQL ``lock_timeout``,
    SQLite ``busy_timeout``) once, and keeps it while the extension uses it again and again; a
    connection so configured that the host checks out gets the server's default back first.
    """

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        wanted, current = _wanted_timeout.get(), record.info.get(_SET_TIMEOUT)
        if wanted == current:
            return
        cursor = dbapi_connection.cursor()
        try:
            if dialect == "postgresql":
                cursor.execute(
                    f"SET lock_timeout = '{int(wanted * 1000)}ms'"
                    if wanted is not None
                    else "RESET lock_timeout"
                )
                dbapi_connection.commit()  # a session-level SET: a rollback would undo it
            elif dialect == "sqlite":
                if current is None:
                    cursor.execute("PRAGMA busy_timeout")
                    record.info[_HOST_BUSY_TIMEOUT] = cursor.fetchone()[0]
                ms = int(wanted * 1000) if wanted is not None else record.info[_HOST_BUSY_TIMEOUT]
                cursor.execute(f"PRAGMA busy_timeout = {ms}")
        finally:
            cursor.close()
        if wanted is None:
            record.info.pop(_SET_TIMEOUT, None)
        else:
            record.info[_SET_TIMEOUT] = wanted

    return checkout


def _connect(session: Session, timeout: float) -> sa.Connection:
    """Check ``session``'s connection out now, with the extension's lock timeout on it."""
    bind = session.get_bind()
    _watch(bind if isinstance(bind, sa.Engine) else bind.engine)
    token = _wanted_timeout.set(timeout)
    try:
        return session.connection()
    finally:
        _wanted_timeout.reset(token)


@contextmanager
def own_session(db: SQLAlchemy, *, lock_timeout: float | None = None) -> Iterator[Session]:
    """A session of our own on the host's engine: we commit our rows, never the host's.

    The host's ``db.session`` may hold unrelated pending changes; committing it would save
    them behind its back. Ours commits on success and rolls back on any error. With
    ``lock_timeout`` (seconds), a statement waits at most that long for a lock held by another
    transaction (set once per pooled connection, never left on one the host gets back).
    """
    session: Session = db.session.session_factory(expire_on_commit=False)
    try:
        if lock_timeout is not None:
            _connect(session, lock_timeout)
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def row_lock(session: Session, timeout: float) -> Iterator[None]:
    """Make the next ``SELECT ... FOR UPDATE`` a lock across processes on every backend.

    PostgreSQL honours FOR UPDATE, bounded by ``lock_timeout``. SQLite ignores FOR UPDATE, so
    the transaction starts with ``BEGIN IMMEDIATE``: one writer at a time, waiting at most
    ``busy_timeout``. Both timeouts are ``timeout`` seconds (see :func:`own_session`).
    """
    connection = _connect(session, timeout)
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    yield
