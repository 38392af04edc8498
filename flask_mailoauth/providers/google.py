"""Google Workspace and Gmail mailboxes."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

import jwt

from ..errors import ProviderFailure
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
    is_loopback_host,
)

#: the one scope Gmail's IMAP, POP and SMTP accept
MAIL_SCOPE = "https://mail.google.com/"

#: OAuth error -> what it means at Google and the fix
ERRORS: Mapping[str, ErrorAdvice] = MappingProxyType(
    {
        **OAUTH_ERRORS,
        "invalid_grant": ErrorAdvice(
            FailureKind.REAUTHORIZE,
            lazy_gettext(
                "The grant was revoked, the password changed, or the app is in Testing and its "
                "7-day refresh token expired: authorize again (and publish the app)."
            ),
        ),
        "invalid_client": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The client credentials were refused: copy the Client ID and secret of the OAuth "
                "client (APIs & Services > Credentials) again."
            ),
        ),
        "admin_policy_enforced": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "A Google Workspace admin policy blocks this app: trust it in the Admin console "
                "(Security > API controls), then authorize again."
            ),
        ),
        "org_internal": ErrorAdvice(
            FailureKind.CONFIGURATION,
            lazy_gettext(
                "The app is Internal to another Workspace organization: sign in with an account of "
                "that organization, or make the app External."
            ),
        ),
    }
)


#: Google's OpenID Connect issuer, signing keys, userinfo and revocation endpoints
GOOGLE_ISSUER = "https://accounts.google.com"
GOOGLE_JWKS = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_USERINFO = "https://openidconnect.googleapis.com/v1/userinfo"
GOOGLE_REVOCATION = "https://oauth2.googleapis.com/revoke"
#: the same endpoints' paths under a loopback test IdP's origin (see :meth:`endpoints`)
LOCAL_PATHS = {"jwks": "/oauth2/v3/certs", "userinfo": "/v1/userinfo", "revocation": "/revoke"}
#: RFC 7523's grant type, as Google's token endpoint takes a service account's assertion
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: how long a service account's assertion is valid (Google accepts at most an hour)
ASSERTION_LIFETIME = 3600


@dataclass(frozen=True)
class ServiceAccountKey:
    """What a service account's JSON key holds that the JWT-bearer grant needs."""

    client_email: str
    client_id: str
    private_key_id: str
    private_key: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> ServiceAccountKey:
        """The key in ``text`` (the JSON file Google Cloud downloads); :class:`ValueError`
        saying what is wrong otherwise."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError(
                gettext("This is not a JSON key: paste the whole file Google Cloud downloaded.")
            ) from None
        if not isinstance(data, dict) or data.get("type") != "service_account":
            raise ValueError(
                gettext(
                    "This is not a service account key (its type is not service_account): "
                    "create a JSON key under IAM & Admin > Service accounts > Keys."
                )
            )
        fields = ("client_email", "client_id", "private_key_id", "private_key")
        values = {name: data.get(name) for name in fields}
        missing = [
            name for name, value in values.items() if not isinstance(value, str) or not value
        ]
        if missing:
            raise ValueError(
                gettext(
                    "The key lacks %(fields)s: download a new JSON key.", fields=", ".join(missing)
                )
            )
        key = cls(**{name: str(value) for name, value in values.items()})
        try:
            jwt.encode({"probe": 1}, key.private_key, algorithm="RS256")
        except (jwt.PyJWTError, ValueError, TypeError):
            raise ValueError(
                gettext("The key's private_key is not a usable RSA key: download a new JSON key.")
            ) from None
        return key


#: Google refresh tokens of apps in Testing mode stop working after this long
TESTING_REFRESH_TOKEN_LIFETIME = timedelta(days=7)


class GoogleProvider(Provider):
    """Gmail and Google Workspace mailboxes; identity from the id_token's verified email."""

    id = "google"
    display_name = "OAuth2 - Google"
    access_kinds = (AccessKind.DELEGATED, AccessKind.SERVICE_ACCOUNT)
    error_advice: ClassVar[Mapping[str, ErrorAdvice]] = ERRORS
    client_auths = (ClientAuth.SECRET_POST, ClientAuth.SECRET_BASIC)
    fields = (
        ConfigField(
            "client_id",
            lazy_gettext("Client ID"),
            required=True,
            help=lazy_gettext(
                "The Client ID of a Web application OAuth client; for a service account, the "
                "service account's Client ID (the number in its JSON key)."
            ),
        ),
        ConfigField(
            "authorization_endpoint",
            lazy_gettext("Authorization Endpoint"),
            default="https://accounts.google.com/o/oauth2/v2/auth",
            kind="url",
            required=True,
        ),
        ConfigField(
            "token_endpoint",
            lazy_gettext("Token Endpoint"),
            default="https://oauth2.googleapis.com/token",
            kind="url",
            required=True,
        ),
        ConfigField(
            "scopes",
            lazy_gettext("Scopes"),
            default=f"openid email {MAIL_SCOPE}",
            kind="scopes",
            help=lazy_gettext("Space separated; IMAP, POP and SMTP need https://mail.google.com/."),
        ),
        ConfigField(
            "publishing_status",
            lazy_gettext("Publishing Status"),
            default="production",
            kind="select",
            choices=(
                ("production", lazy_gettext("In production")),
                ("testing", lazy_gettext("Testing (refresh tokens expire after 7 days)")),
            ),
            help=lazy_gettext(
                "As shown on the OAuth consent screen page of the Google Cloud console."
            ),
            signed=False,
        ),
    )

    def validate(self, config: Mapping[str, str], *, allow_insecure_http: bool) -> dict[str, str]:
        """Base checks plus the Gmail scope and the scopes that reveal who authorized; a
        loopback (test) IdP only with ``MAILOAUTH_ALLOW_INSECURE_HTTP``."""
        errors = super().validate(config, allow_insecure_http=allow_insecure_http)
        if self.access(config) == AccessKind.SERVICE_ACCOUNT:
            return errors  # the assertion asks for the mail scope alone; nothing to check
        scopes = set(self.scopes(config))
        if MAIL_SCOPE not in scopes:
            errors.setdefault(
                "scopes",
                gettext(
                    "Add %(scope)s: Gmail's IMAP, POP and SMTP accept no other scope.",
                    scope=MAIL_SCOPE,
                ),
            )
        elif not {"openid", "email"} <= scopes:
            errors.setdefault(
                "scopes",
                gettext("Add openid and email: without them the mailbox address cannot be read."),
            )
        if self._local(config) and not allow_insecure_http:
            errors.setdefault(
                "token_endpoint",
                gettext(
                    "A loopback token endpoint is a local test IdP; set "
                    "MAILOAUTH_ALLOW_INSECURE_HTTP to use one."
                ),
            )
        return errors

    def endpoints(self, config: Mapping[str, str]) -> Endpoints:
        """The configured authorize/token endpoints and Google's fixed OIDC endpoints.

        A token endpoint on a loopback host is a local Google-shaped test IdP (it validates
        only with ``MAILOAUTH_ALLOW_INSECURE_HTTP``, and only then may IdP calls reach
        loopback): issuer, keys, userinfo and revocation are then Google's paths under its
        origin.
        """
        token = self.value(config, "token_endpoint")
        endpoints = Endpoints(
            authorization=self.value(config, "authorization_endpoint"),
            token=token,
            issuer=GOOGLE_ISSUER,
            jwks_uri=GOOGLE_JWKS,
            userinfo=GOOGLE_USERINFO,
            revocation=GOOGLE_REVOCATION,
        )
        if not self._local(config):
            return endpoints
        parts = urlsplit(token)
        origin = f"{parts.scheme}://{parts.netloc}"
        return replace(
            endpoints,
            issuer=origin,
            jwks_uri=origin + LOCAL_PATHS["jwks"],
            userinfo=origin + LOCAL_PATHS["userinfo"],
            revocation=origin + LOCAL_PATHS["revocation"],
        )

    def _local(self, config: Mapping[str, str]) -> bool:
        """Whether the token endpoint is on a loopback host: a local test IdP."""
        return is_loopback_host(urlsplit(self.value(config, "token_endpoint")).hostname)

    def required_scopes(self, config: Mapping[str, str], protocols: Collection[str]) -> list[str]:
        """Gmail's one mail scope serves IMAP, POP and SMTP alike."""
        return [MAIL_SCOPE] if protocols else []

    def scopes(self, config: Mapping[str, str]) -> list[str]:
        """The Scopes field; a service account asks for the mail scope alone."""
        if self.access(config) == AccessKind.SERVICE_ACCOUNT:
            return [MAIL_SCOPE]
        return super().scopes(config)

    def secret_problem(self, config: Mapping[str, str], secret: str) -> str | None:
        """A service account's secret is its JSON key, of the configured Client ID."""
        if self.access(config) != AccessKind.SERVICE_ACCOUNT:
            return None
        try:
            key = ServiceAccountKey.parse(secret)
        except ValueError as exc:
            return str(exc)
        if key.client_id != self.value(config, "client_id"):
            return gettext(
                "This key belongs to the service account with Client ID %(key)s, not %(field)s: "
                "paste the key of the Client ID above, or correct the Client ID.",
                key=key.client_id,
                field=self.value(config, "client_id"),
            )
        return None

    def token_grant(
        self, config: Mapping[str, str], *, refresh_token: str, client_secret: str, mailbox: str
    ) -> dict[str, str]:
        """A service account's JWT-bearer grant (domain-wide delegation): an assertion signed
        with its key, naming the mailbox as ``sub`` and the mail scope."""
        if self.access(config) != AccessKind.SERVICE_ACCOUNT:
            return super().token_grant(
                config, refresh_token=refresh_token, client_secret=client_secret, mailbox=mailbox
            )
        key = ServiceAccountKey.parse(client_secret)
        now = int(time.time())
        claims = {
            "iss": key.client_email,
            "sub": mailbox,
            "scope": MAIL_SCOPE,
            "aud": self.value(config, "token_endpoint"),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": key.private_key_id}
        assertion = jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)
        return {"grant_type": JWT_BEARER, "assertion": assertion}

    def explain(self, config: Mapping[str, str], failure: ProviderFailure) -> ProviderFailure:
        """A service account refused as ``unauthorized_client`` lacks domain-wide delegation:
        say exactly what to paste into the Admin console."""
        if (
            self.access(config) != AccessKind.SERVICE_ACCOUNT
            or failure.code != "unauthorized_client"
        ):
            return failure
        return replace(
            failure,
            guidance=gettext(
                "Domain-wide delegation is missing: in the Google Admin console open Security > "
                "Access and data control > API controls > Manage Domain Wide Delegation, Add new "
                "with Client ID %(client_id)s and OAuth scope %(scope)s, then Submit again.",
                client_id=self.value(config, "client_id"),
                scope=MAIL_SCOPE,
            ),
        )

    def authorize_params(self, config: Mapping[str, str]) -> dict[str, str]:
        """Ask for a refresh token, and for consent so that Google issues one every time."""
        return {"access_type": "offline", "prompt": "consent"}

    def identity(
        self,
        config: Mapping[str, str],
        *,
        claims: Mapping[str, Any] | None,
        token: Mapping[str, Any],
        http: HTTPClient,
    ) -> Identity:
        """The id_token's email, counted only when Google marks it verified; ``hd`` as tenant."""
        return Identity.from_verified_email(claims, tenant=(claims or {}).get("hd"))

    def mail_servers(self, config: Mapping[str, str]) -> MailServers:
        """Gmail's IMAP, POP3 and SMTP submission servers."""
        return MailServers(
            imap=MailServer("imap.gmail.com", 993, "ssl"),
            pop3=MailServer("pop.gmail.com", 995, "ssl"),
            smtp=MailServer("smtp.gmail.com", 587, "starttls"),
        )

    def refresh_token_lifetime(self, config: Mapping[str, str]) -> timedelta | None:
        """Seven days for apps in Testing; unbounded in production."""
        return TESTING_REFRESH_TOKEN_LIFETIME if self._testing(config) else None

    def _testing(self, config: Mapping[str, str]) -> bool:
        return self.value(config, "publishing_status") == "testing"

    def warnings(self, config: Mapping[str, str]) -> list[str]:
        """Warn that apps in Testing lose their grant every 7 days."""
        if self._testing(config):
            return [
                gettext(
                    "Apps in Testing get refresh tokens that expire after 7 days: publish the app "
                    "(In production) on the OAuth consent screen page, then authorize again."
                )
            ]
        return []
