"""Helpers for host test suites: an authorized account without a browser, fake token answers.

A host's tests fetch and send mail through ``connect_imap()`` & co. and need an account that
the admin "has already authorized". :func:`seed_account` stores one the way the callback does
(the secrets sealed with the app's own keys, the grant's config signature), and
:func:`token_answer` is the JSON body of a token endpoint answer, for ``responses`` or any fake.

Provider authors test their hooks through the extension's own code paths, never private
names: :func:`validate_id_token` checks an id_token as the callback does, and
:func:`request_token` sends a grant through the token client (a refusal raises
:class:`~flask_mailoauth.errors.TokenRequestFailed` with the provider's classification).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import flow, oauth
from .certificates import ClientCertificate
from .models import own_session, utcnow
from .oauth import TokenResponse
from .outbound import OutboundPolicy
from .providers import registry
from .providers.base import Provider
from .settings import Purpose
from .state import state


@dataclass(frozen=True)
class SeededAccount:
    """What :func:`seed_account` stored (the tokens in clear, for the test's assertions)."""

    key: str
    purpose: Purpose
    address: str
    access_token: str
    refresh_token: str
    expires_at: datetime


def seed_account(
    key: str,
    purpose: Purpose = "mailbox",
    *,
    address: str | None = None,
    provider: str = "generic",
    config: dict[str, str] | None = None,
    name: str | None = None,
    client_secret: str = "test-client-secret",
    access_token: str = "test-access-token",
    refresh_token: str = "test-refresh-token",
    expires_in: float = 3600,
    **credential: Any,
) -> SeededAccount:
    """Store an authorized account for mailbox ``key`` in the current app's database.

    Call it inside an app context after ``init_app``. ``config`` goes over the provider's
    defaults (give a generic provider its ``token_endpoint`` to test refreshes); ``address``
    defaults to the mailbox loader's address for ``key``. Further keyword arguments set
    columns of the credential (``scope``, ``resource_owner``, ``issued_at``, ``status`` ...).
    """
    st = state()
    chosen = registry.get(provider)
    config = {**chosen.defaults(), **(config or {})}
    address = address or st.hooks.mailbox(key).address
    expires_at = utcnow() + timedelta(seconds=expires_in)
    with own_session(st.db) as session:
        account = st.models.Account(
            key=key,
            purpose=purpose,
            name=name or f"{address} ({purpose})",
            address=address,
            provider=provider,
            config=config,
            config_signature=chosen.config_signature(config),
        )
        st.seal(account, "client_secret", client_secret)
        session.add(account)
        session.flush()
        row = st.models.Credential(
            account_id=account.id,
            expires_at=expires_at,
            config_signature=account.config_signature,
            **credential,
        )
        st.seal(row, "access_token", access_token)
        st.seal(row, "refresh_token", refresh_token)
        session.add(row)
    return SeededAccount(key, purpose, address, access_token, refresh_token, expires_at)


def token_answer(
    access_token: str = "test-access-token",
    *,
    refresh_token: str | None = "test-refresh-token",
    expires_in: int = 3600,
    scope: str | None = "openid email offline_access",
    **extra: Any,
) -> dict[str, Any]:
    """The JSON body of a successful token endpoint answer (RFC 6749 §5.1).

    ``refresh_token=None`` leaves it out (Google's refreshes); ``scope=None`` too; ``extra``
    adds fields such as ``id_token``.
    """
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }
    if scope is not None:
        body["scope"] = scope
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return {**body, **extra}


def validate_id_token(
    provider: Provider,
    config: Mapping[str, str],
    id_token: str,
    *,
    nonce: str,
    callback_issuer: str | None = None,
    timeout: float = 5.0,
) -> dict[str, Any] | None:
    """The claims of ``id_token`` validated as the callback validates them (JWKS signature,
    ``iss`` from :meth:`~.Provider.expected_issuer`, ``aud``, ``exp``, ``nonce``, ``azp``).

    ``None`` when ``config``'s scopes lack ``openid`` (no nonce was sent, the token is not used);
    a refusal raises :class:`~flask_mailoauth.errors.AuthorizationFailed`.
    """
    return flow._validate_id_token(
        provider, config, id_token, nonce, timeout, callback_issuer, policy=OutboundPolicy()
    )


def request_token(
    provider: Provider,
    config: Mapping[str, str],
    grant: Mapping[str, str],
    *,
    client_secret: str = "client-secret",
    timeout: float = 5.0,
    certificates: Sequence[ClientCertificate] = (),
) -> TokenResponse:
    """Send ``grant`` (``grant_type`` and its parameters) to the provider's token endpoint
    through the extension's token client, as a refresh or the callback does.

    The answer is parsed and checked as in production; a refusal raises
    :class:`~flask_mailoauth.errors.TokenRequestFailed` whose ``failure`` is what the
    provider's :meth:`~.Provider.classify_error` made of it. The client authenticates as
    the provider's :meth:`~.Provider.client_auth` says for ``config``: with ``client_secret``,
    or with a client assertion signed by the first of ``certificates`` (``private_key_jwt``).
    """
    return oauth.request_token(
        provider,
        config,
        client_secret,
        grant,
        timeout=timeout,
        requested_scopes=provider.scopes(config),
        policy=OutboundPolicy(),
        certificates=certificates,
    )
