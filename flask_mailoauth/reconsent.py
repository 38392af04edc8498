"""Re-consent links: the admin lets the mailbox's owner, or a named delegate, authorize one
account again without any role in the helpdesk.

A link holds an unguessable token (256 random bits; only its SHA-256 is stored, as for the
authorization ``state``), works once, expires, and is pinned to the address that must sign
in. It opens one page for one account and starts one authorization; the callback stores the
grant only when the IdP vouches for the pinned address and the link is still unused. Nothing
else (the modal, the IdP Config, another account) opens with it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .addresses import canonical_address
from .errors import AuthorizationFailed
from .i18n import gettext
from .models import AccountMixin, Models, ReconsentLinkMixin, own_session, utcnow
from .providers import registry
from .state import MailOAuthState
from .vocabulary import AccessKind, EventKind, EventLevel, ReconsentState

#: the longest address a link may be pinned to (RFC 5321's limit of a path)
MAX_ADDRESS = 320


def token_hash(token: str) -> str:
    """Links are found by a hash of their token, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ReconsentLink:
    """A link as its page shows it: which account, who must sign in, until when."""

    id: int
    account_id: int
    key: str
    purpose: str
    #: the mailbox the account serves
    address: str
    pinned: str
    expires_at: datetime
    used_at: datetime | None = None
    used_by: str | None = None
    #: the account, detached, to start the authorization with
    account: AccountMixin | None = field(default=None, repr=False, compare=False)

    def state(self, now: datetime) -> ReconsentState:
        """Whether the link may still start an authorization."""
        if self.used_at is not None:
            return ReconsentState.USED
        if self.expires_at <= now:
            return ReconsentState.EXPIRED
        return ReconsentState.USABLE


def create(
    st: MailOAuthState, account: AccountMixin, pinned: str | None, days: int
) -> tuple[str, ReconsentLink]:
    """A new link for ``account`` pinned to ``pinned`` (the mailbox when empty), valid for
    ``days``: its token (shown once, never stored) and the link. ``ValueError`` with an
    admin-readable message when ``pinned`` is not an address."""
    if registry.get(account.provider).access(account.config) != AccessKind.DELEGATED:
        raise ValueError(
            gettext(
                "Re-consent links are for delegated access, where a user signs in: this account "
                "needs an administrator's consent (Authorize again)."
            )
        )
    chosen = (pinned or "").strip() or account.address
    if len(chosen) > MAX_ADDRESS or canonical_address(chosen) is None:
        raise ValueError(gettext("Enter the address of who signs in, e.g. name@example.com."))
    token = secrets.token_urlsafe(32)
    now = utcnow()
    m = st.models
    with own_session(st.db) as s:
        row = m.ReconsentLink(
            token_hash=token_hash(token),
            account_id=account.id,
            pinned=chosen,
            created_at=now,
            expires_at=now + timedelta(days=days),
        )
        s.add(row)
        s.add(
            m.Event(
                account_id=account.id,
                kind=EventKind.RECONSENT_LINK_CREATED,
                level=EventLevel.INFO,
                message=gettext(
                    "Re-consent link created for %(pinned)s, valid until %(time)s UTC.",
                    pinned=chosen,
                    time=row.expires_at.strftime("%Y-%m-%d %H:%M"),
                ),
            )
        )
        s.flush()
        link = _link(row, account)
    return token, link


def find(st: MailOAuthState, token: str) -> ReconsentLink | None:
    """The link whose token is ``token``, or ``None`` (unknown, or its account is gone)."""
    if not token or len(token) > 100:
        return None
    m = st.models
    with own_session(st.db) as s:
        row = s.scalars(
            sa.select(m.ReconsentLink).where(m.ReconsentLink.token_hash == token_hash(token))
        ).one_or_none()
        if row is None:
            return None
        account = s.get(m.Account, row.account_id)
        if account is None:
            return None
        s.expunge(account)
        return _link(row, account)


def pinned_for(st: MailOAuthState, link_id: int) -> str:
    """The pinned address of the link an authorization was started from, while the link is
    unused and unexpired; :class:`AuthorizationFailed` saying why not otherwise."""
    m = st.models
    with own_session(st.db) as s:
        row = s.get(m.ReconsentLink, link_id)
        if row is None or row.used_at is not None:
            raise used()
        if row.expires_at <= utcnow():
            raise expired()
        return row.pinned


def claim(session: Session, models: Models, link_id: int, used_by: str | None) -> None:
    """Mark the link used in ``session``'s transaction (the one that stores the grant), if no
    one did first and it has not expired; :class:`AuthorizationFailed` otherwise, which rolls
    the grant back with it."""
    table = models.ReconsentLink.__table__
    now = utcnow()
    done = session.execute(
        sa.update(table)
        .where(table.c.id == link_id, table.c.used_at.is_(None), table.c.expires_at > now)
        .values(used_at=now, used_by=(used_by or "")[:320] or None)
    )
    if cast(sa.CursorResult[Any], done).rowcount != 1:
        raise used()


def used() -> AuthorizationFailed:
    """The refusal of a link that was used already."""
    return AuthorizationFailed(
        gettext("This re-consent link was used already: each link works once."),
        gettext("Ask the helpdesk administrator for a new link."),
        code="reconsent_used",
    )


def expired() -> AuthorizationFailed:
    """The refusal of a link past its end."""
    return AuthorizationFailed(
        gettext("This re-consent link has expired."),
        gettext("Ask the helpdesk administrator for a new link."),
        code="reconsent_expired",
    )


def _link(row: ReconsentLinkMixin, account: AccountMixin) -> ReconsentLink:
    return ReconsentLink(
        id=row.id,
        account_id=account.id,
        key=account.key,
        purpose=account.purpose,
        address=account.address,
        pinned=row.pinned,
        expires_at=row.expires_at,
        used_at=row.used_at,
        used_by=row.used_by,
        account=account,
    )
