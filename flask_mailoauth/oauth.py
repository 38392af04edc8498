"""Talking to a token endpoint: one request, its classified failure, the parsed token.

Both grants go through :func:`request_token`: the authorization code exchange (``flow``) and
the refresh (``tokens``). oauthlib builds the body and parses the answer; the transport is
plain ``requests`` so that no process-wide ``OAUTHLIB_*`` switch is ever needed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from oauthlib.oauth2 import OAuth2Error, WebApplicationClient

from .errors import MailOAuthError, ProviderFailure
from .models import utcnow
from .providers.base import Provider

logger = logging.getLogger("flask_mailoauth")

#: the token lifetime assumed when an IdP leaves out ``expires_in``
DEFAULT_EXPIRES_IN = 3600


class TokenRequestFailed(MailOAuthError):
    """The token endpoint refused or could not be reached; :attr:`failure` says which."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.summary())
        self.failure = failure


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response, normalised."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime
    scope: str
    token_type: str
    id_token: str | None
    raw: Mapping[str, Any]
    clock_skew: float | None = None  # host minus IdP clock, seconds, when the answer tells it

    def __repr__(self) -> str:
        return f"<TokenResponse expires_at={self.expires_at.isoformat()} scope={self.scope!r}>"


def request_token(
    provider: Provider,
    config: Mapping[str, str],
    client_secret: str,
    grant: Mapping[str, str],
    *,
    timeout: float,
    requested_scopes: list[str],
    deadline: float | None = None,
) -> TokenResponse:
    """POST ``grant`` (``grant_type`` and its parameters) to the account's token endpoint."""
    client = WebApplicationClient(config["client_id"])
    body = dict(grant)
    body.update(client_id=config["client_id"], client_secret=client_secret)
    url = provider.endpoints(config).token
    started = time.monotonic()
    try:
        response = requests.post(
            url,
            data=body,
            headers={"Accept": "application/json"},
            timeout=timeout if deadline is None else min(timeout, deadline),
        )
    except requests.RequestException as exc:
        logger.warning("Token endpoint %s unreachable: %s", url, type(exc).__name__)
        raise TokenRequestFailed(provider.classify_error(None, None)) from None
    logger.debug(
        "Token endpoint %s answered %s in %.3f s",
        url,
        response.status_code,
        time.monotonic() - started,
    )
    data = _json(response)
    if response.status_code != 200 or data is None or "access_token" not in data:
        status = response.status_code if response.status_code != 200 else 502
        failure = provider.classify_error(
            status, data, retry_after=_retry_after(response.headers.get("Retry-After"))
        )
        raise TokenRequestFailed(failure)
    try:
        token = client.parse_request_body_response(response.text, scope=requested_scopes)
    except Warning as changed:
        # oauthlib raises (not warns) when the IdP grants other scopes than asked, e.g.
        # Microsoft leaving out offline_access; the parsed token rides on the exception.
        token = changed.token  # type: ignore[attr-defined]
    except OAuth2Error as exc:
        raise TokenRequestFailed(provider.classify_error(502, {"error": exc.error})) from None
    expires_in = _number(token.get("expires_in"))
    return TokenResponse(
        access_token=token["access_token"],
        refresh_token=token.get("refresh_token") or None,
        expires_at=utcnow() + timedelta(seconds=expires_in or DEFAULT_EXPIRES_IN),
        scope=_scope_text(token.get("scope"), requested_scopes),
        token_type=str(token.get("token_type") or "Bearer"),
        id_token=token.get("id_token") or None,
        raw=token,
    )


class TimeoutHTTP:
    """The part of ``requests.Session`` provider hooks use, with a timeout on every call."""

    def __init__(self, http: requests.Session, timeout: float) -> None:
        self._http, self._timeout = http, timeout

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """``GET url`` with the configured timeout."""
        kwargs.setdefault("timeout", self._timeout)
        return self._http.get(url, **kwargs)


def _json(response: requests.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _retry_after(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not header:
        return None
    seconds = _number(header)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - utcnow()).total_seconds()) if when.tzinfo else None


def _scope_text(scope: Any, requested: list[str]) -> str:
    if isinstance(scope, list | tuple):
        return " ".join(scope)
    return str(scope) if scope else " ".join(requested)
