"""Drive a host app against the hostile IdP, checking the rules every hostile test shares.

Each check feeds :data:`~peers.hostile.FIGURES`: every product answer is checked for a
500, every refused answer compares the stored credentials before and after, and at the end of
the test every page, banner and log line is scanned for the test's secrets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from flask_mailoauth.errors import MailOAuthError
from flask_mailoauth.models import utcnow
from flask_mailoauth.state import state
from peers.hostile import CLIENT_ID, FIGURES, HostileIdP

if TYPE_CHECKING:
    from .conftest import Host

MODAL = "/mailoauth/support/mailbox"
HOST_PAGE = "http://localhost/admin/emails/support"
MS_SCOPES = "offline_access openid profile email https://outlook.office.com/IMAP.AccessAsUser.All"
#: the columns that hold the grant: a refused answer must leave every one of them as it was
GRANT_COLUMNS = (
    "uid",
    "access_token",
    "refresh_token",
    "token_type",
    "expires_at",
    "scope",
    "audience",
    "resource_owner",
    "authorized_by",
    "subject",
    "tenant",
    "config_signature",
    "issued_at",
    "refreshed_at",
    "refresh_token_issued_at",
)
_BANNER = re.compile(r'class="mailoauth-banner mailoauth-banner-(\w+)"[^>]*>([^<]*)<')


@dataclass(frozen=True)
class Outcome:
    """What the admin saw: ``kind`` is ``success`` or ``error``; ``text`` the banner."""

    kind: str
    text: str

    @property
    def refused(self) -> bool:
        return self.kind == "error"


@dataclass
class Driver:
    """A host app, its test client and the hostile IdP, with the shared checks."""

    host: Host
    idp: HostileIdP
    client: FlaskClient
    db_url: str
    shown: list[str] = field(default_factory=list)
    #: a credential row a test restores before each of its examples
    baseline: dict[str, Any] | None = None

    # -- what every answer must satisfy -----------------------------------------------------
    def send(self, method: str, url: str, **kwargs: Any) -> Any:
        """One request through the test client, checked: an exception that escapes the view
        (``TESTING`` propagates it instead of answering 500) counts as a 500."""
        try:
            response = self.client.open(url, method=method, **kwargs)
        except Exception:
            FIGURES.bump("statuses_checked")
            FIGURES.bump("server_errors")
            raise
        return self.checked(response)

    def checked(self, response: Any) -> Any:
        """Count and check one answer of the product: never a 500."""
        FIGURES.bump("statuses_checked")
        if response.status_code >= 500:
            FIGURES.bump("server_errors")
        self.shown.append(response.get_data(as_text=True))
        self.shown.append(response.headers.get("Location", ""))
        assert response.status_code < 500, response.get_data(as_text=True)[:2000]
        return response

    def unchanged(self, before: Any, after: Any) -> bool:
        """Count one before/after comparison of the stored credentials after a refusal."""
        FIGURES.bump("comparisons")
        if before != after:
            FIGURES.bump("credentials_changed")
        return before == after

    def scan(self, *texts: str) -> list[str]:
        """The test's secrets found in ``texts`` and everything the product showed (counted)."""
        haystack = "\n".join((*self.shown, *texts))
        FIGURES.bump("scans")
        found = [s for s in self.idp.secrets() if s in haystack]
        FIGURES.bump("secrets_found", len(found))
        return found

    # -- the modal ---------------------------------------------------------------------------
    def csrf(self, provider: str = "generic") -> str:
        page = self.client.get(f"{MODAL}?provider={provider}").get_data(as_text=True)
        return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)

    def generic_fields(self, **fields: Any) -> dict[str, Any]:
        url = self.idp.url
        return {
            "idp_issuer": url,
            "idp_client_id": CLIENT_ID,
            "idp_authorization_endpoint": f"{url}/authorize",
            "idp_token_endpoint": f"{url}/token",
            "idp_jwks_uri": f"{url}/jwks",
            "idp_scopes": "openid email offline_access",
            "idp_email_attribute": "email",
            **fields,
        }

    def microsoft_fields(self, tenant: str = "common", **fields: Any) -> dict[str, Any]:
        base = f"{self.idp.url}/{tenant}/oauth2/v2.0"
        return {
            "idp_cloud": "global",
            "idp_tenant": tenant,
            "idp_client_id": CLIENT_ID,
            "idp_authorization_endpoint": f"{base}/authorize",
            "idp_token_endpoint": f"{base}/token",
            "idp_scopes": MS_SCOPES,
            **fields,
        }

    def save(self, provider: str = "generic", **fields: Any) -> Any:
        """Submit the modal; ``fields`` are the ``idp_*`` fields (a value ``None`` is left out)."""
        FIGURES.bump("inputs")
        data = {
            "csrf_token": self.csrf(provider),
            "provider": provider,
            "enabled": "1",
            "name": "support@example.test (mailbox)",
            "strict_matching": "y",
            "client_secret": self.idp.client_secret,
            **fields,
        }
        data = {k: v for k, v in data.items() if v is not None}
        return self.send("POST", MODAL, data=data, headers={"Referer": HOST_PAGE})

    def start(self, provider: str = "generic", **fields: Any) -> dict[str, str]:
        """Save and return the authorize URL's query (the IdP's nonce is set from it)."""
        if not fields:
            fields = self.generic_fields() if provider == "generic" else self.microsoft_fields()
        response = self.save(provider, **fields)
        assert response.status_code == 303, response.get_data(as_text=True)[:2000]
        return self._query(response)

    def reauthorize(self) -> dict[str, str]:
        """Start a new authorization of the saved account."""
        data = {"csrf_token": self.csrf()}
        response = self.send("POST", f"{MODAL}/authorize", data=data)
        assert response.status_code == 303
        return self._query(response)

    def _query(self, response: Any) -> dict[str, str]:
        query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
        self.idp.nonce = query.get("nonce")
        return query

    def callback(self, query: dict[str, str], **extra: Any) -> Outcome:
        """Come back from the IdP with a code; what the admin was shown."""
        FIGURES.bump("inputs")
        params = {"code": "hostile-code", "state": query.get("state", ""), **extra}
        params = {k: v for k, v in params.items() if v is not None}
        response = self.send("GET", "/mailoauth/callback?" + urlencode(params))
        if response.status_code == 400:
            return Outcome("error", response.get_data(as_text=True))
        assert response.status_code == 303
        with self.client.session_transaction() as session:
            flashes = session.pop("_flashes", [])
        self.shown.extend(text for _, text in flashes)
        kinds = {kind for kind, _ in flashes}
        kind = "error" if "error" in kinds or "success" not in kinds else "success"
        return Outcome(kind, " ".join(text for _, text in flashes))

    def authorize(self, provider: str = "generic", **fields: Any) -> None:
        """A first authorization with the IdP behaving; it must succeed."""
        outcome = self.callback(self.start(provider, **fields))
        assert outcome.kind == "success", outcome.text
        assert self.rows()

    def refresh_now(self) -> Outcome:
        """Press "Refresh now" on the Token tab."""
        FIGURES.bump("inputs")
        data = {"csrf_token": self.csrf()}
        response = self.send("POST", f"{MODAL}/refresh", data=data)
        banners = _BANNER.findall(response.get_data(as_text=True))
        assert banners, "the Token tab shows no outcome"
        kind, text = banners[0]
        return Outcome("success" if kind == "success" else "error", text)

    def delete_token(self) -> Outcome:
        """Press Delete Token; the banner shown back on the host's page."""
        FIGURES.bump("inputs")
        response = self.send("POST", f"{MODAL}/delete", data={"csrf_token": self.csrf()})
        assert response.status_code == 303
        with self.client.session_transaction() as session:
            flashes = session.pop("_flashes", [])
        self.shown.extend(text for _, text in flashes)
        (kind, text), *_ = flashes
        return Outcome("success" if kind == "success" else "error", text)

    # -- the API and the database ------------------------------------------------------------
    def access_token(self) -> str | MailOAuthError:
        """``ext.access_token("support")``: the token, or the typed error it raised."""
        return self.access_token_of(self.host)

    def access_token_of(self, host: Host) -> str | MailOAuthError:
        """``access_token()`` of another host on the same database (another worker)."""
        FIGURES.bump("inputs")
        with host.app.app_context():
            try:
                return host.ext.access_token("support")
            except MailOAuthError as exc:
                self.shown.append(str(exc))
                return exc

    def rows(self) -> list[dict[str, Any]]:
        """Every credential row, every column."""
        with self.host.app.app_context(), self.host.db.engine.connect() as conn:
            result = conn.execute(sa.text("select * from mailoauth_credential order by id"))
            return [dict(r) for r in result.mappings()]

    def account_config(self) -> dict[str, Any]:
        """The stored IdP Config of the mailbox account."""
        with self.host.app.app_context(), self.host.db.engine.connect() as conn:
            result = conn.execute(
                sa.text("select config from mailoauth_account where key = 'support'")
            )
            config = result.scalar_one()
        return json.loads(config) if isinstance(config, str) else dict(config)

    def grant(self) -> list[dict[str, Any]]:
        """The grant columns of every credential row."""
        return [{k: row[k] for k in GRANT_COLUMNS} for row in self.rows()]

    def lease(self) -> Any:
        """The stored ``refresh_lease_until`` (None when no refresh holds the lease)."""
        return self.lease_until()

    def lease_until(self) -> datetime | None:
        with self.host.app.app_context():
            st = state()
            credential = st.db.session.execute(sa.select(st.models.Credential)).scalar_one()
            value = credential.refresh_lease_until
            st.db.session.remove()
            return value

    def make_due(self) -> None:
        """Make the stored access token expired, and forget it in the process cache."""
        with self.host.app.app_context():
            st = state()
            credential = st.models.Credential
            st.db.session.execute(
                sa.update(credential).values(expires_at=utcnow() - timedelta(minutes=1))
            )
            st.db.session.commit()
            st.db.session.remove()
            st.cache.clear()

    def stored_refresh_token(self) -> str:
        with self.host.app.app_context():
            st = state()
            credential = st.db.session.execute(sa.select(st.models.Credential)).scalar_one()
            token = st.reveal(credential, "refresh_token")
            st.db.session.remove()
            return token


def attempt_refresh(driver: Driver) -> tuple[str | MailOAuthError, Outcome]:
    """Refresh through ``access_token()`` then "Refresh now", checking on each that the lease is
    released and that the grant is what it was; returns both outcomes."""
    driver.make_due()
    before = driver.grant()
    result = driver.access_token()
    assert driver.lease() is None, "access_token() left the refresh lease behind"
    outcome = driver.refresh_now()
    assert driver.lease() is None, '"Refresh now" left the refresh lease behind'
    if isinstance(result, MailOAuthError) and outcome.refused:
        assert driver.unchanged(before, driver.grant()), "a refused answer changed the grant"
    return result, outcome


def assert_refused_refresh(driver: Driver) -> None:
    """A refresh against the current (hostile) token endpoint fails cleanly on both paths."""
    result, outcome = attempt_refresh(driver)
    assert isinstance(result, MailOAuthError), "access_token() accepted a malformed answer"
    assert outcome.refused, f'"Refresh now" reported success: {outcome.text}'


@pytest.fixture
def host_config() -> dict[str, Any]:
    """The driver's host's ``MAILOAUTH_*`` settings; a test parametrizes it to change them."""
    return {}


@pytest.fixture
def driver(make_host, db_url, hostile, caplog, host_config) -> Any:
    """A host on ``db_url`` against the hostile IdP; at the end no secret may have shown."""
    caplog.set_level("DEBUG", logger="flask_mailoauth")
    host = make_host(db_url=db_url, **host_config)
    d = Driver(host, hostile, host.app.test_client(), db_url)
    yield d
    assert d.scan(caplog.text) == [], "a secret reached a page, a banner or a log line"
