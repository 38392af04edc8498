"""Warnings before things break: what needs an admin's attention, per account.

No peer tells the admin in advance; this module does, from what is already stored: refresh
tokens close to Microsoft's 90-day inactivity limit, Google Testing-mode 7-day tokens, client
secrets close to their end date, repeated refresh failures, grants that need a new consent,
a host clock that differs from the IdP's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa

from .certificates import certificate_end
from .config import Config
from .errors import UnknownProvider
from .i18n import LazyText, gettext, lazy_gettext, ngettext
from .models import AccountMixin, CredentialMixin, own_session, utcnow
from .providers import registry
from .providers.base import Provider
from .state import MailOAuthState
from .vocabulary import REFUSED, SECRET_AUTHS, AccessKind, ClientAuth, Condition, CredentialStatus

#: seconds of difference between the host's and the IdP's clocks that raise a warning
CLOCK_SKEW_WARNING = 60
#: the warning for a grant issued under another IdP Config (the Token tab leaves it out when
#: its unusable-token notice already says so)
CONFIG_CHANGED = lazy_gettext("The IdP Config changed since the token was issued: authorize again.")
#: each status in words, for people (``flask mailoauth status``)
STATUS_WORDS: dict[str, LazyText] = {
    CredentialStatus.ACTIVE: lazy_gettext("active"),
    CredentialStatus.RETRYING: lazy_gettext("retrying"),
    CredentialStatus.REAUTHORIZATION_REQUIRED: lazy_gettext("reauthorization required"),
    CredentialStatus.CONFIGURATION_ERROR: lazy_gettext("configuration error"),
    CredentialStatus.NOT_AUTHORIZED: lazy_gettext("not authorized"),
}


@dataclass(frozen=True)
class AccountHealth:
    """One account's state for dashboards, monitoring and ``flask mailoauth status``."""

    key: str
    purpose: str
    name: str
    address: str
    provider: str
    enabled: bool
    status: str
    expires_at: datetime | None
    #: plain text in the language of whoever asked (``status --json`` serialises it)
    warnings: list[str] = field(default_factory=list)
    #: refresh attempts failed in a row (0 after a success)
    failure_count: int = 0
    #: when the current refresh token was issued (``None`` without a credential)
    refresh_token_issued_at: datetime | None = None
    #: the client secret's end date, as the admin entered it
    secret_expires_on: date | None = None
    #: the warnings that are notification conditions, by condition (:mod:`.notify`)
    conditions: dict[Condition, str] = field(default_factory=dict)

    @property
    def needs_attention(self) -> bool:
        """True when an admin should act: a warning, or a status other than active."""
        return self.enabled and (bool(self.warnings) or self.status != CredentialStatus.ACTIVE)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, for ``status --json``."""
        return {
            "key": self.key,
            "purpose": self.purpose,
            "name": self.name,
            "address": self.address,
            "provider": self.provider,
            "enabled": self.enabled,
            "status": self.status,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "needs_attention": self.needs_attention,
            "warnings": self.warnings,
            "failure_count": self.failure_count,
            "refresh_token_issued_at": (
                self.refresh_token_issued_at.isoformat() if self.refresh_token_issued_at else None
            ),
            "secret_expires_on": (
                self.secret_expires_on.isoformat() if self.secret_expires_on else None
            ),
        }


def status_words(status: str) -> str:
    """``status`` in the admin's language; one this module does not know with spaces."""
    words = STATUS_WORDS.get(status)
    return str(words) if words is not None else status.replace("_", " ")


def health(st: MailOAuthState) -> list[AccountHealth]:
    """Every account with its status and warnings, ordered by key and purpose."""
    m = st.models
    now = utcnow()
    query = (
        sa.select(m.Account, m.Credential)
        .outerjoin(m.Credential, m.Credential.account_id == m.Account.id)
        .order_by(m.Account.key, m.Account.purpose)
    )
    with own_session(st.db) as s:
        rows = s.execute(query).all()
        return [account_health(account, credential, st.config, now) for account, credential in rows]


def account_health(
    account: AccountMixin, credential: CredentialMixin | None, config: Config, now: datetime
) -> AccountHealth:
    """One account's status and warnings from its rows (``credential`` may be ``None``)."""
    conditions: dict[Condition, str] = {}
    warnings: list[str] = []
    try:
        provider = registry.get(account.provider)
    except UnknownProvider:
        provider = None
        warnings.append(
            gettext("The provider %(provider)s is not installed.", provider=repr(account.provider))
        )
    warnings[:0] = _end_date_warnings(account, provider, now.date(), config, conditions)
    status: str
    if credential is None:
        status = CredentialStatus.NOT_AUTHORIZED
        warnings.append(
            gettext("Not authorized yet: open Config and submit to sign in as the mailbox.")
        )
    else:
        status = credential.status
        warnings += _credential_warnings(account, credential, provider, config, now, conditions)
    return AccountHealth(
        key=account.key,
        purpose=account.purpose,
        name=account.name,
        address=account.address,
        provider=account.provider,
        enabled=account.enabled,
        status=status,
        expires_at=credential.expires_at if credential is not None else None,
        warnings=warnings,
        failure_count=credential.failure_count if credential is not None else 0,
        refresh_token_issued_at=(
            credential.refresh_token_issued_at if credential is not None else None
        ),
        secret_expires_on=account.secret_expires_on,
        conditions=conditions,
    )


def _end_date_warnings(
    account: AccountMixin,
    provider: Provider | None,
    today: date,
    config: Config,
    conditions: dict[Condition, str],
) -> list[str]:
    """The warnings about the end of what the client authenticates with: its certificate
    (``private_key_jwt``), its client secret (the secret methods), nothing for a public one."""
    method = provider.client_auth(account.config) if provider else ClientAuth.SECRET_POST
    if method == ClientAuth.PRIVATE_KEY_JWT:
        if not account.certificate:
            return [
                gettext("No certificate is stored: generate or import one on the IdP Config tab.")
            ]
        ends = certificate_end(account.certificate)
        return _certificate_warnings(ends, today, config, conditions) if ends else []
    if method in SECRET_AUTHS:
        return _secret_warnings(account.secret_expires_on, today, config, conditions)
    return []


def _certificate_warnings(
    ends: date, today: date, config: Config, conditions: dict[Condition, str]
) -> list[str]:
    left = (ends - today).days
    if left < 0:
        expired = gettext(
            "The certificate expired on %(date)s: generate a new one, upload it to the "
            "identity provider and Submit.",
            date=ends,
        )
        return _noted(conditions, Condition.CERTIFICATE_EXPIRED, expired)
    if left <= max(config.secret_warning_days):
        expiring = ngettext(
            "The certificate expires on %(date)s (%(num)d day): generate a new one and upload "
            "it to the identity provider before then; the switch needs no new consent.",
            "The certificate expires on %(date)s (%(num)d days): generate a new one and "
            "upload it to the identity provider before then; the switch needs no new consent.",
            left,
            date=ends,
        )
        return _noted(conditions, Condition.CERTIFICATE_EXPIRING, expiring)
    return []


def _secret_warnings(
    ends: date | None, today: date, config: Config, conditions: dict[Condition, str]
) -> list[str]:
    if ends is None:
        return []
    left = (ends - today).days
    if left < 0:
        expired = gettext(
            "The client secret expired on %(date)s: create a new one and paste its Value.",
            date=ends,
        )
        return _noted(conditions, Condition.SECRET_EXPIRED, expired)
    if left <= max(config.secret_warning_days):
        expiring = ngettext(
            "The client secret expires on %(date)s (%(num)d day): create a new one and paste "
            "its Value before then (no new consent needed).",
            "The client secret expires on %(date)s (%(num)d days): create a new one and paste "
            "its Value before then (no new consent needed).",
            left,
            date=ends,
        )
        return _noted(conditions, Condition.SECRET_EXPIRING, expiring)
    return []


def _noted(conditions: dict[Condition, str], condition: Condition, warning: str) -> list[str]:
    """``warning``, also recorded as ``condition`` (what notifications are about)."""
    conditions[condition] = warning
    return [warning]


def _credential_warnings(
    account: AccountMixin,
    credential: CredentialMixin,
    provider: Provider | None,
    config: Config,
    now: datetime,
    conditions: dict[Condition, str],
) -> list[str]:
    warnings: list[str] = []
    if credential.status in REFUSED:
        refused = credential.last_error or gettext("The identity provider refused the token.")
        warnings += _noted(conditions, Condition(credential.status), refused)
    elif credential.failure_count >= config.failure_warning_threshold:
        failing = ngettext(
            "%(num)d refresh attempt failed in a row: %(error)s",
            "%(num)d refresh attempts failed in a row: %(error)s",
            credential.failure_count,
            error=credential.last_error or gettext("see the Token tab"),
        )
        warnings += _noted(conditions, Condition.REPEATED_FAILURES, failing)
    if credential.config_signature != account.config_signature:
        warnings.append(str(CONFIG_CHANGED))
    skew = credential.clock_skew
    if skew is not None and abs(skew) > CLOCK_SKEW_WARNING:
        warnings.append(_clock_warning(skew))
    last_use = credential.refreshed_at or credential.issued_at
    idle_days = (now - last_use).days
    # Only a delegated grant has a refresh token to go idle; application access has none.
    delegated = provider is None or provider.access(account.config) == AccessKind.DELEGATED
    if delegated and idle_days >= config.idle_warning_days:
        idle = ngettext(
            "The refresh token has not been used for %(num)d day; providers revoke idle "
            "ones (Microsoft after 90 days). Run `flask mailoauth refresh --due` daily.",
            "The refresh token has not been used for %(num)d days; providers revoke idle "
            "ones (Microsoft after 90 days). Run `flask mailoauth refresh --due` daily.",
            idle_days,
        )
        warnings += _noted(conditions, Condition.REFRESH_TOKEN_IDLE, idle)
    if provider is not None:
        # str(): a provider may word its warnings lazily; these are serialised and compared
        warnings += [str(warning) for warning in provider.warnings(account.config)]
        lifetime = provider.refresh_token_lifetime(account.config)
        if lifetime is not None:
            dies = credential.refresh_token_issued_at + lifetime
            ends = gettext(
                "The refresh token stops working on %(time)s UTC.",
                time=dies.strftime("%Y-%m-%d %H:%M"),
            )
            warnings += _noted(conditions, Condition.REFRESH_TOKEN_ENDS, ends)
    return warnings


def _clock_warning(skew: float) -> str:
    """The warning for a host clock ``skew`` seconds off the IdP's (ahead when positive)."""
    if skew > 0:
        return gettext(
            "This host's clock is %(seconds)d s ahead of the identity provider's: tokens are "
            "refreshed too early or too late. Synchronise the clock (NTP).",
            seconds=round(skew),
        )
    return gettext(
        "This host's clock is %(seconds)d s behind the identity provider's: tokens are "
        "refreshed too early or too late. Synchronise the clock (NTP).",
        seconds=round(-skew),
    )
