"""A hostile OpenID Connect provider on 127.0.0.1, for tests that attack the product from outside.

:class:`HostileIdP` is a real https server (stdlib, one thread per request, the certificate of
:mod:`peers.tls`) that plays a working
provider (discovery, authorize, token, JWKS, userinfo) and can be told to answer any route with
any status, headers and body bytes, a redirect anywhere, a slow answer (a header line every so
often, a body that trickles) or an id_token with any claims, algorithm and key. It records every
request that reached it, so a test can check what the product sent where.

Its token endpoint is a *strict rotating* one: every refresh issues a new refresh token and
invalidates the previous one at once (a reuse answers ``invalid_grant``). A rotation commits
when its answer was delivered: if the product hangs up before the last byte, the previous
refresh token stays valid, as it was never handed over. :meth:`HostileIdP.refresh_token_lost`
tells whether the product failed to keep a refresh token that was delivered to it.

:data:`FIGURES` counts, over the session, what the hostile tests tried and checked; the terminal
summary prints it (``tests/conftest.py``).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .tls import TLSHTTPServer

CLIENT_ID = "hostile-client"
#: a tweak value that removes the key from the default answer or claims
DROP = object()
REASONS = {200: "OK", 301: "Moved", 302: "Found", 307: "Temporary", 308: "Permanent"}


@dataclass
class Figures:
    """What the hostile tests tried and found, for the summary line; each counter is bumped
    where its condition is checked."""

    inputs: int = 0
    statuses_checked: int = 0
    server_errors: int = 0
    comparisons: int = 0
    credentials_changed: int = 0
    scans: int = 0
    secrets_found: int = 0
    rotations_checked: int = 0
    refresh_tokens_lost: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to the counter ``name`` (thread-safe)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + by)

    def line(self, left_loopback: int) -> str:
        """The figures line of the terminal summary."""
        return (
            f"hostile IdP: inputs tried {self.inputs} / 500s {self.server_errors} / credentials "
            f"changed by a refused answer {self.credentials_changed} / secrets found "
            f"{self.secrets_found} / requests that left loopback {left_loopback} / refresh tokens "
            f"lost {self.refresh_tokens_lost}"
        )

    def checks(self) -> str:
        """How many checks stand behind the zeros."""
        return (
            f"hostile IdP checks: {self.statuses_checked} statuses, {self.comparisons} "
            f"credential comparisons, {self.scans} secret scans, {self.rotations_checked} "
            "rotations"
        )


FIGURES = Figures()


@dataclass(frozen=True)
class Seen:
    """One request that reached the hostile IdP."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        """The form-encoded body, one value per field."""
        parsed = parse_qs(self.body.decode("latin-1"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}


@dataclass(frozen=True)
class Answer:
    """How to answer a route. ``body``/``json`` replace the route's default answer; ``tweak``
    changes keys of the default JSON answer (``DROP`` removes one). ``delay`` waits before the
    status line, ``drip=(interval, count)`` sends ``count`` header lines ``interval`` apart,
    ``trickle=(interval, chunks)`` sends the body in ``chunks`` pieces ``interval`` apart."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    json: Any = None
    tweak: dict[str, Any] | None = None
    delay: float = 0.0
    drip: tuple[float, int] | None = None
    trickle: tuple[float, int] | None = None


@dataclass
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    #: (refresh token issued, the one it replaced) when this reply rotates
    rotation: tuple[str, str | None] | None = None


class HostileIdP:
    """The server; ``url`` is its base (and issuer). :meth:`reset` between tests."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(65537, 2048)
        #: a key whose public half the JWKS never lists
        self.unpublished_key = rsa.generate_private_key(65537, 2048)
        self._lock = threading.RLock()
        self._server = TLSHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.reset()

    # -- test API ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget routes, requests, claims and tokens: a provider that behaves."""
        with self._lock:
            self._standing: dict[tuple[str, str], Answer] = {}
            self._queued: dict[tuple[str, str], deque[Answer]] = {}
            self.requests: list[Seen] = []
            self.claims: dict[str, Any] = {}
            self.discovery: dict[str, Any] = {}
            #: Microsoft-style tenant domains -> the tenant id their discovery document names
            self.tenant_domains: dict[str, str] = {}
            self.issuer = self.url
            self.nonce: str | None = None
            self.scope = "openid email offline_access"
            self.lifetime = 3600
            self.client_secret = f"hostile-secret-{secrets.token_hex(16)}"
            self.issued: list[str] = []  # every access and refresh token handed out
            self.valid_refresh: str | None = None
            self.delivered_refresh: str | None = None
            self.rotations = 0
            self._counter = 0

    def on(self, method: str, path: str, **answer: Any) -> None:
        """Answer ``method path`` this way from now on (see :class:`Answer`)."""
        with self._lock:
            self._standing[(method.upper(), path)] = Answer(**answer)

    def once(self, method: str, path: str, **answer: Any) -> None:
        """Answer the next ``method path`` this way, then as before."""
        with self._lock:
            self._queued.setdefault((method.upper(), path), deque()).append(Answer(**answer))

    def redirect(self, method: str, path: str, to: str, status: int = 302) -> None:
        """Answer ``method path`` with a redirect to ``to``."""
        self.on(method, path, status=status, headers={"Location": to}, body=b"")

    def seen(self, path: str) -> list[Seen]:
        """The requests that reached ``path``."""
        return [r for r in list(self.requests) if r.path == path]

    def secrets(self) -> list[str]:
        """Every secret this test put in play: client secret, tokens, code verifiers."""
        verifiers = [r.form.get("code_verifier", "") for r in list(self.requests)]
        values = [self.client_secret, *self.issued, *verifiers]
        return [v for v in values if len(v) >= 8]

    def id_token(
        self,
        *,
        alg: str = "RS256",
        key: Any = None,
        kid: str | None = "k1",
        **claims: Any,
    ) -> str:
        """A signed id_token: the default claims, then ``self.claims``, then ``claims``.

        ``alg="none"`` makes an unsigned one; ``HS256`` signs with ``key`` (default: the client
        secret); ``key`` may be :attr:`unpublished_key`."""
        now = int(time.time())
        merged = {
            "iss": self.issuer,
            "sub": "subject-1",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce,
            "email": "support@example.test",
            "email_verified": True,
            **self.claims,
            **claims,
        }
        payload = {k: v for k, v in merged.items() if v is not DROP}
        headers = {"kid": kid} if kid else {}
        if alg == "none":
            head = _b64({"alg": "none", "typ": "JWT", **headers})
            return f"{head}.{_b64(payload)}."
        if alg.startswith("HS"):
            secret = key if key is not None else self.client_secret
            return jwt.encode(payload, secret, algorithm=alg, headers=headers)
        return jwt.encode(payload, key or self.key, algorithm=alg, headers=headers)

    def jwks(self) -> dict[str, Any]:
        """The published key set (only :attr:`key`)."""
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        return {"keys": [jwk]}

    def token_answer(self, refresh_token: str | None = None, **tweak: Any) -> dict[str, Any]:
        """A well-formed token answer with fresh tokens, changed by ``tweak``."""
        with self._lock:
            self._counter += 1
            n = self._counter
        access = f"hostile-access-{n}-{secrets.token_hex(6)}"
        refresh = refresh_token or f"hostile-refresh-{n}-{secrets.token_hex(6)}"
        self.issued.extend((access, refresh))
        answer = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "scope": self.scope,
            "refresh_token": refresh,
            "id_token": self.id_token(),
        }
        answer.update(tweak)
        return {k: v for k, v in answer.items() if v is not DROP}

    def refresh_token_lost(self, stored: str) -> bool:
        """Count and tell whether the last refresh token delivered is not the one stored."""
        FIGURES.bump("rotations_checked")
        lost = self.delivered_refresh is not None and stored != self.delivered_refresh
        if lost:
            FIGURES.bump("refresh_tokens_lost")
        return lost

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- serving ----------------------------------------------------------------------------
    def _answer_for(self, seen: Seen) -> Answer:
        with self._lock:
            self.requests.append(seen)
            queue = self._queued.get((seen.method, seen.path))
            if queue:
                return queue.popleft()
            return self._standing.get((seen.method, seen.path), Answer())

    def _reply(self, seen: Seen, answer: Answer) -> _Reply:
        """The bytes to send: the answer's own, else the route's default changed by tweaks."""
        headers = {"Content-Type": "application/json", **answer.headers}
        if answer.body is not None:
            return _Reply(answer.status or 200, headers, answer.body)
        if answer.json is not None:
            return _Reply(answer.status or 200, headers, json.dumps(answer.json).encode())
        reply = self._default(seen, answer.tweak or {})
        reply.headers.update(headers)
        reply.status = answer.status or reply.status
        return reply

    def _default(self, seen: Seen, tweak: dict[str, Any]) -> _Reply:
        path = seen.path
        if seen.method == "GET" and path.endswith("/.well-known/openid-configuration"):
            return _json_reply(200, self._discovery_document(path), tweak)
        if seen.method == "POST" and path.endswith("/token"):
            return self._token(seen.form, tweak)
        if seen.method == "GET" and (path.endswith("/jwks") or path.endswith("/keys")):
            return _json_reply(200, self.jwks(), tweak)
        if path == "/userinfo":
            info = {"sub": "subject-1", "email": "support@example.test", "email_verified": True}
            return _json_reply(200, {**info, **self.claims}, tweak)
        if path.endswith("/authorize"):
            return _Reply(200, {"Content-Type": "text/plain"}, b"sign in (unused by tests)")
        return _json_reply(404, {"error": "not_found"}, {})

    def _discovery_document(self, path: str) -> dict[str, Any]:
        """The document; a known tenant domain's (``/{domain}/v2.0/...``) names its tenant id,
        whatever issuer the test currently signs id_tokens with."""
        domain = path.strip("/").split("/")[0]
        tenant = self.tenant_domains.get(domain)
        return {
            "issuer": f"{self.url}/{tenant}/v2.0" if tenant else self.issuer,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": f"{self.url}/jwks",
            "userinfo_endpoint": f"{self.url}/userinfo",
            **self.discovery,
        }

    def _token(self, form: dict[str, str], tweak: dict[str, Any]) -> _Reply:
        """The strict rotating token endpoint; a tweaked answer never rotates."""
        grant = form.get("grant_type")
        if grant == "refresh_token" and not tweak:
            with self._lock:
                if form.get("refresh_token") != self.valid_refresh:
                    bad = {"error": "invalid_grant", "error_description": "refresh token reused"}
                    return _json_reply(400, bad, {})
                previous = self.valid_refresh
                answer = self.token_answer()
                self.valid_refresh = answer["refresh_token"]
            return _json_reply(200, answer, {}, rotation=(answer["refresh_token"], previous))
        if grant == "authorization_code" and not tweak:
            answer = self.token_answer()
            with self._lock:
                self.valid_refresh = answer["refresh_token"]
            return _json_reply(200, answer, {}, rotation=(answer["refresh_token"], None))
        if grant in ("authorization_code", "refresh_token"):
            bogus = f"hostile-refresh-unhonoured-{secrets.token_hex(6)}"
            return _json_reply(200, self.token_answer(refresh_token=bogus), tweak)
        return _json_reply(400, {"error": "unsupported_grant_type"}, {})

    def _delivered(self, rotation: tuple[str, str | None] | None, ok: bool) -> None:
        """Commit a rotation whose answer was delivered; undo one the client hung up on."""
        if rotation is None:
            return
        issued, previous = rotation
        with self._lock:
            if ok:
                self.delivered_refresh = issued
                self.rotations += 1
            elif self.valid_refresh == issued:
                self.valid_refresh = previous


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _json_reply(
    status: int,
    data: dict[str, Any],
    tweak: dict[str, Any],
    rotation: tuple[str, str | None] | None = None,
) -> _Reply:
    merged = {k: v for k, v in {**data, **tweak}.items() if v is not DROP}
    body = json.dumps(merged, allow_nan=True).encode()
    return _Reply(status, {"Content-Type": "application/json"}, body, rotation)


def _handler(idp: HostileIdP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Records the request, then writes the crafted answer byte by byte as told."""

        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the recorded requests say what happened."""

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            parts = urlsplit(self.path)
            seen = Seen(
                self.command,
                parts.path,
                parse_qs(parts.query),
                dict(self.headers.items()),
                self.rfile.read(length) if length else b"",
            )
            answer = idp._answer_for(seen)
            reply = idp._reply(seen, answer)
            try:
                self._write(answer, reply)
            except OSError:
                idp._delivered(reply.rotation, ok=False)
            else:
                idp._delivered(reply.rotation, ok=True)

        def _write(self, answer: Answer, reply: _Reply) -> None:
            time.sleep(answer.delay)
            reason = REASONS.get(reply.status, "Hostile")
            self.wfile.write(f"HTTP/1.1 {reply.status} {reason}\r\n".encode())
            if answer.drip:
                interval, count = answer.drip
                for n in range(count):
                    self.wfile.write(f"X-Drip-{n}: .\r\n".encode())
                    self.wfile.flush()
                    time.sleep(interval)
            headers = {"Content-Length": str(len(reply.body)), **reply.headers}
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            self.wfile.write(f"{head}Connection: close\r\n\r\n".encode("latin-1"))
            if answer.trickle:
                interval, chunks = answer.trickle
                size = max(1, -(-len(reply.body) // chunks))
                for start in range(0, len(reply.body), size):
                    self.wfile.write(reply.body[start : start + size])
                    self.wfile.flush()
                    time.sleep(interval)
            else:
                self.wfile.write(reply.body)
            self.wfile.flush()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    return Handler
