"""Issue 12 point 18: ``flask_mailoauth.testing`` lets a host's tests start from an authorized
account and fake the token endpoint, without copying the project's own helpers."""

from __future__ import annotations

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import testing
from flask_mailoauth.errors import AuthorizationFailed, NotConfigured, TokenRequestFailed
from flask_mailoauth.models import own_session
from flask_mailoauth.providers import registry
from flask_mailoauth.testing import seed_account, token_answer

from .oauth_fakes import GENERIC_CONFIG, FakeIdP

TOKEN_URL = "https://idp.example.test/token"


def test_a_seeded_account_serves_its_token_and_stores_it_encrypted(make_host, db_url):
    host = make_host(db_url=db_url)
    with host.app.app_context():
        seeded = seed_account("support")
        assert host.ext.access_token("support") == "test-access-token"
        with pytest.raises(NotConfigured):
            host.ext.access_token("support", "smtp")
        st = host.app.extensions["mailoauth"]
        with own_session(st.db) as s:
            raw = s.execute(sa.text("SELECT access_token, refresh_token FROM mailoauth_credential"))
            stored = b"".join(bytes(v) for v in raw.one())
    assert seeded.address == "support@example.test"
    assert b"test-access-token" not in stored
    assert b"test-refresh-token" not in stored


def test_a_due_token_is_refreshed_from_a_fake_token_answer(make_host, db_url):
    host = make_host(db_url=db_url)
    with (
        responses.RequestsMock() as idp,
        host.app.app_context(),
    ):
        idp.post(TOKEN_URL, json=token_answer("at-new", refresh_token="rt-new"))
        seed_account(
            "support",
            config={"token_endpoint": TOKEN_URL, "client_id": "app"},
            expires_in=0,  # expired: due
        )
        assert host.ext.access_token("support") == "at-new"
        assert "refresh_token=test-refresh-token" in idp.calls[0].request.body


def test_token_answer_leaves_out_what_is_none():
    assert token_answer("a", refresh_token=None, scope=None, id_token="x") == {
        "access_token": "a",
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": "x",
    }


# -- the provider author's API: the extension's own validator and token client ---------------

PLUGIN_CONFIG = {k.removeprefix("idp_"): v for k, v in GENERIC_CONFIG.items()}


@pytest.fixture
def fake_idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeIdP(mock)


def test_validate_id_token_checks_as_the_callback_does(fake_idp):
    provider = registry.get("generic")
    fake_idp.nonce = "n-1"
    claims = testing.validate_id_token(provider, PLUGIN_CONFIG, fake_idp.id_token(), nonce="n-1")
    assert claims["email"] == "support@example.test"
    with pytest.raises(AuthorizationFailed, match="nonce does not match"):
        testing.validate_id_token(provider, PLUGIN_CONFIG, fake_idp.id_token(), nonce="n-2")
    with pytest.raises(AuthorizationFailed, match="Invalid issuer"):
        testing.validate_id_token(
            provider, PLUGIN_CONFIG, fake_idp.id_token(iss="https://evil.test"), nonce="n-1"
        )
    without_openid = {**PLUGIN_CONFIG, "scopes": "email offline_access"}
    assert testing.validate_id_token(provider, without_openid, "not-even-a-jwt", nonce="") is None


def test_request_token_parses_an_answer_and_classifies_a_refusal(fake_idp):
    provider = registry.get("generic")
    grant = {"grant_type": "refresh_token", "refresh_token": "rt"}
    answer = testing.request_token(provider, PLUGIN_CONFIG, grant)
    assert answer.access_token
    assert answer.refresh_token == "refresh-token-1"
    fake_idp.mock.replace(responses.POST, TOKEN_URL, json={"error": "invalid_grant"}, status=400)
    with pytest.raises(TokenRequestFailed) as refused:
        testing.request_token(provider, PLUGIN_CONFIG, grant)
    assert (refused.value.failure.kind, refused.value.failure.code) == (
        "reauthorize",
        "invalid_grant",
    )
