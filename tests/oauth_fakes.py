"""The fake IdP of the unit tests, on ``responses``: one scripted token endpoint, and an OpenID
provider around it that signs id_tokens with its own RSA key. End-to-end tests use the real
oidc-provider instead."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
import responses
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_mailoauth.testing import token_answer

ISSUER = "https://idp.example.test"
TOKEN_URL = f"{ISSUER}/token"
JWKS_URL = f"{ISSUER}/jwks"
AUTHORIZE_URL = f"{ISSUER}/authorize"
CLIENT_ID = "helpdesk-app"

GENERIC_CONFIG = {
    "idp_issuer": ISSUER,
    "idp_client_id": CLIENT_ID,
    "idp_authorization_endpoint": AUTHORIZE_URL,
    "idp_token_endpoint": TOKEN_URL,
    "idp_jwks_uri": JWKS_URL,
    "idp_scopes": "openid email offline_access",
    "idp_email_attribute": "email",
}


def scripted_success(issued: int, kind: str, lifetime: int) -> dict[str, Any]:
    """The n-th successful answer: at-n, with rt-n when rotating ("rotate"), none when not."""
    return token_answer(
        f"at-{issued}",
        refresh_token=f"rt-{issued}" if kind == "rotate" else None,
        expires_in=lifetime,
        scope="openid email",
    )


class TokenEndpoint:
    """The token endpoint, scripted: each call is recorded (``calls``) and pops the next entry
    of ``answers``: ("rotate" | "keep", lifetime), ("error", (status, body, headers)) or
    ("raise", exception); an empty script rotates. ``success`` builds a 200's JSON body."""

    def __init__(
        self,
        mock: responses.RequestsMock,
        url: str = TOKEN_URL,
        delay: float = 0.0,
        before: Callable[[], None] | None = None,
        success: Callable[[int, str, int], dict[str, Any]] = scripted_success,
    ) -> None:
        self.delay, self.before, self.success = delay, before, success
        self.calls: list[dict[str, list[str]]] = []
        self.answers: list[tuple[str, Any]] = []
        self.issued = 0
        mock.add_callback(responses.POST, url, callback=self.answer)

    def rotate(self, lifetime: int = 3600) -> None:
        self.answers.append(("rotate", lifetime))

    def answer(self, request):
        time.sleep(self.delay)
        if self.before:
            self.before()
        self.calls.append(parse_qs(request.body))
        kind, value = self.answers.pop(0) if self.answers else ("rotate", 3600)
        if kind == "error":
            status, body, headers = value
            return status, {"Content-Type": "application/json", **headers}, json.dumps(body)
        if kind == "raise":
            raise value
        self.issued += 1
        body = self.success(self.issued, kind, value)
        return 200, {"Content-Type": "application/json"}, json.dumps(body)


@dataclass
class FakeIdP:
    """Answers the token endpoint with a signed id_token for ``email`` and the last ``nonce``."""

    mock: responses.RequestsMock
    email: str = "support@example.test"
    issuer: str = ISSUER
    audience: str = CLIENT_ID
    refresh_token: str | None = "refresh-token-1"
    lifetime: int = 3600
    nonce_override: str | None = None
    id_token_claims: dict[str, Any] = field(default_factory=dict)
    key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    signing_key: Any = None
    nonce: str | None = None
    token_url: str = TOKEN_URL
    jwks_url: str = JWKS_URL
    #: fields of the token answer to override (``None`` leaves the field out)
    answer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        self.mock.get(self.jwks_url, json={"keys": [jwk]})
        self.endpoint = TokenEndpoint(self.mock, self.token_url, success=self._success)

    @property
    def token_requests(self) -> list[dict[str, list[str]]]:
        """What reached the token endpoint, parsed."""
        return self.endpoint.calls

    def id_token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "subject-1",
            "aud": self.audience,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce_override or self.nonce,
            "email": self.email,
            "email_verified": True,
            **self.id_token_claims,
            **overrides,
        }
        key = self.signing_key or self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})

    def _success(self, issued: int, kind: str, lifetime: int) -> dict[str, Any]:
        """A code or refresh answer with a fresh id_token; ``answer`` overrides its fields."""
        answer = {
            "access_token": f"access-token-{issued}",
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "scope": "openid email offline_access",
            "id_token": self.id_token(),
        }
        if self.refresh_token:
            answer["refresh_token"] = self.refresh_token
        answer.update(self.answer)
        return {k: v for k, v in answer.items() if v is not None}
