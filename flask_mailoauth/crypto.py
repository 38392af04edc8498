"""Encryption at rest: AES-GCM under a key ring, bound to the row and field it belongs to.

A ciphertext is ``b"\\x01" + key_id (4 bytes) + nonce (12 bytes) + AES-GCM(ciphertext + tag)``.
The associated data names the table, the row's stable id and the field, so a value copied to
another row or column does not decrypt. The first key of the ring encrypts; every key decrypts,
so keys can be rotated without downtime (``flask mailoauth rotate-key`` re-encrypts).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import DecryptionError
from .i18n import gettext

VERSION = b"\x01"
_KEY_ID_LEN = 4
_NONCE_LEN = 12
_HEADER_LEN = len(VERSION) + _KEY_ID_LEN + _NONCE_LEN


def generate_key() -> str:
    """A new random 256-bit key, URL-safe base64, for ``MAILOAUTH_ENCRYPTION_KEYS``."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def derive_key(secret_key: str | bytes) -> bytes:
    """A 256-bit key derived from Flask's ``SECRET_KEY`` with HKDF-SHA256 (the fallback)."""
    if isinstance(secret_key, str):
        secret_key = secret_key.encode()
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"flask-mailoauth",
        info=b"flask-mailoauth encryption key v1",
    ).derive(secret_key)


def parse_key(text: str) -> bytes:
    """Decode one configured key (URL-safe base64 of 16, 24 or 32 bytes)."""
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) not in (16, 24, 32):
        raise ValueError(
            "MAILOAUTH_ENCRYPTION_KEYS holds a key that is not URL-safe base64 of 32 bytes; "
            'make one with: python -c "from flask_mailoauth.crypto import generate_key; '
            'print(generate_key())"'
        )
    return raw


class KeyRing:
    """The keys secrets are encrypted with: the first encrypts, all of them decrypt."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keys = [(hashlib.sha256(k).digest()[:_KEY_ID_LEN], AESGCM(k)) for k in keys]
        if not self._keys:
            raise ValueError("A key ring needs at least one key.")

    def __repr__(self) -> str:
        return f"<KeyRing of {len(self._keys)} key(s)>"

    def encrypt(self, plaintext: str, *, aad: str) -> bytes:
        """Encrypt ``plaintext`` with the primary key, bound to ``aad``."""
        key_id, aead = self._keys[0]
        nonce = os.urandom(_NONCE_LEN)
        return VERSION + key_id + nonce + aead.encrypt(nonce, plaintext.encode(), aad.encode())

    def decrypt(self, blob: bytes, *, aad: str) -> str:
        """Decrypt a value made by :meth:`encrypt` with any key of the ring."""
        blob = bytes(blob)
        if len(blob) <= _HEADER_LEN or blob[:1] != VERSION:
            raise DecryptionError(gettext("Stored secret has an unknown format."))
        key_id, nonce = blob[1 : 1 + _KEY_ID_LEN], blob[1 + _KEY_ID_LEN : _HEADER_LEN]
        for candidate_id, aead in self._keys:
            if candidate_id == key_id:
                try:
                    return aead.decrypt(nonce, blob[_HEADER_LEN:], aad.encode()).decode()
                except InvalidTag:
                    break
        raise DecryptionError(
            gettext(
                "Stored secret for %(field)s cannot be decrypted: its key is not in "
                "MAILOAUTH_ENCRYPTION_KEYS, or the value was altered or moved.",
                field=repr(aad),
            )
        )

    def is_primary(self, blob: bytes) -> bool:
        """True when ``blob`` is already encrypted under the primary key."""
        return bytes(blob)[1 : 1 + _KEY_ID_LEN] == self._keys[0][0]
