"""Revoking a grant at the identity provider (RFC 7009) when an admin deletes its token.

One POST of the refresh token (or, without one, the access token) to the provider's revocation
endpoint, on this thread's pooled session for the IdP (:mod:`.client`), under the outbound rules
(:class:`~.outbound.OutboundPolicy`: no redirect, vetted address, size cap, total deadline).
Whatever the IdP answers, or fails to, is a :class:`Revoked` outcome to report, never an
exception: the caller deletes the token locally either way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from oauthlib.oauth2 import InsecureTransportError

from .certificates import ClientCertificate
from .client import session_for
from .errors import OutboundError
from .i18n import gettext
from .oauth import client_proof
from .outbound import OutboundPolicy, call_timeout
from .providers.base import Provider
from .vocabulary import RevocationOutcome

logger = logging.getLogger("flask_mailoauth")

#: characters of the IdP's ``error`` and ``error_description`` that a report quotes
_QUOTED = 200


@dataclass(frozen=True)
class Revoked:
    """What became of a revocation request: the outcome and, unless revoked, why, in one
    admin-readable line that never contains a token."""

    outcome: RevocationOutcome
    detail: str = ""

    @property
    def settled(self) -> bool:
        """Nothing is left to do at the IdP: it revoked, or it offers no revocation."""
        return self.outcome in (RevocationOutcome.REVOKED, RevocationOutcome.NOT_SUPPORTED)


def revoke(
    provider: Provider,
    config: Mapping[str, str],
    client_secret: str,
    *,
    refresh_token: str,
    access_token: str,
    policy: OutboundPolicy,
    timeout: float,
    deadline: float | None = None,
    certificate: ClientCertificate | None = None,
) -> Revoked:
    """Revoke the grant at the account's revocation endpoint, if the provider has one.

    The refresh token is sent (``token_type_hint=refresh_token``): revoking it ends the grant
    (RFC 7009 §2.1); without one, the access token. ``timeout`` caps each socket operation,
    ``deadline`` the whole call. Never raises.
    """
    try:
        url = revocation_endpoint(provider, config)
        if not url:
            return Revoked(RevocationOutcome.NOT_SUPPORTED)
        token, hint = (
            (refresh_token, "refresh_token") if refresh_token else (access_token, "access_token")
        )
        proof = client_proof(provider, config, client_secret, certificate)
        body = {"token": token, "token_type_hint": hint, **proof.body(url)}
        secrets = (refresh_token, access_token, client_secret)
        return _send(
            url,
            body,
            secrets,
            auth=proof.auth(),
            policy=policy,
            timeout=timeout,
            deadline=deadline,
        )
    except Exception as exc:  # the safety net: the token is deleted whatever happened here
        name = type(exc).__name__
        logger.error("Unexpected %s while revoking a token; it is deleted anyway.", name)
        return Revoked(
            RevocationOutcome.FAILED,
            gettext("The revocation request failed unexpectedly (%(error)s).", error=name),
        )


def revocation_endpoint(provider: Provider, config: Mapping[str, str]) -> str | None:
    """The account's revocation endpoint; ``None`` when the provider offers none."""
    return provider.endpoints(config).revocation or None


def _send(
    url: str,
    body: Mapping[str, str],
    secrets: tuple[str, ...],
    *,
    auth: requests.auth.AuthBase | None,
    policy: OutboundPolicy,
    timeout: float,
    deadline: float | None,
) -> Revoked:
    """POST ``body`` to ``url`` and read the answer (RFC 7009 §2.2); what the IdP says is
    quoted without any of the ``secrets``."""
    try:
        # OAuth2Session.request's own options: the per-read timeout with the call's deadline,
        # and no access token of a previous call on the session
        options: dict[str, Any] = {
            "timeout": call_timeout(timeout, deadline),
            "withhold_token": True,
        }
        if auth is not None:  # client_secret_basic
            options["auth"] = auth
        response = session_for(policy, url).post(
            url, data=dict(body), headers={"Accept": "application/json"}, **options
        )
    except OutboundError as exc:  # refused address or redirect, too large, too slow
        logger.warning("Revocation at %s stopped: %s", url, type(exc).__name__)
        return Revoked(RevocationOutcome.FAILED, str(exc))
    except InsecureTransportError:
        return Revoked(
            RevocationOutcome.FAILED,
            gettext("The revocation endpoint %(url)s is not https.", url=url),
        )
    except requests.RequestException as exc:
        logger.warning("Revocation endpoint %s unreachable: %s", url, type(exc).__name__)
        return Revoked(
            RevocationOutcome.FAILED,
            gettext("The revocation endpoint %(url)s could not be reached.", url=url),
        )
    status = response.status_code
    if 200 <= status < 300:
        return Revoked(RevocationOutcome.REVOKED)
    error = _error(response, secrets)
    logger.warning("Revocation endpoint %s answered HTTP %s %s", url, status, error)
    outcome = RevocationOutcome.REFUSED if 400 <= status < 500 else RevocationOutcome.FAILED
    if error:
        detail = gettext(
            "The revocation endpoint answered HTTP %(status)s (%(error)s).",
            status=status,
            error=error,
        )
    else:
        detail = gettext("The revocation endpoint answered HTTP %(status)s.", status=status)
    return Revoked(outcome, detail)


def _error(response: requests.Response, secrets: tuple[str, ...]) -> str:
    """The IdP's ``error`` and ``error_description``, on one short line of printable
    characters, never quoting one of the ``secrets`` (an IdP may echo them); empty when
    absent."""
    try:
        data: Any = response.json()
    except (ValueError, RecursionError):
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [data.get("error"), data.get("error_description")]
    text = ": ".join(p for p in parts if isinstance(p, str) and p)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "...")
    return " ".join("".join(c for c in text if c.isprintable()).split())[:_QUOTED]
