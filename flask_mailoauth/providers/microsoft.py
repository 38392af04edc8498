"""Microsoft 365 (Entra ID, v2.0 endpoints) in the global and the national clouds."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import requests

from ..errors import AuthorizationFailed, MailOAuthError, ProviderFailure
from ..i18n import gettext, lazy_gettext
from ..vocabulary import AccessKind, ClientAuth, FailureKind
from .base import (
    OAUTH_ERRORS,
    ConfigField,
    Endpoints,
    ErrorAdvice,
    HTTPClient,
    Identity,
    MailServer,
    MailServers,
    Provider,
    Text,
    claim_address,
    claim_text,
    classify_oauth_error,
    diagnostic_value,
)


@dataclass(frozen=True)
class Cloud:
    """Where one Microsoft cloud signs in, which Outlook resource it scopes and serves mail from.

    ``app_resource`` is the Exchange Online resource an application (app-only) token is for.
    """

    label: Text
    login_host: str
    outlook_resource: str
    mailbox_host: str
    smtp_host: str
    app_resource: str


#: cloud id -> its hosts; the ids are the stored values of the ``cloud`` field
CLOUDS: Mapping[str, Cloud] = MappingProxyType(
    {
        "global": Cloud(
            lazy_gettext("Global (login.microsoftonline.com)"),
            "login.microsoftonline.com",
            "https://outlook.office.com/",
            "outlook.office365.com",
            "smtp.office365.com",
            "https://outlook.office365.com/",
        ),
        "gcc_high": Cloud(
            lazy_gettext("US Government GCC High"),
            "login.microsoftonline.us",
            "https://outlook.office365.us/",
            "outlook.office365.us",
            "smtp.office365.us",
            "https://outlook.office365.us/",
        ),
        "dod": Cloud(
            lazy_gettext("US Government DoD"),
            "login.microsoftonline.us",
            "https://outlook-dod.office365.us/",
            "outlook-dod.office365.us",
            "outlook-dod.office365.us",
            "https://outlook-dod.office365.us/",
        ),
        "china": Cloud(
            lazy_gettext("China (21Vianet)"),
            "login.chinacloudapi.cn",
            "https://partner.outlook.cn/",
            "partner.outlook.cn",
            "smtp.partner.outlook.cn",
            "https://partner.outlook.cn/",
        ),
    }
)

#: scopes that name no resource and do not make the token a Graph token
OIDC_SCOPES = ("offline_access", "openid", "profile", "email")
MAIL_PERMISSIONS = ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send")
#: mail protocol -> the Outlook permission a token needs for it
PROTOCOL_PERMISSIONS = MappingProxyType(
    dict(zip(("imap", "pop3", "smtp"), MAIL_PERMISSIONS, strict=True))
)
#: mail protocol -> the application permission (``roles`` claim) an app-only token needs for it
PROTOCOL_ROLES = MappingProxyType(
    {"imap": "IMAP.AccessAsApp", "pop3": "POP.AccessAsApp", "smtp": "SMTP.SendAsApp"}
)

_OUTLOOK_RESOURCES = (
    "https://outlook.office.com/",
    "https://outlook.office365.com/",
    *(c.outlook_resource for c in CLOUDS.values()),
)  # all lower case: scopes are compared case-insensitively
_GRAPH_RESOURCES = (
    "https://graph.microsoft.com/",
    "https://graph.microsoft.us/",
    "https://dod-graph.microsoft.us/",
    "https://microsoftgraph.chinacloudapi.cn/",
    "00000003-0000-0000-c000-000000000000/",
)
#: the Outlook REST API v2.0, retired by Microsoft ("The API version v2 has been depreciated")
_RETIRED_API = re.compile(r"outlook\.office(365)?\.com/api/v2\.0", re.IGNORECASE)
#: the AADSTS code Microsoft puts in an error description ("AADSTS7000215: Invalid client...")
_AADSTS = re.compile(r"\bAADSTS(\d+)")
#: the error identifiers Microsoft's JSON errors carry, and the words its error descriptions
#: name them with ("Trace ID: ...\r\nCorrelation ID: ...\r\nTimestamp: ..."), as the
#: callback receives them
_DIAGNOSTICS = (
    ("trace_id", re.compile(r"Trace ID:\s*(\S+)")),
    ("correlation_id", re.compile(r"Correlation ID:\s*(\S+)")),
    ("timestamp", re.compile(r"Timestamp:\s*(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\dZ?)")),
)
#: the host in the ``iss`` of tokens issued through a login host, where the two differ
_ISSUER_HOSTS = MappingProxyType({"login.chinacloudapi.cn": "login.partner.microsoftonline.cn"})
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_V2_PATH = "/oauth2/v2.0/"
#: tenant names that accept accounts of any (work, school or personal) tenant: nothing pinned
MULTI_TENANT = frozenset({"common", "organizations", "consumers"})
#: the id_token claims that hold the sign-in name; ``unique_name`` is never one of them
SIGN_IN_CLAIMS = ("preferred_username", "upn")
#: how to make Microsoft vouch for the ``email`` claim
UNVERIFIED_EMAIL_ADVICE = lazy_gettext(
    "Microsoft does not vouch for the id_token's email claim here (no xms_edov, and the Tenant "
    "is not pinned): sign in with the mailbox's own account, set the Tenant to your Directory "
    "(tenant) ID or verified domain (a single-tenant app), or add the xms_edov optional claim "
    "to the app registration's token configuration."
)


#: AADSTS code (and OAuth error) -> what it means and the fix; also feeds the docs' troubleshooting
#: table and the callback's error banners
ERRORS: Mapping[str, ErrorAdvice] = MappingProxyType(
    {
        **OAUTH_ERRORS,
        "invalid_client": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The client credentials were refused: check the Client ID and paste the client "
                "secret's Value (not its Secret ID); create a new secret if it expired."
            ),
        ),
        "AADSTS700082": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The refresh token expired after 90 days unused: authorize again; scheduling "
                "`flask mailoauth refresh --due` daily keeps it alive."
            ),
        ),
        "AADSTS50173": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The grant expired or was revoked (for example the password changed or sessions "
                "were revoked): authorize again."
            ),
        ),
        "AADSTS70043": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "A Conditional Access sign-in frequency policy expired the grant: authorize again, "
                "or exempt this application from the policy."
            ),
        ),
        "AADSTS65001": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The user or an administrator has not consented: grant admin consent in API "
                "permissions, then authorize again."
            ),
        ),
        "AADSTS65004": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The user declined consent: authorize again and accept, or have an administrator "
                "grant admin consent."
            ),
        ),
        "AADSTS54005": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The authorization code was already redeemed: start the authorization again."
            ),
        ),
        "AADSTS70008": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext("The authorization code or refresh token expired: authorize again."),
        ),
        "AADSTS50076": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "Multi-factor authentication is required: authorize again and complete it."
            ),
        ),
        "AADSTS50079": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The mailbox account must register for multi-factor authentication: register, then "
                "authorize again."
            ),
        ),
        "AADSTS7000222": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The client secret expired: create a new one in Certificates & secrets and paste "
                "its Value; no new consent is needed."
            ),
        ),
        "AADSTS7000215": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext("Invalid client secret: paste the secret's Value, not its Secret ID."),
        ),
        "AADSTS700027": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "Microsoft does not know the certificate: upload the .cer from the IdP Config tab "
                "under Certificates & secrets and check that its thumbprint matches."
            ),
        ),
        "AADSTS700024": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The client assertion is outside its valid time: the host's clock is wrong, set "
                "it right (NTP)."
            ),
        ),
        "AADSTS7000218": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "Microsoft expects a client secret or a certificate: set Client Authentication "
                "and paste the secret's Value or generate a certificate."
            ),
        ),
        "AADSTS700016": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The application was not found in the directory: check the Client ID, the Tenant "
                "and the Cloud."
            ),
        ),
        "AADSTS50011": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "Redirect URI mismatch: add the Callback Endpoint, exactly as shown, as a Web "
                "redirect URI of the app registration."
            ),
        ),
        "AADSTS28000": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The scopes name more than one resource: do not mix Graph scopes (User.Read, "
                "Mail.*) with Outlook scopes."
            ),
        ),
        "AADSTS70011": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "A scope is invalid: request offline_access openid profile email and the Outlook "
                "scopes (https://outlook.office.com/IMAP.AccessAsUser.All, ...)."
            ),
        ),
        "AADSTS9002325": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The redirect URI is registered as a Single-page application: register the "
                "Callback Endpoint under the Web platform instead."
            ),
        ),
        "AADSTS900144": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The request lacks a required parameter (client_id or scope): check the Client ID "
                "and the Scopes."
            ),
        ),
    }
)


def _authority(endpoint: str) -> tuple[str, str]:
    """``(base, tenant)`` of a v2.0 endpoint: ``https://host/common/oauth2/v2.0/token`` gives
    ``("https://host", "common")``; the tenant is empty when the URL is not a v2.0 endpoint."""
    parts = urlsplit(endpoint.strip())
    origin = f"{parts.scheme}://{parts.netloc}"
    prefix, found, _ = parts.path.partition(_V2_PATH)
    if not found:
        return origin, ""
    head, _, tenant = prefix.rpartition("/")
    return origin + head, tenant


def _resource(scope: str) -> str:
    """``"oidc"``, ``"outlook"``, ``"graph"`` or ``"other"``: the audience a scope asks for."""
    folded = scope.casefold()
    if folded in OIDC_SCOPES:
        return "oidc"
    if folded.startswith(_OUTLOOK_RESOURCES):
        return "outlook"
    if folded.startswith(_GRAPH_RESOURCES) or ("/" not in scope and ":" not in scope):
        return "graph"  # Microsoft reads a bare permission name as a Graph permission
    return "other"


class MicrosoftProvider(Provider):
    """Microsoft 365 mailboxes through Entra ID, identity read from the validated id_token."""

    id = "microsoft"
    display_name = "OAuth2 - Microsoft"
    access_kinds = (AccessKind.DELEGATED, AccessKind.APPLICATION)
    error_advice: ClassVar[Mapping[str, ErrorAdvice]] = ERRORS
    client_auths = (ClientAuth.SECRET_POST, ClientAuth.PRIVATE_KEY_JWT)
    certificate_sha1_header = True
    diagnostics_help = lazy_gettext(
        "Search for the Correlation ID or the Request ID (the trace ID) in the Microsoft Entra "
        "admin center, Monitoring & health > Sign-in logs (add the filter, or widen the date "
        "range to the timestamp): the log names the policy or setting that refused."
    )
    fields = (
        ConfigField(
            "cloud",
            lazy_gettext("Cloud"),
            default="global",
            kind="select",
            choices=tuple((key, cloud.label) for key, cloud in CLOUDS.items()),
            help=lazy_gettext(
                "The Microsoft cloud the tenant lives in; it picks the sign-in and mail hosts."
            ),
        ),
        ConfigField(
            "tenant",
            lazy_gettext("Tenant"),
            default="common",
            help=lazy_gettext(
                "common, or the Directory (tenant) ID or a verified domain for a single-tenant app."
            ),
        ),
        ConfigField(
            "client_id",
            lazy_gettext("Client ID"),
            required=True,
            help=lazy_gettext("The Application (client) ID of the app registration."),
        ),
        ConfigField(
            "authorization_endpoint",
            lazy_gettext("Authorization Endpoint"),
            default="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
            kind="url",
            required=True,
        ),
        ConfigField(
            "token_endpoint",
            lazy_gettext("Token Endpoint"),
            default="https://login.microsoftonline.com/common/oauth2/v2.0/token",
            kind="url",
            required=True,
        ),
        ConfigField(
            "scopes",
            lazy_gettext("Scopes"),
            default=" ".join(
                (*OIDC_SCOPES, *(f"https://outlook.office.com/{p}" for p in MAIL_PERMISSIONS))
            ),
            kind="scopes",
            help=lazy_gettext(
                "Space separated. Outlook scopes only: Graph scopes such as User.Read give a "
                "token IMAP, POP and SMTP refuse. Application access ignores them: it asks for "
                "the cloud's Exchange Online resource (https://outlook.office365.com/.default)."
            ),
        ),
        ConfigField(
            "service_principal_id",
            lazy_gettext("Service principal object ID"),
            help=lazy_gettext(
                "Application access only: the Object ID on the Overview page of the app's "
                "Enterprise application (not of its App registration); it fills the tenant "
                "setup commands."
            ),
            signed=False,
        ),
    )

    @classmethod
    def default_config(cls, cloud: str = "global", tenant: str = "common") -> dict[str, str]:
        """Endpoints and scopes for a cloud and tenant, to prefill the form when either changes."""
        if cloud not in CLOUDS:
            raise ValueError(f"Unknown cloud {cloud!r}; choose one of: {', '.join(CLOUDS)}.")
        found = CLOUDS[cloud]
        base = f"https://{found.login_host}/{tenant.strip() or 'common'}/oauth2/v2.0"
        scopes = (*OIDC_SCOPES, *(found.outlook_resource + p for p in MAIL_PERMISSIONS))
        return {
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "scopes": " ".join(scopes),
        }

    def validate(self, config: Mapping[str, str], *, allow_insecure_http: bool) -> dict[str, str]:
        """Base checks plus tenant syntax, v2.0 endpoints, one audience and ``offline_access``."""
        errors = super().validate(config, allow_insecure_http=allow_insecure_http)
        tenant = self.value(config, "tenant")
        if tenant and not _TENANT.fullmatch(tenant):
            errors.setdefault("tenant", gettext("Enter common, a tenant ID (a GUID) or a domain."))
        for name, leaf in (("authorization_endpoint", "authorize"), ("token_endpoint", "token")):
            value = self.value(config, name)
            if value and _V2_PATH not in urlsplit(value).path:
                example = f"https://login.microsoftonline.com/common/oauth2/v2.0/{leaf}"
                errors.setdefault(
                    name,
                    gettext(
                        "This is not a v2.0 endpoint: copy the OAuth 2.0 (v2) endpoints from the "
                        "app registration's Endpoints, e.g. %(example)s.",
                        example=example,
                    ),
                )
        for field in self.fields:
            if _RETIRED_API.search(config.get(field.name) or ""):
                errors[field.name] = gettext(
                    "The Outlook REST API v2.0 (outlook.office.com/api/v2.0) is retired: remove "
                    "it; the mailbox identity comes from the id_token."
                )
        if self.access(config) == AccessKind.APPLICATION:
            if tenant.casefold() in MULTI_TENANT or not tenant:
                errors.setdefault(
                    "tenant",
                    gettext(
                        "Application access needs your tenant: enter the Directory (tenant) ID "
                        "or a verified domain, not %(tenant)s.",
                        tenant=tenant or "common",
                    ),
                )
            sp_id = self.value(config, "service_principal_id")
            if sp_id and not _GUID.fullmatch(sp_id):
                errors["service_principal_id"] = gettext(
                    "Enter the Object ID, a GUID such as 6a1b2c3d-0000-4000-8000-123456789abc."
                )
        elif "scopes" not in errors:
            problem = self._scope_problem(self.scopes(config))
            if problem:
                errors["scopes"] = problem
        return errors

    def scopes(self, config: Mapping[str, str]) -> list[str]:
        """The Scopes field; with application access the cloud's Exchange resource instead."""
        if self.access(config) == AccessKind.APPLICATION:
            cloud = CLOUDS.get(self.value(config, "cloud"), CLOUDS["global"])
            return [cloud.app_resource + ".default"]
        return super().scopes(config)

    def consent_url(self, config: Mapping[str, str], *, redirect_uri: str, state: str) -> str:
        """``{authority}/{tenant}/adminconsent``, on the token endpoint's authority (the cloud's
        login host): the tenant's administrator grants the application permissions there."""
        base, in_endpoint = _authority(self.value(config, "token_endpoint"))
        if not in_endpoint or in_endpoint.casefold() in MULTI_TENANT:
            in_endpoint = self.value(config, "tenant")
        query = {"client_id": self.value(config, "client_id"), "redirect_uri": redirect_uri}
        query["state"] = state
        return f"{base}/{in_endpoint}/adminconsent?{urlencode(query)}"

    def consented_tenant(
        self, config: Mapping[str, str], args: Mapping[str, str], http: HTTPClient
    ) -> str | None:
        """Microsoft answers ``admin_consent=True&tenant={tid}``: the tenant must be the one the
        account is configured for."""
        if (args.get("admin_consent") or "").strip().casefold() != "true":
            raise AuthorizationFailed(
                gettext("The admin consent answer does not say that consent was granted."),
                gettext(
                    "Open the admin consent link again, signed in as a Global or Privileged Role "
                    "Administrator of the tenant, and accept."
                ),
                code="consent_not_granted",
            )
        tenant = (args.get("tenant") or "").strip()
        if not _GUID.fullmatch(tenant):
            raise AuthorizationFailed(
                gettext("The admin consent answer names no tenant ID."),
                gettext("Open the admin consent link again."),
                code="consent_tenant_missing",
            )
        pinned = self._pinned_tenant_id(config, http)
        if pinned is not None and pinned.casefold() != tenant.casefold():
            raise AuthorizationFailed(
                gettext(
                    "Admin consent was granted in tenant %(tenant)s, not in %(pinned)s, the "
                    "tenant this account is configured for.",
                    tenant=tenant,
                    pinned=pinned,
                ),
                gettext(
                    "Sign in to the admin consent page as an administrator of your own tenant; "
                    "if the Tenant is wrong, correct it on the IdP Config tab."
                ),
                code="tenant_mismatch",
            )
        return tenant

    def required_roles(self, config: Mapping[str, str], protocols: Collection[str]) -> list[str]:
        """``IMAP.AccessAsApp``, ``POP.AccessAsApp``, ``SMTP.SendAsApp`` by protocol."""
        return [PROTOCOL_ROLES[p] for p in protocols if p in PROTOCOL_ROLES]

    @staticmethod
    def _scope_problem(scopes: list[str]) -> str | None:
        """Why these scopes cannot yield a refreshable Outlook token, or ``None``."""
        by_resource: dict[str, list[str]] = {}
        for scope in scopes:
            by_resource.setdefault(_resource(scope), []).append(scope)
        graph, outlook = by_resource.get("graph", []), by_resource.get("outlook", [])
        if graph and outlook:
            return gettext(
                "One access token has one audience: Graph scopes (%(graph)s) cannot be mixed with "
                "Outlook scopes (%(outlook)s). Remove %(graph)s; a Graph permission such as "
                "User.Read stays in the app registration but is not requested here.",
                graph=", ".join(graph),
                outlook=", ".join(outlook),
            )
        if not outlook:
            return gettext(
                "Add the Outlook scopes of the protocols you use, e.g. "
                "https://outlook.office.com/IMAP.AccessAsUser.All and "
                "https://outlook.office.com/SMTP.Send; IMAP, POP and SMTP accept no other token."
            )
        if "offline_access" not in {s.casefold() for s in scopes}:
            return gettext("Add offline_access: without it Microsoft issues no refresh token.")
        return None

    def complete(self, config: Mapping[str, str], http: HTTPClient) -> dict[str, str]:
        """Endpoints and scopes from the cloud and tenant, unless the admin typed others.

        A blank field, or one still holding the prefilled global/common value, takes the
        chosen cloud's and tenant's value: picking "GCC High" or a tenant id is enough.
        """
        completed = dict(config)
        cloud = self.value(config, "cloud") or "global"
        derived = self.default_config(cloud, config.get("tenant") or "common")
        prefilled = self.default_config("global", "common")
        for name, value in derived.items():
            current = self.value(completed, name)
            if not current or current == prefilled.get(name):
                completed[name] = value
        return completed

    def endpoints(self, config: Mapping[str, str]) -> Endpoints:
        """The configured endpoints; the JWKS sits under the same authority and tenant."""
        token = self.value(config, "token_endpoint")
        base, tenant = _authority(token)
        return Endpoints(
            authorization=self.value(config, "authorization_endpoint"),
            token=token,
            jwks_uri=f"{base}/{tenant}/discovery/v2.0/keys" if tenant else None,
        )

    def expected_issuer(self, config: Mapping[str, str], claims: Mapping[str, Any]) -> str | None:
        """Microsoft's multi-tenant issuer ``{authority}/{tid}/v2.0``, pinned to a GUID tenant."""
        parts = urlsplit(self.value(config, "token_endpoint"))
        host = parts.hostname or ""
        if host in _ISSUER_HOSTS:
            parts = parts._replace(netloc=parts.netloc.replace(host, _ISSUER_HOSTS[host], 1))
        base, tenant = _authority(parts.geturl())
        tid = str(claims.get("tid") or "")
        if _GUID.fullmatch(tenant) and tenant.casefold() != tid.casefold():
            tid = tenant  # a token from any other tenant will not carry this issuer
        return f"{base}/{tid or '{tenantid}'}/v2.0"

    def authorize_params(self, config: Mapping[str, str]) -> dict[str, str]:
        """Let the admin pick the mailbox account rather than reuse the browser's session."""
        return {"prompt": "select_account"}

    def refresh_params(self, config: Mapping[str, str]) -> dict[str, str]:
        """Microsoft wants the scopes again on refresh."""
        return {"scope": " ".join(self.scopes(config))}

    def identity(
        self,
        config: Mapping[str, str],
        *,
        claims: Mapping[str, Any] | None,
        token: Mapping[str, Any],
        http: HTTPClient,
    ) -> Identity:
        """Read the identity from the validated id_token only; never Outlook REST or Graph.

        The sign-in name (``preferred_username``, ``upn``) always counts. ``email`` counts only
        when Microsoft vouches for it: ``xms_edov`` is true, or the token comes from the tenant
        the account is pinned to. ``unique_name`` never counts. A pinned account refuses a
        token from any other tenant.
        """
        tid = claim_text(claims, "tid")
        pinned = self._pinned_tenant_id(config, http)
        if pinned is not None and (tid or "").casefold() != pinned.casefold():
            raise AuthorizationFailed(
                gettext(
                    "The id_token comes from tenant %(tenant)s, not from %(pinned)s, the tenant "
                    "this account is pinned to.",
                    tenant=tid or gettext("(none)"),
                    pinned=pinned,
                ),
                gettext(
                    "Sign in with an account of your own tenant; if the Tenant is wrong, correct "
                    "it on the IdP Config tab."
                ),
                code="tenant_mismatch",
            )
        sign_in = [a for k in SIGN_IN_CLAIMS if (a := claim_address(claims, k))]
        email = claim_address(claims, "email")
        vouched = (claims or {}).get("xms_edov") is True or pinned is not None
        verified = [*sign_in, *([email] if email and vouched else [])]
        unverified = (email,) if email and not vouched else ()
        return Identity(
            email=verified[0] if verified else None,
            addresses=tuple(verified),
            subject=claim_text(claims, "oid") or claim_text(claims, "sub"),
            tenant=tid,
            name=claim_text(claims, "name"),
            unverified=unverified,
            advice=str(UNVERIFIED_EMAIL_ADVICE) if unverified else "",
        )

    def _pinned_tenant_id(self, config: Mapping[str, str], http: HTTPClient) -> str | None:
        """The tenant id a single-tenant account is pinned to; ``None`` for common & co.

        The endpoints' tenant wins over the Tenant field (it is where the sign-in happens). A
        domain is resolved through the tenant's discovery document, whose issuer names the id.
        """
        base, in_endpoint = _authority(config.get("token_endpoint") or "")
        field = self.value(config, "tenant")
        tenant = next(
            (t for t in (in_endpoint, field) if t and t.casefold() not in MULTI_TENANT), None
        )
        if tenant is None or _GUID.fullmatch(tenant):
            return tenant
        url = f"{base}/{tenant}/v2.0/.well-known/openid-configuration"
        unresolved = AuthorizationFailed(
            gettext(
                "The tenant %(tenant)s could not be resolved to its tenant id through %(url)s.",
                tenant=tenant,
                url=url,
            ),
            gettext(
                "Set the Tenant (and the endpoints) to the Directory (tenant) ID shown on the app "
                "registration's Overview page, or try again when the identity provider answers."
            ),
            code="tenant_unresolved",
        )
        try:
            response = http.get(url, headers={"Accept": "application/json"})
            document = response.json() if response.status_code == 200 else None
        except (requests.RequestException, MailOAuthError, ValueError, RecursionError):
            raise unresolved from None
        issuer = document.get("issuer") if isinstance(document, Mapping) else None
        path = urlsplit(issuer).path.strip("/").split("/") if isinstance(issuer, str) else []
        if len(path) != 2 or path[1] != "v2.0" or not _GUID.fullmatch(path[0]):
            raise unresolved
        return path[0]

    def required_scopes(self, config: Mapping[str, str], protocols: Collection[str]) -> list[str]:
        """The Outlook permission of each protocol, on the resource the account requests."""
        cloud = CLOUDS.get(self.value(config, "cloud"), CLOUDS["global"])
        requested = {s.casefold(): s for s in self.scopes(config)}
        required = []
        for protocol in protocols:
            permission = PROTOCOL_PERMISSIONS[protocol]
            found = [s for f, s in requested.items() if f.endswith("/" + permission.casefold())]
            required.append(found[0] if found else cloud.outlook_resource + permission)
        return required

    def missing_scopes(
        self, config: Mapping[str, str], granted: Collection[str], protocols: Collection[str]
    ) -> list[str]:
        """Compared case-insensitively: Microsoft does not keep the requested spelling."""
        have = {s.casefold() for s in granted}
        return [s for s in self.required_scopes(config, protocols) if s.casefold() not in have]

    def mail_servers(self, config: Mapping[str, str]) -> MailServers:
        """Exchange Online's IMAP, POP3 and SMTP submission hosts in the configured cloud."""
        cloud = CLOUDS.get(self.value(config, "cloud"), CLOUDS["global"])
        return MailServers(
            imap=MailServer(cloud.mailbox_host, 993, "ssl"),
            pop3=MailServer(cloud.mailbox_host, 995, "ssl"),
            smtp=MailServer(cloud.smtp_host, 587, "starttls"),
        )

    def classify_error(
        self,
        status: int | None,
        body: Mapping[str, Any] | None,
        *,
        retry_after: float | None = None,
    ) -> ProviderFailure:
        """Classify by the first AADSTS code in ``error_codes``, else by the OAuth ``error``."""
        body = dict(body or {})
        codes = body.get("error_codes") or []
        code = f"AADSTS{codes[0]}" if isinstance(codes, list) and codes else None
        description = str(body.get("error_description") or "").strip()
        if code and description.startswith(f"{code}:"):
            description = description[len(code) + 1 :]
        diagnostics = self.diagnostics(body)
        body["error_description"] = description.splitlines()[0] if description else ""
        return classify_oauth_error(
            status,
            body,
            retry_after=retry_after,
            code=code,
            advice=self.advice,
            diagnostics=diagnostics,
        )

    def diagnostics(self, body: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
        """Microsoft's ``trace_id``, ``correlation_id`` and ``timestamp``: the JSON fields of a
        token error, else the lines of the description that name them (a callback error)."""
        body = body or {}
        description = str(body.get("error_description") or "")
        found = []
        for name, in_description in _DIAGNOSTICS:
            value = diagnostic_value(body.get(name))
            if value is None and (match := in_description.search(description)):
                value = diagnostic_value(match.group(1))
            if value is not None:
                found.append((name, value))
        return tuple(found)

    def callback_error_code(self, error: str, description: str) -> str:
        """The first AADSTS code in the description (it names the precise cause), else ``error``."""
        match = _AADSTS.search(description)
        return f"AADSTS{match.group(1)}" if match else error

    def advice(self, code: str) -> ErrorAdvice | None:
        """Look ``code`` up as given, accepting ``700082`` and ``aadsts700082`` for AADSTS700082."""
        normalized = code.strip()
        if normalized.isdigit():
            normalized = f"AADSTS{normalized}"
        elif normalized.upper().startswith("AADSTS"):
            normalized = normalized.upper()
        return self.error_advice.get(normalized)

    def warnings(self, config: Mapping[str, str]) -> list[str]:
        """Warn when the Tenant field and the endpoints name different tenants."""
        tenant = self.value(config, "tenant")
        _, in_endpoint = _authority(config.get("token_endpoint") or "")
        if tenant and in_endpoint and tenant.casefold() != in_endpoint.casefold():
            return [
                gettext(
                    "The Tenant is %(tenant)s but the endpoints use %(endpoint_tenant)s: update "
                    "the endpoints (or the Tenant) so they agree.",
                    tenant=tenant,
                    endpoint_tenant=in_endpoint,
                )
            ]
        return []
