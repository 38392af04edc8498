"""What a provider is: its IdP Config fields, endpoints, authorize parameters, identity,
default mail servers and how it classifies the IdP's error responses.

A provider is stateless; everything it needs comes in the ``config`` mapping (the stored IdP
Config of one account, field name -> string value).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol, get_args
from urllib.parse import urlsplit

from ..addresses import canonical_address, same_address
from ..errors import ProviderFailure
from ..i18n import LazyText, gettext, lazy_gettext
from ..settings import Security
from ..vocabulary import AccessKind, ClientAuth, FailureKind

if TYPE_CHECKING:
    import requests
    from requests import Response

FieldKind = Literal["text", "url", "select", "scopes", "date"]
#: the kinds a :class:`ConfigField` may have
FIELD_KINDS: frozenset[str] = frozenset(get_args(FieldKind))
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: text an admin reads: plain, or a :func:`~flask_mailoauth.i18n.lazy_gettext` message that is
#: translated when it is shown (``str()``-ed)
Text = str | LazyText


class HTTPClient(Protocol):
    """What a provider's hooks make HTTP calls with: ``GET`` under the outbound policy (URL
    rules, vetted addresses, a size cap and a deadline), as
    :class:`~flask_mailoauth.outbound.OutboundHTTP` does."""

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """``GET url``; ``kwargs`` as :meth:`requests.Session.get` takes them."""
        ...


@dataclass(frozen=True)
class ConfigField:
    """One field of the IdP Config tab.

    ``signed`` fields go into the config signature: changing one invalidates the grant and sends
    the admin back to the IdP. The client secret is never a ``ConfigField``; it is stored apart.
    ``label``, ``help`` and the choices' labels may be ``lazy_gettext`` messages.
    """

    name: str
    label: Text
    default: str = ""
    kind: FieldKind = "text"
    required: bool = False
    help: Text = ""
    choices: tuple[tuple[str, Text], ...] = ()
    signed: bool = True


def field_problems(fields: Collection[ConfigField]) -> list[str]:
    """What is wrong with a provider's field declarations (empty when nothing is).

    A name must be lowercase ``[a-z][a-z0-9_]*`` (it becomes a form field and a config key)
    and unique; the kind one of :data:`FIELD_KINDS`; a select's default one of its choices.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for f in fields:
        if not isinstance(f, ConfigField):
            problems.append(f"{f!r} is not a ConfigField")
            continue
        if not (isinstance(f.name, str) and _FIELD_NAME.fullmatch(f.name)):
            problems.append(f"field name {f.name!r} is not lowercase [a-z][a-z0-9_]*")
        elif f.name in seen:
            problems.append(f"field name {f.name!r} is declared twice")
        seen.add(str(f.name))
        if f.kind not in FIELD_KINDS:
            known = ", ".join(sorted(FIELD_KINDS))
            problems.append(f"field {f.name!r} has unknown kind {f.kind!r} (known: {known})")
        values = [value for value, _ in f.choices]
        if f.choices and f.default not in values:
            problems.append(f"field {f.name!r} has default {f.default!r}, not among its choices")
        if f.kind == "select" and not f.choices:
            problems.append(f"select field {f.name!r} has no choices")
    return problems


@dataclass(frozen=True)
class MailServer:
    """Where a protocol is served: host, port and transport security."""

    host: str
    port: int
    security: Security


@dataclass(frozen=True)
class MailServers:
    """A provider's default servers, used when the host's ``MailboxSettings`` leave them out."""

    imap: MailServer
    pop3: MailServer
    smtp: MailServer


@dataclass(frozen=True)
class Endpoints:
    """The IdP endpoints one account uses, resolved from its config."""

    authorization: str
    token: str
    issuer: str | None = None
    jwks_uri: str | None = None
    userinfo: str | None = None
    resource: str | None = None
    revocation: str | None = None
    #: the IdP advertises ``authorization_response_iss_parameter_supported`` (RFC 9207): the
    #: callback then refuses a response without ``iss``
    authorization_response_iss: bool = False


#: a requests-oauthlib token response hook: gets the token endpoint's response, returns it fixed
ResponseHook = Callable[["Response"], "Response"]
#: a requests-oauthlib ``protected_request`` hook: ``(url, headers, body)`` in, the same out
RequestHook = Callable[[str, dict[str, str], Any], tuple[str, dict[str, str], Any]]


@dataclass(frozen=True)
class ComplianceHooks:
    """requests-oauthlib compliance hooks that fix a non-standard IdP, each run in order.

    ``access_token_response`` sees the code exchange's answer, ``refresh_token_response`` the
    refresh's, before anything reads them: a hook that changes the body sets
    ``response._content`` (as requests-oauthlib's own compliance fixes do) and returns the
    response; the fixed answer is then checked like any other. ``protected_request`` hooks
    change the calls made with the access token (``http.get`` with an ``Authorization: Bearer``
    header: the userinfo and Resource Details endpoints); they see that header.
    """

    access_token_response: tuple[ResponseHook, ...] = ()
    refresh_token_response: tuple[ResponseHook, ...] = ()
    protected_request: tuple[RequestHook, ...] = ()


#: no compliance hooks: a standard IdP
NO_HOOKS = ComplianceHooks()


def claim_text(claims: Mapping[str, Any] | None, name: str) -> str | None:
    """The claim ``name`` when it is a non-empty string; anything else counts as absent."""
    value = (claims or {}).get(name)
    return value if isinstance(value, str) and value else None


def usable_address(value: Any) -> str | None:
    """``value`` when it is a usable mail address (see ``addresses``), else ``None``."""
    return value if isinstance(value, str) and canonical_address(value) else None


def claim_address(claims: Mapping[str, Any] | None, name: str) -> str | None:
    """The claim ``name`` when it is a usable mail address."""
    return usable_address((claims or {}).get(name))


#: what to do when Google or another OIDC provider names an e-mail it has not verified
UNVERIFIED_EMAIL_ADVICE = lazy_gettext(
    "The identity provider does not mark this e-mail verified (email_verified is not true), so "
    "it cannot prove who signed in: verify the address at the identity provider."
)


@dataclass(frozen=True)
class Identity:
    """Who authorized: the resource owner as the IdP vouches for it.

    ``addresses`` are the verified ones, the only ones that match a mailbox. ``unverified`` are
    addresses the token named without vouching for them, and ``advice`` says how to make the
    IdP vouch; both only explain a refusal.
    """

    email: str | None
    addresses: tuple[str, ...] = ()
    subject: str | None = None
    tenant: str | None = None
    name: str | None = None
    unverified: tuple[str, ...] = ()
    advice: str = ""

    @classmethod
    def from_verified_email(
        cls, claims: Mapping[str, Any] | None, *, tenant: str | None = None
    ) -> Identity:
        """The id_token's ``email``, counted only when ``email_verified`` is JSON ``true``."""
        email = claim_address(claims, "email")
        verified = (claims or {}).get("email_verified") is True
        return cls(
            email=email if verified else None,
            addresses=(email,) if email and verified else (),
            subject=claim_text(claims, "sub"),
            tenant=tenant,
            name=claim_text(claims, "name"),
            unverified=(email,) if email and not verified else (),
            advice=str(UNVERIFIED_EMAIL_ADVICE) if email and not verified else "",
        )

    def matches(self, address: str) -> bool:
        """True when ``address`` is one of the verified addresses (see ``addresses``)."""
        return any(same_address(a, address) for a in self.addresses)

    def names_unverified(self, address: str) -> bool:
        """True when ``address`` appears only among the unverified addresses."""
        return any(same_address(a, address) for a in self.unverified)


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP literals."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def control_character_problem(value: str) -> str | None:
    """Why ``value`` cannot be used because of a control character or line break, or ``None``.

    Checked before anything trims or splits the value: ``urlsplit`` silently drops tabs and
    newlines, and a CR/LF in a header or a scope list changes what the IdP receives.
    """
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        return gettext(
            "This contains a control character (a line break, tab or similar): type it again on "
            "one line, without pasting invisible characters."
        )
    return None


def check_endpoint_url(url: str, *, allow_insecure_http: bool) -> str | None:
    """Return why ``url`` is not an acceptable endpoint, or ``None`` when it is.

    Endpoints must be ``https``; plain ``http`` is accepted only for loopback hosts and only when
    the host application set ``MAILOAUTH_ALLOW_INSECURE_HTTP`` (tests, local sandboxes). Control
    characters and spaces are refused.
    """
    problem = control_character_problem(url.strip())
    if problem:
        return problem
    if any(c.isspace() for c in url.strip()):
        return gettext("An endpoint URL contains no spaces: copy it again.")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return gettext("Enter a full URL, starting with https://.")
    if not _resolvable_name(parts.hostname):
        return gettext(
            "The host name is not a valid DNS name (each dot-separated part must be 1 to 63 "
            "characters): copy the URL again."
        )
    if parts.scheme == "http":
        if not is_loopback_host(parts.hostname):
            return gettext("The endpoint must use https://.")
        if not allow_insecure_http:
            return gettext(
                "http:// is refused; set MAILOAUTH_ALLOW_INSECURE_HTTP for a loopback test IdP."
            )
    return None


def _resolvable_name(host: str) -> bool:
    """Whether ``host`` can be looked up: it encodes to IDNA the way the resolver encodes it
    (labels of 1 to 63 characters); IP literals pass."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def split_scopes(value: str) -> list[str]:
    """Scopes as typed by an admin: space or comma separated, duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for scope in value.replace(",", " ").split():
        seen.setdefault(scope, None)
    return list(seen)


class ErrorAdvice(NamedTuple):
    """What an IdP error code means for the grant, and the one line that tells the admin the fix.

    ``text`` may be a ``lazy_gettext`` message (the tables are built at import time);
    :attr:`guidance` is it in the admin's language.
    """

    kind: FailureKind
    text: Text

    @property
    def guidance(self) -> str:
        """The fix, in the admin's language."""
        return str(self.text)


#: RFC 6749 §4.1.2.1 and §5.2 error codes; providers extend this table with their own codes
OAUTH_ERRORS: Mapping[str, ErrorAdvice] = MappingProxyType(
    {
        "invalid_grant": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The grant is no longer valid (revoked, expired or the password changed): "
                "authorize again."
            ),
        ),
        "access_denied": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "Consent was declined or cancelled at the identity provider: authorize again and "
                "accept."
            ),
        ),
        "invalid_client": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The identity provider refused the client credentials: check the Client ID and the "
                "client secret."
            ),
        ),
        "unauthorized_client": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The application may not use this grant: allow the authorization code and refresh "
                "token grants in its registration."
            ),
        ),
        "invalid_scope": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "A requested scope is unknown or not allowed for this application: fix the Scopes."
            ),
        ),
        "invalid_request": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The identity provider refused the request as malformed: check the IdP Config."
            ),
        ),
        "unsupported_grant_type": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The token endpoint does not support this grant: check the Token Endpoint."
            ),
        ),
        "unsupported_response_type": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The authorization endpoint does not support the code flow: check the "
                "Authorization Endpoint."
            ),
        ),
        "server_error": ErrorAdvice(
            FailureKind.TRANSIENT,
            lazy_gettext(
                "The identity provider had an internal error; the extension retries automatically."
            ),
        ),
        "temporarily_unavailable": ErrorAdvice(
            FailureKind.TRANSIENT,
            lazy_gettext(
                "The identity provider is overloaded or down; the extension retries automatically."
            ),
        ),
    }
)

_DEFAULT_GUIDANCE: Mapping[FailureKind, LazyText] = MappingProxyType(
    {
        FailureKind.TRANSIENT: lazy_gettext(
            "The identity provider could not answer; the extension keeps the current "
            "token and retries automatically."
        ),
        FailureKind.REAUTHORIZE: lazy_gettext("Authorize again, signing in as the mailbox."),
        FailureKind.CONFIGURATION: lazy_gettext(
            "Check the IdP Config against the application registered at the identity provider."
        ),
    }
)


def _one_line(text: str) -> str:
    """Whitespace (including CR/LF from the IdP) collapsed, so a description fits one log line."""
    return re.sub(r"\s+", " ", text).strip()


#: the code of a failure where the IdP could not be reached at all (no HTTP answer)
NETWORK_ERROR = "network_error"


def classify_oauth_error(
    status: int | None,
    body: Mapping[str, Any] | None,
    *,
    retry_after: float | None = None,
    code: str | None = None,
    advice: Callable[[str], ErrorAdvice | None] = OAUTH_ERRORS.get,
    diagnostics: tuple[tuple[str, str], ...] = (),
) -> ProviderFailure:
    """Classify a token-endpoint error the way RFC 6749 allows every provider to.

    Network errors, timeouts, 5xx and 429 are transient whatever the body says. Otherwise the
    provider-specific ``code`` (defaulting to the OAuth ``error``) and then the OAuth ``error`` are
    looked up with ``advice``; ``invalid_grant`` needs a new consent and any other 4xx is a
    configuration problem, described in the IdP's own words.
    """
    body = body or {}
    error = str(body.get("error") or "") or None
    code = code or error
    description = _one_line(str(body.get("error_description") or ""))
    found = (advice(code) if code else None) or (advice(error) if error else None)
    kind: FailureKind
    if status is None or status == 429 or status >= 500:
        kind = FailureKind.TRANSIENT
        if found and found.kind != FailureKind.TRANSIENT:
            found = None
        if status is None:
            code = code or NETWORK_ERROR
        if not description:
            description = (
                gettext("The identity provider could not be reached (network error or timeout).")
                if status is None
                else gettext("The identity provider answered HTTP %(status)s.", status=status)
            )
    elif found:
        kind = found.kind
    else:
        kind = FailureKind.REAUTHORIZE if error == "invalid_grant" else FailureKind.CONFIGURATION
    return ProviderFailure(
        kind=kind,
        code=code,
        description=description,
        guidance=found.guidance if found else str(_DEFAULT_GUIDANCE[kind]),
        retry_after=retry_after if kind == FailureKind.TRANSIENT else None,
        diagnostics=diagnostics,
    )


#: an IdP's error identifier as kept: letters, digits and ``-:.`` (a GUID, a timestamp), short
_DIAGNOSTIC_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .:_-]{0,63}")


def diagnostic_value(value: Any) -> str | None:
    """``value`` when it can be an IdP's error identifier (up to 64 letters, digits, spaces
    and ``.:_-``, such as a GUID or a timestamp), else ``None``: it comes from outside and is
    shown and stored."""
    if isinstance(value, str) and _DIAGNOSTIC_VALUE.fullmatch(value.strip()):
        return value.strip()
    return None


#: the Access select's label of each access kind
ACCESS_LABELS: Mapping[AccessKind, LazyText] = MappingProxyType(
    {
        AccessKind.DELEGATED: lazy_gettext("Delegated (the mailbox user signs in)"),
        AccessKind.APPLICATION: lazy_gettext("Application (admin consent, nobody signs in)"),
        AccessKind.SERVICE_ACCOUNT: lazy_gettext("Service account (nobody signs in)"),
    }
)


def access_field(kinds: Collection[AccessKind]) -> ConfigField:
    """The IdP Config tab's Access select over ``kinds`` (the first the default); signed, so a
    change of access invalidates the grant."""
    ordered = tuple(kinds)
    return ConfigField(
        "access",
        lazy_gettext("Access"),
        default=ordered[0].value,
        kind="select",
        choices=tuple((k.value, ACCESS_LABELS[k]) for k in ordered),
        help=lazy_gettext(
            "Delegated: a user signs in as the mailbox. Application: an administrator consents "
            "once for the tenant and the application reads the mailbox with its own permissions."
        ),
    )


class Provider:
    """Base class of every provider. Subclasses set the class attributes and override hooks.

    Register a subclass with :func:`flask_mailoauth.providers.registry.register` or, from a
    separate package, through the ``flask_mailoauth.providers`` entry point group.
    """

    #: registry id, e.g. ``"microsoft"``; also stored on each account
    id: ClassVar[str]
    #: the label of the Authentication select, e.g. ``"OAuth2 - Microsoft"``
    display_name: ClassVar[str]
    #: the IdP Config fields, in display order
    fields: ClassVar[tuple[ConfigField, ...]] = ()
    #: error code -> kind and guidance; :meth:`classify_error` and :meth:`guidance` read it
    error_advice: ClassVar[Mapping[str, ErrorAdvice]] = OAUTH_ERRORS
    #: whose authority the tokens may carry, the first the default
    #: (:class:`~flask_mailoauth.vocabulary.AccessKind`)
    access_kinds: ClassVar[tuple[AccessKind, ...]] = (AccessKind.DELEGATED,)
    #: how the client may authenticate at the token endpoint, the first the default
    client_auths: ClassVar[tuple[ClientAuth, ...]] = (ClientAuth.SECRET_POST,)
    #: client assertions name the certificate by its SHA-1 ``x5t`` too (Microsoft needs it),
    #: not only by ``x5t#S256``
    certificate_sha1_header: ClassVar[bool] = False
    #: where an admin searches the IdP's logs for :meth:`diagnostics` (shown beside them)
    diagnostics_help: ClassVar[Text] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A provider that declares more than one access kind shows the Access select first."""
        super().__init_subclass__(**kwargs)
        if len(cls.access_kinds) > 1 and all(f.name != "access" for f in cls.fields):
            cls.fields = (access_field(cls.access_kinds), *cls.fields)

    @staticmethod
    def value(config: Mapping[str, str], name: str) -> str:
        """The field ``name`` of ``config`` without surrounding blanks; empty when unset."""
        return (config.get(name) or "").strip()

    def access(self, config: Mapping[str, str]) -> AccessKind:
        """The account's access kind: its ``access`` value when this provider supports it,
        else the default."""
        chosen = self.value(config, "access")
        return next((k for k in self.access_kinds if k == chosen), self.access_kinds[0])

    def client_auth(self, config: Mapping[str, str]) -> ClientAuth:
        """The account's client authentication: its ``client_auth`` value when it is one of
        :meth:`client_auth_choices`, else the first of them (the default)."""
        chosen = self.value(config, "client_auth")
        choices = self.client_auth_choices(config)
        return next((a for a in choices if a == chosen), choices[0])

    def client_auth_choices(self, config: Mapping[str, str]) -> tuple[ClientAuth, ...]:
        """The client authentications an admin may choose for this ``config``, the first the
        default: :attr:`client_auths`. A provider that learns what its IdP accepts (the
        generic provider, by discovery) narrows them here; never empty."""
        return self.client_auths

    def defaults(self) -> dict[str, str]:
        """Field name -> prefilled value."""
        return {f.name: f.default for f in self.fields}

    def field(self, name: str) -> ConfigField:
        """The field called ``name``."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def validate(self, config: Mapping[str, str], *, allow_insecure_http: bool) -> dict[str, str]:
        """Field name -> error message for every invalid field; empty when all is well."""
        errors: dict[str, str] = {}
        for f in self.fields:
            value = self.value(config, f.name)
            problem = control_character_problem(value)
            if problem:
                errors[f.name] = problem
            elif f.required and not value:
                errors[f.name] = gettext("%(label)s is required.", label=f.label)
            elif value and f.kind == "url":
                problem = check_endpoint_url(value, allow_insecure_http=allow_insecure_http)
                if problem:
                    errors[f.name] = problem
            elif value and f.kind == "select" and value not in {c[0] for c in f.choices}:
                choices = ", ".join(str(c[1]) for c in f.choices)
                errors[f.name] = gettext("Choose one of: %(choices)s.", choices=choices)
        return errors

    def config_signature(self, config: Mapping[str, str]) -> str:
        """A digest of what a grant depends on: this provider and its signed fields, never the
        secret. A grant stored under another signature was issued for another IdP Config."""
        signed = {f.name: self.value(config, f.name) for f in self.fields if f.signed}
        if signed.get("access") in ("", self.access_kinds[0]):
            # The default access signs like no choice at all: grants stored before a provider
            # offered the choice stay valid.
            del signed["access"]
        payload = json.dumps({"provider": self.id, **signed}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def complete(self, config: Mapping[str, str], http: HTTPClient) -> dict[str, str]:
        """Fill what can be derived before saving (e.g. endpoints by discovery).

        ``http`` makes the HTTP calls (:class:`HTTPClient`). Raise :class:`ValueError` with an
        admin-readable message when the config cannot be completed. The default returns the
        config unchanged.
        """
        return dict(config)

    def scopes(self, config: Mapping[str, str]) -> list[str]:
        """The scopes to request."""
        return split_scopes(config.get("scopes", ""))

    def endpoints(self, config: Mapping[str, str]) -> Endpoints:
        """The endpoints this account uses."""
        raise NotImplementedError

    def required_scopes(self, config: Mapping[str, str], protocols: Collection[str]) -> list[str]:
        """The scopes a grant must contain to serve ``protocols`` (``imap``, ``pop3``, ``smtp``).

        The callback refuses a grant that lacks one (partial consent). ``offline_access`` is not
        listed: a refresh token proves it. The default requires nothing.
        """
        return []

    def missing_scopes(
        self, config: Mapping[str, str], granted: Collection[str], protocols: Collection[str]
    ) -> list[str]:
        """The :meth:`required_scopes` that are not among the ``granted`` ones."""
        have = set(granted)
        return [s for s in self.required_scopes(config, protocols) if s not in have]

    def compliance_hooks(self, config: Mapping[str, str]) -> ComplianceHooks:
        """The requests-oauthlib compliance hooks that make this IdP's answers standard: the way
        to fix a non-standard IdP (see :class:`ComplianceHooks`). None by default."""
        return NO_HOOKS

    def authorize_params(self, config: Mapping[str, str]) -> dict[str, str]:
        """Extra query parameters for the authorization request (``prompt``, ``access_type``...)."""
        return {}

    def refresh_params(self, config: Mapping[str, str]) -> dict[str, str]:
        """Extra body parameters for the refresh_token grant."""
        return {}

    def token_grant(
        self, config: Mapping[str, str], *, refresh_token: str, client_secret: str, mailbox: str
    ) -> dict[str, str]:
        """The grant that obtains the next token with nobody present, by access kind.

        Delegated: the refresh_token grant. Application: the client_credentials grant for the
        :meth:`scopes`. A provider offering service accounts overrides this for them (an RFC
        7523 JWT-bearer assertion for ``mailbox``, signed with the key stored as
        ``client_secret``).
        """
        access = self.access(config)
        if access == AccessKind.DELEGATED:
            grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
            return grant | self.refresh_params(config)
        if access == AccessKind.APPLICATION:
            return {"grant_type": "client_credentials", "scope": " ".join(self.scopes(config))}
        raise NotImplementedError(f"{type(self).__name__} builds no grant for {access} access")

    def consent_url(self, config: Mapping[str, str], *, redirect_uri: str, state: str) -> str:
        """Where an administrator grants a non-delegated access (admin consent); the answer
        comes back to ``redirect_uri`` with ``state``."""
        raise NotImplementedError(f"{type(self).__name__} has no admin consent")

    def consented_tenant(
        self, config: Mapping[str, str], args: Mapping[str, str], http: HTTPClient
    ) -> str | None:
        """Check the admin consent answer ``args`` (its ``error`` already handled): the tenant
        that consented. Raise :class:`~flask_mailoauth.errors.AuthorizationFailed` to refuse."""
        raise NotImplementedError(f"{type(self).__name__} has no admin consent")

    def secret_problem(self, config: Mapping[str, str], secret: str) -> str | None:
        """Why a newly entered client secret cannot be used with ``config`` (a service
        account's key of another client, say), or ``None``. Any secret is fine by default."""
        return None

    def explain(self, config: Mapping[str, str], failure: ProviderFailure) -> ProviderFailure:
        """A token endpoint ``failure`` with guidance that may name ``config``'s values (a
        client id to paste somewhere); unchanged by default."""
        return failure

    def required_roles(self, config: Mapping[str, str], protocols: Collection[str]) -> list[str]:
        """The application roles (``roles`` claim) an application token needs for
        ``protocols``; none by default."""
        return []

    def expected_issuer(self, config: Mapping[str, str], claims: Mapping[str, Any]) -> str | None:
        """The ``iss`` an id_token must carry; ``None`` skips the check (no OIDC)."""
        return self.endpoints(config).issuer

    def identity(
        self,
        config: Mapping[str, str],
        *,
        claims: Mapping[str, Any] | None,
        token: Mapping[str, Any],
        http: HTTPClient,
    ) -> Identity:
        """Who authorized, read once at the callback, after the code exchange.

        Receives the account's ``config``; ``claims``, the id_token's claims after validation
        (signature, ``iss``, ``aud``, ``exp``, nonce), or ``None`` when the scopes lack
        ``openid``; ``token``, the token endpoint's JSON answer as received (``access_token``
        for a userinfo or resource call); ``http``, for those calls (outbound policy applied).

        Returns an :class:`Identity`: only addresses the IdP vouches for go in ``addresses``
        (:meth:`Identity.from_verified_email` heeds ``email_verified``); Strict Matching
        compares them with the mailbox. Raise
        :class:`~flask_mailoauth.errors.AuthorizationFailed` (message and guidance for the
        admin) to refuse; a ``ValueError`` or ``requests.RequestException`` is shown as "could
        not be identified". Nothing is stored when it raises.
        """
        raise NotImplementedError

    def mail_servers(self, config: Mapping[str, str]) -> MailServers | None:
        """Default IMAP/POP3/SMTP servers, or ``None`` when the provider has none."""
        return None

    def classify_error(
        self,
        status: int | None,
        body: Mapping[str, Any] | None,
        *,
        retry_after: float | None = None,
    ) -> ProviderFailure:
        """Classify a failed token-endpoint call.

        ``status`` is the HTTP status (``None`` for a network error or timeout) and ``body`` the
        decoded JSON error response, when there was one.
        """
        return classify_oauth_error(
            status,
            body,
            retry_after=retry_after,
            advice=self.advice,
            diagnostics=self.diagnostics(body),
        )

    def diagnostics(self, body: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
        """The IdP's identifiers of an error (``(name, value)``: a trace ID, a timestamp) from
        its error ``body`` (a token endpoint's JSON, or the callback's ``error`` and
        ``error_description``), for its support and sign-in logs; none by default."""
        return ()

    def advice(self, code: str) -> ErrorAdvice | None:
        """The :attr:`error_advice` entry for ``code``, or ``None`` when the code is unknown."""
        return self.error_advice.get(code)

    def guidance(self, code: str | None) -> str:
        """One line telling the admin what to do about an error ``code``; empty when unknown."""
        found = self.advice(code) if code else None
        return found.guidance if found else ""

    def callback_error_code(self, error: str, description: str) -> str:
        """The code that names an error the IdP sent to the callback (its ``error`` and
        ``error_description``), for :meth:`guidance` and the event log; ``error`` by default."""
        return error

    def warnings(self, config: Mapping[str, str]) -> list[str]:
        """Standing warnings about this configuration (e.g. Google apps in Testing mode)."""
        return []

    def refresh_token_lifetime(self, config: Mapping[str, str]) -> timedelta | None:
        """How long a refresh token lives whatever its use (Google Testing: 7 days), if bounded."""
        return None
