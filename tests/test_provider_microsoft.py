"""The Microsoft provider: clouds, validation, endpoints, identity and error classification."""

from __future__ import annotations

import pytest

from flask_mailoauth.errors import AuthorizationFailed
from flask_mailoauth.providers import registry
from flask_mailoauth.providers.microsoft import CLOUDS, ERRORS, MicrosoftProvider

OUTLOOK = "https://outlook.office.com/"
TID = "9c6a6f9e-1d55-4b2b-8d7e-0b3f1c0a7e21"
OTHER_TID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
DEFAULT_SCOPES = (
    "offline_access openid profile email https://outlook.office.com/IMAP.AccessAsUser.All "
    "https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/SMTP.Send"
)


@pytest.fixture
def provider() -> MicrosoftProvider:
    return registry.get("microsoft")  # type: ignore[return-value]


@pytest.fixture
def config(provider) -> dict[str, str]:
    return {**provider.defaults(), "client_id": "11111111-2222-3333-4444-555555555555"}


def validate(provider, config, *, allow_insecure_http=False, **changes):
    return provider.validate({**config, **changes}, allow_insecure_http=allow_insecure_http)


def test_identity_fields_and_defaults(provider):
    assert (provider.id, provider.display_name) == ("microsoft", "OAuth2 - Microsoft")
    assert [f.name for f in provider.fields] == [
        "access",
        "cloud",
        "tenant",
        "client_id",
        "authorization_endpoint",
        "token_endpoint",
        "scopes",
        "service_principal_id",
    ]
    assert [f.label for f in provider.fields] == [
        "Access",
        "Cloud",
        "Tenant",
        "Client ID",
        "Authorization Endpoint",
        "Token Endpoint",
        "Scopes",
        "Service principal object ID",
    ]
    assert provider.defaults() == {
        "access": "delegated",
        "cloud": "global",
        "tenant": "common",
        "client_id": "",
        "authorization_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        "token_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        "scopes": DEFAULT_SCOPES,
        "service_principal_id": "",
    }
    assert provider.field("cloud").choices == (
        ("global", "Global (login.microsoftonline.com)"),
        ("gcc_high", "US Government GCC High"),
        ("dod", "US Government DoD"),
        ("china", "China (21Vianet)"),
    )
    assert {f.name for f in provider.fields if f.required} == {
        "client_id",
        "authorization_endpoint",
        "token_endpoint",
    }


@pytest.mark.parametrize(
    ("cloud", "login", "resource"),
    [
        ("global", "login.microsoftonline.com", "https://outlook.office.com/"),
        ("gcc_high", "login.microsoftonline.us", "https://outlook.office365.us/"),
        ("dod", "login.microsoftonline.us", "https://outlook-dod.office365.us/"),
        ("china", "login.chinacloudapi.cn", "https://partner.outlook.cn/"),
    ],
)
def test_default_config_per_cloud(provider, config, cloud, login, resource):
    derived = MicrosoftProvider.default_config(cloud, TID)
    assert derived["authorization_endpoint"] == f"https://{login}/{TID}/oauth2/v2.0/authorize"
    assert derived["token_endpoint"] == f"https://{login}/{TID}/oauth2/v2.0/token"
    assert derived["scopes"] == (
        f"offline_access openid profile email {resource}IMAP.AccessAsUser.All "
        f"{resource}POP.AccessAsUser.All {resource}SMTP.Send"
    )
    assert validate(provider, config, cloud=cloud, tenant=TID, **derived) == {}


def test_default_config_defaults_and_unknown_cloud():
    assert MicrosoftProvider.default_config()["scopes"] == DEFAULT_SCOPES
    assert "/common/" in MicrosoftProvider.default_config("global", " ")["token_endpoint"]
    with pytest.raises(ValueError, match="Unknown cloud 'mars'"):
        MicrosoftProvider.default_config("mars")


def test_complete_fills_only_blank_endpoints_and_scopes(provider):
    typed = "https://login.microsoftonline.us/contoso.us/oauth2/v2.0/token"
    completed = provider.complete(
        {"cloud": "gcc_high", "tenant": "contoso.us", "token_endpoint": typed, "scopes": " "},
        http=None,
    )
    assert completed["token_endpoint"] == typed
    assert completed["authorization_endpoint"] == (
        "https://login.microsoftonline.us/contoso.us/oauth2/v2.0/authorize"
    )
    assert completed["scopes"].endswith("https://outlook.office365.us/SMTP.Send")
    assert provider.complete({}, http=None)["token_endpoint"].startswith(
        "https://login.microsoftonline.com/common/"
    )


def test_defaults_are_valid_once_the_client_id_is_set(provider, config):
    assert validate(provider, config) == {}
    assert validate(provider, config, client_id="") == {"client_id": "Client ID is required."}


@pytest.mark.parametrize(
    ("graph", "shown"),
    [
        ("User.Read", "User.Read"),
        ("Mail.Send", "Mail.Send"),
        ("Mail.ReadWrite", "Mail.ReadWrite"),
        ("https://graph.microsoft.com/Mail.Read", "https://graph.microsoft.com/Mail.Read"),
        ("https://graph.microsoft.us/User.Read", "https://graph.microsoft.us/User.Read"),
    ],
)
def test_graph_scopes_cannot_be_mixed_with_outlook_scopes(provider, config, graph, shown):
    message = validate(provider, config, scopes=f"{DEFAULT_SCOPES} {graph}")["scopes"]
    assert message.startswith("One access token has one audience: Graph scopes")
    assert f"({shown})" in message
    assert f"Remove {shown};" in message
    assert "stays in the app registration" in message


def test_oidc_scopes_are_not_graph_scopes(provider, config):
    scopes = f"OpenID Profile email offline_access {OUTLOOK}IMAP.AccessAsUser.All"
    assert validate(provider, config, scopes=scopes) == {}


def test_outlook_scopes_of_every_cloud_are_recognised(provider, config):
    for resource in (
        "https://outlook.office365.com/",
        *(c.outlook_resource for c in CLOUDS.values()),
    ):
        assert validate(provider, config, scopes=f"offline_access {resource}SMTP.Send") == {}


def test_offline_access_is_required(provider, config):
    scopes = DEFAULT_SCOPES.replace("offline_access ", "")
    assert validate(provider, config, scopes=scopes) == {
        "scopes": "Add offline_access: without it Microsoft issues no refresh token."
    }


def test_an_outlook_scope_is_required(provider, config):
    message = validate(provider, config, scopes="offline_access openid email")["scopes"]
    assert "Add the Outlook scopes" in message


def test_the_retired_outlook_rest_api_is_refused_anywhere(provider, config):
    errors = validate(provider, config, scopes=f"{DEFAULT_SCOPES} {OUTLOOK}api/v2.0/me")
    assert "Outlook REST API v2.0" in errors["scopes"]
    errors = validate(provider, config, token_endpoint="https://outlook.office.com/api/v2.0/me")
    assert "retired" in errors["token_endpoint"]


@pytest.mark.parametrize(
    ("name", "url", "leaf"),
    [
        (
            "authorization_endpoint",
            "https://login.microsoftonline.com/common/oauth2/authorize",
            "authorize",
        ),
        ("token_endpoint", "https://login.microsoftonline.com/common/oauth2/token", "token"),
    ],
)
def test_v1_endpoints_are_refused(provider, config, name, url, leaf):
    message = validate(provider, config, **{name: url})[name]
    assert message.startswith("This is not a v2.0 endpoint")
    assert message.endswith(f"/common/oauth2/v2.0/{leaf}.")


def test_http_endpoints_only_for_loopback_and_when_allowed(provider, config):
    loopback = {
        "authorization_endpoint": "http://127.0.0.1:8123/common/oauth2/v2.0/authorize",
        "token_endpoint": "http://localhost:8123/common/oauth2/v2.0/token",
    }
    assert validate(provider, config, allow_insecure_http=True, **loopback) == {}
    refused = validate(provider, config, **loopback)
    assert set(refused) == set(loopback)
    assert "MAILOAUTH_ALLOW_INSECURE_HTTP" in refused["token_endpoint"]
    remote = {"token_endpoint": "http://login.example.com/common/oauth2/v2.0/token"}
    assert validate(provider, config, allow_insecure_http=True, **remote) == {
        "token_endpoint": "The endpoint must use https://."
    }


@pytest.mark.parametrize("tenant", ["common", "organizations", TID, "contoso.onmicrosoft.com"])
def test_tenant_accepts_ids_and_domains(provider, config, tenant):
    assert "tenant" not in validate(provider, config, tenant=tenant)


@pytest.mark.parametrize("tenant", ["con toso", "a/b", "-x"])
def test_tenant_refuses_other_text(provider, config, tenant):
    assert validate(provider, config, tenant=tenant)["tenant"].startswith("Enter common")


def test_cloud_must_be_a_known_choice(provider, config):
    assert "Choose one of" in validate(provider, config, cloud="mars")["cloud"]


def test_endpoints_and_jwks_derivation(provider, config):
    endpoints = provider.endpoints(config)
    assert endpoints.authorization == config["authorization_endpoint"]
    assert endpoints.token == config["token_endpoint"]
    assert endpoints.jwks_uri == "https://login.microsoftonline.com/common/discovery/v2.0/keys"
    assert endpoints.issuer is None
    tenant_token = f"https://login.microsoftonline.us/{TID}/oauth2/v2.0/token"
    assert provider.endpoints({"token_endpoint": tenant_token}).jwks_uri == (
        f"https://login.microsoftonline.us/{TID}/discovery/v2.0/keys"
    )


def test_overridden_loopback_authority(provider):
    config = {"token_endpoint": "http://127.0.0.1:8123/common/oauth2/v2.0/token"}
    assert provider.endpoints(config).jwks_uri == (
        "http://127.0.0.1:8123/common/discovery/v2.0/keys"
    )
    assert provider.expected_issuer(config, {"tid": TID}) == f"http://127.0.0.1:8123/{TID}/v2.0"


def test_no_jwks_without_a_v2_endpoint(provider):
    assert provider.endpoints({"token_endpoint": "https://example.com/token"}).jwks_uri is None


def test_expected_issuer_is_the_tenant_template(provider, config):
    assert provider.expected_issuer(config, {"tid": TID}) == (
        f"https://login.microsoftonline.com/{TID}/v2.0"
    )


def test_expected_issuer_pins_a_guid_tenant(provider):
    config = {"token_endpoint": f"https://login.microsoftonline.com/{TID}/oauth2/v2.0/token"}
    pinned = f"https://login.microsoftonline.com/{TID}/v2.0"
    assert provider.expected_issuer(config, {"tid": TID.upper()}) == (
        f"https://login.microsoftonline.com/{TID.upper()}/v2.0"
    )
    assert provider.expected_issuer(config, {"tid": OTHER_TID}) == pinned
    assert OTHER_TID not in provider.expected_issuer(config, {"tid": OTHER_TID})


def test_expected_issuer_without_tid_never_matches_a_real_issuer(provider, config):
    assert provider.expected_issuer(config, {}) == (
        "https://login.microsoftonline.com/{tenantid}/v2.0"
    )


def test_expected_issuer_in_china_uses_the_partner_host(provider):
    config = MicrosoftProvider.default_config("china")
    assert provider.expected_issuer(config, {"tid": TID}) == (
        f"https://login.partner.microsoftonline.cn/{TID}/v2.0"
    )


def test_authorize_and_refresh_params(provider, config):
    assert provider.authorize_params(config) == {"prompt": "select_account"}
    assert provider.refresh_params(config) == {"scope": DEFAULT_SCOPES}
    assert provider.refresh_params({"scopes": "a,b  a"}) == {"scope": "a b"}


def identity(provider, claims):
    return provider.identity({}, claims=claims, token={"access_token": "x"}, http=None)


def test_identity_from_the_id_token_claims(provider):
    found = identity(
        provider,
        {
            "preferred_username": "Help@Contoso.com",
            "email": "help@contoso.com",
            "upn": "helpdesk@contoso.onmicrosoft.com",
            "unique_name": "not-an-address",
            "oid": "object-id",
            "sub": "pairwise-sub",
            "tid": TID,
            "name": "Helpdesk",
        },
    )
    assert found.email == "Help@Contoso.com"
    assert found.addresses == ("Help@Contoso.com", "helpdesk@contoso.onmicrosoft.com")
    assert (found.subject, found.tenant, found.name) == ("object-id", TID, "Helpdesk")
    assert found.matches("HELP@contoso.com")


def test_identity_falls_back_to_sub_and_never_to_unique_name(provider):
    found = identity(provider, {"unique_name": "live.com#a@b.example", "sub": "s"})
    assert found.email is None
    assert found.addresses == ()
    assert not found.matches("live.com#a@b.example")
    assert found.subject == "s"


def test_identity_without_claims_has_no_address(provider):
    found = identity(provider, None)
    assert (found.email, found.addresses) == (None, ())


@pytest.mark.parametrize(
    ("cloud", "mailbox", "smtp"),
    [
        ("global", "outlook.office365.com", "smtp.office365.com"),
        ("gcc_high", "outlook.office365.us", "smtp.office365.us"),
        ("dod", "outlook-dod.office365.us", "outlook-dod.office365.us"),
        ("china", "partner.outlook.cn", "smtp.partner.outlook.cn"),
    ],
)
def test_mail_servers_per_cloud(provider, cloud, mailbox, smtp):
    servers = provider.mail_servers({"cloud": cloud})
    assert (servers.imap.host, servers.imap.port, servers.imap.security) == (mailbox, 993, "ssl")
    assert (servers.pop3.host, servers.pop3.port, servers.pop3.security) == (mailbox, 995, "ssl")
    assert (servers.smtp.host, servers.smtp.port, servers.smtp.security) == (smtp, 587, "starttls")


def test_mail_servers_default_to_the_global_cloud(provider):
    assert provider.mail_servers({}).smtp.host == "smtp.office365.com"


REAUTHORIZE_CODES = [700082, 50173, 70043, 65001, 65004, 54005, 70008, 50076, 50079]
CONFIGURATION_CODES = [7000222, 7000215, 700016, 50011, 28000, 70011, 9002325, 900144]


@pytest.mark.parametrize(
    ("number", "kind"),
    [(n, "reauthorize") for n in REAUTHORIZE_CODES]
    + [(n, "configuration") for n in CONFIGURATION_CODES],
)
def test_classify_aadsts_codes(provider, number, kind):
    error = "invalid_grant" if kind == "reauthorize" else "invalid_client"
    failure = provider.classify_error(
        400,
        {
            "error": error,
            "error_description": f"AADSTS{number}: Something happened.\r\nTrace ID: abc",
            "error_codes": [number],
        },
        retry_after=30,
    )
    assert failure.kind == kind
    assert failure.code == f"AADSTS{number}"
    assert failure.description == "Something happened."
    assert failure.guidance == ERRORS[f"AADSTS{number}"].guidance
    assert failure.retry_after is None


def test_specific_guidance_for_the_most_common_codes(provider):
    assert "Secret ID" in provider.guidance("AADSTS7000215")
    assert "Certificates & secrets" in provider.guidance("7000222")
    assert "no new consent" in provider.guidance("7000222")
    assert "Web redirect URI" in provider.guidance("50011")
    assert "admin consent" in provider.guidance("65001")
    assert "90 days" in provider.guidance("700082")
    assert "Graph" in provider.guidance("28000")
    assert "Web platform" in provider.guidance("9002325")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("invalid_grant", "reauthorize"),
        ("invalid_client", "configuration"),
        ("unauthorized_client", "configuration"),
        ("invalid_scope", "configuration"),
        ("invalid_request", "configuration"),
        ("temporarily_unavailable", "transient"),
        ("server_error", "transient"),
    ],
)
def test_classify_plain_oauth_errors(provider, error, kind):
    failure = provider.classify_error(400, {"error": error})
    assert (failure.kind, failure.code) == (kind, error)
    assert failure.guidance == provider.guidance(error) != ""


def test_unknown_aadsts_code_falls_back_to_the_oauth_error(provider):
    failure = provider.classify_error(
        400, {"error": "invalid_grant", "error_codes": [123456], "error_description": "x"}
    )
    assert (failure.kind, failure.code) == ("reauthorize", "AADSTS123456")
    assert failure.guidance == provider.guidance("invalid_grant")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (None, None),
        (500, None),
        (503, {"error": "temporarily_unavailable"}),
        (429, {}),
        (502, {"error": "invalid_grant", "error_codes": [700082]}),
    ],
)
def test_network_errors_5xx_and_429_are_transient(provider, status, body):
    failure = provider.classify_error(status, body, retry_after=12.5)
    assert failure.kind == "transient"
    assert failure.retry_after == 12.5
    assert failure.description
    assert "retries automatically" in failure.guidance


def test_guidance_accepts_every_spelling_of_a_code(provider):
    expected = ERRORS["AADSTS700082"].guidance
    assert provider.guidance("AADSTS700082") == expected
    assert provider.guidance("700082") == expected
    assert provider.guidance("aadsts700082") == expected
    assert provider.guidance("invalid_grant")
    assert provider.guidance("AADSTS1") == ""
    assert provider.guidance(None) == ""


def test_the_error_table_covers_the_design_codes():
    design = [700082, 50173, 70043, 65001, 65004, 50011, 7000222, 7000215, 700016, 54005]
    design += [28000, 70011, 9002325, 900144]
    assert {f"AADSTS{n}" for n in design} <= set(ERRORS)
    for advice in ERRORS.values():
        assert advice.kind in ("transient", "reauthorize", "configuration")
        assert advice.guidance.endswith(".")


def test_summary_is_one_line(provider):
    failure = provider.classify_error(
        401,
        {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t",
            "error_codes": [7000215],
        },
    )
    assert failure.summary() == (
        "AADSTS7000215: Invalid client secret provided. — "
        "Invalid client secret: paste the secret's Value, not its Secret ID."
    )


def test_warnings_when_tenant_and_endpoints_disagree(provider, config):
    assert provider.warnings(config) == []
    warnings = provider.warnings({**config, "tenant": TID})
    assert len(warnings) == 1
    assert f"The Tenant is {TID} but the endpoints use common" in warnings[0]


def test_the_cloud_and_tenant_pick_the_prefilled_endpoints_and_scopes():
    provider = MicrosoftProvider()
    config = {
        **provider.defaults(),
        "cloud": "gcc_high",
        "tenant": "contoso.onmicrosoft.us",
        "client_id": "app",
    }
    done = provider.complete(config, http=None)
    assert done["authorization_endpoint"] == (
        "https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/v2.0/authorize"
    )
    assert "https://outlook.office365.us/IMAP.AccessAsUser.All" in done["scopes"]
    typed = {**config, "token_endpoint": "http://127.0.0.1:9/common/oauth2/v2.0/token"}
    assert provider.complete(typed, http=None)["token_endpoint"] == typed["token_endpoint"]


class NoHTTP:
    """An ``http`` that must not be used: a GUID or multi-tenant Tenant needs no look-up."""

    def get(self, url, **kwargs):
        raise AssertionError(f"unexpected GET {url}")


@pytest.mark.parametrize("tenant", ["common", "organizations", "consumers"])
def test_email_is_unverified_without_xms_edov_on_a_multi_tenant_account(provider, tenant):
    base = f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
    config = {"tenant": tenant, "token_endpoint": f"{base}/token"}
    claims = {"preferred_username": "me@a.test", "email": "box@b.test", "tid": OTHER_TID}
    found = provider.identity(config, claims=claims, token={}, http=NoHTTP())
    assert found.addresses == ("me@a.test",)
    assert found.unverified == ("box@b.test",)
    assert "xms_edov" in found.advice
    found = provider.identity(config, claims={**claims, "xms_edov": True}, token={}, http=NoHTTP())
    assert found.addresses == ("me@a.test", "box@b.test")


def test_a_guid_tenant_vouches_for_email_and_refuses_other_tenants(provider):
    base = f"https://login.microsoftonline.com/{TID}/oauth2/v2.0"
    config = {"tenant": TID, "token_endpoint": f"{base}/token"}
    claims = {"preferred_username": "me@a.test", "email": "box@b.test", "tid": TID}
    found = provider.identity(config, claims=claims, token={}, http=NoHTTP())
    assert found.matches("BOX@b.test")
    with pytest.raises(AuthorizationFailed) as refused:
        provider.identity(config, claims={**claims, "tid": OTHER_TID}, token={}, http=NoHTTP())
    assert refused.value.code == "tenant_mismatch"


@pytest.mark.parametrize(
    ("protocols", "required"),
    [
        (("imap",), [f"{OUTLOOK}IMAP.AccessAsUser.All"]),
        (("pop3",), [f"{OUTLOOK}POP.AccessAsUser.All"]),
        (("smtp",), [f"{OUTLOOK}SMTP.Send"]),
        ((), []),
    ],
)
def test_required_scopes_follow_the_protocol(provider, config, protocols, required):
    assert provider.required_scopes(config, protocols) == required
    granted = [s.upper() for s in required]  # Microsoft may spell them otherwise
    assert provider.missing_scopes(config, granted, protocols) == []
    assert provider.missing_scopes(config, ["offline_access"], protocols) == required


def test_required_scopes_use_the_cloud_when_the_scope_was_not_requested(provider):
    config = {"cloud": "gcc_high", "scopes": "offline_access openid"}
    assert provider.required_scopes(config, ["smtp"]) == ["https://outlook.office365.us/SMTP.Send"]


@pytest.mark.parametrize(
    ("description", "code"),
    [
        ("AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t", "AADSTS7000215"),
        ("The user said no (AADSTS65004).", "AADSTS65004"),
        ("No code here.", "invalid_client"),
        ("", "invalid_client"),
    ],
)
def test_a_callback_error_is_named_by_its_aadsts_code(provider, description, code):
    assert provider.callback_error_code("invalid_client", description) == code


def test_other_providers_name_a_callback_error_by_the_oauth_error():
    generic = registry.get("generic")
    assert generic.callback_error_code("access_denied", "AADSTS65004: no") == "access_denied"
