"""SASL initial responses for XOAUTH2 and OAUTHBEARER (RFC 7628), as raw bytes.

The functions return the bytes *before* base64 encoding: ``imaplib``/``smtplib`` encode them
themselves, and tests can compare them byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from .i18n import gettext


def _field(name: str, value: str) -> bytes:
    """``value`` as UTF-8; a control character (``^A`` separates fields) would forge fields."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"The {name} must not contain control characters.")
    return value.encode()


def xoauth2(user: str, token: str) -> bytes:
    """The XOAUTH2 initial response: ``user=U ^A auth=Bearer T ^A ^A``."""
    return (
        b"user=" + _field("user", user) + b"\x01auth=Bearer " + _field("token", token) + b"\x01\x01"
    )


def _saslname(user: str) -> bytes:
    """RFC 5801 saslname: ``,`` and ``=`` escaped as ``=2C`` and ``=3D``."""
    return _field("user", user.replace("=", "=3D").replace(",", "=2C"))


def oauthbearer(user: str, token: str, host: str, port: int | str) -> bytes:
    """The OAUTHBEARER initial response (RFC 7628 §3.1) with the GS2 header, host and port."""
    return (
        b"n,a="
        + _saslname(user)
        + b",\x01host="
        + _field("host", host)
        + b"\x01port="
        + _field("port", str(port))
        + b"\x01auth=Bearer "
        + _field("token", token)
        + b"\x01\x01"
    )


@dataclass(frozen=True)
class ErrorChallenge:
    """A server's error challenge (RFC 7628 §3.2.2), decoded from its base64 JSON."""

    status: str | None = None
    schemes: str | None = None
    scope: str | None = None
    #: the decoded JSON object
    raw: dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        """A readable sentence for the admin."""
        if not self.raw:
            return gettext("The server refused the token without saying why.")
        parts = [
            gettext("status %(status)s", status=self.status)
            if self.status
            else gettext("no status")
        ]
        if self.scope:
            parts.append(gettext("required scope: %(scope)s", scope=self.scope))
        if self.schemes:
            parts.append(gettext("schemes: %(schemes)s", schemes=self.schemes))
        return gettext("The server refused the token (%(details)s).", details=", ".join(parts))


def decode_error_challenge(challenge: bytes | str) -> ErrorChallenge:
    """Decode a base64 JSON error challenge; undecodable input yields an empty challenge."""
    if isinstance(challenge, str):
        challenge = challenge.encode()
    challenge = challenge.strip()
    try:
        raw = base64.b64decode(challenge, validate=True) if challenge else b""
        data = json.loads(raw) if raw else {}
    except (binascii.Error, ValueError):
        # Already decoded by the client library (imaplib hands the callback decoded bytes).
        try:
            data = json.loads(challenge) if challenge else {}
        except ValueError:
            data = {}
    if not isinstance(data, dict):
        data = {}
    return ErrorChallenge(
        status=_text(data.get("status")),
        schemes=_text(data.get("schemes")),
        scope=_text(data.get("scope")),
        raw=data,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)
