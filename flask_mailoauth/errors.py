"""Typed errors: each says what happened and what to do about it.

Nothing in here ever formats a secret (token, client secret, verifier) into its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .i18n import LazyText, gettext, lazy_gettext
from .vocabulary import FailureKind


class MailOAuthError(Exception):
    """Base class of every error this extension raises on purpose."""

    #: one line telling the admin what to do (in the admin's language); empty when the message
    #: says it all
    guidance: str | LazyText = ""


class SetupError(MailOAuthError, RuntimeError):
    """The host application is wired up wrongly (missing ``init_app``, loader, ...)."""


class MailboxNotFound(MailOAuthError, LookupError):
    """The host's ``mailbox_loader`` knows no mailbox under this key."""


class NotConfigured(MailOAuthError):
    """No OAuth2 account (or no authorized token) exists for this key and purpose."""


class AccountDisabled(MailOAuthError):
    """The admin set the account's Status to Disabled."""


class ReauthorizationRequired(MailOAuthError):
    """The grant is gone (revoked, expired, password changed): an admin must authorize again."""

    guidance = lazy_gettext(
        "Open Config and press Authorize again (Token tab), signing in as the mailbox."
    )


class ConfigurationError(MailOAuthError):
    """The IdP refuses the application's configuration (bad client id, expired secret, ...)."""

    guidance = lazy_gettext(
        "Fix the IdP Config (often: paste a new client secret's Value) and Submit."
    )


class TemporarilyUnavailable(MailOAuthError):
    """The IdP cannot be reached right now; try again at :attr:`retry_at`."""

    def __init__(self, message: str, retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class AuthorizationFailed(MailOAuthError):
    """The authorization (callback) failed; :attr:`guidance` tells the admin what to do."""

    def __init__(self, message: str, guidance: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.guidance = guidance
        self.code = code


@dataclass(frozen=True)
class ProviderFailure:
    """An IdP error response, classified by the provider.

    ``kind`` decides what happens next: ``transient`` retries with backoff, ``reauthorize`` stops
    and asks for a new consent, ``configuration`` stops and asks the admin to fix the app settings.
    """

    kind: FailureKind
    code: str | None
    description: str
    guidance: str
    retry_after: float | None = None

    def summary(self) -> str:
        """One line for the event log and the Token tab: code, the IdP's words, the fix.

        Plain text (it is stored), in the language of whoever caused the failure.
        """
        head = f"{self.code}: " if self.code else ""
        text = f"{head}{self.description}".strip() or gettext("Unknown error")
        return f"{text} — {self.guidance}" if self.guidance else text
