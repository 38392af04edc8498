"""Google service accounts with domain-wide delegation (RFC 7523 JWT-bearer grant): the key
stored as the secret, the assertion naming the mailbox, no sign-in and no refresh token, and the
Admin console guidance on ``unauthorized_client``. Bad input runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import jwt
import pytest
import responses
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_mailoauth.providers import registry
from flask_mailoauth.providers.google import JWT_BEARER, ServiceAccountKey

from .flow_steps import HOST_PAGE, MODAL, banners, credentials, csrf

TOKEN_URL = "https://oauth2.googleapis.com/token"
CLIENT_ID = "104857600000000000001"
EMAIL = "helpdesk-mail@helpdesk-project.iam.gserviceaccount.com"
PRIVATE_KEY = rsa.generate_private_key(65537, 2048)
PEM = PRIVATE_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


def key_json(**changes: object) -> str:
    """A service account's JSON key as Google Cloud downloads it."""
    data = {
        "type": "service_account",
        "project_id": "helpdesk-project",
        "private_key_id": "kid-1",
        "private_key": PEM,
        "client_email": EMAIL,
        "client_id": CLIENT_ID,
        "token_uri": TOKEN_URL,
        **changes,
    }
    return json.dumps(data)


class GoogleTokenEndpoint:
    """Google's token endpoint for the JWT-bearer grant: records each request."""

    def __init__(self, mock: responses.RequestsMock) -> None:
        self.requests: list[tuple[dict[str, list[str]], str | None]] = []
        self.error: dict[str, str] | None = None
        self.issued = 0
        mock.add_callback(responses.POST, TOKEN_URL, callback=self.answer)

    def answer(self, request):
        self.requests.append((parse_qs(request.body), request.headers.get("Authorization")))
        if self.error:
            return 401, {"Content-Type": "application/json"}, json.dumps(self.error)
        self.issued += 1
        body = {"access_token": f"ya29.token-{self.issued}", "expires_in": 3599}
        body["token_type"] = "Bearer"
        return 200, {"Content-Type": "application/json"}, json.dumps(body)


@pytest.fixture
def google():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield GoogleTokenEndpoint(mock)


@pytest.fixture
def db_host(make_host, db_url):
    return make_host(db_url=db_url)


def save_service_account(client, secret: str | None = None, **fields):
    data = {
        "csrf_token": csrf(client, "google"),
        "provider": "google",
        "enabled": "1",
        "name": "support@example.test (mailbox)",
        "strict_matching": "y",
        "client_secret": key_json() if secret is None else secret,
        "idp_access": "service_account",
        "idp_client_id": CLIENT_ID,
        "idp_authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "idp_token_endpoint": TOKEN_URL,
        "idp_scopes": "openid email https://mail.google.com/",
        "idp_publishing_status": "production",
        **fields,
    }
    return client.post(MODAL, data=data, headers={"Referer": HOST_PAGE})


def test_google_offers_a_service_account_access():
    provider = registry.get("google")
    assert [c[0] for c in provider.field("access").choices] == ["delegated", "service_account"]
    config = {"access": "service_account", "client_id": CLIENT_ID, "scopes": "openid"}
    assert provider.scopes(config) == ["https://mail.google.com/"]
    config = provider.defaults() | config
    assert provider.validate(config, allow_insecure_http=False) == {}


def test_submit_fetches_the_first_token_with_a_signed_assertion_for_the_mailbox(host, google):
    client = host.app.test_client()
    response = save_service_account(client)
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/emails/support"  # nobody goes to Google
    assert ("success", "OAuth2 Authorization Successful.") in banners(client)
    ((form, authorization),) = google.requests
    assert authorization is None  # the assertion is the proof; no client secret anywhere
    assert set(form) == {"grant_type", "assertion"}
    assert form["grant_type"] == [JWT_BEARER]
    claims = jwt.decode(
        form["assertion"][0], PRIVATE_KEY.public_key(), algorithms=["RS256"], audience=TOKEN_URL
    )
    assert (claims["iss"], claims["sub"], claims["scope"]) == (
        EMAIL,
        "support@example.test",
        "https://mail.google.com/",
    )
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(form["assertion"][0])["kid"] == "kid-1"
    st = host.app.extensions["mailoauth"]
    with host.app.app_context():
        assert host.ext.access_token("support") == "ya29.token-1"
        cred = st.db.session.scalars(sa.select(st.models.Credential)).one()
        assert st.reveal(cred, "refresh_token") == ""
        account = st.db.session.scalars(sa.select(st.models.Account)).one()
        # the key is stored encrypted like every secret, and never shown again
        assert EMAIL not in str(account.client_secret)
        assert json.loads(st.reveal(account, "client_secret"))["client_email"] == EMAIL
    page = client.get(MODAL + "?tab=token").get_data(as_text=True)
    assert "BEGIN PRIVATE KEY" not in page
    assert EMAIL not in page
    assert "Token obtained for support@example.test without a sign-in" in page
    assert "Refresh Token</dt>" not in page  # there is none to show


def test_a_due_token_is_fetched_again_with_a_new_assertion(host, google):
    client = host.app.test_client()
    save_service_account(client)
    with host.app.app_context(), host.db.engine.begin() as conn:
        conn.execute(sa.text("update mailoauth_credential set expires_at = '2000-01-01 00:00:00'"))
    with host.app.app_context():
        assert host.ext.access_token("support") == "ya29.token-2"
    assert [f["grant_type"] for f, _ in google.requests] == [[JWT_BEARER]] * 2


def test_missing_domain_wide_delegation_names_the_client_id_and_scope(db_host, google):
    google.error = {
        "error": "unauthorized_client",
        "error_description": "Client is unauthorized to retrieve access tokens using this "
        "method, or client not authorized for any of the scopes requested.",
    }
    client = db_host.app.test_client()
    response = save_service_account(client)
    assert response.status_code == 303
    assert credentials(db_host) == []
    ((kind, text),) = banners(client)
    assert kind == "error"
    assert f"Add new with Client ID {CLIENT_ID} and OAuth scope https://mail.google.com/" in text
    with db_host.app.app_context(), db_host.db.engine.connect() as conn:
        codes = conn.execute(
            sa.text("select code from mailoauth_event where kind = 'authorization_failed'")
        ).scalars()
        assert list(codes) == ["unauthorized_client"]


@pytest.mark.parametrize(
    ("secret", "text"),
    [
        ("not json", "This is not a JSON key"),
        (key_json(type="authorized_user"), "This is not a service account key"),
        (key_json(private_key=""), "The key lacks private_key"),
        (
            key_json(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            "not a usable RSA key",
        ),
        (key_json(client_id="999"), "Client ID 999, not " + CLIENT_ID),
    ],
)
def test_a_bad_key_is_refused_and_nothing_is_stored(db_host, google, secret, text):
    client = db_host.app.test_client()
    response = save_service_account(client, secret=secret)
    assert response.status_code == 422
    assert text in response.get_data(as_text=True).replace("&#39;", "'")
    assert google.requests == []
    with db_host.app.app_context(), db_host.db.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from mailoauth_account")).scalar() == 0


def test_the_key_never_appears_in_a_repr():
    key = ServiceAccountKey.parse(key_json())
    assert "PRIVATE" not in repr(key)
    assert key.client_email in repr(key)


def test_a_key_that_no_longer_signs_is_a_banner_not_a_crash(host, google, monkeypatch):
    client = host.app.test_client()
    save_service_account(client)
    banners(client)  # read the first banner
    with client.session_transaction() as session:
        session.pop("_flashes", None)

    def broken(*args, **kwargs):
        raise ValueError("the stored key is damaged")

    monkeypatch.setattr(ServiceAccountKey, "parse", broken)
    response = client.post(MODAL + "/authorize", data={"csrf_token": csrf(client, "google")})
    assert response.status_code == 303
    ((kind, text),) = banners(client)
    assert kind == "error"
    assert "unexpected error occurred (ValueError)" in text
    assert "damaged" not in text  # an exception's words may quote a secret
