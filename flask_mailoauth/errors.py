"""Every public exception of the extension, in one place: each says what happened and what to do
about it (``guidance``). Catch :class:`MailOAuthError` for all of them.

Nothing in here ever formats a secret (token, client secret, verifier) into its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import requests

from .i18n import LazyText, gettext, lazy_gettext
from .sasl import ErrorChallenge
from .vocabulary import FailureKind as FailureKind  # re-exported: ProviderFailure.kind

SMTP_AUTH_DISABLED = lazy_gettext(
    "SMTP AUTH is disabled for the tenant or mailbox: enable Authenticated SMTP."
)
# Error challenge statuses that say the token itself is bad (RFC 7628, and Google's HTTP-style
# "401"): a refreshed token may be accepted. Other statuses (insufficient_scope, invalid_request)
# say something a new token of the same grant would not change.
TOKEN_STATUSES = ("invalid_token", "401")


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
    """The IdP cannot be reached right now; try again at ``retry_at``."""

    def __init__(self, message: str, retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class AuthorizationFailed(MailOAuthError):
    """The authorization (callback) failed; ``guidance`` tells the admin what to do."""

    def __init__(
        self,
        message: str,
        guidance: str = "",
        code: str | None = None,
        diagnostics: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.guidance = guidance
        self.code = code
        #: the IdP's identifiers of the error (``ProviderFailure.diagnostics``)
        self.diagnostics = diagnostics


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
    #: the IdP's own identifiers of this error, ``(name, value)`` pairs (Microsoft:
    #: ``trace_id``, ``correlation_id``, ``timestamp``): what its sign-in logs are searched by
    diagnostics: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        """One line for the event log and the Token tab: code, the IdP's words, the fix.

        Plain text (it is stored), in the language of whoever caused the failure.
        """
        head = f"{self.code}: " if self.code else ""
        text = f"{head}{self.description}".strip() or gettext("Unknown error")
        return f"{text} — {self.guidance}" if self.guidance else text


# -- encryption at rest, providers ----------------------------------------------------------------


class DecryptionError(MailOAuthError):
    """A stored secret cannot be decrypted: wrong key ring, tampered or moved value."""


class CertificateError(MailOAuthError, ValueError):
    """A certificate or private key that cannot be used (wrong password, no key, expired...);
    the message says why, for the admin."""


class UnknownProvider(MailOAuthError, LookupError):
    """No provider is registered under the requested id."""


# -- calls to the identity provider ---------------------------------------------------------------


class NotificationFailed(MailOAuthError):
    """A notification channel did not take a message (logged; the other channels still run)."""


class OutboundError(MailOAuthError, requests.RequestException):
    """An outbound rule stopped a call to the identity provider; the message says what to fix.

    It is also a ``requests.RequestException`` so that code which treats any network failure as
    "could not be reached" keeps doing so. Messages never quote what the target sent.
    """

    #: decided before any connection: the message tells nothing about the target's ports
    before_connecting: ClassVar[bool] = False


class AddressRefused(OutboundError):
    """The host resolves to an address outbound calls may not reach (SSRF protection)."""

    before_connecting = True


class RedirectRefused(OutboundError):
    """A redirect that must not be followed: from a POST, to a non-https URL, or too many."""


class UrlRefused(RedirectRefused):
    """The URL called breaks the endpoint rules (scheme, host name); nothing was sent."""

    before_connecting = True


class ResponseTooLarge(OutboundError):
    """The answer is larger than ``MAILOAUTH_MAX_RESPONSE_BYTES``."""


class DeadlineExceeded(OutboundError, requests.Timeout):
    """The call took longer than its total deadline and was aborted."""


class TokenRequestFailed(MailOAuthError):
    """The token endpoint refused or could not be reached; ``failure`` says which."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.summary())
        self.failure = failure


# -- mail servers ---------------------------------------------------------------------------------


class MailConnectionError(MailOAuthError):
    """The mail server could not be reached, or TLS could not be set up with it."""

    def __init__(
        self, message: str, *, protocol: str, host: str, port: int, guidance: str = ""
    ) -> None:
        super().__init__(message)
        self.protocol = protocol
        self.host = host
        self.port = port
        self.guidance = guidance


class MailAuthenticationError(MailOAuthError):
    """The mail server refused the token; carries its final reply and decoded error challenge.

    ``token_refused`` is True when the server refused the token itself (after it was sent:
    an ``invalid_token`` challenge, a plain IMAP ``NO``, POP3 ``-ERR`` or SMTP ``535``), so a
    refreshed token may be accepted; False for protocol errors and refusals a new token would
    not change. ``refreshed`` is True when the token was refreshed for this attempt.
    """

    def __init__(
        self,
        protocol: str,
        mechanism: str,
        reply: str,
        challenge: ErrorChallenge | None = None,
        *,
        token_refused: bool = False,
        refreshed: bool = False,
    ) -> None:
        sentences = [
            gettext(
                "%(protocol)s %(mechanism)s sign-in refused: %(reply)s",
                protocol=protocol,
                mechanism=mechanism,
                reply=reply or gettext("no reply"),
            )
        ]
        if challenge is not None:
            sentences.append(challenge.describe())
        if refreshed:
            sentences.append(gettext("The token had just been refreshed."))
        super().__init__(" ".join(sentences))
        self.protocol = protocol
        self.mechanism = mechanism
        self.reply = reply
        self.challenge = challenge
        self.token_refused = token_refused
        self.refreshed = refreshed
        self.guidance = refusal_guidance(protocol, reply, challenge, refreshed=refreshed)

    def after_refresh(self) -> MailAuthenticationError:
        """The same refusal, of a token refreshed just before: its guidance looks elsewhere."""
        return MailAuthenticationError(
            self.protocol,
            self.mechanism,
            self.reply,
            self.challenge,
            token_refused=self.token_refused,
            refreshed=True,
        )


class MailCommandRefused(MailOAuthError):
    """A command after sign-in was refused (SELECT, STAT, MAIL FROM); carries guidance."""

    def __init__(self, message: str, guidance: str) -> None:
        super().__init__(message)
        self.guidance = guidance


def refusal_guidance(
    protocol: str,
    reply: str,
    challenge: ErrorChallenge | None = None,
    *,
    refreshed: bool = False,
    signed_in: bool = False,
) -> str:
    """One line telling the admin what a refusal usually means: of the token at sign-in, or
    (``signed_in``) of a command after the sign-in worked (Exchange's "authenticated but not
    connected")."""
    if protocol == "SMTP" and ("5.7.3" in reply or "5.7.139" in reply):
        return str(SMTP_AUTH_DISABLED)
    name = "POP" if protocol == "POP3" else protocol
    if refreshed and protocol == "SMTP":
        return gettext(
            "The identity provider issued a new token and the mail server refused it too: check "
            "that the signed-in account may use this mailbox (permissions, delegation), that the "
            "SMTP send scopes were consented, and the mail server's OAuth2 settings (SMTP "
            "enabled for the mailbox, the token's audience and issuer accepted)."
        )
    if refreshed:
        return gettext(
            "The identity provider issued a new token and the mail server refused it too: check "
            "that the signed-in account may use this mailbox (permissions, delegation), that the "
            "%(name)s scopes were consented, and the mail server's OAuth2 settings (%(name)s "
            "enabled for the mailbox, the token's audience and issuer accepted).",
            name=name,
        )
    if protocol == "SMTP":
        advice = gettext(
            "The mail server refused the token: check the SMTP send scope was consented."
        )
    elif signed_in:
        advice = gettext(
            "The sign-in worked but the mail server refused the token: check the %(name)s "
            "scopes were consented and %(name)s is enabled on the mailbox.",
            name=name,
        )
    else:
        advice = gettext(
            "The mail server refused the token at sign-in: check the %(name)s scopes were "
            "consented, %(name)s is enabled on the mailbox, and the account that signed in may "
            "use it.",
            name=name,
        )
    if challenge is not None and challenge.status in TOKEN_STATUSES:
        hint = gettext("If the grant was revoked, use Refresh now, or authorize again.")
        return f"{advice} {hint}"
    return advice
