"""Microsoft application (app-only) access: the Access choice, admin consent at the callback,
the client credentials grant under the refresh lease, the Token tab's roles and tenant setup,
and Test connection's app-only guidance. Bad input runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import responses
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_mailoauth import tenant_setup
from flask_mailoauth.certificates import ASSERTION_TYPE
from flask_mailoauth.mail import CheckResult, CheckStep
from flask_mailoauth.providers import registry
from flask_mailoauth.providers.microsoft import MicrosoftProvider
from flask_mailoauth.vocabulary import AccessKind

from .flow_steps import HOST_PAGE, MODAL, banners, credentials, csrf

TID = "9188040d-6c67-4c5b-b112-36a304b66dad"
OTHER_TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BASE = "https://login.microsoftonline.com"
TOKEN_URL = f"{BASE}/{TID}/oauth2/v2.0/token"
SP_ID = "6a1b2c3d-0000-4000-8000-123456789abc"
ALL_ROLES = ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"]
APP_FIELDS = {
    "provider": "microsoft",
    "idp_access": "application",
    "idp_cloud": "global",
    "idp_tenant": TID,
    "idp_client_id": "app-client-id",
    "idp_authorization_endpoint": f"{BASE}/{TID}/oauth2/v2.0/authorize",
    "idp_token_endpoint": TOKEN_URL,
    "idp_scopes": "offline_access openid profile email",
    "idp_service_principal_id": SP_ID,
}
KEY = rsa.generate_private_key(65537, 2048)


def app_token(roles: list[str] | None, lifetime: int = 3600) -> str:
    """An app-only access token as Exchange Online's issuer makes it (roles, tid, appid)."""
    now = int(time.time())
    claims = {"aud": "https://outlook.office365.com", "tid": TID, "appid": "app-client-id"}
    claims |= {"iat": now, "exp": now + lifetime, **({"roles": roles} if roles else {})}
    return jwt.encode(claims, KEY, algorithm="RS256")


class AppIdP:
    """Microsoft's token endpoint for the client credentials grant, scripted by roles."""

    def __init__(self, mock: responses.RequestsMock) -> None:
        self.roles: list[str] | None = list(ALL_ROLES)
        self.lifetime = 3600
        self.calls: list[dict[str, list[str]]] = []
        self.error: tuple[int, dict[str, object]] | None = None
        mock.add_callback(responses.POST, TOKEN_URL, callback=self.answer)

    def answer(self, request):
        self.calls.append(parse_qs(request.body))
        if self.error:
            status, body = self.error
            return status, {"Content-Type": "application/json"}, json.dumps(body)
        body = {
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "ext_expires_in": self.lifetime,
            "access_token": app_token(self.roles, self.lifetime),
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(body)


@pytest.fixture
def db_host(make_host, db_url):
    return make_host(db_url=db_url)


@pytest.fixture
def idp():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield AppIdP(mock)


def save_app(client, **fields):
    data = {
        "csrf_token": csrf(client, "microsoft"),
        "enabled": "1",
        "name": "support@example.test (mailbox)",
        "strict_matching": "y",
        "client_secret": "app-secret",
        **APP_FIELDS,
        **fields,
    }
    return client.post(MODAL, data=data, headers={"Referer": HOST_PAGE})


def consent_link(client, **fields) -> dict[str, str]:
    """Save with application access; the admin consent link's query (checked on the way)."""
    response = save_app(client, **fields)
    assert response.status_code == 303, response.get_data(as_text=True)[:3000]
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (f"{BASE}/{TID}/adminconsent")
    return {k: v[0] for k, v in parse_qs(location.query).items()}


def answer(client, **params):
    return client.get("/mailoauth/callback?" + urlencode(params))


def events(host) -> list[tuple[str, str, str | None]]:
    with host.app.app_context(), host.db.engine.connect() as conn:
        rows = conn.execute(sa.text("select kind, message, code from mailoauth_event order by id"))
        return [tuple(r) for r in rows]


# -- the provider ------------------------------------------------------------------------------


def test_microsoft_shows_the_access_select_and_a_change_invalidates_the_grant():
    provider = registry.get("microsoft")
    access = provider.field("access")
    assert [c[0] for c in access.choices] == ["delegated", "application"]
    assert access.signed
    assert access.default == "delegated"
    assert "access" not in {f.name for f in registry.get("generic").fields}
    config = {"client_id": "x", "tenant": TID}
    delegated = provider.config_signature({**config, "access": "delegated"})
    assert delegated != provider.config_signature({**config, "access": "application"})
    # grants stored before the choice existed stay valid
    assert delegated == provider.config_signature(config)
    # the service principal's object id only fills the PowerShell: no new consent
    assert delegated == provider.config_signature(
        {**config, "access": "delegated", "service_principal_id": SP_ID}
    )


@pytest.mark.parametrize(
    ("cloud", "scope"),
    [
        ("global", "https://outlook.office365.com/.default"),
        ("gcc_high", "https://outlook.office365.us/.default"),
        ("dod", "https://outlook-dod.office365.us/.default"),
        ("china", "https://partner.outlook.cn/.default"),
    ],
)
def test_application_access_asks_the_clouds_exchange_resource(cloud, scope):
    provider = MicrosoftProvider()
    config = {"access": "application", "cloud": cloud, "tenant": TID, "client_id": "c"}
    assert provider.scopes(config) == [scope]
    grant = provider.token_grant(config, refresh_token="", client_secret="s", mailbox="m")
    assert grant == {"grant_type": "client_credentials", "scope": scope}
    delegated = provider.token_grant(
        {**config, "access": "delegated", "scopes": "openid"},
        refresh_token="rt",
        client_secret="",
        mailbox="m",
    )
    assert delegated == {"grant_type": "refresh_token", "refresh_token": "rt", "scope": "openid"}


def test_consent_url_uses_the_clouds_authority_and_the_tenant():
    provider = MicrosoftProvider()
    config = provider.complete(
        {"access": "application", "cloud": "gcc_high", "tenant": "contoso.us", "client_id": "c"},
        http=None,  # type: ignore[arg-type]  # complete() makes no call for Microsoft
    )
    url = provider.consent_url(config, redirect_uri="https://helpdesk/cb", state="s1")
    assert url == (
        "https://login.microsoftonline.us/contoso.us/adminconsent?"
        "client_id=c&redirect_uri=https%3A%2F%2Fhelpdesk%2Fcb&state=s1"
    )


def test_application_access_needs_a_tenant_and_ignores_the_scopes():
    provider = MicrosoftProvider()
    config = {**{k.removeprefix("idp_"): v for k, v in APP_FIELDS.items()}, "tenant": "common"}
    errors = provider.validate(config, allow_insecure_http=False)
    assert "Application access needs your tenant" in errors["tenant"]
    assert "scopes" not in errors  # no offline_access needed: nothing is refreshed
    config |= {"tenant": TID, "service_principal_id": "not-a-guid"}
    assert set(provider.validate(config, allow_insecure_http=False)) == {"service_principal_id"}


def test_grants_and_consent_follow_the_declared_access_kinds():
    class ServiceAccountOnly(MicrosoftProvider):
        access_kinds = (AccessKind.SERVICE_ACCOUNT,)

    with pytest.raises(NotImplementedError):
        ServiceAccountOnly().token_grant({}, refresh_token="", client_secret="", mailbox="m")
    with pytest.raises(NotImplementedError):
        registry.get("google").consent_url({}, redirect_uri="https://h/cb", state="s")
    # a value the provider does not offer falls back to its default
    assert MicrosoftProvider().access({"access": "service_account"}) == AccessKind.DELEGATED


# -- the tenant setup --------------------------------------------------------------------------


def test_powershell_values_are_quoted_so_nothing_breaks_out():
    assert tenant_setup.quote("o'brien@example.test") == "'o''brien@example.test'"
    # PowerShell also ends a single-quoted string at the typographic quotes
    assert tenant_setup.quote("a\u2019b") == "'a\u2019\u2019b'"
    assert tenant_setup.quote("$(Remove-Item x)`n") == "'$(Remove-Item x)`n'"
    assert tenant_setup.quote("a\r\nb") == "'ab'"


def test_setup_commands_for_imap_and_for_smtp():
    imap = tenant_setup.commands("app-id", SP_ID, "it@example.test", ["imap"])
    assert [c.command for c in imap] == [
        f"New-ServicePrincipal -AppId 'app-id' -ObjectId '{SP_ID}'",
        f"Add-MailboxPermission -Identity 'it@example.test' -User '{SP_ID}' -AccessRights "
        "FullAccess",
    ]
    smtp = tenant_setup.commands("app-id", "", "it@example.test", ["pop3", "smtp"])
    placeholder = f"'{tenant_setup.SERVICE_PRINCIPAL_PLACEHOLDER}'"
    assert [c.step for c in smtp] == list(tenant_setup.Step)
    assert smtp[2].command == (
        f"Add-RecipientPermission -Identity 'it@example.test' -Trustee {placeholder} "
        "-AccessRights SendAs -Confirm:$false"
    )
    assert smtp[3].command == (
        "Set-CASMailbox -Identity 'it@example.test' -SmtpClientAuthenticationDisabled $false"
    )
    assert tenant_setup.script(smtp).splitlines()[0] == "Connect-ExchangeOnline"


@pytest.mark.parametrize(
    ("protocol", "failed", "reply", "step"),
    [
        ("IMAP", 2, "NO AUTHENTICATE failed.", tenant_setup.Step.REGISTER),
        ("IMAP", 3, "NO User is authenticated but not connected.", tenant_setup.Step.FULL_ACCESS),
        ("POP3", 3, "-ERR User is authenticated but not connected.", tenant_setup.Step.FULL_ACCESS),
        (
            "SMTP",
            2,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
            "disabled for the Mailbox.",
            tenant_setup.Step.SMTP_AUTH,
        ),
        ("SMTP", 3, "554 5.2.0 SendAsDenied", tenant_setup.Step.SEND_AS),
        ("IMAP", 1, "connection refused", None),
    ],
)
def test_exchange_app_only_refusals_name_the_missing_step(protocol, failed, reply, step):
    assert tenant_setup.missing_step(protocol, failed, reply) == step


def test_token_roles_are_read_from_the_access_token():
    assert tenant_setup.token_roles(app_token(ALL_ROLES)) == ALL_ROLES
    assert tenant_setup.token_roles(app_token(None)) == []
    assert tenant_setup.token_roles("opaque") == []


# -- admin consent at the callback -------------------------------------------------------------


def test_admin_consent_stores_the_first_application_token(host, idp):
    client = host.app.test_client()
    link = consent_link(client)
    assert link["client_id"] == "app-client-id"
    assert link["redirect_uri"] == "http://localhost/mailoauth/callback"
    response = answer(client, admin_consent="True", tenant=TID, state=link["state"])
    assert response.status_code == 303
    assert ("success", "OAuth2 Authorization Successful.") in banners(client)
    assert idp.calls == [
        {
            "grant_type": ["client_credentials"],
            "scope": ["https://outlook.office365.com/.default"],
            "client_id": ["app-client-id"],
            "client_secret": ["app-secret"],
        }
    ]
    kind, message, _ = events(host)[-1]
    assert kind == "authorized"
    assert f"Admin consent granted in tenant {TID}" in message
    assert "IMAP.AccessAsApp" in message
    with host.app.app_context():
        ext = host.app.extensions["mailoauth"]
        token = host.ext.access_token("support")
        assert tenant_setup.token_roles(token) == ALL_ROLES
        cred = ext.db.session.scalars(sa.select(ext.models.Credential)).one()
        assert (cred.status, cred.tenant, cred.resource_owner, cred.authorized_by) == (
            "active",
            TID,
            "support@example.test",
            None,
        )
        assert ext.reveal(cred, "refresh_token") == ""
    page = client.get(MODAL + "?tab=token").get_data(as_text=True)
    assert "IMAP.AccessAsApp POP.AccessAsApp SMTP.SendAsApp" in page
    assert (
        f"Add-MailboxPermission -Identity &#39;support@example.test&#39; -User &#39;{SP_ID}&#39;"
        in page
    )
    assert 'data-mailoauth-copy="#mailoauth-setup-script"' in page
    assert "Grant admin consent again" in page


def test_a_due_application_token_is_fetched_again_with_the_client_credentials_grant(host, idp):
    client = host.app.test_client()
    link = consent_link(client)
    answer(client, admin_consent="True", tenant=TID, state=link["state"])
    assert len(idp.calls) == 1
    with host.app.app_context(), host.db.engine.begin() as conn:
        conn.execute(sa.text("update mailoauth_credential set expires_at = '2000-01-01 00:00:00'"))
    with host.app.app_context():
        token = host.ext.access_token("support")
        assert host.ext.access_token("support") == token
        assert tenant_setup.token_roles(token) == ALL_ROLES
    assert [c["grant_type"] for c in idp.calls] == [["client_credentials"]] * 2
    assert "refresh_token" not in idp.calls[-1]


@pytest.mark.parametrize(
    ("params", "text", "code"),
    [
        ({"admin_consent": "True", "tenant": OTHER_TID}, "not in " + TID, "tenant_mismatch"),
        ({"admin_consent": "False", "tenant": TID}, "does not say", "consent_not_granted"),
        ({"tenant": TID}, "does not say", "consent_not_granted"),
        ({"admin_consent": "True"}, "names no tenant ID", "consent_tenant_missing"),
        ({"admin_consent": "True", "tenant": "x' or 1=1"}, "names no tenant ID", None),
        (
            {
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent <b>now</b>.",
            },
            "User declined to consent <b>now</b>.",
            "AADSTS65004",
        ),
    ],
)
def test_bad_consent_answers_are_refused_and_store_nothing(db_host, idp, params, text, code):
    client = db_host.app.test_client()
    link = consent_link(client)
    response = answer(client, state=link["state"], **params)
    assert response.status_code == 303
    assert credentials(db_host) == []
    assert idp.calls == []
    assert [k for k, _, _ in events(db_host) if k != "config_saved"] == ["authorization_failed"]
    shown = " ".join(m for _, m in banners(client))
    assert text in shown
    if code:
        assert [c for k, _, c in events(db_host) if k == "authorization_failed"] == [code]
    # single use: the same answer again is unknown
    again = answer(client, state=link["state"], **params)
    assert again.status_code == 400
    assert "unknown or was already used" in again.get_data(as_text=True)


def test_a_consent_answer_with_a_wrong_state_is_refused(db_host, idp):
    client = db_host.app.test_client()
    consent_link(client)
    response = answer(client, admin_consent="True", tenant=TID, state="forged-state")
    assert response.status_code == 400
    assert "unknown or was already used" in response.get_data(as_text=True)
    assert credentials(db_host) == []
    assert idp.calls == []


def test_a_token_without_the_needed_role_is_refused(db_host, idp):
    idp.roles = ["POP.AccessAsApp"]  # the mailbox is read over IMAP
    client = db_host.app.test_client()
    link = consent_link(client)
    answer(client, admin_consent="True", tenant=TID, state=link["state"])
    assert credentials(db_host) == []
    (shown,) = [m for _, m in banners(client)]
    assert "lacks the role IMAP.AccessAsApp (roles: POP.AccessAsApp)" in shown
    assert "Application permissions > IMAP.AccessAsApp" in shown
    assert [c for k, _, c in events(db_host) if k == "authorization_failed"] == ["missing_role"]


def test_a_refused_client_credentials_grant_is_refused_with_guidance(db_host, idp):
    idp.error = (
        401,
        {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
            "error_codes": [7000215],
        },
    )
    client = db_host.app.test_client()
    link = consent_link(client)
    answer(client, admin_consent="True", tenant=TID, state=link["state"])
    assert credentials(db_host) == []
    (shown,) = [m for _, m in banners(client)]
    assert "refused the application token (AADSTS7000215)" in shown
    assert "not its Secret ID" in shown


# -- Test connection ---------------------------------------------------------------------------


def test_test_connection_names_the_missing_setup_step_for_application_access(
    host, idp, monkeypatch
):
    from flask_mailoauth import connections, mail

    client = host.app.test_client()
    link = consent_link(client)
    answer(client, admin_consent="True", tenant=TID, state=link["state"])
    refused = CheckResult(
        "IMAP",
        False,
        [
            CheckStep("token", True, 0.0, "ok"),
            CheckStep("connect", True, 0.0, "ok"),
            CheckStep("sign in", True, 0.0, "ok"),
            CheckStep("open INBOX", False, 0.0, "NO User is authenticated but not connected."),
        ],
    )
    monkeypatch.setattr(mail, "check_imap", lambda *args, **kwargs: refused)
    with host.app.test_request_context():
        st = host.app.extensions["mailoauth"]
        (result,) = connections.check(st, "support", "mailbox", timeout=1)
    assert "Add-MailboxPermission ... FullAccess" in result.steps[-1].guidance


def test_application_access_has_no_idle_refresh_token_warning(host, idp):
    from flask_mailoauth import accounts

    client = host.app.test_client()
    link = consent_link(client)
    answer(client, admin_consent="True", tenant=TID, state=link["state"])
    with host.app.app_context(), host.db.engine.begin() as conn:
        conn.execute(sa.text("update mailoauth_credential set issued_at = '2000-01-01 00:00:00'"))
    with host.app.test_request_context():
        st = host.app.extensions["mailoauth"]
        view = accounts.view(st, "support", "mailbox", "support@example.test", None)
    assert view.application is not None
    assert view.application.roles == tuple(ALL_ROLES)
    assert not [w for w in view.warnings if "has not been used" in w]


def test_application_access_authenticates_with_a_certificate(host, idp):
    """Client credentials signed with the account's certificate (private_key_jwt), at consent
    and when the token is due again; no secret is sent."""
    client = host.app.test_client()
    link = consent_link(
        client, client_secret="", client_auth="private_key_jwt", certificate_action="generate"
    )
    answer(client, admin_consent="True", tenant=TID, state=link["state"])
    assert ("success", "OAuth2 Authorization Successful.") in banners(client)
    with host.app.app_context(), host.db.engine.begin() as conn:
        conn.execute(sa.text("update mailoauth_credential set expires_at = '2000-01-01 00:00:00'"))
    with host.app.app_context():
        host.ext.access_token("support")
    assert [c["grant_type"] for c in idp.calls] == [["client_credentials"]] * 2
    for call in idp.calls:
        assert "client_secret" not in call
        assert call["client_assertion_type"] == [ASSERTION_TYPE]
        header = jwt.get_unverified_header(call["client_assertion"][0])
        assert {"x5t", "x5t#S256"} <= set(header)  # Microsoft wants the SHA-1 one too
        claims = jwt.decode(call["client_assertion"][0], options={"verify_signature": False})
        assert (claims["iss"], claims["sub"], claims["aud"]) == (
            "app-client-id",
            "app-client-id",
            TOKEN_URL,
        )
