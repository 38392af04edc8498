"""Save, authorize and callback, branch by branch: every failure leaves the credentials alone."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
import responses
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_mailoauth import flow, signals
from flask_mailoauth.providers import registry

from .flow_steps import (
    HOST_PAGE,
    MODAL,
    banners,
    callback,
    credentials,
    csrf,
    reauthorize,
    save,
    start,
)
from .oauth_fakes import AUTHORIZE_URL, CLIENT_ID, GENERIC_CONFIG, TOKEN_URL, FakeIdP


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeIdP(mock)


@pytest.fixture
def client(host):
    return host.app.test_client()


def authorized(client, idp, host):
    query = start(client)
    response = callback(client, idp, query)
    assert response.status_code == 303
    assert credentials(host)
    return query


# -- the happy path ---------------------------------------------------------------------------


def test_save_authorize_callback_stores_encrypted_credentials(client, idp, host):
    received = []
    signals.authorized.connect(lambda sender, **kw: received.append(kw), weak=False)
    query = start(client)
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == "http://localhost/mailoauth/callback"
    assert query["code_challenge_method"] == "S256"
    assert query["login_hint"] == "support@example.test"
    assert query["scope"] == "openid email offline_access"
    assert len(query["state"]) >= 43
    assert query["nonce"]

    response = callback(client, idp, query)
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/emails/support"
    assert ("success", "OAuth2 Authorization Successful.") in banners(client)

    sent = idp.token_requests[-1]
    assert sent["grant_type"] == ["authorization_code"]
    assert sent["redirect_uri"] == ["http://localhost/mailoauth/callback"]
    verifier = sent["code_verifier"][0]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert digest.decode() == query["code_challenge"]
    assert received[-1]["key"] == "support"

    rows = credentials(host)
    assert len(rows) == 1
    dump = repr(rows)
    for secret in ("access-token-1", "refresh-token-1", "client-secret-1", verifier):
        assert secret not in dump

    page = client.get(MODAL).get_data(as_text=True)
    assert 'id="mailoauth-tab-token"' in page
    assert "support@example.test" in page
    assert "ac************" in page
    assert "access-token-1" not in page
    assert "refresh-token-1" not in page
    assert "client-secret-1" not in page


def test_pending_authorization_is_stored_encrypted_and_bound(client, idp, host):
    start(client)
    with host.app.app_context(), host.db.engine.connect() as conn:
        row = conn.execute(sa.text("select * from mailoauth_pending")).mappings().one()
    assert row["session_id"]
    assert b"code_verifier" not in bytes(row["code_verifier"])
    assert idp.token_requests == []


def test_secret_rotation_needs_no_new_consent_but_client_id_change_does(client, idp, host):
    authorized(client, idp, host)
    before = credentials(host)
    response = save(client, secret="client-secret-2")
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/emails/support"
    assert ("success", "Successfully updated.") in banners(client)
    assert credentials(host) == before
    response = save(client, secret="", idp_client_id="another-app")
    assert response.headers["Location"].startswith(AUTHORIZE_URL)


def test_blank_secret_keeps_the_stored_one(client, idp, host):
    authorized(client, idp, host)
    save(client, secret="")
    query = reauthorize(client)
    callback(client, idp, query)
    assert idp.token_requests[-1]["client_secret"] == ["client-secret-1"]


def test_scripted_save_answers_json_and_fragments(client, idp):
    headers = {"X-Requested-With": "mailoauth", "Referer": HOST_PAGE}
    data = {
        "csrf_token": csrf(client),
        "provider": "generic",
        "enabled": "1",
        "name": "n",
        "client_secret": "s",
        **GENERIC_CONFIG,
    }
    ok = client.post(MODAL, data=data, headers=headers)
    assert ok.is_json
    assert ok.json["redirect"].startswith(AUTHORIZE_URL)
    bad = client.post(MODAL, data={**data, "idp_token_endpoint": "ftp://x"}, headers=headers)
    assert bad.status_code == 422
    assert "<html" not in bad.get_data(as_text=True)
    assert "Enter a full URL" in bad.get_data(as_text=True)


def test_delegate_may_authorize_a_shared_mailbox_with_strict_matching_off(client, idp, host):
    idp.email = "delegate@example.test"
    query = start(client, strict_matching=None)
    response = callback(client, idp, query)
    assert ("success", "OAuth2 Authorization Successful.") in banners(client), banners(client)
    assert response.status_code == 303
    page = client.get(MODAL).get_data(as_text=True)
    assert "delegate@example.test" in page
    assert "on behalf of support@example.test" in page


def test_token_can_be_deleted_and_the_signal_fires(client, idp, host):
    authorized(client, idp, host)
    deleted = []
    signals.token_deleted.connect(lambda sender, **kw: deleted.append(kw), weak=False)
    response = client.post(f"{MODAL}/delete", data={"csrf_token": csrf(client)})
    assert response.status_code == 303
    assert credentials(host) == []
    assert deleted[-1] == {"key": "support", "purpose": "mailbox"}


def test_microsoft_walkthrough_reads_identity_from_the_id_token(client, host):
    tid = "9188040d-6c67-4c5b-b112-36a304b66dad"
    base = "https://login.microsoftonline.com"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(
            mock,
            issuer=f"{base}/{tid}/v2.0",
            token_url=f"{base}/common/oauth2/v2.0/token",
            jwks_url=f"{base}/common/discovery/v2.0/keys",
            id_token_claims={
                "preferred_username": "Support@Example.test",
                "tid": tid,
                "oid": "oid-1",
                "email": None,
            },
            # Microsoft lists the resource scopes it granted: no offline_access, no OIDC scopes
            answer={"scope": "https://outlook.office.com/IMAP.AccessAsUser.All"},
        )
        response = save(
            client,
            provider="microsoft",
            idp_cloud="global",
            idp_tenant="common",
            idp_authorization_endpoint=f"{base}/common/oauth2/v2.0/authorize",
            idp_token_endpoint=f"{base}/common/oauth2/v2.0/token",
            idp_scopes="offline_access openid profile email "
            "https://outlook.office.com/IMAP.AccessAsUser.All",
        )
        assert response.status_code == 303, response.get_data(as_text=True)
        query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
        assert query["prompt"] == "select_account"
        callback(client, idp, query)
        assert ("success", "OAuth2 Authorization Successful.") in banners(client), banners(client)
        assert idp.token_requests[-1]["grant_type"] == ["authorization_code"]
        assert all("api/v2.0" not in call.request.url for call in mock.calls)
    page = client.get(MODAL).get_data(as_text=True)
    assert tid in page
    assert "oid-1" in page


def test_without_openid_no_nonce_is_sent_and_the_identity_comes_from_userinfo(client, idp, host):
    userinfo = "https://idp.example.test/userinfo"
    idp.mock.get(
        userinfo, json={"sub": "u1", "email": "support@example.test", "email_verified": True}
    )
    query = start(client, idp_scopes="email offline_access", idp_userinfo_endpoint=userinfo)
    assert query["scope"] == "email offline_access"
    assert "nonce" not in query  # an OpenID Connect server refuses a nonce without openid
    # the fake still answers with an id_token (carrying no nonce): unbound, it is ignored
    response = callback(client, idp, query)
    assert response.status_code == 303
    assert ("success", "OAuth2 Authorization Successful.") in banners(client), banners(client)
    assert credentials(host)


# -- every failure: a clear banner, the old credentials untouched ------------------------------


def failing(client, idp, host):
    """Authorize once, then start a second authorization; returns its query and the snapshot."""
    authorized(client, idp, host)
    before = credentials(host)
    banners(client)
    with client.session_transaction() as session:
        session.pop("_flashes", None)
    return reauthorize(client), before


def assert_refused(client, host, before, response, text):
    assert response.status_code in (303, 400)
    assert credentials(host) == before
    if response.status_code == 400:
        assert text in response.get_data(as_text=True)
    else:
        messages = [m for c, m in banners(client) if c == "error"]
        assert any(text in m for m in messages), messages


@pytest.mark.parametrize(
    ("name", "mutate", "text"),
    [
        ("missing state", lambda q: {"state": None}, "carries no state"),
        ("unknown state", lambda q: {"state": "forged"}, "unknown or was already used"),
        ("access_denied", lambda q: {"error": "access_denied", "code": None}, "access_denied"),
        (
            "AADSTS error",
            lambda q: {
                "error": "invalid_client",
                "code": None,
                "error_description": "AADSTS7000215: Invalid client secret",
            },
            "secret",
        ),
        ("wrong iss", lambda q: {"iss": "https://evil.example.test"}, "RFC 9207"),
        ("no code", lambda q: {"code": None}, "no authorization code"),
    ],
)
def test_bad_callbacks_are_refused(client, idp, host, name, mutate, text):
    query, before = failing(client, idp, host)
    response = callback(client, idp, query, **mutate(query))
    assert_refused(client, host, before, response, text)


def test_reused_state_is_refused(client, idp, host):
    query, before = failing(client, idp, host)
    callback(client, idp, query)
    after = credentials(host)
    assert after != before
    response = callback(client, idp, query)
    assert_refused(client, host, after, response, "already used")


def test_expired_state_is_refused(client, idp, host, time_machine):
    time_machine.move_to(datetime.now(UTC), tick=True)
    query, before = failing(client, idp, host)
    time_machine.shift(601)
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, "expired")


def test_state_from_another_session_is_refused(client, idp, host):
    query, before = failing(client, idp, host)
    other = host.app.test_client()
    response = callback(other, idp, query)
    assert response.status_code == 303
    assert credentials(host) == before
    assert any("another browser session" in m for _, m in banners(other))


@pytest.mark.parametrize(
    ("name", "setup", "text"),
    [
        (
            "bad signature",
            lambda idp: setattr(idp, "signing_key", rsa.generate_private_key(65537, 2048)),
            "could not be verified",
        ),
        ("wrong nonce", lambda idp: setattr(idp, "nonce_override", "other"), "nonce"),
        (
            "wrong audience",
            lambda idp: setattr(idp, "audience", "someone-else"),
            "could not be verified",
        ),
        (
            "expired id_token",
            lambda idp: idp.id_token_claims.update(exp=1, iat=0),
            "could not be verified",
        ),
        (
            "wrong issuer",
            lambda idp: setattr(idp, "issuer", "https://other.example.test"),
            "could not be verified",
        ),
        (
            "identity mismatch",
            lambda idp: setattr(idp, "email", "someone@example.test"),
            "Strict Matching: expected authorization for support@example.test, not someone@",
        ),
        (
            "no refresh token",
            lambda idp: setattr(idp, "refresh_token", None),
            "Unable to obtain a refresh token: is offline_access granted?",
        ),
    ],
)
def test_bad_tokens_are_refused(client, idp, host, name, setup, text):
    query, before = failing(client, idp, host)
    setup(idp)
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, text)


@pytest.mark.parametrize(
    ("status", "body", "text"),
    [
        (400, {"error": "invalid_grant", "error_description": "code expired"}, "invalid_grant"),
        (500, {"error": "server_error"}, "HTTP 500"),
        (200, "not json at all", "refused the code exchange"),
        (None, None, "could not be reached"),
    ],
)
def test_token_endpoint_failures_are_refused(client, idp, host, status, body, text):
    query, before = failing(client, idp, host)
    idp.mock.remove(responses.POST, TOKEN_URL)
    if status is None:
        idp.mock.post(TOKEN_URL, body=requests.ConnectTimeout("timed out"))
    elif isinstance(body, dict):
        idp.mock.post(TOKEN_URL, json=body, status=status)
    else:
        idp.mock.post(TOKEN_URL, body=body, status=status)
    response = callback(client, idp, query)
    assert_refused(client, host, before, response, text)


def test_idp_error_text_is_escaped(client, idp, host):
    query, before = failing(client, idp, host)
    callback(
        client,
        idp,
        query,
        error="access_denied",
        code=None,
        error_description="<script>alert(1)</script>",
    )
    page = client.get(f"{MODAL}?provider=generic").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    host.app.jinja_env.globals["flashes"] = None
    with host.app.test_request_context():
        from flask import render_template_string

        html = render_template_string("{{ m }}", m="<script>alert(1)</script>")
    assert "&lt;script&gt;" in html
    assert credentials(host) == before


# -- save: validation and protection ------------------------------------------------------------


def test_invalid_input_is_reported_per_field_and_changes_nothing(client, idp, host):
    authorized(client, idp, host)
    before = credentials(host)
    response = save(client, idp_token_endpoint="http://idp.example.test/token", idp_client_id="")
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "Client ID is required." in page
    assert "must use https://" in page
    assert credentials(host) == before
    assert client.get(MODAL).get_data(as_text=True).count(CLIENT_ID) >= 1


def test_name_must_be_unique(client, idp, host):
    host.mailboxes["sales"] = type(host.mailboxes["support"])(address="sales@example.test")
    start(client)
    page = client.get("/mailoauth/sales/mailbox?provider=generic").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post(
        "/mailoauth/sales/mailbox",
        data={
            "csrf_token": token,
            "provider": "generic",
            "enabled": "1",
            "name": "support@example.test (mailbox)",
            "client_secret": "x",
            **GENERIC_CONFIG,
        },
    )
    assert response.status_code == 422
    assert "already used by another account" in response.get_data(as_text=True)


def test_a_new_account_needs_a_client_secret(client):
    response = save(client, secret="")
    assert response.status_code == 422
    assert "Client Secret is required" in response.get_data(as_text=True)


def test_mixed_graph_and_outlook_scopes_are_refused_in_the_modal(client):
    response = save(
        client,
        provider="microsoft",
        idp_client_id="x",
        idp_authorization_endpoint="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        idp_token_endpoint="https://login.microsoftonline.com/common/oauth2/v2.0/token",
        idp_scopes="offline_access User.Read https://outlook.office.com/IMAP.AccessAsUser.All",
        idp_cloud="global",
        idp_tenant="common",
    )
    assert response.status_code == 422
    assert "one audience" in response.get_data(as_text=True).lower()


def test_post_without_csrf_is_refused_and_changes_nothing(client, idp, host):
    authorized(client, idp, host)
    before = credentials(host)
    for url in (MODAL, f"{MODAL}/delete", f"{MODAL}/authorize"):
        response = client.post(url, data={"client_secret": "x", **GENERIC_CONFIG})
        assert response.status_code in (400, 422)
    assert credentials(host) == before


def test_unknown_mailbox_and_purpose_are_404(client):
    assert client.get("/mailoauth/nope/mailbox").status_code == 404
    assert client.get("/mailoauth/support/fax").status_code == 404


def test_unknown_provider_is_400(client):
    assert client.get(f"{MODAL}?provider=nope").status_code == 400


def test_foreign_referer_is_not_a_return_url(client, idp, host):
    data = {
        "csrf_token": csrf(client),
        "provider": "generic",
        "enabled": "1",
        "name": "n",
        "client_secret": "s",
        "strict_matching": "y",
        **GENERIC_CONFIG,
    }
    response = client.post(MODAL, data=data, headers={"Referer": "https://evil.example/x"})
    query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    assert callback(client, idp, query).headers["Location"] == "/"


def test_account_page_hook_decides_where_the_admin_lands(client, idp, host):
    host.ext.account_page(lambda key, purpose: f"/admin/emails/{key}#{purpose}")
    query = start(client)
    assert callback(client, idp, query).headers["Location"] == "/admin/emails/support#mailbox"


def test_callback_url_honours_the_configured_one_and_proxyfix(make_host):
    from werkzeug.middleware.proxy_fix import ProxyFix

    h = make_host()
    h.app.wsgi_app = ProxyFix(h.app.wsgi_app, x_proto=1, x_host=1)
    page = (
        h.app.test_client()
        .get(MODAL, headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "help.example.org"})
        .get_data(as_text=True)
    )
    assert 'value="https://help.example.org/mailoauth/callback"' in page
    h2 = make_host(MAILOAUTH_CALLBACK_URL="https://desk.example.org/oauth/cb")
    assert "https://desk.example.org/oauth/cb" in h2.app.test_client().get(MODAL).get_data(
        as_text=True
    )


def test_modal_has_the_walkthrough_fields(client):
    page = client.get(f"{MODAL}?provider=microsoft").get_data(as_text=True)
    order = ["Callback Endpoint", "Client ID", "Authorization Endpoint", "Token Endpoint"]
    positions = [page.index(label) for label in order]
    assert positions == sorted(positions)
    assert 'type="password"' in page
    assert "https://login.microsoftonline.com/common/oauth2/v2.0/authorize" in page
    assert (
        '<input aria-describedby="mailoauth-strict-help" checked id="mailoauth-strict_matching" '
        'name="strict_matching" type="checkbox"'
    ) in page
    assert "support@example.test (mailbox)" in page
    assert "Delete Token" not in page
    for label in re.findall(r'<label for="([^"]+)"', page):
        assert f'id="{label}"' in page


def test_the_modal_assets_are_served(client):
    page = client.get(MODAL).get_data(as_text=True)
    assets = re.findall(r'(?:href|src)="(/mailoauth/static/[^"]+)"', page)
    assert len(assets) == 2
    for asset in assets:
        with client.get(asset) as response:
            assert response.status_code == 200, asset


def test_no_secret_reaches_the_logs(client, idp, host, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        query = start(client)
        callback(client, idp, query)
        idp.lifetime = 10
        query = reauthorize(client)
        callback(client, idp, query)
        with host.app.app_context():
            host.ext.refresh("support")
    verifier = idp.token_requests[-2]["code_verifier"][0]
    text = caplog.text
    for secret in (
        "client-secret-1",
        "refresh-token-1",
        "access-token-1",
        "access-token-3",
        verifier,
        query["state"],
        "the-code",
    ):
        assert secret not in text


def test_the_host_can_override_the_templates(make_host, tmp_path):
    folder = tmp_path / "host-templates" / "mailoauth"
    folder.mkdir(parents=True)
    (folder / "config_button.html").write_text("<button>Configure {{ key }}</button>")
    h = make_host()
    h.app.template_folder = str(tmp_path / "host-templates")
    with h.app.test_request_context():
        from flask import render_template_string

        html = render_template_string('{{ mailoauth_config_button("support", "mailbox") }}')
    assert html == "<button>Configure support</button>"


def test_the_modal_works_when_the_host_turns_csrf_off(make_host, idp):
    h = make_host(WTF_CSRF_ENABLED=False)
    client = h.app.test_client()
    assert client.get(MODAL).status_code == 200
    data = {
        "provider": "generic",
        "enabled": "1",
        "name": "n",
        "client_secret": "s",
        **GENERIC_CONFIG,
    }
    assert client.post(MODAL, data=data).status_code == 303
    assert client.post(f"{MODAL}/delete", data={}).status_code == 303


def test_discovered_endpoints_must_be_https_too(client):
    with responses.RequestsMock() as mock:
        mock.get(
            "https://idp.example.test/.well-known/openid-configuration",
            json={
                "issuer": "https://idp.example.test",
                "authorization_endpoint": "https://idp.example.test/authorize",
                "token_endpoint": "http://idp.example.test/token",
                "jwks_uri": "https://idp.example.test/jwks",
            },
        )
        response = save(
            client, idp_authorization_endpoint="", idp_token_endpoint="", idp_jwks_uri=""
        )
    assert response.status_code == 422
    assert "must use https://" in response.get_data(as_text=True)


def test_the_submitted_secret_is_not_in_the_inputs_repr():
    from flask_mailoauth.accounts import AccountInput

    data = AccountInput("generic", True, "n", True, "", {}, "S3CRET-VALUE", None)
    assert "S3CRET-VALUE" not in repr(data)


def test_a_pending_authorization_under_a_removed_key_asks_to_start_again(make_host, idp, tmp_path):
    from flask_mailoauth.crypto import generate_key

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    old = make_host(db_url=url)
    query = start(old.app.test_client())
    new = make_host(db_url=url, MAILOAUTH_ENCRYPTION_KEYS=[generate_key()])
    response = new.app.test_client().get(
        "/mailoauth/callback?" + urlencode({"code": "c", "state": query["state"]})
    )
    assert response.status_code == 400
    assert "Start again from the Config button." in response.get_data(as_text=True)


# -- hostile answers on the callback: a banner, never a 500, on SQLite and PostgreSQL ----------


def _jwt(**claims):
    """An access token that is a JWT with these claims (its signature is never checked)."""
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


HOSTILE_CALLBACKS = {
    "huge exp": lambda idp: idp.answer.update(access_token=_jwt(exp=10**400, iat=10**400)),
    "huge negative iat": lambda idp: idp.answer.update(access_token=_jwt(iat=-(10**400))),
    "aud of numbers": lambda idp: idp.answer.update(access_token=_jwt(aud=[1, 2])),
    "aud of lists": lambda idp: idp.answer.update(access_token=_jwt(aud=[["x"]])),
}


@pytest.mark.parametrize("setup", HOSTILE_CALLBACKS.values(), ids=HOSTILE_CALLBACKS.keys())
def test_hostile_access_token_claims_never_cost_a_500(make_host, db_url, setup):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        setup(idp)
        response = callback(client, idp, start(client))
    assert response.status_code == 303
    assert [c for c, _ in banners(client)] == ["success"]
    with host.app.app_context():
        assert host.ext.access_token("support").startswith("ey")


@pytest.mark.parametrize("body", [[1], "keys", 3, None, {"keys": "x"}], ids=repr)
def test_a_jwks_that_is_not_a_json_object_is_a_banner(make_host, db_url, body):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        mock.replace(responses.GET, idp.jwks_url, json=body)
        response = callback(client, idp, start(client))
    assert response.status_code == 303
    assert credentials(host) == []
    ((category, message),) = banners(client)
    assert category == "error"
    assert "signing keys (JWKS) could not be fetched" in message


def test_an_unexpected_exception_is_a_banner_logged_by_its_type_only(
    make_host, db_url, monkeypatch, caplog
):
    host = make_host(db_url=db_url)
    client = host.app.test_client()

    def broken(*args, **kwargs):
        raise KeyError("quoted-secret-value")

    monkeypatch.setattr(registry.get("generic"), "identity", broken)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        response = callback(client, idp, start(client))
    assert response.status_code == 303
    assert credentials(host) == []
    ((category, message),) = banners(client)
    assert category == "error"
    assert "unexpected error occurred (KeyError)" in message
    assert "quoted-secret-value" not in message + caplog.text
    assert "Unexpected KeyError" in caplog.text


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, {}), (200, {"access_token": "at", "expires_in": "abc"}), (503, {"error": "x"})],
    ids=["no access_token", "malformed", "server error"],
)
def test_a_failed_code_exchange_never_promises_a_retry(make_host, db_url, status, body):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        query = start(client)
        mock.replace(responses.POST, TOKEN_URL, json=body, status=status)
        response = callback(client, idp, query)
    assert response.status_code == 303
    ((category, message),) = banners(client)
    assert category == "error"
    assert "HTTP 502" not in message
    assert "retried" not in message
    assert "retries" not in message
    assert "Start again from the Config button" in message


def test_the_code_exchange_has_a_total_deadline(make_host, db_url, monkeypatch):
    host = make_host(db_url=db_url, MAILOAUTH_HTTP_TIMEOUT=4)
    client = host.app.test_client()
    seen = {}
    real = flow.request_token

    def watching(*args, **kwargs):
        seen["deadline"] = kwargs.get("deadline")
        return real(*args, **kwargs)

    monkeypatch.setattr(flow, "request_token", watching)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        assert callback(client, idp, start(client)).status_code == 303
    assert seen["deadline"] == 8


def test_a_microsoft_callback_error_gets_the_guidance_of_its_aadsts_code(make_host, db_url):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    base = "https://login.microsoftonline.com/common/oauth2/v2.0"
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        response = save(
            client,
            provider="microsoft",
            idp_cloud="global",
            idp_tenant="common",
            idp_authorization_endpoint=f"{base}/authorize",
            idp_token_endpoint=f"{base}/token",
            idp_scopes="offline_access openid email https://outlook.office.com/IMAP.AccessAsUser.All",
        )
        assert response.status_code == 303, response.get_data(as_text=True)
        state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
        description = (
            "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: "
            "0a1b2c3d-0000-4e5f-9a8b-112233445566\r\nCorrelation ID: "
            "9f8e7d6c-1111-4a2b-8c3d-aabbccddeeff\r\nTimestamp: 2026-12-01 05:40:11Z"
        )
        query = {"state": state, "error": "invalid_client", "error_description": description}
        response = client.get("/mailoauth/callback?" + urlencode(query))
    assert response.status_code == 303
    ((category, message),) = banners(client)
    assert category == "error"
    assert "paste the secret's Value, not its Secret ID" in message
    with host.app.app_context(), host.db.engine.connect() as conn:
        codes = conn.execute(sa.text("select kind, code from mailoauth_event")).all()
        event = host.app.extensions["mailoauth"].models.Event.__table__
        (kept,) = conn.execute(
            sa.select(event.c.diagnostics).where(event.c.kind == "authorization_failed")
        ).one()
    assert ("authorization_failed", "AADSTS7000215") in [tuple(c) for c in codes]
    assert kept == {
        "trace_id": "0a1b2c3d-0000-4e5f-9a8b-112233445566",
        "correlation_id": "9f8e7d6c-1111-4a2b-8c3d-aabbccddeeff",
        "timestamp": "2026-12-01 05:40:11Z",
    }
    assert credentials(host) == []


#: what an old or tampered cookie may hold where the session binding id belongs
ODD_BINDINGS = [12345, None, "ü" * 43, ["x"], {"a": 1}, "x" * 100, "", "a b" * 15]


@pytest.mark.parametrize("value", ODD_BINDINGS, ids=repr)
def test_a_tampered_session_binding_reads_as_another_browser_session(make_host, db_url, value):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        query = start(client)
        with client.session_transaction() as session:
            session[flow.SESSION_KEY] = value
        response = callback(client, idp, query)
    assert response.status_code == 303
    assert credentials(host) == []
    ((category, message),) = banners(client)
    assert category == "error"
    assert "This sign-in was started in another browser session." in message


@pytest.mark.parametrize("value", ODD_BINDINGS, ids=repr)
def test_an_old_session_binding_is_replaced_when_an_authorization_starts(make_host, db_url, value):
    host = make_host(db_url=db_url)
    client = host.app.test_client()
    with client.session_transaction() as session:
        session[flow.SESSION_KEY] = value
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = FakeIdP(mock)
        response = callback(client, idp, start(client))
    assert response.status_code == 303
    assert banners(client) == [("success", "OAuth2 Authorization Successful.")]
    with client.session_transaction() as session:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session[flow.SESSION_KEY])


def test_the_callback_records_keep_their_secrets_out_of_the_repr():
    pending = flow.PendingAuthorization(
        account_id=1,
        key="support",
        purpose="mailbox",
        nonce="n",
        redirect_uri="https://helpdesk.example.test/mailoauth/callback",
        return_url="/",
        expires_at=datetime.now(UTC),
        session_id="SESSION-BINDING",
        verifier="PKCE-VERIFIER",
    )
    account = flow.AccountSnapshot(
        id=1,
        key="support",
        purpose="mailbox",
        address="support@example.test",
        provider=registry.get("generic"),
        config=GENERIC_CONFIG,
        strict_matching=True,
        client_secret="CLIENT-SECRET",
    )
    shown = repr(pending) + repr(account)
    for secret in ("SESSION-BINDING", "PKCE-VERIFIER", "CLIENT-SECRET"):
        assert secret not in shown
    assert "support" in shown
