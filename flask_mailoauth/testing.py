"""Helpers for host test suites: an authorized account without a browser, fake token answers.

A host's tests fetch and send mail through ``connect_imap()`` & co. and need an account that
the admin "has already authorized". :func:`seed_account` stores one the way the callback does
(the secrets sealed with the app's own keys, the grant's config signature), and
:func:`token_answer` is the JSON body of a token endpoint answer, for ``responses`` or any fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .models import own_session, utcnow
from .providers import registry
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
