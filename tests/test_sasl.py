"""XOAUTH2 / OAUTHBEARER initial responses byte for byte, and error challenge decoding."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_mailoauth.sasl import ErrorChallenge, decode_error_challenge, oauthbearer, xoauth2


def test_xoauth2_is_byte_exact() -> None:
    assert xoauth2("support@example.test", "ya29.tok") == (
        b"user=support@example.test\x01auth=Bearer ya29.tok\x01\x01"
    )


def test_xoauth2_encodes_utf8() -> None:
    assert (
        xoauth2("zoë@example.test", "t")
        == "user=zoë@example.test\x01auth=Bearer t\x01\x01".encode()
    )


def test_xoauth2_matches_google_documented_example() -> None:
    # https://developers.google.com/gmail/imap/xoauth2-protocol
    response = xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert base64.b64encode(response) == (
        b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        b"YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )


def test_oauthbearer_is_byte_exact() -> None:
    assert oauthbearer(
        "user@example.com", "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==", "server.example.com", 143
    ) == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01"
    )


def test_oauthbearer_accepts_port_as_string() -> None:
    assert oauthbearer("u", "t", "h", "993") == oauthbearer("u", "t", "h", 993)


@pytest.mark.parametrize(
    ("user", "saslname"),
    [
        ("a,b@example.test", b"a=2Cb@example.test"),
        ("a=b@example.test", b"a=3Db@example.test"),
        ("=2C,@x", b"=3D2C=2C@x"),  # '=' escaped first, so an escape is never escaped twice
        ("plain@example.test", b"plain@example.test"),
    ],
)
def test_oauthbearer_escapes_saslname(user: str, saslname: bytes) -> None:
    assert oauthbearer(user, "t", "h", 1).startswith(b"n,a=" + saslname + b",\x01")


def _unescape(saslname: bytes) -> str:
    return saslname.decode().replace("=2C", ",").replace("=3D", "=")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1))
def test_oauthbearer_saslname_round_trips(user: str) -> None:
    response = oauthbearer(user, "t", "h", 1)
    header = response.split(b"\x01", 1)[0]
    assert header.startswith(b"n,a=")
    assert header.endswith(b",")
    saslname = header[4:-1]
    assert b"," not in saslname
    assert _unescape(saslname) == user


@pytest.mark.parametrize(
    "build",
    [
        lambda: xoauth2("a\x01auth=Bearer forged", "t"),
        lambda: xoauth2("u", "secret\x01"),
        lambda: oauthbearer("u\n", "t", "h", 1),
        lambda: oauthbearer("u", "t", "h\x01", 1),
        lambda: oauthbearer("u", "secret\x7f", "h", 1),
    ],
)
def test_control_characters_cannot_forge_fields(build: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError, match="must not contain control characters") as caught:
        build()
    assert "secret" not in str(caught.value)


def test_error_challenge_decoded_from_base64_json() -> None:
    raw = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
    challenge = decode_error_challenge(base64.b64encode(json.dumps(raw).encode()))
    assert challenge == ErrorChallenge(
        status="401", schemes="bearer", scope="https://mail.google.com/", raw=raw
    )
    assert challenge.describe() == (
        "The server refused the token (status 401, required scope: https://mail.google.com/, "
        "schemes: bearer)."
    )


def test_error_challenge_accepts_str_and_already_decoded_json() -> None:
    encoded = base64.b64encode(b'{"status":"invalid_token"}').decode()
    assert decode_error_challenge(encoded).status == "invalid_token"
    assert decode_error_challenge(b'{"status":"invalid_token"}').status == "invalid_token"


@pytest.mark.parametrize(
    "challenge",
    [
        b"",
        b"   ",
        b"not base64 at all!",
        base64.b64encode(b"not json"),
        base64.b64encode(b"\xff\xfe"),
        base64.b64encode(b'["a", "list"]'),
        b"%%%",
    ],
)
def test_undecodable_challenge_is_empty(challenge: bytes) -> None:
    decoded = decode_error_challenge(challenge)
    assert decoded == ErrorChallenge()
    assert decoded.describe() == "The server refused the token without saying why."


def test_challenge_without_status_says_so() -> None:
    decoded = decode_error_challenge(base64.b64encode(b'{"scope": "mail"}'))
    assert decoded.describe() == "The server refused the token (no status, required scope: mail)."
