"""The Google provider: defaults, validation, identity, errors and the Testing-mode warning."""

from __future__ import annotations

import pytest

from flask_mailoauth.providers import registry
from flask_mailoauth.providers.google import GoogleProvider


@pytest.fixture
def provider() -> GoogleProvider:
    return registry.get("google")  # type: ignore[return-value]


@pytest.fixture
def config(provider) -> dict[str, str]:
    return {**provider.defaults(), "client_id": "1234-abc.apps.googleusercontent.com"}


def test_fields_and_defaults(provider):
    assert (provider.id, provider.display_name) == ("google", "OAuth2 - Google")
    assert provider.defaults() == {
        "access": "delegated",
        "client_id": "",
        "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_endpoint": "https://oauth2.googleapis.com/token",
        "scopes": "openid email https://mail.google.com/",
        "publishing_status": "production",
    }
    status = provider.field("publishing_status")
    assert status.kind == "select"
    assert not status.signed
    assert dict(status.choices) == {
        "production": "In production",
        "testing": "Testing (refresh tokens expire after 7 days)",
    }
    assert all(f.signed for f in provider.fields if f.name != "publishing_status")


def test_defaults_are_valid_once_the_client_id_is_set(provider, config):
    assert provider.validate(config, allow_insecure_http=False) == {}


def test_the_gmail_scope_is_required(provider, config):
    errors = provider.validate({**config, "scopes": "openid email"}, allow_insecure_http=False)
    assert errors == {
        "scopes": "Add https://mail.google.com/: Gmail's IMAP, POP and SMTP accept no other scope."
    }


@pytest.mark.parametrize("scopes", ["https://mail.google.com/", "openid https://mail.google.com/"])
def test_openid_and_email_are_required_to_read_the_identity(provider, config, scopes):
    errors = provider.validate({**config, "scopes": scopes}, allow_insecure_http=False)
    assert errors["scopes"].startswith("Add openid and email")


def test_publishing_status_must_be_a_choice(provider, config):
    errors = provider.validate({**config, "publishing_status": "x"}, allow_insecure_http=False)
    assert "Choose one of" in errors["publishing_status"]


def test_http_endpoints_are_refused(provider, config):
    config["token_endpoint"] = "http://oauth2.googleapis.com/token"
    errors = provider.validate(config, allow_insecure_http=True)
    assert errors == {"token_endpoint": "The endpoint must use https://."}


def test_endpoints(provider, config):
    endpoints = provider.endpoints(config)
    assert endpoints.authorization == "https://accounts.google.com/o/oauth2/v2/auth"
    assert endpoints.token == "https://oauth2.googleapis.com/token"
    assert endpoints.issuer == "https://accounts.google.com"
    assert endpoints.jwks_uri == "https://www.googleapis.com/oauth2/v3/certs"
    assert endpoints.userinfo == "https://openidconnect.googleapis.com/v1/userinfo"
    assert endpoints.revocation == "https://oauth2.googleapis.com/revoke"
    assert provider.expected_issuer(config, {}) == "https://accounts.google.com"


def test_a_loopback_token_endpoint_is_a_google_shaped_test_idp(provider, config):
    """Issuer, keys, userinfo and revocation follow a loopback token endpoint's origin, at
    Google's paths, so that a local Google-shaped IdP can stand in for Google."""
    config["authorization_endpoint"] = "https://127.0.0.1:8443/o/oauth2/v2/auth"
    config["token_endpoint"] = "https://127.0.0.1:8443/token"
    endpoints = provider.endpoints(config)
    assert endpoints.issuer == "https://127.0.0.1:8443"
    assert endpoints.jwks_uri == "https://127.0.0.1:8443/oauth2/v3/certs"
    assert endpoints.userinfo == "https://127.0.0.1:8443/v1/userinfo"
    assert endpoints.revocation == "https://127.0.0.1:8443/revoke"
    assert provider.expected_issuer(config, {}) == "https://127.0.0.1:8443"
    assert provider.validate(config, allow_insecure_http=True) == {}


def test_a_loopback_token_endpoint_needs_the_test_switch(provider, config):
    config["token_endpoint"] = "https://localhost:8443/token"
    errors = provider.validate(config, allow_insecure_http=False)
    assert errors == {
        "token_endpoint": "A loopback token endpoint is a local test IdP; set "
        "MAILOAUTH_ALLOW_INSECURE_HTTP to use one."
    }


def test_any_other_token_endpoint_keeps_googles_fixed_endpoints(provider, config):
    """Only loopback counts as a test IdP: a token endpoint elsewhere never moves the issuer
    (an id_token must still come from Google)."""
    config["token_endpoint"] = "https://idp.example.com/token"
    endpoints = provider.endpoints(config)
    assert (endpoints.issuer, endpoints.revocation) == (
        "https://accounts.google.com",
        "https://oauth2.googleapis.com/revoke",
    )


def test_authorize_params_ask_for_a_refresh_token(provider, config):
    assert provider.authorize_params(config) == {"access_type": "offline", "prompt": "consent"}
    assert provider.refresh_params(config) == {}


def identity(provider, claims):
    return provider.identity({}, claims=claims, token={}, http=None)


def test_identity_takes_a_verified_email(provider):
    claims = {
        "email": "help@example.com",
        "email_verified": True,
        "sub": "1",
        "hd": "example.com",
    }
    found = identity(provider, {**claims, "name": "Help"})
    assert (found.email, found.addresses) == ("help@example.com", ("help@example.com",))
    assert (found.subject, found.tenant, found.name) == ("1", "example.com", "Help")


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
    assert found.unverified == (("x@example.com",) if claims else ())


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, "invalid_grant", "reauthorize"),
        (401, "invalid_client", "configuration"),
        (400, "unauthorized_client", "configuration"),
        (400, "admin_policy_enforced", "configuration"),
        (400, "invalid_scope", "configuration"),
        (500, "invalid_grant", "transient"),
        (503, None, "transient"),
        (429, None, "transient"),
        (None, None, "transient"),
    ],
)
def test_classify_error(provider, status, error, kind):
    failure = provider.classify_error(status, {"error": error} if error else None, retry_after=5)
    assert failure.kind == kind
    assert failure.retry_after == (5 if kind == "transient" else None)


def test_invalid_grant_guidance_mentions_testing_mode(provider):
    failure = provider.classify_error(400, {"error": "invalid_grant", "error_description": "Bad"})
    assert failure.code == "invalid_grant"
    assert "7-day refresh token" in failure.guidance
    assert failure.summary().startswith("invalid_grant: Bad — ")


def test_guidance(provider):
    assert "Workspace admin policy" in provider.guidance("admin_policy_enforced")
    assert provider.guidance("no_such_error") == ""


def test_testing_mode_warning(provider, config):
    assert provider.warnings(config) == []
    (warning,) = provider.warnings({**config, "publishing_status": "testing"})
    assert warning.startswith("Apps in Testing get refresh tokens that expire after 7 days")
    assert "In production" in warning


def test_mail_servers(provider, config):
    servers = provider.mail_servers(config)
    assert (servers.imap.host, servers.imap.port, servers.imap.security) == (
        "imap.gmail.com",
        993,
        "ssl",
    )
    assert (servers.pop3.host, servers.pop3.port, servers.pop3.security) == (
        "pop.gmail.com",
        995,
        "ssl",
    )
    assert (servers.smtp.host, servers.smtp.port, servers.smtp.security) == (
        "smtp.gmail.com",
        587,
        "starttls",
    )
