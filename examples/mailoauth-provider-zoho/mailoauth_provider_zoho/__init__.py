"""Zoho Mail for flask-mailoauth: a provider that ships as its own package.

flask-mailoauth finds :class:`ZohoProvider` through the ``flask_mailoauth.providers`` entry
point declared in this package's ``setup.cfg``; nothing in the host application imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeGuard

from flask_mailoauth.errors import ProviderFailure
from flask_mailoauth.providers import (
    ComplianceHooks,
    ConfigField,
    Endpoints,
    ErrorAdvice,
    HTTPClient,
    Identity,
    MailServer,
    MailServers,
    Provider,
)
from flask_mailoauth.providers.base import OAUTH_ERRORS
from flask_mailoauth.vocabulary import AccessKind, ClientAuth, FailureKind

if TYPE_CHECKING:
    from requests import Response

__all__ = [
    "COMPLIANCE_HOOKS",
    "DATA_CENTERS",
    "ERRORS",
    "PROTOCOL_SCOPES",
    "ZohoProvider",
    "seconds_expires_in",
]
__version__ = "0.1.0"


class DataCenter(NamedTuple):
    """One Zoho data center: its name and the domain its accounts and mail hosts live under."""

    label: str
    domain: str


#: data center id -> name and domain (Zoho Accounts "Multi DC support": accounts.<domain>)
DATA_CENTERS: Mapping[str, DataCenter] = MappingProxyType(
    {
        "com": DataCenter("United States", "zoho.com"),
        "eu": DataCenter("Europe", "zoho.eu"),
        "in": DataCenter("India", "zoho.in"),
        "com.au": DataCenter("Australia", "zoho.com.au"),
        "jp": DataCenter("Japan", "zoho.jp"),
        "ca": DataCenter("Canada", "zohocloud.ca"),
        "sa": DataCenter("Saudi Arabia", "zoho.sa"),
    }
)
DEFAULT_DATA_CENTER = "com"

#: the scope prefix Zoho documents for SASL XOAUTH2 (ZOHOMAIL.PROTOCOL.IMAP, ...POP)
PROTOCOL_SCOPE_PREFIX = "ZOHOMAIL.PROTOCOL."
#: the protocol scopes Zoho documents; SMTP's is not documented, so it is not requested
PROTOCOL_SCOPES = ("ZOHOMAIL.PROTOCOL.IMAP", "ZOHOMAIL.PROTOCOL.POP")
#: the OpenID Connect scopes that put the mailbox address in a signed id_token
IDENTITY_SCOPES = ("openid", "email")

#: account type -> host prefixes for IMAP, POP3 and SMTP
HOST_PREFIXES: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {
        "organization": ("imappro", "poppro", "smtppro"),
        "personal": ("imap", "pop", "smtp"),
    }
)

#: OAuth error -> what it means at Zoho and the fix
#
# Translations are the plugin's own business: these texts (and the field labels below) stay
# plain English here. A plugin that ships a catalogue passes lazy message objects of its own
# gettext domain (anything whose ``str()`` is the translated text) where a ``str`` is used; it
# never adds its messages to flask-mailoauth's catalogue. The base checks it inherits
# ("... is required.") are translated by flask-mailoauth.
ERRORS: Mapping[str, ErrorAdvice] = MappingProxyType(
    {
        **OAUTH_ERRORS,
        "invalid_code": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            "Zoho refused the authorization code or refresh token: it expired, was used or "
            "revoked, or belongs to another data center. Check the Data Center, then authorize "
            "again.",
        ),
        "invalid_client": ErrorAdvice(
            FailureKind.CONFIGURATION,
            "Zoho does not know this Client ID in the selected data center: copy it again from "
            "the API console and enable this data center in the client's Multi DC settings.",
        ),
        "invalid_client_secret": ErrorAdvice(
            FailureKind.CONFIGURATION,
            "Zoho refused the client secret: copy the Client Secret of this client again from "
            "the Zoho API console.",
        ),
    }
)

#: what flask-mailoauth reports for an HTTP 200 that carries no access token
_NO_TOKEN_STATUS = 502
#: Zoho's access tokens live an hour: an ``expires_in`` above a day can only be milliseconds
_MILLISECONDS_ABOVE = 24 * 3600


def seconds_expires_in(response: Response) -> Response:
    """A requests-oauthlib token response hook: ``expires_in`` in seconds.

    Older Zoho answers give ``expires_in`` in milliseconds, some with ``expires_in_sec`` beside
    it. The seconds win when Zoho sends them; otherwise a lifetime above a day is divided by
    1000. Anything else (a refusal, a body that is not JSON) passes unchanged, for
    flask-mailoauth's own checks.
    """
    try:
        data = response.json()
    except ValueError:
        return response
    if not isinstance(data, dict):
        return response
    seconds, given = data.get("expires_in_sec"), data.get("expires_in")
    if _whole(seconds):
        data["expires_in"] = seconds
    elif _whole(given) and given > _MILLISECONDS_ABOVE:
        data["expires_in"] = given // 1000
    else:
        return response
    response._content = json.dumps(data).encode()
    return response


def _whole(value: object) -> TypeGuard[int]:
    """A positive whole number (JSON's ``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


#: Zoho's answers made standard, for the code exchange and the refresh
COMPLIANCE_HOOKS = ComplianceHooks(
    access_token_response=(seconds_expires_in,),
    refresh_token_response=(seconds_expires_in,),
)


class ZohoProvider(Provider):
    """Zoho Mail mailboxes; identity from the id_token's verified email."""

    id = "zoho"
    display_name = "OAuth2 - Zoho Mail"
    error_advice: ClassVar[Mapping[str, ErrorAdvice]] = ERRORS
    #: a user signs in and consents (a Self Client's code is a user's grant too); Zoho offers
    #: no application-only or service-account access to the mail protocols
    access_kinds: ClassVar[tuple[AccessKind, ...]] = (AccessKind.DELEGATED,)
    #: Zoho's token endpoint takes client_id and client_secret as parameters; it documents
    #: neither HTTP Basic nor client assertions for server-based clients
    client_auths: ClassVar[tuple[ClientAuth, ...]] = (ClientAuth.SECRET_POST,)
    fields = (
        ConfigField(
            "client_id",
            "Client ID",
            required=True,
            help="The Client ID of a Server-based Applications client in the Zoho API console.",
        ),
        ConfigField(
            "data_center",
            "Data Center",
            default=DEFAULT_DATA_CENTER,
            kind="select",
            required=True,
            choices=tuple(
                (dc, f"{info.label} (accounts.{info.domain})") for dc, info in DATA_CENTERS.items()
            ),
            help="Where the mailbox's Zoho account lives: the domain of its Zoho Mail address "
            "in the browser (mail.zoho.eu -> Europe).",
        ),
        ConfigField(
            "account_type",
            "Account Type",
            default="organization",
            kind="select",
            choices=(
                ("organization", "Organization (your own domain: imappro, poppro, smtppro)"),
                ("personal", "Personal (@zoho.com, @zohomail.com: imap, pop, smtp)"),
            ),
            help="Picks the default mail servers only; the helpdesk's own settings win.",
            signed=False,
        ),
        ConfigField(
            "scopes",
            "Scopes",
            default=" ".join((*IDENTITY_SCOPES, *PROTOCOL_SCOPES)),
            kind="scopes",
            help="Space separated; IMAP and POP need ZOHOMAIL.PROTOCOL.IMAP or .POP, and openid "
            "email identify the mailbox.",
        ),
    )

    def validate(self, config: Mapping[str, str], *, allow_insecure_http: bool) -> dict[str, str]:
        """Base checks plus a protocol scope and the scopes that reveal who authorized."""
        errors = super().validate(config, allow_insecure_http=allow_insecure_http)
        scopes = self.scopes(config)
        if not any(s.upper().startswith(PROTOCOL_SCOPE_PREFIX) for s in scopes):
            errors.setdefault(
                "scopes",
                "Add ZOHOMAIL.PROTOCOL.IMAP (or .POP): Zoho Mail's servers accept no other scope.",
            )
        elif not set(IDENTITY_SCOPES) <= set(scopes):
            errors.setdefault(
                "scopes", "Add openid and email: without them the mailbox address cannot be read."
            )
        return errors

    def endpoints(self, config: Mapping[str, str]) -> Endpoints:
        """The selected data center's accounts server; its OIDC endpoints follow Zoho's paths."""
        server = f"https://accounts.{_data_center(config).domain}"
        return Endpoints(
            authorization=f"{server}/oauth/v2/auth",
            token=f"{server}/oauth/v2/token",
            issuer=server,
            jwks_uri=f"{server}/oauth/v2/keys",
            userinfo=f"{server}/oauth/v2/userinfo",
            revocation=f"{server}/oauth/v2/token/revoke",
        )

    def compliance_hooks(self, config: Mapping[str, str]) -> ComplianceHooks:
        """``expires_in`` in seconds, whatever Zoho sent (:func:`seconds_expires_in`)."""
        return COMPLIANCE_HOOKS

    def authorize_params(self, config: Mapping[str, str]) -> dict[str, str]:
        """A refresh token on every consent, and the scopes comma separated as Zoho shows them."""
        return {
            "access_type": "offline",
            "prompt": "consent",
            "scope": ",".join(self.scopes(config)),
        }

    def identity(
        self,
        config: Mapping[str, str],
        *,
        claims: Mapping[str, Any] | None,
        token: Mapping[str, Any],
        http: HTTPClient,
    ) -> Identity:
        """The id_token's email, counted only when Zoho marks it verified."""
        return Identity.from_verified_email(claims)

    def mail_servers(self, config: Mapping[str, str]) -> MailServers:
        """IMAP, POP3 and SMTP of the data center, for organization or personal accounts."""
        domain = _data_center(config).domain
        account_type = self.value(config, "account_type") or "organization"
        imap, pop, smtp = HOST_PREFIXES.get(account_type, HOST_PREFIXES["organization"])
        return MailServers(
            imap=MailServer(f"{imap}.{domain}", 993, "ssl"),
            pop3=MailServer(f"{pop}.{domain}", 995, "ssl"),
            smtp=MailServer(f"{smtp}.{domain}", 465, "ssl"),
        )

    def classify_error(
        self,
        status: int | None,
        body: Mapping[str, Any] | None,
        *,
        retry_after: float | None = None,
    ) -> ProviderFailure:
        """Classify like every provider, but trust the error code of an HTTP 200 refusal.

        Zoho answers some refusals (``invalid_code``, ``invalid_client``) with HTTP 200 and an
        error body; flask-mailoauth reports a 200 without an access token as 502, which would
        make them transient and retried for ever. A known, non-transient code wins over that 502.
        """
        error = str((body or {}).get("error") or "")
        found = self.advice(error) if error else None
        if status == _NO_TOKEN_STATUS and found is not None and found.kind != "transient":
            status = 400
        return super().classify_error(status, body, retry_after=retry_after)


def _data_center(config: Mapping[str, str]) -> DataCenter:
    """The configured data center; :class:`ValueError` for one this provider does not know."""
    dc = Provider.value(config, "data_center") or DEFAULT_DATA_CENTER
    try:
        return DATA_CENTERS[dc]
    except KeyError:
        known = ", ".join(DATA_CENTERS)
        raise ValueError(f"Unknown Zoho data center {dc!r}; choose one of: {known}.") from None
