"""Issue 12 point 18: ``flask_mailoauth.testing`` lets a host's tests start from an authorized
account and fake the token endpoint, without copying the project's own helpers."""

from __future__ import annotations

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth.errors import NotConfigured
from flask_mailoauth.models import own_session
from flask_mailoauth.testing import seed_account, token_answer

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
