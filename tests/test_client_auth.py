"""Issue 15 point 5: how the client proves itself at the token endpoint is a choice (public
client, HTTP Basic, secret in the body), for the code exchange and the refresh alike."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import tokens
from flask_mailoauth.providers import registry
from flask_mailoauth.state import state
from flask_mailoauth.vocabulary import ClientAuth

from .flow_steps import MODAL, callback, save, start
from .oauth_fakes import CLIENT_ID, TOKEN_URL, FakeIdP


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeIdP(mock)


def token_requests(idp):
    """(Authorization header, parsed body) of every call to the token endpoint."""
    return [
        (call.request.headers.get("Authorization"), body)
        for call, body in zip(
            [c for c in idp.mock.calls if c.request.url == TOKEN_URL],
            idp.token_requests,
            strict=True,
        )
    ]


def authorize_and_refresh(host, idp, **fields):
    client = host.app.test_client()
    query = start(client, **fields)
    assert callback(client, idp, query).status_code == 303
    with host.app.app_context():
        tokens.refresh(state(), "support", "mailbox")
    exchange, refresh = token_requests(idp)
    assert exchange[1]["grant_type"] == ["authorization_code"]
    assert refresh[1]["grant_type"] == ["refresh_token"]
    return exchange, refresh


def stored(host):
    with host.app.app_context(), host.db.engine.connect() as conn:
        return conn.execute(sa.text("select config, client_secret from mailoauth_account")).all()


def test_a_public_client_needs_no_secret_and_sends_only_its_id(host, idp):
    for header, body in authorize_and_refresh(host, idp, client_auth="none", secret=""):
        assert header is None
        assert body["client_id"] == [CLIENT_ID]
        assert "client_secret" not in body
    exchange, _ = token_requests(idp)
    assert exchange[1]["code_verifier"]  # PKCE guards the public client's code
    [(config, secret)] = stored(host)
    assert '"client_auth": "none"' in config
    assert secret is None


def test_basic_auth_form_encodes_id_and_secret_and_keeps_them_out_of_the_body(host, idp):
    secret = "s3cr:t +/ü%"
    for header, body in authorize_and_refresh(
        host, idp, client_auth="client_secret_basic", secret=secret
    ):
        # RFC 6749 §2.3.1: each form-encoded, then joined by ":" and base64-encoded
        expected = f"{quote_plus(CLIENT_ID)}:{quote_plus(secret)}".encode()
        assert header == "Basic " + base64.b64encode(expected).decode()
        assert "client_id" not in body
        assert "client_secret" not in body


def test_secret_post_stays_the_default_for_accounts_saved_before_the_choice(host, idp):
    for header, body in authorize_and_refresh(host, idp):
        assert header is None
        assert body["client_id"] == [CLIENT_ID]
        assert body["client_secret"] == ["client-secret-1"]
    provider = registry.get("generic")
    assert provider.client_auth({}) == ClientAuth.SECRET_POST


def test_the_select_offers_what_the_provider_and_its_idp_support(host):
    client = host.app.test_client()
    page = client.get(f"{MODAL}?provider=generic").get_data(as_text=True)
    assert 'name="client_auth"' in page
    for method in ("client_secret_post", "client_secret_basic", "none"):
        assert f'value="{method}"' in page
    save(client, client_auth="client_secret_basic", idp_token_auth_methods="client_secret_basic")
    page = client.get(f"{MODAL}?provider=generic").get_data(as_text=True)
    assert 'selected value="client_secret_basic"' in page
    assert 'value="none"' not in page
    assert 'value="client_secret_post"' not in page


@pytest.mark.parametrize(
    ("provider", "declared", "sha1"),
    [
        ("microsoft", ("client_secret_post", "private_key_jwt"), True),
        ("google", ("client_secret_post", "client_secret_basic"), False),
        (
            "generic",
            ("client_secret_post", "client_secret_basic", "none", "private_key_jwt"),
            False,
        ),
    ],
)
def test_each_provider_declares_its_client_authentications(provider, declared, sha1):
    chosen = registry.get(provider)
    assert tuple(chosen.client_auths) == declared
    assert chosen.client_auth({}) == ClientAuth.SECRET_POST
    assert chosen.certificate_sha1_header is sha1


def test_generic_discovery_offers_what_both_sides_support(host):
    generic = registry.get("generic")
    listed = {"token_auth_methods": "private_key_jwt tls_client_auth client_secret_basic"}
    assert generic.client_auth_choices(listed) == (
        ClientAuth.SECRET_BASIC,
        ClientAuth.PRIVATE_KEY_JWT,
    )
    assert generic.client_auth(listed) == ClientAuth.SECRET_BASIC
    assert generic.client_auth({**listed, "client_auth": "none"}) == ClientAuth.SECRET_BASIC
    assert generic.client_auth_choices({}) == generic.client_auths


def test_the_untouched_default_follows_what_discovery_learnt(host):
    # a new account's select shows every method, secret post preselected; this save learns
    # that the IdP takes Basic only: the default the admin left alone becomes Basic
    client = host.app.test_client()
    response = save(
        client, client_auth="client_secret_post", idp_token_auth_methods="client_secret_basic"
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    [(config, _)] = stored(host)
    assert '"client_auth": "client_secret_basic"' in config


def test_a_provider_with_one_method_shows_no_select():
    class OneWay(type(registry.get("generic"))):
        client_auths = (ClientAuth.SECRET_POST,)

    assert OneWay().client_auth_choices({}) == (ClientAuth.SECRET_POST,)


def test_changing_the_client_authentication_keeps_the_grant(host, idp):
    client = host.app.test_client()
    query = start(client, secret="s1")
    assert callback(client, idp, query).status_code == 303
    response = save(client, client_auth="client_secret_basic", secret="")
    assert response.status_code == 303
    assert not response.headers["Location"].startswith("https://idp.example.test")
    page = client.get(f"{MODAL}?tab=token").get_data(as_text=True)
    assert "the current token stays valid" in page


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"client_auth": "client_secret_jwt"},
            "client_auth",
            "does not accept client_secret_jwt here",
        ),
        (
            {"client_auth": "none", "idp_token_auth_methods": "client_secret_basic"},
            "client_auth",
            "does not accept none here; choose one of: client_secret_basic",
        ),
        ({"client_auth": "client_secret_basic", "secret": ""}, "client_secret", "is required"),
        (
            {"idp_token_auth_methods": "tls_client_auth client_secret_jwt"},
            "idp_token_auth_methods",
            "accepts none of the client authentications",
        ),
    ],
    ids=["unsupported", "not-accepted-by-the-idp", "secret-missing", "nothing-in-common"],
)
def test_bad_client_authentication_is_refused_and_nothing_is_stored(
    make_host, db_url, fields, field, message
):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    response = save(client, **fields)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = page.split(f'id="mailoauth-{field}-error"', 1)[1].split("</div>", 1)[0]
    assert message in error
    assert stored(host) == []
