"""The second worked example of docs/providers.rst: a provider whose application is a public
client (PKCE, no secret). The documentation includes ``CampusProvider`` from this file, so the
example it shows is the one these tests run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import responses

from flask_mailoauth.providers import (
    ConfigField,
    Endpoints,
    HTTPClient,
    Identity,
    Provider,
    registry,
)
from flask_mailoauth.vocabulary import AccessKind, ClientAuth

from .flow_steps import MODAL, callback, csrf
from .oauth_fakes import AUTHORIZE_URL, CLIENT_ID, ISSUER, JWKS_URL, TOKEN_URL, FakeIdP


class CampusProvider(Provider):
    """A campus identity provider where the helpdesk is registered as a public client: it has
    no secret to keep, and PKCE (always on) guards the authorization code."""

    id = "campus"
    display_name = "OAuth2 - Campus Mail"
    #: a user signs in; the campus IdP knows no application access to mail
    access_kinds: ClassVar[tuple[AccessKind, ...]] = (AccessKind.DELEGATED,)
    #: the only way: the client id alone, so the modal asks for no secret and shows no choice
    client_auths: ClassVar[tuple[ClientAuth, ...]] = (ClientAuth.NONE,)
    fields = (
        ConfigField("client_id", "Client ID", required=True),
        ConfigField("scopes", "Scopes", default="openid email offline_access", kind="scopes"),
    )

    def endpoints(self, config: Mapping[str, str]) -> Endpoints:
        return Endpoints(
            authorization=f"{ISSUER}/authorize",
            token=f"{ISSUER}/token",
            issuer=ISSUER,
            jwks_uri=f"{ISSUER}/jwks",
        )

    def identity(
        self,
        config: Mapping[str, str],
        *,
        claims: Mapping[str, Any] | None,
        token: Mapping[str, Any],
        http: HTTPClient,
    ) -> Identity:
        return Identity.from_verified_email(claims)


@pytest.fixture
def campus(monkeypatch):
    """``CampusProvider`` registered for one test only."""
    monkeypatch.setattr(registry, "_providers", dict(registry._providers))
    registry.register(CampusProvider)
    return registry.get("campus")


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeIdP(mock)


def test_the_example_matches_the_fake_idp():
    endpoints = CampusProvider().endpoints({})
    assert (endpoints.authorization, endpoints.token) == (AUTHORIZE_URL, TOKEN_URL)
    assert endpoints.jwks_uri == JWKS_URL


def test_a_public_client_saves_without_a_secret_and_authorizes_with_pkce(host, campus, idp):
    client = host.app.test_client()
    page = client.get(f"{MODAL}?provider=campus").get_data(as_text=True)
    assert 'name="client_auth"' not in page
    assert 'name="certificate_action"' not in page
    saved = client.post(
        MODAL,
        data={
            "csrf_token": csrf(client, "campus"),
            "provider": "campus",
            "enabled": "1",
            "name": "support@example.test (mailbox)",
            "strict_matching": "y",
            "idp_client_id": CLIENT_ID,
            "idp_scopes": "openid email offline_access",
        },
    )
    assert saved.status_code == 303, saved.get_data(as_text=True)
    query = dict(p.split("=", 1) for p in saved.headers["Location"].split("?", 1)[1].split("&"))
    assert query["code_challenge_method"] == "S256"
    assert callback(client, idp, query).status_code == 303
    [exchange] = idp.token_requests
    assert exchange["client_id"] == [CLIENT_ID]
    assert exchange["code_verifier"]
    assert "client_secret" not in exchange
    assert [
        c.request.headers.get("Authorization") for c in idp.mock.calls if c.request.url == TOKEN_URL
    ] == [None]
