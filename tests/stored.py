"""The host's store as a test sees it: an authorized account, its credential and events, a token.

Accounts are stored with the extension's own ``flask_mailoauth.testing.seed_account``.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.testing import seed_account

from .oauth_fakes import TOKEN_URL

GENERIC = {
    "issuer": "https://idp.example.test",
    "client_id": "app",
    "authorization_endpoint": "https://idp.example.test/authorize",
    "token_endpoint": TOKEN_URL,
    "jwks_uri": "https://idp.example.test/jwks",
    "scopes": "openid email offline_access",
    "email_attribute": "email",
}


def store_account(
    host,
    *,
    provider="generic",
    config=None,
    expires_in=3600,
    refresh="rt-0",
    access="at-0",
    key="support",
    purpose="mailbox",
    **credential_fields,
):
    """An authorized account, as the callback would have stored it (the public helper).

    The token was issued an hour ago (``issued_at``), so ``expires_in`` is what is left of a
    long-lived token; pass ``issued_at`` for a token that has just been issued.
    """
    credential_fields.setdefault("issued_at", utcnow() - timedelta(hours=1))
    config = dict(config or (GENERIC if provider == "generic" else {}))
    if provider == "microsoft":
        config["client_id"] = "app"
    with host.app.app_context():
        seed_account(
            key,
            purpose,
            address=f"{key}@example.test",
            name=f"{key} ({purpose})",
            provider=provider,
            config=config,
            client_secret="client-secret",
            access_token=access,
            refresh_token=refresh,
            expires_in=expires_in,
            **credential_fields,
        )


def credential(host, key="support"):
    st_ = host.app.extensions["mailoauth"]
    m = st_.models
    with host.app.app_context(), own_session(st_.db) as s:
        cred = s.scalars(sa.select(m.Credential).join(m.Account).where(m.Account.key == key)).one()
        return cred, st_.reveal(cred, "access_token"), st_.reveal(cred, "refresh_token")


def events(host):
    st_ = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st_.db) as s:
        return [(e.kind, e.code) for e in s.scalars(sa.select(st_.models.Event).order_by("id"))]


def token(host, key="support", purpose="mailbox"):
    with host.app.app_context():
        return host.ext.access_token(key, purpose)


def tokens_at_once(*hosts, callers=16):
    """``token()`` from ``callers`` threads released together, taking ``hosts`` in turn (two
    app states on one database stand for two processes); the tokens in the order they came."""
    barrier, results = threading.Barrier(callers), []

    def call(host):
        barrier.wait()
        results.append(token(host))

    threads = [threading.Thread(target=call, args=(hosts[n % len(hosts)],)) for n in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
