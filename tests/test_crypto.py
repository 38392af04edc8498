"""Secrets at rest: AES-GCM bound to row and field, key ring, rotation, tamper detection."""

from __future__ import annotations

import pytest

from flask_mailoauth import crypto
from flask_mailoauth.crypto import KeyRing
from flask_mailoauth.errors import DecryptionError


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([crypto.parse_key(crypto.generate_key())])


def test_round_trip_and_fresh_nonce_each_time(ring):
    one = ring.encrypt("s3cret", aad="t:1:f")
    two = ring.encrypt("s3cret", aad="t:1:f")
    assert one != two
    assert b"s3cret" not in one
    assert ring.decrypt(one, aad="t:1:f") == ring.decrypt(two, aad="t:1:f") == "s3cret"


def test_value_moved_to_another_row_or_field_does_not_decrypt(ring):
    blob = ring.encrypt("token", aad="mailoauth_credential:aaa:access_token")
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, aad="mailoauth_credential:bbb:access_token")
    with pytest.raises(DecryptionError):
        ring.decrypt(blob, aad="mailoauth_credential:aaa:refresh_token")


@pytest.mark.parametrize("position", [0, 3, 10, 20, -1])
def test_any_tampered_byte_is_detected(ring, position):
    blob = bytearray(ring.encrypt("token", aad="x"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        ring.decrypt(bytes(blob), aad="x")


def test_truncated_value_is_refused(ring):
    with pytest.raises(DecryptionError, match="unknown format"):
        ring.decrypt(b"\x01abc", aad="x")


def test_rotation_old_keys_decrypt_first_key_encrypts():
    old, new = crypto.parse_key(crypto.generate_key()), crypto.parse_key(crypto.generate_key())
    before = KeyRing([old]).encrypt("v", aad="x")
    ring = KeyRing([new, old])
    assert ring.decrypt(before, aad="x") == "v"
    assert not ring.is_primary(before)
    after = ring.encrypt("v", aad="x")
    assert ring.is_primary(after)
    assert KeyRing([new]).decrypt(after, aad="x") == "v"
    with pytest.raises(DecryptionError, match="not in MAILOAUTH_ENCRYPTION_KEYS"):
        KeyRing([new]).decrypt(before, aad="x")


def test_error_messages_and_repr_hold_no_secret(ring):
    blob = ring.encrypt("very-secret-value", aad="x")
    with pytest.raises(DecryptionError) as info:
        ring.decrypt(blob, aad="y")
    assert "very-secret-value" not in str(info.value)
    assert "very-secret-value" not in repr(ring)


def test_derived_key_is_stable_and_distinct():
    assert crypto.derive_key("a") == crypto.derive_key(b"a")
    assert crypto.derive_key("a") != crypto.derive_key("b")
    assert len(crypto.derive_key("a")) == 32


@pytest.mark.parametrize("text", ["", "short", "!!!not base64!!!", "A" * 10])
def test_bad_configured_keys_are_refused(text):
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.parse_key(text)


def test_empty_ring_is_refused():
    with pytest.raises(ValueError, match="at least one key"):
        KeyRing([])
