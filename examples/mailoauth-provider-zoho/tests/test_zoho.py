"""The Zoho Mail provider plugin: fields, endpoints, identity, servers, errors, entry point.

Self-contained (no conftest, no network): the package must be installed (``pip install -e``)
so that its entry point is visible to ``importlib.metadata``.
"""

from __future__ import annotations

import json
import re
import time
from importlib.metadata import distribution, entry_points
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from mailoauth_provider_zoho import DATA_CENTERS, ZohoProvider

from flask_mailoauth import MailboxSettings, MailOAuth, testing
from flask_mailoauth.crypto import generate_key
from flask_mailoauth.errors import AuthorizationFailed, TokenRequestFailed
from flask_mailoauth.models import utcnow
from flask_mailoauth.providers import ComplianceHooks, check_endpoint_url, registry
from flask_mailoauth.vocabulary import AccessKind, ClientAuth

ACCOUNTS = {
    "com": "https://accounts.zoho.com",
    "eu": "https://accounts.zoho.eu",
    "in": "https://accounts.zoho.in",
    "com.au": "https://accounts.zoho.com.au",
    "jp": "https://accounts.zoho.jp",
    "ca": "https://accounts.zohocloud.ca",
    "sa": "https://accounts.zoho.sa",
}
CLIENT_ID = "1000.ABCDEFGHIJKLMNOPQRSTUVWXYZ0123"


@pytest.fixture
def provider() -> ZohoProvider:
    return ZohoProvider()


@pytest.fixture
def config(provider) -> dict[str, str]:
    return {**provider.defaults(), "client_id": CLIENT_ID}


# --- entry point -----------------------------------------------------------------------------


def test_the_distribution_declares_the_entry_point():
    (found,) = [e for e in entry_points(group=registry.ENTRY_POINT_GROUP) if e.name == "zoho"]
    assert found.value == "mailoauth_provider_zoho:ZohoProvider"
    assert found.dist is not None
    assert found.dist.name == "mailoauth-provider-zoho"
    assert distribution("mailoauth-provider-zoho").version == "0.1.0"


def test_the_registry_loads_it_from_the_entry_point():
    assert "zoho" in registry.reload_plugins()
    zoho = registry.get("zoho")
    assert type(zoho) is ZohoProvider
    ids = [p.id for p in registry.all()]
    assert ids[: len(registry.BUILTIN_IDS)] == list(registry.BUILTIN_IDS)
    assert ids.index("zoho") >= len(registry.BUILTIN_IDS)
    assert "OAuth2 - Zoho Mail" in [p.display_name for p in registry.all()]


# --- fields and validation -------------------------------------------------------------------


def test_it_declares_delegated_access_and_the_secret_in_the_body(provider):
    assert provider.access_kinds == (AccessKind.DELEGATED,)
    assert provider.client_auths == (ClientAuth.SECRET_POST,)
    # whatever a stored config says, Zoho gets what it takes
    assert provider.access({"access": "application"}) == AccessKind.DELEGATED
    assert provider.client_auth({"client_auth": "none"}) == ClientAuth.SECRET_POST
    assert provider.client_auth_choices({}) == (ClientAuth.SECRET_POST,)


def test_fields_and_defaults(provider):
    assert (provider.id, provider.display_name) == ("zoho", "OAuth2 - Zoho Mail")
    assert provider.defaults() == {
        "client_id": "",
        "data_center": "com",
        "account_type": "organization",
        "scopes": "openid email ZOHOMAIL.PROTOCOL.IMAP ZOHOMAIL.PROTOCOL.POP",
    }
    data_center = provider.field("data_center")
    assert data_center.kind == "select"
    assert data_center.signed, "another data center is another IdP: the grant must be redone"
    assert dict(data_center.choices) == {
        "com": "United States (accounts.zoho.com)",
        "eu": "Europe (accounts.zoho.eu)",
        "in": "India (accounts.zoho.in)",
        "com.au": "Australia (accounts.zoho.com.au)",
        "jp": "Japan (accounts.zoho.jp)",
        "ca": "Canada (accounts.zohocloud.ca)",
        "sa": "Saudi Arabia (accounts.zoho.sa)",
    }
    account_type = provider.field("account_type")
    assert set(dict(account_type.choices)) == {"organization", "personal"}
    assert not account_type.signed, "the servers do not change the grant"
    assert provider.field("client_id").required


@pytest.mark.parametrize("dc", list(ACCOUNTS))
def test_defaults_are_valid_in_every_data_center(provider, config, dc):
    assert provider.validate({**config, "data_center": dc}, allow_insecure_http=False) == {}


def test_client_id_is_required(provider, config):
    errors = provider.validate({**config, "client_id": ""}, allow_insecure_http=False)
    assert errors == {"client_id": "Client ID is required."}


@pytest.mark.parametrize(("field", "value"), [("data_center", "cn"), ("account_type", "x")])
def test_selects_refuse_unknown_values(provider, config, field, value):
    errors = provider.validate({**config, field: value}, allow_insecure_http=False)
    assert "Choose one of" in errors[field]


@pytest.mark.parametrize("scopes", ["openid email", "openid email ZohoMail.messages.ALL"])
def test_a_protocol_scope_is_required(provider, config, scopes):
    errors = provider.validate({**config, "scopes": scopes}, allow_insecure_http=False)
    assert errors["scopes"].startswith("Add ZOHOMAIL.PROTOCOL.IMAP")


@pytest.mark.parametrize("scopes", ["ZOHOMAIL.PROTOCOL.IMAP", "openid ZOHOMAIL.PROTOCOL.POP"])
def test_openid_and_email_are_required_to_read_the_identity(provider, config, scopes):
    errors = provider.validate({**config, "scopes": scopes}, allow_insecure_http=False)
    assert errors["scopes"].startswith("Add openid and email")


# --- endpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize(("dc", "server"), ACCOUNTS.items())
def test_endpoints_follow_the_data_center(provider, config, dc, server):
    config["data_center"] = dc
    endpoints = provider.endpoints(config)
    assert endpoints.authorization == f"{server}/oauth/v2/auth"
    assert endpoints.token == f"{server}/oauth/v2/token"
    assert endpoints.issuer == server
    assert endpoints.jwks_uri == f"{server}/oauth/v2/keys"
    assert endpoints.userinfo == f"{server}/oauth/v2/userinfo"
    assert endpoints.revocation == f"{server}/oauth/v2/token/revoke"
    assert provider.expected_issuer(config, {}) == server
    for url in (endpoints.authorization, endpoints.token, endpoints.jwks_uri, endpoints.issuer):
        assert check_endpoint_url(url, allow_insecure_http=False) is None


def test_every_data_center_is_tested():
    assert set(DATA_CENTERS) == set(ACCOUNTS)


def test_an_empty_data_center_means_the_default(provider):
    assert provider.endpoints({}).token == "https://accounts.zoho.com/oauth/v2/token"


def test_an_unknown_data_center_is_an_error(provider):
    with pytest.raises(ValueError, match="Unknown Zoho data center 'cn'"):
        provider.endpoints({"data_center": "cn"})


def test_authorize_params(provider, config):
    assert provider.authorize_params(config) == {
        "access_type": "offline",
        "prompt": "consent",
        "scope": "openid,email,ZOHOMAIL.PROTOCOL.IMAP,ZOHOMAIL.PROTOCOL.POP",
    }
    assert provider.refresh_params(config) == {}
    assert provider.refresh_token_lifetime(config) is None
    assert provider.warnings(config) == []


# --- identity --------------------------------------------------------------------------------


def identity(provider, claims):
    return provider.identity({}, claims=claims, token={}, http=None)


def test_identity_takes_a_verified_email(provider):
    claims = {"email": "help@example.com", "email_verified": True, "sub": "675925609"}
    found = identity(provider, {**claims, "name": "Help Desk"})
    assert (found.email, found.addresses) == ("help@example.com", ("help@example.com",))
    assert (found.subject, found.tenant, found.name) == ("675925609", None, "Help Desk")
    assert found.matches("HELP@example.com")


@pytest.mark.parametrize(
    "claims",
    [
        {"email": "x@example.com"},
        {"email": "x@example.com", "email_verified": False},
        {"email": "x@example.com", "email_verified": "true"},  # a string is not JSON true
        None,
    ],
)
def test_identity_ignores_unverified_email(provider, claims):
    found = identity(provider, claims)
    assert (found.email, found.addresses) == (None, ())


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed_id_token(key, **claims) -> str:
    now = int(time.time())
    payload = {"aud": CLIENT_ID, "iat": now, "exp": now + 600, "sub": "675925609", **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "zoho-1"})


def publish(key, jwks_uri: str) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    responses.get(jwks_uri, json={"keys": [{**jwk, "kid": "zoho-1", "alg": "RS256"}]})


@responses.activate
def test_the_id_token_validates_against_the_data_center_issuer_and_keys(provider, config):
    """Through the extension's own validator: a wrong issuer or JWKS path would fail here."""
    config["data_center"] = "eu"
    key = rsa_key()
    publish(key, "https://accounts.zoho.eu/oauth/v2/keys")
    id_token = signed_id_token(
        key,
        iss="https://accounts.zoho.eu",
        nonce="n-1",
        email="help@example.eu",
        email_verified=True,
    )
    claims = testing.validate_id_token(provider, config, id_token, nonce="n-1")
    found = provider.identity(config, claims=claims, token={}, http=None)
    assert found.email == "help@example.eu"


@responses.activate
def test_an_id_token_from_another_data_center_is_refused(provider, config):
    config["data_center"] = "eu"
    key = rsa_key()
    publish(key, "https://accounts.zoho.eu/oauth/v2/keys")
    id_token = signed_id_token(key, iss="https://accounts.zoho.com", nonce="n-1")
    with pytest.raises(AuthorizationFailed, match="Invalid issuer"):
        testing.validate_id_token(provider, config, id_token, nonce="n-1")


# --- mail servers ----------------------------------------------------------------------------


def servers(provider, config):
    found = provider.mail_servers(config)
    return [(s.host, s.port, s.security) for s in (found.imap, found.pop3, found.smtp)]


@pytest.mark.parametrize(("dc", "domain"), [(dc, info.domain) for dc, info in DATA_CENTERS.items()])
def test_organization_servers(provider, config, dc, domain):
    assert servers(provider, {**config, "data_center": dc}) == [
        (f"imappro.{domain}", 993, "ssl"),
        (f"poppro.{domain}", 995, "ssl"),
        (f"smtppro.{domain}", 465, "ssl"),
    ]


def test_personal_servers(provider, config):
    assert servers(provider, {**config, "data_center": "eu", "account_type": "personal"}) == [
        ("imap.zoho.eu", 993, "ssl"),
        ("pop.zoho.eu", 995, "ssl"),
        ("smtp.zoho.eu", 465, "ssl"),
    ]


def test_servers_default_to_an_organization_in_the_united_states(provider):
    assert servers(provider, {})[0] == ("imappro.zoho.com", 993, "ssl")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, "invalid_code", "reauthorize"),
        (400, "invalid_client_secret", "configuration"),
        (400, "invalid_client", "configuration"),
        (400, "invalid_grant", "reauthorize"),
        (400, "invalid_scope", "configuration"),
        (400, "something_new", "configuration"),
        # a 200 refusal, reported by flask-mailoauth as 502: the code decides
        (502, "invalid_code", "reauthorize"),
        (502, "invalid_client_secret", "configuration"),
        (502, "temporarily_unavailable", "transient"),
        (502, "something_new", "transient"),
        (502, None, "transient"),
        (503, "invalid_code", "transient"),
        (429, None, "transient"),
        (None, None, "transient"),
    ],
)
def test_classify_error(provider, status, error, kind):
    failure = provider.classify_error(status, {"error": error} if error else None, retry_after=5)
    assert failure.kind == kind
    assert failure.retry_after == (5 if kind == "transient" else None)


def test_zoho_guidance(provider):
    assert "data center" in provider.guidance("invalid_code")
    assert "Client Secret" in provider.guidance("invalid_client_secret")
    assert "Multi DC" in provider.guidance("invalid_client")
    assert provider.guidance("access_denied").startswith("Consent was declined")
    assert provider.guidance("no_such_error") == ""


@responses.activate
def test_a_refusal_sent_with_http_200_is_not_retried_for_ever(provider, config):
    """Zoho may answer ``{"error": "invalid_code"}`` with 200: the grant is gone, not the IdP."""
    responses.post("https://accounts.zoho.com/oauth/v2/token", json={"error": "invalid_code"})
    with pytest.raises(TokenRequestFailed) as refused:
        testing.request_token(
            provider, config, {"grant_type": "refresh_token", "refresh_token": "1000.refresh"}
        )
    assert (refused.value.failure.kind, refused.value.failure.code) == (
        "reauthorize",
        "invalid_code",
    )


# --- through the extension ------------------------------------------------------------------


@pytest.fixture
def helpdesk(tmp_path):
    """A minimal host: one mailbox, every admin allowed; no request leaves the process."""
    app = Flask("zoho_host")
    app.config.update(
        TESTING=True,
        SECRET_KEY="test",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.sqlite3'}",
        MAILOAUTH_ENCRYPTION_KEYS=[generate_key()],
    )
    db = SQLAlchemy()
    db.init_app(app)
    ext = MailOAuth(app, db=db)
    ext.mailbox_loader({"support": MailboxSettings(address="help@example.com")}.get)
    ext.access_check(lambda: True)
    with app.app_context():
        db.create_all()
    return app.test_client()


def test_the_modal_saves_and_sends_the_admin_to_zoho(helpdesk):
    modal = "/mailoauth/support/mailbox"
    page = helpdesk.get(f"{modal}?provider=zoho").get_data(as_text=True)
    assert "Data Center" in page
    assert "Saudi Arabia (accounts.zoho.sa)" in page
    assert 'name="client_auth"' not in page  # one way to authenticate: nothing to choose
    assert 'name="certificate_action"' not in page
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = helpdesk.post(
        modal,
        data={
            "csrf_token": token,
            "provider": "zoho",
            "enabled": "1",
            "name": "help@example.com (mailbox)",
            "strict_matching": "y",
            "client_secret": "zoho-secret",
            "idp_client_id": CLIENT_ID,
            "idp_data_center": "eu",
            "idp_account_type": "organization",
            "idp_scopes": "openid email ZOHOMAIL.PROTOCOL.IMAP",
        },
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        "https://accounts.zoho.eu/oauth/v2/auth"
    )
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["scope"] == "openid,email,ZOHOMAIL.PROTOCOL.IMAP"
    assert (query["access_type"], query["prompt"]) == ("offline", "consent")
    assert (query["client_id"], query["response_type"]) == (CLIENT_ID, "code")
    assert query["code_challenge_method"] == "S256"


# --- compliance hooks -----------------------------------------------------------------------


def refresh_answer(provider, config, answer):
    """A refresh through the extension's token request, Zoho answering ``answer``."""
    responses.post("https://accounts.zoho.com/oauth/v2/token", json=answer)
    return testing.request_token(
        provider, config, {"grant_type": "refresh_token", "refresh_token": "1000.refresh"}
    )


@pytest.mark.parametrize(
    "lifetime",
    [
        {"expires_in": 3600},
        {"expires_in": 3_600_000},  # milliseconds, as older answers have it
        {"expires_in": 3_600_000, "expires_in_sec": 3600},
        {"expires_in_sec": 3600},
    ],
)
@responses.activate
def test_expires_in_is_read_in_seconds_whatever_zoho_sends(provider, config, lifetime):
    answer = refresh_answer(
        provider, config, {"access_token": "1000.at", "token_type": "Bearer", **lifetime}
    )
    assert (answer.expires_at - utcnow()).total_seconds() == pytest.approx(3600, abs=5)


@responses.activate
def test_without_the_hook_milliseconds_would_be_read_as_seconds(config):
    class Unfixed(ZohoProvider):
        def compliance_hooks(self, config):
            return ComplianceHooks()

    answer = refresh_answer(
        Unfixed(),
        config,
        {"access_token": "1000.at", "token_type": "Bearer", "expires_in": 3_600_000},
    )
    assert (answer.expires_at - utcnow()).total_seconds() > 3600 * 2


@responses.activate
def test_the_hook_leaves_refusals_to_the_extension(provider, config):
    responses.post("https://accounts.zoho.com/oauth/v2/token", body="<html>busy</html>", status=503)
    with pytest.raises(TokenRequestFailed) as refused:
        testing.request_token(
            provider, config, {"grant_type": "refresh_token", "refresh_token": "1000.refresh"}
        )
    assert refused.value.failure.kind == "transient"
