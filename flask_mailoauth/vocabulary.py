"""The words the extension stores and compares, one enumeration each.

Every value is the string stored in the database and shown by ``status --json``: a
``StrEnum`` member equals its value, so rows written before these enumerations read the same.
"""

from __future__ import annotations

from enum import StrEnum


class CredentialStatus(StrEnum):
    """Where an account's grant stands (``Credential.status``, ``AccountHealth.status``)."""

    ACTIVE = "active"
    #: a transient refresh failure; the next try waits for ``Credential.next_retry_at``
    RETRYING = "retrying"
    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    CONFIGURATION_ERROR = "configuration_error"
    #: an account without a credential yet (never stored: the row is missing)
    NOT_AUTHORIZED = "not_authorized"


#: the statuses the IdP set for good: no refresh until an admin acts
REFUSED = frozenset(
    {CredentialStatus.REAUTHORIZATION_REQUIRED, CredentialStatus.CONFIGURATION_ERROR}
)


class FailureKind(StrEnum):
    """What an IdP failure means for the grant (``ProviderFailure.kind``)."""

    #: retried with backoff
    TRANSIENT = "transient"
    #: the grant is gone: an admin must authorize again
    REAUTHORIZE = "reauthorize"
    #: the IdP refuses the application's settings: an admin must fix the IdP Config
    CONFIGURATION = "configuration"


#: the credential status each kind of refresh failure leaves
STATUS_AFTER: dict[FailureKind, CredentialStatus] = {
    FailureKind.TRANSIENT: CredentialStatus.RETRYING,
    FailureKind.REAUTHORIZE: CredentialStatus.REAUTHORIZATION_REQUIRED,
    FailureKind.CONFIGURATION: CredentialStatus.CONFIGURATION_ERROR,
}


class AccessKind(StrEnum):
    """Whose authority an account's tokens carry (the IdP Config's ``access`` value)."""

    #: a user signs in and consents; a refresh token keeps the grant (the seed's flow)
    DELEGATED = "delegated"
    #: the application's own credentials (client credentials grant) after an admin's consent;
    #: no refresh token, a new token when due
    APPLICATION = "application"
    #: a service account's signed assertion naming the mailbox (RFC 7523 JWT-bearer grant)
    SERVICE_ACCOUNT = "service_account"


class ClientAuth(StrEnum):
    """How the client proves itself at the token endpoint (the IdP Config's ``client_auth``
    value; the names are RFC 7591's ``token_endpoint_auth_method`` values)."""

    #: a public client: only its ``client_id``, and PKCE guards the code
    NONE = "none"
    #: HTTP Basic with the client id and secret
    SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    #: the client id and secret in the request body
    SECRET_POST = "client_secret_post"  # noqa: S105 - a method name, not a secret
    #: a client assertion signed with the application's private key (RFC 7523)
    PRIVATE_KEY_JWT = "private_key_jwt"


#: the client authentications that send the client secret (the others need none)
SECRET_AUTHS = frozenset({ClientAuth.SECRET_BASIC, ClientAuth.SECRET_POST})


class EventKind(StrEnum):
    """What one line of an account's history records (``Event.kind``)."""

    AUTHORIZED = "authorized"
    AUTHORIZATION_FAILED = "authorization_failed"
    CONFIG_SAVED = "config_saved"
    REFRESHED = "refreshed"
    REFRESH_FAILED = "refresh_failed"
    TOKEN_DELETED = "token_deleted"  # noqa: S105 - an event kind, not a secret
    RECONSENT_LINK_CREATED = "reconsent_link_created"
    #: a rollover's pending certificate became the current one
    CERTIFICATE_SWITCHED = "certificate_switched"


class RevocationOutcome(StrEnum):
    """What the identity provider made of a revocation request (RFC 7009) on Delete Token."""

    #: the IdP answered 200: the token (and, at most IdPs, its grant) no longer works
    REVOKED = "revoked"
    #: the provider has no revocation endpoint: nothing was sent
    NOT_SUPPORTED = "not_supported"
    #: the IdP refused the request (4xx, e.g. ``unsupported_token_type`` or ``invalid_client``)
    REFUSED = "refused"
    #: no answer to go by: 5xx, unreachable, too slow, or an outbound rule stopped the call
    FAILED = "failed"


class EventLevel(StrEnum):
    """How much a history line matters (``Event.level``; the Token tab styles it)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class FlashKind(StrEnum):
    """What a flashed message of the extension says; the category is the host's choice."""

    SUCCESS = "success"
    ERROR = "error"


class ReconsentState(StrEnum):
    """Whether a re-consent link may still start an authorization (its page says which)."""

    USABLE = "usable"
    USED = "used"
    EXPIRED = "expired"


class Condition(StrEnum):
    """What an account's notification is about (``Notice.condition``): the key notifications
    are deduplicated on, the same in every language."""

    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    CONFIGURATION_ERROR = "configuration_error"
    #: transient refresh failures in a row, at least ``MAILOAUTH_FAILURE_WARNING_THRESHOLD``
    REPEATED_FAILURES = "repeated_failures"
    #: the refresh token unused for ``MAILOAUTH_IDLE_WARNING_DAYS``
    REFRESH_TOKEN_IDLE = "refresh_token_idle"  # noqa: S105 - a condition, not a secret
    #: the refresh token dies on a date whatever its use (Google apps in Testing: 7 days)
    REFRESH_TOKEN_ENDS = "refresh_token_ends"  # noqa: S105 - a condition, not a secret
    #: the client secret's end date within ``MAILOAUTH_SECRET_WARNING_DAYS``
    SECRET_EXPIRING = "secret_expiring"  # noqa: S105 - a condition, not a secret
    SECRET_EXPIRED = "secret_expired"  # noqa: S105 - a condition, not a secret
    #: the client certificate's end date (``private_key_jwt``) within the same days
    CERTIFICATE_EXPIRING = "certificate_expiring"
    CERTIFICATE_EXPIRED = "certificate_expired"


class NoticeKind(StrEnum):
    """Which message of a condition's life a notification is."""

    #: the condition was found (or found again after it was resolved)
    PROBLEM = "problem"
    #: it is still there, ``MAILOAUTH_NOTIFY_REMINDER_HOURS`` after the last message
    REMINDER = "reminder"
    #: it is gone
    RECOVERED = "recovered"
