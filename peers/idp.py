"""The test IdPs: npm oidc-provider in a generic, a Microsoft-shaped and a Google-shaped instance.

The server is ``idp/server.mjs`` beside this file (see its header); ``node_modules`` lives in
``<repo>/.peers/node`` (installed by ``scripts/install-peers``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests

from .process import HOST, NODE_DIR, PeerError, Proc, free_port, wait_until
from .tls import test_ca

SERVER_JS = Path(__file__).with_name("idp") / "server.mjs"
TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"  # Microsoft's well-known consumer tenant id
OUTLOOK_SCOPES = (
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
)
MS_SCOPE = ("openid", "profile", "email", "offline_access", *OUTLOOK_SCOPES)
GENERIC_SCOPE = ("openid", "email", "profile", "offline_access")
GMAIL_SCOPE = "https://mail.google.com/"
GOOGLE_SCOPE = ("openid", "email", GMAIL_SCOPE)
#: what Google needs to issue a refresh token: offline access and a consent prompt
GOOGLE_OFFLINE = {"access_type": "offline", "prompt": "consent"}
SHAPES = ("generic", "microsoft", "google")
#: how many times an IdP process is started before its start counts as failed
START_ATTEMPTS = 2
UNUSED_REDIRECT = "http://127.0.0.1:9/callback"  # nothing listens there; helpers stop before it


class Client(NamedTuple):
    client_id: str
    client_secret: str


class IdPError(RuntimeError):
    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        try:
            self.body: Any = response.json()
        except ValueError:
            self.body = response.text
        super().__init__(
            f"{response.request.method} {response.url} -> {response.status_code}: {self.body}"
        )


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class IdP:
    """A running oidc-provider.

    It serves https only, with the certificate of :mod:`peers.tls`.
    Attributes: ``shape`` ("generic" | "microsoft" | "google"), ``port``, ``base_url`` (scheme://host:port,
    Microsoft's "authority host"), ``issuer``, ``discovery_url``, ``metadata`` (discovery dict),
    ``tenant_id`` (Microsoft shape), ``introspection_client`` (a Client that may introspect any
    token; Dovecot uses it), ``cookie_names``, ``ca_file`` (the CA its certificate chains to:
    what ``MAILOAUTH_CA_BUNDLE`` names), ``log`` (Path), ``expiring_ttl`` (seconds an access
    token of an account whose id starts with "expiring" lives).
    """

    def __init__(self, shape: str, log_dir: Path, expiring_ttl: int = 2) -> None:
        if shape not in SHAPES:
            raise ValueError(shape)
        self.shape = shape
        self.port = free_port()
        self.ca_file = test_ca().ca_file
        self.base_url = f"https://{HOST}:{self.port}"
        self.tenant_id = TENANT_ID
        self.issuer = f"{self.base_url}/{TENANT_ID}/v2.0" if shape == "microsoft" else self.base_url
        self.discovery_url = (
            f"{self.issuer}/.well-known/openid-configuration"
            if shape == "microsoft"
            else f"{self.base_url}/.well-known/openid-configuration"
        )
        self.introspection_client = Client(f"{shape}-introspector", secrets.token_urlsafe(16))
        prefix = {"microsoft": "_ms", "google": "_g"}.get(shape, "")
        self.cookie_names = tuple(
            f"{prefix}{name}" for name in ("_session", "_interaction", "_interaction_resume")
        )
        self.expiring_ttl = expiring_ttl
        self.log = log_dir / f"idp-{shape}.log"
        self.http = requests.Session()
        self.http.trust_env = False  # REQUESTS_CA_BUNDLE would replace the CA below
        self.http.verify = str(self.ca_file)
        self._auth_methods: dict[str, str] = {}  # client id -> how it authenticates
        self._registrations: dict[str, dict[str, Any]] = {}  # client id -> its registration
        node = shutil.which("node") or "node"
        started = time.monotonic()
        env = {
            "IDP_PORT": str(self.port),
            "IDP_SHAPE": shape,
            "IDP_TENANT_ID": TENANT_ID,
            "IDP_EXPIRING_TTL": str(expiring_ttl),
            "IDP_INTROSPECTION_CLIENT_ID": self.introspection_client.client_id,
            "IDP_INTROSPECTION_CLIENT_SECRET": self.introspection_client.client_secret,
            "PEERS_NODE_DIR": str(NODE_DIR),
            "IDP_TLS_CERT": str(test_ca().cert_file),
            "IDP_TLS_KEY": str(test_ca().key_file),
        }
        # Once in a long CI run, a node process stalled before it listened (its log stops after
        # the import); a second one on the same port starts in a second, so one retry is made.
        for attempt in range(1, START_ATTEMPTS + 1):
            self.proc = Proc(
                f"idp-{shape}", [node, str(SERVER_JS)], self.log, cwd=NODE_DIR, env=env
            )
            try:
                wait_until(
                    self._ready, f"oidc-provider ({shape})", log=self.log, alive=self.proc.alive
                )
                break
            except PeerError:
                self.proc.stop()
                if attempt == START_ATTEMPTS:
                    self.http.close()
                    raise
                print(f"oidc-provider ({shape}) did not start; starting it again", flush=True)
        self.start_seconds = time.monotonic() - started
        self.metadata: dict[str, Any] = self.http.get(self.discovery_url, timeout=5).json()

    def _ready(self) -> bool:
        try:
            return self.http.get(f"{self.base_url}/_test/info", timeout=1).ok
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()

    # ------------------------------------------------------------------ endpoints
    @property
    def authorization_endpoint(self) -> str:
        return self.metadata["authorization_endpoint"]

    @property
    def token_endpoint(self) -> str:
        return self.metadata["token_endpoint"]

    @property
    def introspection_endpoint(self) -> str:
        return self.metadata["introspection_endpoint"]

    @property
    def revocation_endpoint(self) -> str:
        return self.metadata["revocation_endpoint"]

    @property
    def registration_endpoint(self) -> str:
        return self.metadata["registration_endpoint"]

    def authorize_url_for(self, tenant: str = "common") -> str:
        """Microsoft shape: ``/{tenant}/oauth2/v2.0/authorize`` (common, organizations, tid)."""
        return f"{self.base_url}/{tenant}/oauth2/v2.0/authorize"

    def token_url_for(self, tenant: str = "common") -> str:
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    @property
    def default_scope(self) -> tuple[str, ...]:
        return {"microsoft": MS_SCOPE, "google": GOOGLE_SCOPE}.get(self.shape, GENERIC_SCOPE)

    # ------------------------------------------------------------------ clients
    def register_client(
        self,
        redirect_uri: str | list[str] = UNUSED_REDIRECT,
        *,
        rotate: bool | None = None,
        auth_method: str = "client_secret_basic",
        **metadata: Any,
    ) -> Client:
        """Register a confidential client (RFC 7591); returns (client_id, client_secret).

        ``rotate``: True = every refresh returns a new refresh token (Microsoft), False = the
        refresh token is kept (Google); None = the shape's default (Microsoft rotates, generic
        does not). ``auth_method``: client_secret_basic, client_secret_post, none (a public
        client: the secret is ``""``) or private_key_jwt (pass ``jwks``); oidc-provider accepts
        only the registered one.
        """
        body: dict[str, Any] = {
            "redirect_uris": [redirect_uri] if isinstance(redirect_uri, str) else redirect_uri,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": auth_method,
            **metadata,
        }
        if rotate is not None:
            body["rotate_refresh_token"] = rotate
        r = self.http.post(self.registration_endpoint, json=body, timeout=5)
        if r.status_code != 201:
            raise IdPError(r)
        data = r.json()
        self._auth_methods[data["client_id"]] = auth_method
        self._registrations[data["client_id"]] = data
        return Client(data["client_id"], data.get("client_secret", ""))

    def update_client(self, client_id: str, **metadata: Any) -> None:
        """Change a registered client's metadata (RFC 7592), e.g. its ``jwks`` in a rollover."""
        registered = self._registrations[client_id]
        body = {
            k: v
            for k, v in registered.items()
            if k not in ("registration_access_token", "registration_client_uri")
            and not k.endswith("_at")
        }
        body.update(metadata)
        r = self.http.put(
            registered["registration_client_uri"],
            json=body,
            headers={"Authorization": f"Bearer {registered['registration_access_token']}"},
            timeout=5,
        )
        if r.status_code != 200:
            raise IdPError(r)
        self._registrations[client_id] = {**registered, **r.json()}

    def register_app(
        self,
        redirect_uri: str | list[str] = UNUSED_REDIRECT,
        *,
        auth_method: str = "client_secret_post",
        **metadata: Any,
    ) -> Client:
        """A client that may also use the client_credentials grant (application access; the
        Microsoft shape); ``auth_method`` and ``metadata`` as :meth:`register_client` takes
        them (``private_key_jwt`` with ``jwks``)."""
        return self.register_client(
            redirect_uri,
            auth_method=auth_method,
            grant_types=["authorization_code", "refresh_token", "client_credentials"],
            **metadata,
        )

    def grant_app_mailbox(self, client_id: str, mailbox: str | None) -> str:
        """Let the application open ``mailbox`` (Add-MailboxPermission; ``None`` removes it);
        returns its service principal's object id."""
        body = {"client_id": client_id, "mailbox": mailbox}
        r = self.http.post(f"{self.base_url}/_test/app_mailbox", json=body, timeout=5)
        r.raise_for_status()
        return str(r.json()["service_principal"])

    def set_app_roles(self, client_id: str, roles: list[str]) -> None:
        """The application permissions consented for ``client_id`` (its tokens' ``roles``)."""
        body = {"client_id": client_id, "roles": roles}
        self.http.post(f"{self.base_url}/_test/app_roles", json=body, timeout=5).raise_for_status()

    def register_service_account(self, public_key_pem: str, scopes: list[str]) -> Client:
        """A service account (a client of its own) whose assertions, signed with the private
        key of ``public_key_pem``, obtain tokens for the scopes delegated domain-wide; returns
        its client (``client_secret`` unused). Its e-mail is ``<client_id>@sa.example.test``."""
        client = self.register_client()
        body = {
            "client_email": self.service_account_email(client),
            "client_id": client.client_id,
            "public_key": public_key_pem,
            "scopes": scopes,
        }
        r = self.http.post(f"{self.base_url}/_test/service_account", json=body, timeout=5)
        r.raise_for_status()
        return client

    @staticmethod
    def service_account_email(client: Client) -> str:
        return f"{client.client_id.lower()}@sa.example.test"

    def consents(self) -> list[dict[str, str]]:
        """The admin consents given so far (client_id, tenant, at)."""
        return list(self.http.get(f"{self.base_url}/_test/consents", timeout=5).json()["consents"])

    # ------------------------------------------------------------------ instrumentation
    def stats(self) -> dict[str, Any]:
        """Token-endpoint calls since the last reset.

        ``{"token": {"authorization_code": n, "refresh_token": m, ...}, "total": n+m,
        "injected": failures served by fail_next, "statuses": {"200": n, ...},
        "forms": [{"grant_type": ..., "scope": ...}, ...] (as sent, Microsoft shape only),
        "pending_failures": k}``
        """
        return self.http.get(f"{self.base_url}/_test/stats", timeout=5).json()

    def refresh_count(self) -> int:
        return self.stats()["token"].get("refresh_token", 0)

    def reset(self) -> None:
        """Zero the counters and drop pending injected failures."""
        self.http.post(f"{self.base_url}/_test/reset", timeout=5).raise_for_status()

    def fail_next(
        self,
        count: int = 1,
        status: int = 503,
        body: dict | str | None = None,
        retry_after: int | str | None = None,
        grant_type: str | None = None,
    ) -> None:
        """Make the next ``count`` token-endpoint calls (of ``grant_type``, if given) fail.

        The response has ``status``, the JSON (dict) or text (str) ``body`` (default
        ``{"error": "temporarily_unavailable", ...}``) and a Retry-After header if given.
        """
        rule: dict[str, Any] = {"count": count, "status": status}
        if body is not None:
            rule["body"] = body
        if retry_after is not None:
            rule["retry_after"] = str(retry_after)
        if grant_type is not None:
            rule["grant_type"] = grant_type
        self.http.post(f"{self.base_url}/_test/fail_next", json=rule, timeout=5).raise_for_status()

    # ------------------------------------------------------------------ token helpers
    def authorization_url(
        self,
        client: Client,
        redirect_uri: str = UNUSED_REDIRECT,
        scope: str | tuple[str, ...] | None = None,
        *,
        state: str | None = None,
        code_challenge: str | None = None,
        endpoint: str | None = None,
        **params: str,
    ) -> str:
        """An authorization request URL (code flow, PKCE if a challenge is given)."""
        scope = scope or self.default_scope
        query = {
            "client_id": client.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": scope if isinstance(scope, str) else " ".join(scope),
            "state": state or secrets.token_urlsafe(12),
            "nonce": secrets.token_urlsafe(12),
            **params,
        }
        if code_challenge:
            query |= {"code_challenge": code_challenge, "code_challenge_method": "S256"}
        return f"{endpoint or self.authorization_endpoint}?{urlencode(query)}"

    def _token_request(self, client: Client, data: dict[str, str], token_url: str | None) -> dict:
        """POST to the token endpoint, the client authenticating the way it registered."""
        method = self._auth_methods.get(client.client_id)
        if method == "client_secret_post":
            sent = {**data, "client_id": client.client_id, "client_secret": client.client_secret}
            auth = None
        elif method == "none":
            sent, auth = {**data, "client_id": client.client_id}, None
        else:
            sent, auth = data, (client.client_id, client.client_secret)
        r = self.http.post(token_url or self.token_endpoint, data=sent, auth=auth, timeout=10)
        if r.status_code != 200:
            raise IdPError(r)
        return r.json()

    def authorization_code(
        self,
        client: Client,
        email: str,
        redirect_uri: str = UNUSED_REDIRECT,
        scope: str | tuple[str, ...] | None = None,
        **params: str,
    ) -> tuple[str, str]:
        """Sign in as ``email`` and consent without a person: (code, PKCE code_verifier)."""
        verifier, challenge = pkce_pair()
        url = self.authorization_url(
            client, redirect_uri, scope, code_challenge=challenge, **params
        )
        callback = login_and_consent(url, email, redirect_uri)
        query = parse_qs(urlsplit(callback).query)
        if "code" not in query:
            raise AssertionError(f"no code in callback {callback}")
        return query["code"][0], verifier

    def exchange_code(
        self,
        client: Client,
        code: str,
        verifier: str,
        redirect_uri: str = UNUSED_REDIRECT,
        *,
        token_url: str | None = None,
    ) -> dict:
        """The authorization_code grant for ``code``: the token response."""
        return self._token_request(
            client,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
            token_url,
        )

    def code_grant(
        self,
        client: Client,
        email: str,
        redirect_uri: str = UNUSED_REDIRECT,
        scope: str | tuple[str, ...] | None = None,
        *,
        token_url: str | None = None,
        **params: str,
    ) -> dict:
        """A whole authorization code + PKCE grant for ``email`` without a person: the token
        response (``access_token``, ``refresh_token``, ``id_token``, ``scope``, ...)."""
        code, verifier = self.authorization_code(client, email, redirect_uri, scope, **params)
        return self.exchange_code(client, code, verifier, redirect_uri, token_url=token_url)

    def refresh(
        self, client: Client, refresh_token: str, *, token_url: str | None = None, **extra: str
    ) -> dict:
        """One refresh_token grant; raises IdPError (``.status_code``, ``.body``) on errors."""
        return self._token_request(
            client,
            {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra},
            token_url,
        )

    def introspect(self, token: str) -> dict:
        r = self.http.post(
            self.introspection_endpoint,
            data={"token": token},
            auth=self.introspection_client,
            timeout=5,
        )
        r.raise_for_status()
        return r.json()

    def revoke(self, client: Client, token: str) -> None:
        r = self.http.post(self.revocation_endpoint, data={"token": token}, auth=client, timeout=5)
        r.raise_for_status()

    def __repr__(self) -> str:
        return f"<IdP {self.shape} {self.issuer}>"


# ---------------------------------------------------------------------- login without a person
_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')
_PROMPT = re.compile(r'name="prompt" value="([^"]+)"')


def login_and_consent(
    url: str,
    email: str,
    redirect_uri: str,
    *,
    password: str = "any-password",
    session: requests.Session | None = None,
    max_steps: int = 20,
) -> str:
    """Play the user at oidc-provider's devInteractions pages with plain HTTP.

    Follows redirects from the authorization ``url``, posts the login form (``login=email``,
    any password) and the consent form, and stops at the redirect to ``redirect_uri``: returns
    that URL (with ``code``, ``state``, ``iss`` or an ``error``). Pass ``session`` to keep the
    IdP's cookies (single sign-on) between calls.
    """
    ua = session or requests.Session()
    method, data = "GET", None
    try:
        for _ in range(max_steps):
            r = ua.request(
                method,
                url,
                data=data,
                allow_redirects=False,
                timeout=10,
                verify=str(test_ca().ca_file),
            )
            if r.is_redirect:
                url, method, data = urljoin(url, r.headers["Location"]), "GET", None
                if url.startswith(redirect_uri):
                    return url
                continue
            if r.status_code != 200:
                raise AssertionError(f"IdP answered {r.status_code} at {url}: {r.text[:500]}")
            prompt = _PROMPT.search(r.text)
            action = _FORM_ACTION.search(r.text)
            if not (prompt and action):
                raise AssertionError(f"no login/consent form at {url}: {r.text[:500]}")
            data = {"prompt": prompt.group(1)}
            if prompt.group(1) == "login":
                data |= {"login": email, "password": password}
            url, method = urljoin(url, action.group(1)), "POST"
        raise AssertionError(f"no redirect to {redirect_uri} after {max_steps} steps")
    finally:
        if session is None:
            ua.close()


def browser_login_and_consent(page: Any, email: str, password: str = "any-password") -> None:
    """The same through a Playwright ``page`` already showing the IdP's login page.

    Fills ``input[name=login]`` and the password, submits, then clicks Continue on the consent
    page if one is shown. Returns when the browser has left the IdP's interaction pages.
    """
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if "/interaction/" in page.url and page.locator("text=Continue").count():
        page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/interaction/" not in u)
