"""A fake IdP for unit tests: signs id_tokens with its own RSA key and answers through
``responses``. End-to-end tests use the real oidc-provider instead."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
import responses
from cryptography.hazmat.primitives.asymmetric import rsa

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
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    nonce: str | None = None
    counter: int = 0
    token_url: str = TOKEN_URL
    jwks_url: str = JWKS_URL
    #: fields of the token answer to override (``None`` leaves the field out)
    answer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        self.mock.get(self.jwks_url, json={"keys": [jwk]})
        self.mock.add_callback(responses.POST, self.token_url, callback=self._token)

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

    def _token(self, request):
        body = parse_qs(request.body)
        self.token_requests.append(body)
        self.counter += 1
        answer = {
            "access_token": f"access-token-{self.counter}",
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "scope": "openid email offline_access",
            "id_token": self.id_token(),
        }
        if self.refresh_token:
            answer["refresh_token"] = self.refresh_token
        answer.update(self.answer)
        answer = {k: v for k, v in answer.items() if v is not None}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)
