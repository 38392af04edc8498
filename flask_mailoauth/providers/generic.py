"""Any OAuth2/OpenID Connect provider, configured by discovery or by hand."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from ..errors import AuthorizationFailed, MailOAuthError
from ..i18n import gettext, lazy_gettext
from ..vocabulary import ClientAuth
from .base import (
    ConfigField,
    Endpoints,
    HTTPClient,
    Identity,
    Provider,
    Text,
    check_endpoint_url,
    claim_address,
    claim_text,
    usable_address,
)

logger = logging.getLogger("flask_mailoauth")

#: discovery document key -> the config field it fills
_DISCOVERED = {
    "authorization_endpoint": "authorization_endpoint",
    "token_endpoint": "token_endpoint",
    "jwks_uri": "jwks_uri",
    "userinfo_endpoint": "userinfo_endpoint",
    "revocation_endpoint": "revocation_endpoint",
}


#: the discovery key listing the token endpoint's client authentications, and the field it fills
AUTH_METHODS_KEY = "token_endpoint_auth_methods_supported"
AUTH_METHODS_FIELD = "token_auth_methods"
#: RFC 8414 §2: a metadata document without the list means exactly this method
DEFAULT_AUTH_METHODS = (ClientAuth.SECRET_BASIC.value,)

#: OpenID Connect's identity scopes (and offline access, which a refresh token proves): a grant
#: may leave them out; every other configured scope is what the mail server needs
IDENTITY_SCOPES = frozenset({"openid", "email", "profile", "address", "phone", "offline_access"})

#: the standard claim that is an address only with ``email_verified: true``
EMAIL_CLAIM = "email"
#: the Issuer in Response field's value when the callback must carry RFC 9207 ``iss``
ISS_REQUIRED = "required"
#: how to make the generic provider accept who signed in
UNVERIFIED_ADVICE = lazy_gettext(
    "The identity provider does not mark the e-mail verified (email_verified is not true), and "
    "preferred_username is not an address unless you say so: have the identity provider verify "
    "the address, or enter the claim that holds the verified sign-in address (for example "
    "preferred_username) as the Email Address Attribute."
)


def _lookup(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` (``data.email``) in nested JSON objects, or ``None``."""
    for key in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _discovery_urls(issuer: str) -> tuple[str, str]:
    """OpenID Connect Discovery's URL, then RFC 8414's, for an issuer."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return (
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}",
    )


def _refused_before_connecting(exc: requests.RequestException) -> bool:
    """An outbound rule refused the call before any connection (``OutboundError``'s
    ``before_connecting``): its message, what to set, tells nothing about the target."""
    return isinstance(exc, MailOAuthError) and getattr(exc, "before_connecting", False)


def _fetch_metadata(http: HTTPClient, issuer: str) -> Mapping[str, Any]:
    """The issuer's metadata document, checked to be issued for exactly this issuer.

    ``http`` applies the outbound policy and the configured timeout. Every failure to get a
    document gives one message, whatever happened (refused, timed out, HTTP 404, not JSON): a
    different one for each would tell open ports from closed ones. The details go to a debug
    log line, without content fetched from the target.
    """
    urls = _discovery_urls(issuer)
    for url in urls:
        try:
            response = http.get(url, headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            if _refused_before_connecting(exc):
                raise ValueError(gettext("Discovery failed: %(error)s", error=exc)) from None
            logger.debug("Discovery at %s failed: %s", url, type(exc).__name__)
            continue
        document = _json_object(response)
        if document is None:
            logger.debug("Discovery at %s: HTTP %s, no JSON object", url, response.status_code)
            continue
        if document.get("issuer") != issuer:
            raise ValueError(
                gettext(
                    "Discovery failed: the document at %(url)s is for another issuer than "
                    "%(issuer)r. Enter the issuer exactly as the provider spells it.",
                    url=url,
                    issuer=issuer,
                )
            )
        return document
    raise ValueError(
        gettext(
            "Discovery failed: no metadata document could be read at %(first)s or %(second)s. "
            "Check the Issuer (the provider's exact issuer URL), or enter the endpoints by hand.",
            first=urls[0],
            second=urls[1],
        )
    )


def _json_object(response: requests.Response) -> Mapping[str, Any] | None:
    """The body of a 200 answer when it is a JSON object, else ``None``."""
    if response.status_code != 200:
        return None
    try:
        data = response.json()
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, Mapping) else None


class GenericProvider(Provider):
    """Any OAuth2 provider: OIDC discovery, userinfo, or osTicket's resource details endpoint."""

    id = "generic"
    display_name = "OAuth2 - Other Provider"
    #: secret in the body first: what every account saved before the choice existed used
    client_auths = (
        ClientAuth.SECRET_POST,
        ClientAuth.SECRET_BASIC,
        ClientAuth.NONE,
        ClientAuth.PRIVATE_KEY_JWT,
    )
    fields = (
        ConfigField(
            "issuer",
            lazy_gettext("Issuer"),
            kind="url",
            help=lazy_gettext("Fills the endpoints by discovery."),
        ),
        ConfigField("client_id", lazy_gettext("Client ID"), required=True),
        ConfigField("authorization_endpoint", lazy_gettext("Authorization Endpoint"), kind="url"),
        ConfigField("token_endpoint", lazy_gettext("Token Endpoint"), kind="url"),
        ConfigField(
            "jwks_uri",
            lazy_gettext("JWKS URI"),
            kind="url",
            help=lazy_gettext("The provider's signing keys; needed to validate id_tokens."),
        ),
        ConfigField("userinfo_endpoint", lazy_gettext("Userinfo Endpoint"), kind="url"),
        ConfigField(
            "resource_endpoint",
            lazy_gettext("Resource Details Endpoint"),
            kind="url",
            help=lazy_gettext(
                "A JSON endpoint that returns the mailbox address, when there is no OpenID Connect."
            ),
        ),
        ConfigField(
            "revocation_endpoint",
            lazy_gettext("Revocation Endpoint"),
            kind="url",
            help=lazy_gettext(
                "Where Delete Token revokes the grant (RFC 7009); discovery fills it when the "
                "provider lists one."
            ),
            signed=False,
        ),
        ConfigField(
            "scopes", lazy_gettext("Scopes"), default="openid email offline_access", kind="scopes"
        ),
        ConfigField(
            "email_attribute",
            lazy_gettext("Email Address Attribute"),
            default="email",
            help=lazy_gettext(
                "The attribute that holds the address; dotted for nested ones (data.email)."
            ),
        ),
        ConfigField(
            "iss_parameter",
            lazy_gettext("Issuer in Response"),
            kind="select",
            choices=(
                ("", lazy_gettext("Not required")),
                (ISS_REQUIRED, lazy_gettext("Required (RFC 9207)")),
            ),
            help=lazy_gettext(
                "Discovery sets it when the provider advertises "
                "authorization_response_iss_parameter_supported; the callback then refuses a "
                "response without iss."
            ),
            signed=False,
        ),
        ConfigField(
            AUTH_METHODS_FIELD,
            lazy_gettext("Token Endpoint Authentication Methods"),
            help=lazy_gettext(
                "What the token endpoint accepts (token_endpoint_auth_methods_supported), space "
                "separated; discovery fills it. Blank: every method is offered."
            ),
            signed=False,
        ),
        ConfigField(
            "prompt",
            lazy_gettext("Prompt"),
            help=lazy_gettext(
                "Optional prompt parameter for the authorization request, e.g. consent."
            ),
            signed=False,
        ),
    )

    def validate(self, config: Mapping[str, str], *, allow_insecure_http: bool) -> dict[str, str]:
        """Base checks, plus endpoints (unless discovery fills them) and a source of identity."""
        errors = super().validate(config, allow_insecure_http=allow_insecure_http)
        if not self.value(config, "issuer"):
            for name in ("authorization_endpoint", "token_endpoint"):
                if not self.value(config, name):
                    errors.setdefault(
                        name,
                        gettext(
                            "%(label)s is required unless an Issuer is entered.",
                            label=self.field(name).label,
                        ),
                    )
        has_openid = "openid" in self.scopes(config)
        if has_openid and not self.value(config, "issuer"):
            errors.setdefault(
                "issuer",
                gettext("Enter the Issuer: OpenID Connect id_tokens are validated against it."),
            )
        if not (
            has_openid
            or self.value(config, "userinfo_endpoint")
            or self.value(config, "resource_endpoint")
        ):
            errors.setdefault(
                "scopes",
                gettext(
                    "The mailbox address cannot be read: add openid to the Scopes, or enter a "
                    "Userinfo or Resource Details Endpoint."
                ),
            )
        methods = self.value(config, AUTH_METHODS_FIELD)
        if methods and not self._supported(methods):
            errors.setdefault(
                AUTH_METHODS_FIELD,
                gettext(
                    "The token endpoint accepts none of the client authentications this "
                    "extension offers (%(offered)s).",
                    offered=", ".join(self.client_auths),
                ),
            )
        return errors

    def _supported(self, methods: str) -> tuple[ClientAuth, ...]:
        """This provider's client authentications that ``methods`` (space separated) lists."""
        listed = set(methods.replace(",", " ").split())
        return tuple(a for a in self.client_auths if a.value in listed)

    def client_auth_choices(self, config: Mapping[str, str]) -> tuple[ClientAuth, ...]:
        """The client authentications both this extension and the token endpoint support (as
        discovery or the admin listed them); all of this provider's when nothing is listed."""
        methods = self.value(config, AUTH_METHODS_FIELD)
        return (self._supported(methods) if methods else ()) or self.client_auths

    def complete(self, config: Mapping[str, str], http: HTTPClient) -> dict[str, str]:
        """Fill blank endpoints from the issuer's discovery document; typed values are kept."""
        completed = dict(config)
        issuer = self.value(config, "issuer")
        blank = [f for f in _DISCOVERED.values() if not self.value(config, f)]
        if not issuer or not {"authorization_endpoint", "token_endpoint", "jwks_uri"} & set(blank):
            return completed
        problem = check_endpoint_url(issuer, allow_insecure_http=True)
        if problem:
            raise ValueError(gettext("Issuer: %(problem)s", problem=problem))
        document = _fetch_metadata(http, issuer)
        for key, name in _DISCOVERED.items():
            if name in blank and isinstance(document.get(key), str):
                completed[name] = document[key]
        if not self.value(config, AUTH_METHODS_FIELD):
            completed[AUTH_METHODS_FIELD] = " ".join(_auth_methods(document))
        if document.get("authorization_response_iss_parameter_supported") is True:
            completed["iss_parameter"] = ISS_REQUIRED
        missing = [n for n in ("authorization_endpoint", "token_endpoint") if not completed.get(n)]
        if missing:
            raise ValueError(_undiscovered(*(self.field(n).label for n in missing)))
        return completed

    def endpoints(self, config: Mapping[str, str]) -> Endpoints:
        """The endpoints as configured (after discovery)."""
        return Endpoints(
            authorization=self.value(config, "authorization_endpoint"),
            token=self.value(config, "token_endpoint"),
            issuer=self.value(config, "issuer") or None,
            jwks_uri=self.value(config, "jwks_uri") or None,
            userinfo=self.value(config, "userinfo_endpoint") or None,
            resource=self.value(config, "resource_endpoint") or None,
            revocation=self.value(config, "revocation_endpoint") or None,
            authorization_response_iss=self.value(config, "iss_parameter") == ISS_REQUIRED,
        )

    def required_scopes(self, config: Mapping[str, str], protocols: Collection[str]) -> list[str]:
        """Every configured scope that is not an identity scope: this provider knows no mail
        scope, but the admin typed the ones the mail server needs. An IdP that leaves the
        granted scope out of its answer is taken to have granted what was asked."""
        return [s for s in self.scopes(config) if s not in IDENTITY_SCOPES]

    def authorize_params(self, config: Mapping[str, str]) -> dict[str, str]:
        """The configured ``prompt``, if any."""
        prompt = self.value(config, "prompt")
        return {"prompt": prompt} if prompt else {}

    def identity(
        self,
        config: Mapping[str, str],
        *,
        claims: Mapping[str, Any] | None,
        token: Mapping[str, Any],
        http: HTTPClient,
    ) -> Identity:
        """From the id_token claims, else the userinfo endpoint, else the resource endpoint
        (without openid, the resource endpoint rather than userinfo, when both are set).

        An OpenID Connect source (id_token, userinfo) gives an address only through the Email
        Address Attribute: ``email`` counts with ``email_verified: true`` (the JSON boolean),
        another attribute counts because the admin named it. The resource endpoint is the
        admin's own JSON, taken as it is.
        """
        attribute = self.value(config, "email_attribute") or EMAIL_CLAIM
        endpoints = self.endpoints(config)
        subject = claim_text(claims, "sub")
        details: Mapping[str, Any] = {}
        email, unverified = _oidc_email(claims or {}, attribute)
        # Userinfo answers only a token granted openid (OpenID Connect Core 5.3): without
        # openid (no claims), the Resource Details endpoint, when there is one, tells instead.
        ask_userinfo = claims is not None or not endpoints.resource
        if not email and endpoints.userinfo and ask_userinfo:
            details = _get_json(http, endpoints.userinfo, token)
            if subject and details.get("sub") != subject:
                raise AuthorizationFailed(
                    gettext("The userinfo endpoint describes another user than the id_token."),
                    guidance=gettext(
                        "Check the Userinfo Endpoint: it must belong to the same issuer."
                    ),
                )
            email, more = _oidc_email(details, attribute)
            unverified += more
        if not email and endpoints.resource:
            details = _get_json(http, endpoints.resource, token)
            email = usable_address(_lookup(details, attribute))
        unverified = () if email else tuple(dict.fromkeys(unverified))
        return Identity(
            email=email,
            addresses=(email,) if email else (),
            subject=subject or claim_text(details, "sub"),
            name=claim_text(claims, "name") or claim_text(details, "name"),
            unverified=unverified,
            advice=str(UNVERIFIED_ADVICE) if unverified else "",
        )


def _auth_methods(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The metadata's token endpoint authentication methods; RFC 8414's default without a
    usable list."""
    listed = document.get(AUTH_METHODS_KEY)
    if isinstance(listed, list) and listed and all(isinstance(m, str) for m in listed):
        return tuple(m for m in listed if m.strip() and m.isprintable() and " " not in m)
    return DEFAULT_AUTH_METHODS


def _undiscovered(first: Text, second: Text | None = None) -> str:
    """Why discovery could not complete: the endpoint field(s) the metadata did not list."""
    if second is None:
        return gettext(
            "Discovery failed: the provider's metadata lists no %(field)s; enter it by hand.",
            field=first,
        )
    return gettext(
        "Discovery failed: the provider's metadata lists no %(first)s and no %(second)s; enter "
        "it by hand.",
        first=first,
        second=second,
    )


def _oidc_email(data: Mapping[str, Any], attribute: str) -> tuple[str | None, tuple[str, ...]]:
    """The verified address of an OpenID Connect source, and the addresses it named unverified.

    ``email`` needs ``email_verified`` to be JSON ``true`` (not ``"true"``); any other
    attribute is the admin's choice and counts as it is. ``preferred_username`` is never an
    address unless it is the attribute.
    """
    found = usable_address(_lookup(data, attribute))
    if found and (attribute != EMAIL_CLAIM or data.get("email_verified") is True):
        return found, ()
    named = (found, claim_address(data, EMAIL_CLAIM), claim_address(data, "preferred_username"))
    return None, tuple(a for a in named if a)


def _get_json(http: HTTPClient, url: str, token: Mapping[str, Any]) -> Mapping[str, Any]:
    """GET ``url`` with the access token as bearer; a JSON object, or an admin-readable error
    that is the same whatever failed (see :func:`_fetch_metadata`)."""
    try:
        response = http.get(
            url,
            headers={
                "Authorization": f"Bearer {token.get('access_token', '')}",
                "Accept": "application/json",
            },
        )
    except requests.RequestException as exc:
        if _refused_before_connecting(exc):
            raise AuthorizationFailed(str(exc), guidance=gettext("Fix the endpoint.")) from None
        logger.debug("Reading %s failed: %s", url, type(exc).__name__)
        data = None
    else:
        data = _json_object(response)
        if data is None:
            logger.debug("Reading %s: HTTP %s, no JSON object", url, response.status_code)
    if data is None:
        raise AuthorizationFailed(
            gettext("%(url)s did not return the mailbox details as a JSON object.", url=url),
            guidance=gettext(
                "Try again; check the Userinfo and Resource Details Endpoints and that the "
                "Scopes grant access to them."
            ),
        )
    return data
