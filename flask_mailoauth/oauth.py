"""Talking to a token endpoint: one request, its classified failure, the parsed token.

Every grant goes through :func:`request_token`: the authorization code exchange (``flow``), the
refresh, the client credentials grant of application access and a service account's JWT-bearer
grant (``tokens``), sent by requests-oauthlib (``fetch_token``, ``refresh_token``) on this
thread's pooled session for the IdP (:mod:`.client`), under the outbound rules
(:mod:`.outbound`: no redirect, vetted address, size cap, total deadline). The answer is data
from outside: after the provider's compliance hooks, every field is checked here, and anything
malformed becomes a :class:`TokenRequestFailed` carrying a classified :class:`ProviderFailure`
— never another exception.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, overload
from urllib.parse import quote_plus

import jwt
import requests
from oauthlib.oauth2 import InsecureTransportError

from .certificates import ASSERTION_TYPE, ClientCertificate
from .client import JWT_BEARER, PooledSession, session_for
from .errors import (
    AddressRefused,
    DeadlineExceeded,
    FailureKind,
    ProviderFailure,
    RedirectRefused,
    ResponseTooLarge,
    TokenRequestFailed,
)
from .i18n import gettext, lazy_gettext
from .models import utcnow
from .outbound import OutboundPolicy, call_timeout
from .providers.base import Provider
from .vocabulary import ClientAuth

logger = logging.getLogger("flask_mailoauth")

#: the token lifetime assumed when an IdP leaves out ``expires_in``
DEFAULT_EXPIRES_IN = 3600
#: longer lifetimes are cut to this (seconds): refreshing early is harmless, overflowing is not
MAX_EXPIRES_IN = 24 * 3600
#: an ``expires_in`` beyond this (seconds, ten years) is not a lifetime but a broken answer
ABSURD_EXPIRES_IN = 10 * 365 * 24 * 3600
#: a ``Retry-After`` longer than this (seconds) is cut to it; the backoff caps it further
MAX_RETRY_AFTER = 24 * 3600
#: the code of a failure no rule foresaw (a bug, in this extension or a library it calls)
UNEXPECTED_ERROR = "unexpected_error"
#: the code of every malformed token answer
INVALID_TOKEN_RESPONSE = "invalid_token_response"  # noqa: S105 - an error code
#: the code of a ``private_key_jwt`` account without a certificate
NO_CERTIFICATE = "no_certificate"
#: the only token type mail servers accept
BEARER = "Bearer"
#: clock readings (``Date``, ``iat``, ``exp``) further than this from the host's are ignored
_SANE_CLOCK_SECONDS = 10 * 365 * 24 * 3600
#: RFC 6749 A.12/A.17/A.14: tokens are VSCHAR (printable ASCII), ``expires_in`` is 1*DIGIT
_VSCHARS = re.compile(r"[\x20-\x7e]+")
_DIGITS = re.compile(r"[0-9]+")
_MALFORMED_GUIDANCE = lazy_gettext(
    "The identity provider sent a token answer this extension cannot use; it is retried. If it "
    "persists, check the token endpoint and the identity provider's logs."
)


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response, normalised.

    ``expires_at`` is on the host's clock, never later than what the IdP's own clock says
    (``Date`` header, or the access token's ``exp``); ``clock_skew`` is the host's clock minus
    the IdP's, in seconds, when the answer tells it.
    """

    access_token: str
    refresh_token: str | None
    expires_at: datetime
    scope: str
    token_type: str
    id_token: str | None
    raw: Mapping[str, Any]
    clock_skew: float | None = None  # host minus IdP clock, seconds, when the answer tells it
    #: the certificate the client authenticated with (``private_key_jwt``), else ``None``
    client_certificate: ClientCertificate | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"<TokenResponse expires_at={self.expires_at.isoformat()} scope={self.scope!r}>"


class _Malformed(Exception):
    """A token answer field that cannot be used; the message says which and why."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.TRANSIENT) -> None:
        super().__init__(message)
        self.kind = kind


def request_token(
    provider: Provider,
    config: Mapping[str, str],
    client_secret: str,
    grant: Mapping[str, str],
    *,
    timeout: float,
    requested_scopes: list[str],
    deadline: float | None = None,
    policy: OutboundPolicy | None = None,
    certificates: Sequence[ClientCertificate] = (),
) -> TokenResponse:
    """POST ``grant`` (``grant_type`` and its parameters) to the account's token endpoint.

    The client authenticates as :meth:`Provider.client_auth` says: with ``client_secret``, or
    for ``private_key_jwt`` with an assertion signed by the first of ``certificates`` (a
    rollover's pending certificate, then the current one). When the identity provider refuses
    one certificate as a configuration problem (``invalid_client``: not uploaded yet) the next
    is tried, and only the last one's failure counts; the answer names the certificate that
    succeeded (:attr:`TokenResponse.client_certificate`).

    ``timeout`` caps each socket operation, ``deadline`` (seconds) the whole call. ``policy``
    defaults to the current app's outbound policy. Raises only :class:`TokenRequestFailed`:
    an exception no rule foresaw becomes a transient failure too (:func:`unexpected_failure`).
    """
    try:
        return _request_token(
            provider,
            config,
            client_secret,
            grant,
            timeout=timeout,
            requested_scopes=requested_scopes,
            deadline=deadline,
            policy=policy,
            certificates=certificates,
        )
    except TokenRequestFailed as exc:
        raise TokenRequestFailed(provider.explain(config, exc.failure)) from None
    except Exception as exc:  # the safety net: never an untyped exception
        raise TokenRequestFailed(unexpected_failure(exc)) from None


def unexpected_failure(exc: BaseException) -> ProviderFailure:
    """A transient failure for an exception no rule foresaw, logged by its type only: its
    message may quote what the IdP sent, or a secret."""
    name = type(exc).__name__
    logger.error("Unexpected %s while calling the token endpoint; treated as transient.", name)
    return ProviderFailure(
        FailureKind.TRANSIENT,
        UNEXPECTED_ERROR,
        gettext("The call to the token endpoint failed unexpectedly (%(error)s).", error=name),
        gettext("It is retried with backoff; if it persists, report it with the application log."),
    )


def _request_token(
    provider: Provider,
    config: Mapping[str, str],
    client_secret: str,
    grant: Mapping[str, str],
    *,
    timeout: float,
    requested_scopes: list[str],
    deadline: float | None,
    policy: OutboundPolicy | None,
    certificates: Sequence[ClientCertificate],
) -> TokenResponse:
    """:func:`request_token` without its safety net: each certificate to try, in turn."""
    method = provider.client_auth(config)
    tries: Sequence[ClientCertificate | None] = (None,)
    if method == ClientAuth.PRIVATE_KEY_JWT:
        if not certificates:
            raise TokenRequestFailed(
                ProviderFailure(
                    FailureKind.CONFIGURATION,
                    NO_CERTIFICATE,
                    gettext("No certificate is stored for certificate client authentication."),
                    gettext("Generate or import a certificate on the IdP Config tab."),
                )
            )
        tries = certificates
    # the deadline bounds the whole call, a fallback included: the refresh lease counts on it
    ends = time.monotonic() + deadline if deadline is not None else None
    for index, certificate in enumerate(tries):
        left = None if ends is None else ends - time.monotonic()
        client = client_proof(provider, config, client_secret, certificate)
        try:
            token = _attempt(
                provider, config, client, grant, timeout, requested_scopes, left, policy
            )
        except TokenRequestFailed as exc:
            if certificate is None or index + 1 == len(tries):
                raise
            if ends is not None and ends <= time.monotonic():
                raise
            if exc.failure.kind != FailureKind.CONFIGURATION:
                raise
            logger.warning(
                "The identity provider refused the pending certificate %s (%s); the current "
                "one is used.",
                certificate.sha1_thumbprint,
                exc.failure.code,
            )
            continue
        return replace(token, client_certificate=certificate)
    raise RuntimeError("no client authentication was tried")  # tries is never empty


def _attempt(
    provider: Provider,
    config: Mapping[str, str],
    client: ClientProof,
    grant: Mapping[str, str],
    timeout: float,
    requested_scopes: list[str],
    deadline: float | None,
    policy: OutboundPolicy | None,
) -> TokenResponse:
    """One token request, the client authenticated as ``client``."""
    policy = policy or OutboundPolicy.current()
    url = provider.endpoints(config).token
    answer = _Answer(provider, requested_scopes)
    started = time.monotonic()
    try:
        with session_for(policy, url).lend(
            config["client_id"], hooks=provider.compliance_hooks(config), check=answer.check
        ) as oauth:
            _send(oauth, url, client, grant, timeout, deadline)
    except (RedirectRefused, AddressRefused) as exc:
        code = "token_endpoint_redirect" if isinstance(exc, RedirectRefused) else "address_refused"
        raise TokenRequestFailed(
            ProviderFailure(
                FailureKind.CONFIGURATION, code, str(exc), gettext("Fix the Token Endpoint.")
            )
        ) from None
    except InsecureTransportError:
        raise TokenRequestFailed(
            ProviderFailure(
                FailureKind.CONFIGURATION,
                "insecure_transport",
                gettext(
                    "The token endpoint %(url)s is not https: tokens and the client secret are "
                    "only sent over https.",
                    url=url,
                ),
                gettext("Fix the Token Endpoint."),
            )
        ) from None
    except ResponseTooLarge as exc:
        raise TokenRequestFailed(_malformed(str(exc))) from None
    except DeadlineExceeded as exc:
        logger.warning("Token endpoint %s exceeded the call's deadline", url)
        raise TokenRequestFailed(
            ProviderFailure(
                FailureKind.TRANSIENT, "timeout", str(exc), gettext("It is retried with backoff.")
            )
        ) from None
    except requests.RequestException as exc:
        logger.warning("Token endpoint %s unreachable: %s", url, type(exc).__name__)
        raise TokenRequestFailed(provider.classify_error(None, None)) from None
    logger.debug("Token endpoint %s answered in %.3f s", url, time.monotonic() - started)
    if answer.token is None:  # the safety net makes this a transient failure
        raise RuntimeError("the token answer was never checked")
    return answer.token


def client_proof(
    provider: Provider,
    config: Mapping[str, str],
    client_secret: str,
    certificate: ClientCertificate | None = None,
) -> ClientProof:
    """How the account's client proves itself, as its client authentication says: on the
    grants, and on the requests beside them (the revocation request)."""
    return ClientProof(
        provider.client_auth(config),
        config["client_id"],
        client_secret,
        certificate,
        sha1_header=provider.certificate_sha1_header,
    )


@dataclass(frozen=True)
class ClientProof:
    """How the client proves itself at the token endpoint, and with what."""

    method: ClientAuth
    client_id: str
    secret: str = field(repr=False)
    certificate: ClientCertificate | None = None
    #: name the certificate by its SHA-1 ``x5t`` too (Microsoft)
    sha1_header: bool = False

    def auth(self) -> requests.auth.AuthBase | None:
        """HTTP Basic for ``client_secret_basic``: id and secret form-encoded first, as RFC
        6749 §2.3.1 says (requests-oauthlib's own Basic auth leaves them raw)."""
        if self.method != ClientAuth.SECRET_BASIC:
            return None
        return requests.auth.HTTPBasicAuth(
            quote_plus(self.client_id, safe=""), quote_plus(self.secret, safe="")
        )

    def body(self, token_url: str) -> dict[str, str]:
        """What the request body carries besides the grant: the client id unless Basic auth
        names it, the secret for ``client_secret_post``, a fresh client assertion (audience:
        the token endpoint) for ``private_key_jwt``."""
        if self.method == ClientAuth.SECRET_BASIC:
            return {}
        if self.method == ClientAuth.SECRET_POST:
            return {"client_id": self.client_id, "client_secret": self.secret}
        if self.method == ClientAuth.PRIVATE_KEY_JWT and self.certificate is not None:
            assertion = self.certificate.assertion(
                self.client_id, token_url, sha1_header=self.sha1_header
            )
            return {
                "client_id": self.client_id,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            }
        return {"client_id": self.client_id}


def _send(
    oauth: PooledSession,
    url: str,
    client: ClientProof,
    grant: Mapping[str, str],
    timeout: float,
    deadline: float | None,
) -> None:
    """The grant through requests-oauthlib, the client authenticated as ``client`` says (a
    JWT-bearer grant sends no client authentication: its signed assertion is the proof).

    The client's body parameters go in as extra parameters (the code exchange's ``client_id``
    as ``include_client_id``, oauthlib's way) and Basic auth as ``auth``; without Basic, an
    auth that adds nothing, as ``None`` would make requests-oauthlib send its own.

    oauthlib raises a ``Warning`` carrying the token when the granted scope differs from the
    requested one (Microsoft leaves out ``offline_access``): that is an answer, not a failure
    (the extension compares scopes itself, :meth:`Provider.missing_scopes`), and its token is
    the body :class:`_Answer` already read; no ``OAUTHLIB_RELAX_TOKEN_SCOPE`` is needed.
    """
    params: dict[str, Any] = dict(grant)
    kind = params.pop("grant_type")
    call = call_timeout(timeout, deadline)
    if kind != JWT_BEARER:
        params.update(client.body(url))
    try:
        if kind == "authorization_code":
            oauth.redirect_uri = params.pop("redirect_uri", None)
            oauth.fetch_token(
                url,
                code=params.pop("code"),
                auth=client.auth() or _NO_AUTH,
                include_client_id=params.pop("client_id", None) is not None,
                timeout=call,
                **params,
            )
        elif kind == "refresh_token":
            scope = params.pop("scope", None)
            oauth.scope = scope.split() if scope else None
            oauth.refresh_token(
                url,
                refresh_token=params.pop("refresh_token"),
                auth=client.auth() or _NO_AUTH,
                timeout=call,
                **params,
            )
        elif kind == "client_credentials":
            oauth.use_backend_client()
            oauth.fetch_token(
                url,
                auth=client.auth() or _NO_AUTH,
                include_client_id=params.pop("client_id", None) is not None,
                timeout=call,
                **params,
            )
        elif kind == JWT_BEARER:
            # The signed assertion is the client's proof (RFC 7523 §2.1): no client secret,
            # and no Basic header (requests-oauthlib would add an empty one without ``auth``).
            oauth.use_assertion_client()
            oauth.fetch_token(url, auth=_NO_AUTH, timeout=call, **params)
        else:
            raise ValueError(f"unsupported grant type {kind!r}")
    except Warning as changed:
        if getattr(changed, "token", None) is None:
            raise


class _NoAuth(requests.auth.AuthBase):
    """No ``Authorization`` header: what requests-oauthlib sends when ``auth`` is this (with
    ``None`` it would send its own Basic header)."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


_NO_AUTH = _NoAuth()


class _Answer:
    """The extension's reading of one token answer: the last compliance hook of the call.

    It runs before oauthlib parses the answer, so a refusal is classified by its HTTP status,
    its ``error`` and ``Retry-After`` (:meth:`Provider.classify_error`), and a malformed answer
    is refused field by field (:func:`_parse`), whatever oauthlib would make of it.
    """

    def __init__(self, provider: Provider, requested_scopes: list[str]) -> None:
        self.provider = provider
        self.requested_scopes = requested_scopes
        self.token: TokenResponse | None = None

    def check(self, response: requests.Response) -> requests.Response:
        """Raise :class:`TokenRequestFailed` unless ``response`` is a usable token answer."""
        data = _json(response)
        refused = data is not None and "access_token" not in data and "error" in data
        if response.status_code != 200 or refused:
            # A refusal sent with 200 (Zoho does) reaches the provider as 502: its code decides.
            raise TokenRequestFailed(
                self.provider.classify_error(
                    response.status_code if response.status_code != 200 else 502,
                    data,
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
            )
        if data is None:
            raise TokenRequestFailed(
                _malformed(
                    gettext(
                        "The token endpoint answered HTTP 200 with something else than a JSON "
                        "object."
                    )
                )
            )
        if "access_token" not in data:
            raise TokenRequestFailed(
                _malformed(
                    gettext(
                        "The token endpoint answered HTTP 200 with neither access_token nor error."
                    )
                )
            )
        try:
            self.token = _parse(data, self.requested_scopes, response.headers.get("Date"))
        except _Malformed as exc:
            raise TokenRequestFailed(_malformed(str(exc), exc.kind)) from None
        return response


def _malformed(description: str, kind: FailureKind = FailureKind.TRANSIENT) -> ProviderFailure:
    """A malformed answer: retried like a transient failure, shown to the admin with its code."""
    guidance = (
        str(_MALFORMED_GUIDANCE)
        if kind == FailureKind.TRANSIENT
        else gettext("Check the identity provider.")
    )
    return ProviderFailure(kind, INVALID_TOKEN_RESPONSE, description, guidance)


def _parse(data: Mapping[str, Any], requested: list[str], date: str | None) -> TokenResponse:
    """The checked fields of a 200 answer; raises :class:`_Malformed` naming the bad field."""
    access_token = _token(data, "access_token", required=True)
    token_type = data.get("token_type", BEARER)
    if not isinstance(token_type, str) or token_type.lower() != BEARER.lower():
        raise _Malformed(
            gettext(
                "The token endpoint issued a token that is not a Bearer token "
                "(token_type must be Bearer); mail servers accept only Bearer tokens."
            ),
            kind=FailureKind.CONFIGURATION,
        )
    lifetime = _expires_in(data.get("expires_in"))
    now = utcnow()
    claims = _jwt_claims(access_token)
    idp_now = _http_date(date) or _instant(claims.get("iat"), now)
    skew = (now - idp_now).total_seconds() if idp_now else None
    if lifetime is None:
        issued, expiry = _instant(claims.get("iat"), now), _instant(claims.get("exp"), now)
        lifetime = (expiry - issued).total_seconds() if issued and expiry else DEFAULT_EXPIRES_IN
        lifetime = min(max(lifetime, 0), MAX_EXPIRES_IN)
    expires_at = now + timedelta(seconds=lifetime)
    idp_expiry = _instant(claims.get("exp"), now) or (
        idp_now + timedelta(seconds=lifetime) if idp_now else None
    )
    if idp_expiry is not None:
        # Whichever clock says the token dies first wins: a host clock that is fast now and
        # corrected later never makes it serve a token the IdP already considers expired.
        expires_at = min(expires_at, idp_expiry)
    return TokenResponse(
        access_token=access_token,
        refresh_token=_token(data, "refresh_token"),
        expires_at=expires_at,
        scope=_scope_text(data.get("scope"), requested),
        token_type=BEARER,
        id_token=_token(data, "id_token"),
        raw=dict(data),
        clock_skew=skew,
    )


@overload
def _token(data: Mapping[str, Any], name: str, *, required: Literal[True]) -> str: ...
@overload
def _token(data: Mapping[str, Any], name: str, *, required: bool = False) -> str | None: ...
def _token(data: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    """A token field: absent (``None``) unless required, else a non-empty printable-ASCII string."""
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _VSCHARS.fullmatch(value):
        raise _Malformed(
            gettext(
                "The token endpoint's %(field)s is not a non-empty string of printable ASCII "
                "characters (RFC 6749).",
                field=name,
            )
        )
    return value


def _expires_in(value: Any) -> float | None:
    """``expires_in`` in seconds, clamped to :data:`MAX_EXPIRES_IN`; ``None`` when absent.

    RFC 6749 makes it an integer: JSON integers and strings of ASCII digits are accepted,
    anything else (floats such as ``3600.0`` or ``"3600.0"``, booleans, NaN, lists) is refused,
    and so is an absurd one (beyond :data:`ABSURD_EXPIRES_IN`, such as ``2**64``).
    """
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value) and len(value) <= 18:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Malformed(
            gettext(
                "The token endpoint's expires_in is not a positive whole number of seconds "
                "(RFC 6749)."
            )
        )
    if value > ABSURD_EXPIRES_IN:
        raise _Malformed(
            gettext(
                "The token endpoint's expires_in is absurd (more than ten years); no token lives "
                "that long."
            )
        )
    return float(min(value, MAX_EXPIRES_IN))


def _jwt_claims(token: str) -> Mapping[str, Any]:
    """The claims of a JWT access token, unverified (clock readings only); empty otherwise."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return {}
    return claims if isinstance(claims, Mapping) else {}


def _instant(value: Any, now: datetime) -> datetime | None:
    """A NumericDate claim as a datetime, when it is a sane number; ``None`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # Compared, not converted: an int of 400 digits compares exactly but overflows a float
    # (NaN compares false, infinities fall outside).
    here = now.timestamp()
    if not here - _SANE_CLOCK_SECONDS <= value <= here + _SANE_CLOCK_SECONDS:
        return None
    return datetime.fromtimestamp(value, UTC)


def _http_date(header: str | None) -> datetime | None:
    """The IdP's clock from its ``Date`` header, when present, parseable and sane."""
    if not header:
        return None
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return _instant(when.timestamp(), utcnow())


def _json(response: requests.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _retry_after(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), at most
    :data:`MAX_RETRY_AFTER`: an IdP cannot park an account for centuries."""
    if not header:
        return None
    seconds = _number(header)
    if seconds is None:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = max(0.0, (when - utcnow()).total_seconds())
    return min(seconds, MAX_RETRY_AFTER)


def _scope_text(scope: Any, requested: list[str]) -> str:
    """The granted scopes as one space-separated string; the requested ones when left out."""
    if scope is None or scope == "":
        return " ".join(requested)
    if isinstance(scope, str):
        return " ".join(scope.split())
    if isinstance(scope, list | tuple) and all(isinstance(s, str) for s in scope):
        return " ".join(s for item in scope for s in item.split())
    raise _Malformed(
        gettext("The token endpoint's scope is neither a string nor a list of strings.")
    )
