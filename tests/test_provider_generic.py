"""The generic provider: discovery, validation, identity sources and error classification."""

from __future__ import annotations

import logging

import pytest
import requests
import responses

from flask_mailoauth.errors import AuthorizationFailed, DeadlineExceeded, ResponseTooLarge
from flask_mailoauth.flow import _identity
from flask_mailoauth.models import utcnow
from flask_mailoauth.oauth import TokenResponse
from flask_mailoauth.outbound import OutboundHTTP, OutboundPolicy
from flask_mailoauth.providers import ComplianceHooks, registry
from flask_mailoauth.providers.base import check_endpoint_url
from flask_mailoauth.providers.generic import GenericProvider

ISSUER = "https://idp.example.com/realms/helpdesk"
OIDC_URL = f"{ISSUER}/.well-known/openid-configuration"
RFC8414_URL = "https://idp.example.com/.well-known/oauth-authorization-server/realms/helpdesk"
METADATA = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/auth",
    "token_endpoint": f"{ISSUER}/token",
    "jwks_uri": f"{ISSUER}/certs",
    "userinfo_endpoint": f"{ISSUER}/userinfo",
}
USERINFO = "https://idp.example.com/userinfo"
RESOURCE = "https://api.example.com/me"


@pytest.fixture
def provider() -> GenericProvider:
    return registry.get("generic")  # type: ignore[return-value]


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


@pytest.fixture
def idp():
    with responses.RequestsMock() as mock:
        yield mock


def manual(**changes: str) -> dict[str, str]:
    return {
        "client_id": "helpdesk",
        "issuer": "https://idp.example.com",
        "authorization_endpoint": "https://idp.example.com/auth",
        "token_endpoint": "https://idp.example.com/token",
        "jwks_uri": "https://idp.example.com/jwks",
        "scopes": "openid email offline_access",
        **changes,
    }


def test_fields_and_defaults(provider):
    assert (provider.id, provider.display_name) == ("generic", "OAuth2 - Other Provider")
    assert [(f.name, f.label) for f in provider.fields] == [
        ("issuer", "Issuer"),
        ("client_id", "Client ID"),
        ("authorization_endpoint", "Authorization Endpoint"),
        ("token_endpoint", "Token Endpoint"),
        ("jwks_uri", "JWKS URI"),
        ("userinfo_endpoint", "Userinfo Endpoint"),
        ("resource_endpoint", "Resource Details Endpoint"),
        ("revocation_endpoint", "Revocation Endpoint"),
        ("scopes", "Scopes"),
        ("email_attribute", "Email Address Attribute"),
        ("iss_parameter", "Issuer in Response"),
        ("token_auth_methods", "Token Endpoint Authentication Methods"),
        ("prompt", "Prompt"),
    ]
    defaults = provider.defaults()
    assert defaults["scopes"] == "openid email offline_access"
    assert defaults["email_attribute"] == "email"
    assert defaults["prompt"] == ""
    assert provider.field("issuer").help == "Fills the endpoints by discovery."
    assert provider.field("email_attribute").signed
    assert not provider.field("prompt").signed
    assert not provider.field("iss_parameter").signed
    assert not provider.field("revocation_endpoint").signed  # revoking needs no new consent


def test_manual_endpoints_are_valid(provider):
    assert provider.validate(manual(), allow_insecure_http=False) == {}


def test_endpoints_are_required_without_an_issuer(provider):
    errors = provider.validate(
        manual(issuer="", authorization_endpoint="", token_endpoint="", scopes="email"),
        allow_insecure_http=False,
    )
    assert errors == {
        "authorization_endpoint": "Authorization Endpoint is required unless an Issuer is entered.",
        "token_endpoint": "Token Endpoint is required unless an Issuer is entered.",
        "scopes": "The mailbox address cannot be read: add openid to the Scopes, or enter a "
        "Userinfo or Resource Details Endpoint.",
    }


def test_an_issuer_replaces_the_endpoints(provider):
    config = {"client_id": "helpdesk", "issuer": ISSUER, "scopes": "openid email"}
    assert provider.validate(config, allow_insecure_http=False) == {}


def test_openid_needs_an_issuer(provider):
    errors = provider.validate(manual(issuer=""), allow_insecure_http=False)
    assert errors == {
        "issuer": "Enter the Issuer: OpenID Connect id_tokens are validated against it."
    }


def test_some_source_of_identity_is_required(provider):
    config = manual(scopes="offline_access mail")
    assert (
        "mailbox address cannot be read"
        in provider.validate(config, allow_insecure_http=False)["scopes"]
    )
    config["resource_endpoint"] = RESOURCE
    assert provider.validate(config, allow_insecure_http=False) == {}


def test_every_url_is_checked(provider):
    config = manual(
        issuer="http://idp.example.com",
        userinfo_endpoint="ftp://idp.example.com/userinfo",
        resource_endpoint="http://localhost:9000/me",
    )
    errors = provider.validate(config, allow_insecure_http=False)
    assert errors["issuer"] == "The endpoint must use https://."
    assert errors["userinfo_endpoint"] == "Enter a full URL, starting with https://."
    assert "MAILOAUTH_ALLOW_INSECURE_HTTP" in errors["resource_endpoint"]
    assert "resource_endpoint" not in provider.validate(config, allow_insecure_http=True)


def test_discovery_fills_blank_endpoints_and_keeps_typed_ones(provider, http, idp):
    idp.get(OIDC_URL, json=METADATA)
    config = {"issuer": ISSUER, "client_id": "c", "token_endpoint": "https://typed.example/token"}
    completed = provider.complete(config, http)
    assert completed == {
        "issuer": ISSUER,
        "client_id": "c",
        "authorization_endpoint": f"{ISSUER}/auth",
        "token_endpoint": "https://typed.example/token",
        "jwks_uri": f"{ISSUER}/certs",
        "userinfo_endpoint": f"{ISSUER}/userinfo",
        # RFC 8414: metadata without token_endpoint_auth_methods_supported means Basic only
        "token_auth_methods": "client_secret_basic",
    }
    assert config["token_endpoint"] == "https://typed.example/token"
    assert idp.calls[0].request.headers["Accept"] == "application/json"


def test_discovery_fills_the_revocation_endpoint(provider, http, idp):
    """RFC 8414's revocation_endpoint becomes the endpoint Delete Token revokes at."""
    idp.get(OIDC_URL, json={**METADATA, "revocation_endpoint": f"{ISSUER}/revoke"})
    completed = provider.complete({"issuer": ISSUER, "client_id": "c"}, http)
    assert completed["revocation_endpoint"] == f"{ISSUER}/revoke"
    assert provider.endpoints(completed).revocation == f"{ISSUER}/revoke"
    assert provider.endpoints(manual()).revocation is None


def test_discovery_falls_back_to_rfc_8414(provider, http, idp):
    idp.get(OIDC_URL, status=404)
    idp.get(RFC8414_URL, json={k: v for k, v in METADATA.items() if k != "userinfo_endpoint"})
    completed = provider.complete({"issuer": ISSUER}, http)
    assert completed["authorization_endpoint"] == f"{ISSUER}/auth"
    assert "userinfo_endpoint" not in completed


def test_discovery_of_an_issuer_without_path(provider, http, idp):
    issuer = "https://idp.example.com"
    idp.get(f"{issuer}/.well-known/openid-configuration", body="<html>")
    idp.get(f"{issuer}/.well-known/oauth-authorization-server", json={**METADATA, "issuer": issuer})
    assert provider.complete({"issuer": issuer}, http)["token_endpoint"] == f"{ISSUER}/token"


def test_discovery_refuses_an_issuer_mismatch(provider, http, idp):
    idp.get(OIDC_URL, json={**METADATA, "issuer": "https://evil.example.com"})
    with pytest.raises(ValueError, match=rf"is for another issuer than '{ISSUER}'") as excinfo:
        provider.complete({"issuer": ISSUER}, http)
    assert "evil" not in str(excinfo.value)  # nothing the target sent is echoed


def test_discovery_requires_an_exact_issuer(provider, http, idp):
    idp.get(OIDC_URL, json=METADATA)
    with pytest.raises(ValueError, match="exactly as the provider spells it"):
        provider.complete({"issuer": f"{ISSUER}/"}, http)


DISCOVERY_FAILED = (
    f"Discovery failed: no metadata document could be read at {OIDC_URL} or {RFC8414_URL}. "
    "Check the Issuer (the provider's exact issuer URL), or enter the endpoints by hand."
)
#: what a target may do; telling them apart would tell open ports from closed ones
UNUSABLE = {
    "connection refused": {"body": requests.ConnectionError("refused")},
    "read timeout": {"body": requests.ReadTimeout("slow")},
    "deadline": {"body": DeadlineExceeded("past the deadline")},
    "too large": {"body": ResponseTooLarge("big")},
    "HTTP 404": {"status": 404},
    "HTTP 500": {"status": 500, "json": {"issuer": ISSUER}},
    "not JSON": {"body": "not json"},
    "not an object": {"json": [1, 2]},
}


@pytest.mark.parametrize("answer", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_every_discovery_failure_gives_one_message(provider, http, idp, answer, caplog):
    idp.get(OIDC_URL, **answer)
    idp.get(RFC8414_URL, **answer)
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(ValueError, match="Discovery failed") as excinfo,
    ):
        provider.complete({"issuer": ISSUER}, http)
    assert str(excinfo.value) == DISCOVERY_FAILED
    assert "not json" not in caplog.text  # the debug line quotes no content


def test_discovery_requires_the_endpoints(provider, http, idp):
    idp.get(OIDC_URL, json={"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs"})
    with pytest.raises(ValueError, match="lists no Authorization Endpoint and no Token Endpoint"):
        provider.complete({"issuer": ISSUER}, http)


def test_discovery_refuses_plain_http_to_a_remote_host(provider, http, idp):
    with pytest.raises(ValueError, match=r"^Issuer: The endpoint must use https://\.$"):
        provider.complete({"issuer": "http://idp.example.com"}, http)


def test_no_discovery_without_issuer_or_when_everything_is_typed(provider, http, idp):
    assert provider.complete(manual(), http) == manual()
    typed = manual(issuer=ISSUER, userinfo_endpoint=USERINFO)
    assert provider.complete(typed, http) == typed
    assert len(idp.calls) == 0


def test_discovery_uses_the_configured_timeout_and_a_deadline(provider):
    class RecordingSession:
        def get(self, url, **kwargs):
            self.kwargs = kwargs
            raise requests.Timeout("slow")

    session = RecordingSession()
    with pytest.raises(ValueError, match="Discovery failed: no metadata document"):
        provider.complete({"issuer": ISSUER}, OutboundHTTP(session, 7, deadline=12))
    timeout = session.kwargs["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (7, 7)
    assert timeout.expires is not None


def test_endpoints_and_authorize_params(provider):
    config = manual(issuer=ISSUER, userinfo_endpoint=USERINFO, resource_endpoint=RESOURCE)
    endpoints = provider.endpoints(config)
    assert (endpoints.authorization, endpoints.token) == (
        "https://idp.example.com/auth",
        "https://idp.example.com/token",
    )
    assert (endpoints.issuer, endpoints.jwks_uri) == (ISSUER, "https://idp.example.com/jwks")
    assert (endpoints.userinfo, endpoints.resource) == (USERINFO, RESOURCE)
    assert provider.expected_issuer(config, {}) == ISSUER
    assert provider.expected_issuer(manual(issuer=""), {}) is None
    assert provider.authorize_params(manual()) == {}
    assert provider.authorize_params(manual(prompt="consent")) == {"prompt": "consent"}
    assert provider.mail_servers(manual()) is None


TOKEN = {"access_token": "at-123", "token_type": "Bearer"}


def test_identity_from_id_token_claims(provider, http, idp):
    claims = {"sub": "u1", "email": "help@example.com", "email_verified": True, "name": "Help"}
    found = provider.identity(
        manual(userinfo_endpoint=USERINFO), claims=claims, token=TOKEN, http=http
    )
    assert (found.email, found.addresses) == ("help@example.com", ("help@example.com",))
    assert (found.subject, found.name) == ("u1", "Help")
    assert len(idp.calls) == 0


def test_preferred_username_is_an_address_only_when_the_admin_names_it(provider, http):
    claims = {"sub": "u1", "preferred_username": "help@example.com"}
    found = provider.identity(manual(), claims=claims, token=TOKEN, http=http)
    assert (found.email, found.addresses) == (None, ())
    assert found.unverified == ("help@example.com",)
    assert "Email Address Attribute" in found.advice
    config = manual(email_attribute="preferred_username")
    found = provider.identity(config, claims=claims, token=TOKEN, http=http)
    assert found.email == "help@example.com"
    assert found.matches("HELP@example.com")


def test_identity_falls_back_to_userinfo(provider, http, idp):
    idp.get(
        USERINFO,
        json={"sub": "u1", "email": "help@example.com", "email_verified": True, "name": "Help"},
        match=[responses.matchers.header_matcher({"Authorization": "Bearer at-123"})],
    )
    claims = {"sub": "u1", "email": "help@example.com", "email_verified": False}
    found = provider.identity(
        manual(userinfo_endpoint=USERINFO), claims=claims, token=TOKEN, http=http
    )
    assert (found.email, found.subject, found.name) == ("help@example.com", "u1", "Help")


class HeaderTokenProvider(GenericProvider):
    """An IdP whose userinfo wants the access token in a header of its own."""

    id = "header-token"

    def compliance_hooks(self, config):
        def fix(url, headers, body):
            token = headers["Authorization"].removeprefix("Bearer ")
            return url, {**headers, "X-Access-Token": token}, body

        return ComplianceHooks(protected_request=(fix,))


def test_the_identity_step_runs_the_providers_protected_request_hooks(idp):
    """``protected_request`` hooks reach the userinfo call of the callback's identity step."""
    idp.get(
        USERINFO,
        json={"sub": "u1", "email": "help@example.com", "email_verified": True},
        match=[responses.matchers.header_matcher({"X-Access-Token": "at-123"})],
    )
    token = TokenResponse("at-123", None, utcnow(), "openid", "Bearer", None, TOKEN)
    found = _identity(
        HeaderTokenProvider(),
        manual(userinfo_endpoint=USERINFO),
        {"sub": "u1"},
        token,
        5,
        policy=OutboundPolicy(),
    )
    assert found.email == "help@example.com"


def test_userinfo_for_another_subject_is_refused(provider, http, idp):
    idp.get(USERINFO, json={"sub": "someone-else", "email": "boss@example.com"})
    with pytest.raises(AuthorizationFailed, match="another user than the id_token"):
        provider.identity(
            manual(userinfo_endpoint=USERINFO), claims={"sub": "u1"}, token=TOKEN, http=http
        )


def test_userinfo_errors_are_admin_readable(provider, http, idp):
    idp.get(USERINFO, status=401, json={"error": "invalid_token"})
    with pytest.raises(
        AuthorizationFailed, match=r"did not return the mailbox details as a JSON object\.$"
    ) as excinfo:
        provider.identity(manual(userinfo_endpoint=USERINFO), claims=None, token=TOKEN, http=http)
    assert "at-123" not in str(excinfo.value)
    assert excinfo.value.guidance


@pytest.mark.parametrize("answer", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_every_userinfo_failure_gives_one_message(provider, http, idp, answer):
    idp.get(USERINFO, **answer)
    with pytest.raises(AuthorizationFailed) as excinfo:
        provider.identity(manual(userinfo_endpoint=USERINFO), claims=None, token=TOKEN, http=http)
    assert str(excinfo.value) == f"{USERINFO} did not return the mailbox details as a JSON object."


def test_identity_from_the_resource_endpoint_with_a_dotted_attribute(provider, http, idp):
    idp.get(RESOURCE, json={"data": {"email": "help@example.com", "email_verified": False}})
    config = manual(scopes="mail", resource_endpoint=RESOURCE, email_attribute="data.email")
    found = provider.identity(config, claims=None, token=TOKEN, http=http)
    assert found.addresses == ("help@example.com",)
    assert idp.calls[0].request.headers["Authorization"] == "Bearer at-123"


def test_without_openid_the_resource_endpoint_is_asked_not_userinfo(provider, http, idp):
    """Userinfo answers only tokens granted openid: with both endpoints and no id_token claims,
    only the resource endpoint is called; with claims, userinfo still comes first."""
    idp.get(USERINFO, json={"sub": "u1", "email": "other@example.com", "email_verified": True})
    idp.get(RESOURCE, json={"email": "help@example.com"})
    config = manual(scopes="mail", userinfo_endpoint=USERINFO, resource_endpoint=RESOURCE)
    found = provider.identity(config, claims=None, token=TOKEN, http=http)
    assert found.addresses == ("help@example.com",)
    assert [c.request.url for c in idp.calls] == [RESOURCE]
    with_openid = provider.identity(config, claims={"sub": "u1"}, token=TOKEN, http=http)
    assert with_openid.addresses == ("other@example.com",)
    assert idp.calls[-1].request.url == USERINFO


def test_no_identity_anywhere(provider, http, idp):
    idp.get(RESOURCE, json={"data": "nothing"})
    config = manual(resource_endpoint=RESOURCE, email_attribute="data.email")
    found = provider.identity(config, claims={"sub": "u1"}, token=TOKEN, http=http)
    assert (found.email, found.addresses, found.subject) == (None, (), "u1")


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, "invalid_grant", "reauthorize"),
        (401, "invalid_client", "configuration"),
        (400, "unauthorized_client", "configuration"),
        (400, "invalid_scope", "configuration"),
        (400, "temporarily_unavailable", "transient"),
        (400, "server_error", "transient"),
        (None, None, "transient"),
        (500, None, "transient"),
        (429, "slow_down", "transient"),
        (403, "account_locked", "configuration"),
    ],
)
def test_classify_error(provider, status, error, kind):
    body = {"error": error, "error_description": "The IdP's words."} if error else None
    failure = provider.classify_error(status, body, retry_after=9)
    expected_code = error or ("network_error" if status is None else None)
    assert (failure.kind, failure.code) == (kind, expected_code)
    assert failure.guidance
    assert failure.retry_after == (9 if kind == "transient" else None)


def test_unknown_errors_keep_the_idps_description(provider):
    failure = provider.classify_error(
        400, {"error": "account_locked", "error_description": "Locked\n by admin"}
    )
    assert failure.description == "Locked by admin"
    assert failure.summary().startswith("account_locked: Locked by admin — Check the IdP Config")
    assert provider.guidance("account_locked") == ""
    assert "Token Endpoint" in provider.guidance("unsupported_grant_type")


def test_unreachable_has_a_description(provider):
    failure = provider.classify_error(None, None)
    assert failure.code == "network_error"
    assert (
        failure.description
        == "The identity provider could not be reached (network error or timeout)."
    )
    assert (
        provider.classify_error(502, {}).description == "The identity provider answered HTTP 502."
    )


@pytest.mark.parametrize(
    "url",
    ["https://idp.example.test/a b", "https://idp.example.test/\ttoken", "https://x\r\n.test"],
)
def test_endpoints_with_spaces_or_controls_are_refused(url):
    assert check_endpoint_url(url, allow_insecure_http=False) is not None


def test_discovery_records_an_advertised_iss_parameter(provider, http, idp):
    document = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/auth",
        "token_endpoint": f"{ISSUER}/token",
        "authorization_response_iss_parameter_supported": True,
    }
    idp.get(f"{ISSUER}/.well-known/openid-configuration", json=document)
    config = {"issuer": ISSUER, "client_id": "c", "scopes": "openid"}
    completed = provider.complete(config, http)
    assert completed["iss_parameter"] == "required"
    assert provider.endpoints(completed).authorization_response_iss
    assert not provider.endpoints(manual()).authorization_response_iss


def test_discovery_stores_the_token_endpoint_auth_methods(provider, http, idp):
    methods = ["client_secret_basic", "private_key_jwt", "none", "tls_client_auth"]
    idp.get(OIDC_URL, json={**METADATA, "token_endpoint_auth_methods_supported": methods})
    completed = provider.complete({"issuer": ISSUER, "client_id": "c"}, http)
    assert completed["token_auth_methods"] == " ".join(methods)
    assert [a.value for a in provider.client_auth_choices(completed)] == [
        "client_secret_basic",
        "none",
        "private_key_jwt",
    ]


def test_discovery_keeps_auth_methods_the_admin_typed(provider, http, idp):
    idp.get(OIDC_URL, json={**METADATA, "token_endpoint_auth_methods_supported": ["none"]})
    config = {"issuer": ISSUER, "client_id": "c", "token_auth_methods": "client_secret_post"}
    assert provider.complete(config, http)["token_auth_methods"] == "client_secret_post"
