"""The admin's steps through the authorization flow, with Flask's test client and the fake IdP:
the modal's CSRF token, save, authorize, the IdP's redirect back, and what was stored."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

import sqlalchemy as sa

from .oauth_fakes import AUTHORIZE_URL, GENERIC_CONFIG

MODAL = "/mailoauth/support/mailbox"

HOST_PAGE = "http://localhost/admin/emails/support"


def csrf(client, provider="generic"):
    page = client.get(f"{MODAL}?provider={provider}").get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


def save(client, provider="generic", secret="client-secret-1", **fields):
    data = {
        "csrf_token": csrf(client, provider),
        "provider": provider,
        "enabled": "1",
        "name": "support@example.test (mailbox)",
        "strict_matching": "y",
        "client_secret": secret,
        **GENERIC_CONFIG,
        **fields,
    }
    return client.post(MODAL, data=data, headers={"Referer": HOST_PAGE})


def start(client, **fields):
    """Save and return the IdP authorize URL's query."""
    response = save(client, **fields)
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(AUTHORIZE_URL)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def reauthorize(client):
    response = client.post(f"{MODAL}/authorize", data={"csrf_token": csrf(client)})
    assert response.status_code == 303
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}


def callback(client, idp, query, **extra):
    idp.nonce = query.get("nonce")
    params = {"code": "the-code", "state": query.get("state", ""), **extra}
    return client.get(
        "/mailoauth/callback?" + urlencode({k: v for k, v in params.items() if v is not None})
    )


def credentials(host):
    """The raw credential rows, byte for byte."""
    with host.app.app_context(), host.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("select * from mailoauth_credential"))]


def banners(client):
    with client.session_transaction() as session:
        return session.get("_flashes", [])
