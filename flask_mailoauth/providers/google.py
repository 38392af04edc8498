"""Google Workspace and Gmail mailboxes."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any, ClassVar

from ..i18n import gettext, lazy_gettext
from ..vocabulary import ClientAuth, FailureKind
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


#: Google refresh tokens of apps in Testing mode stop working after this long
TESTING_REFRESH_TOKEN_LIFETIME = timedelta(days=7)


class GoogleProvider(Provider):
    """Gmail and Google Workspace mailboxes; identity from the id_token's verified email."""

    id = "google"
    display_name = "OAuth2 - Google"
    error_advice: ClassVar[Mapping[str, ErrorAdvice]] = ERRORS
    client_auths = (ClientAuth.SECRET_POST, ClientAuth.SECRET_BASIC)
    fields = (
        ConfigField(
            "client_id",
            lazy_gettext("Client ID"),
            required=True,
            help=lazy_gettext("The Client ID of a Web application OAuth client."),
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
        """Base checks plus the Gmail scope and the scopes that reveal who authorized."""
        errors = super().validate(config, allow_insecure_http=allow_insecure_http)
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
        return errors

    def endpoints(self, config: Mapping[str, str]) -> Endpoints:
        """The configured authorize/token endpoints and Google's fixed OIDC endpoints."""
        return Endpoints(
            authorization=self.value(config, "authorization_endpoint"),
            token=self.value(config, "token_endpoint"),
            issuer="https://accounts.google.com",
            jwks_uri="https://www.googleapis.com/oauth2/v3/certs",
            userinfo="https://openidconnect.googleapis.com/v1/userinfo",
            revocation="https://oauth2.googleapis.com/revoke",
        )

    def required_scopes(self, config: Mapping[str, str], protocols: Collection[str]) -> list[str]:
        """Gmail's one mail scope serves IMAP, POP and SMTP alike."""
        return [MAIL_SCOPE] if protocols else []

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
