"""Certificate credentials (RFC 7523 ``private_key_jwt``): the key pair and self-signed
certificate an application proves itself with, made here or imported (PEM, PFX), and the
signed client assertion sent instead of a client secret.

An account holds a current certificate and, during a rollover, a pending one
(:class:`StoredCertificates`). The pending one is tried first; the first token request it
succeeds with makes it current (``promote``), and a refusal falls back to the current one
(``oauth.request_token``). The private keys are sealed like every secret.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from .errors import CertificateError
from .i18n import gettext
from .models import AccountMixin, own_session, utcnow
from .state import MailOAuthState
from .vocabulary import ClientAuth, EventKind

#: RFC 7523's ``client_assertion_type``
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: how long a client assertion is valid: long enough for one token request, no longer
ASSERTION_LIFETIME = timedelta(minutes=5)
#: how long a generated certificate is valid (Microsoft's longest client secret lives as long)
GENERATED_LIFETIME = timedelta(days=730)
#: the size of a generated RSA key, in bits
KEY_SIZE = 2048
#: an RSA key signs assertions with this algorithm (what Microsoft and oidc-provider accept)
ALGORITHM = "RS256"
#: the biggest certificate file an admin may upload, in bytes
MAX_FILE_SIZE = 64 * 1024
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class ClientCertificate:
    """A certificate and its private key, both PEM; what the Config modal shows of it, and the
    client assertions it signs."""

    certificate_pem: str
    private_key_pem: str = field(repr=False)

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode())

    @property
    def der(self) -> bytes:
        """The certificate in DER (a ``.cer`` file)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def sha1_thumbprint(self) -> str:
        """Upper-case hex SHA-1 of the DER certificate: the thumbprint Microsoft's portal shows."""
        return hashlib.sha1(self.der, usedforsecurity=False).hexdigest().upper()

    @property
    def sha256_thumbprint(self) -> str:
        """Upper-case hex SHA-256 of the DER certificate."""
        return hashlib.sha256(self.der).hexdigest().upper()

    @property
    def not_after(self) -> datetime:
        """When the certificate stops being valid (UTC)."""
        return self.certificate.not_valid_after_utc

    @property
    def subject(self) -> str:
        """The certificate's subject, RFC 4514 text."""
        return self.certificate.subject.rfc4514_string()

    def assertion(
        self, client_id: str, audience: str, *, sha1_header: bool, now: datetime | None = None
    ) -> str:
        """A client assertion (RFC 7523 §3): ``iss`` = ``sub`` = the client id, ``aud`` the
        token endpoint, a unique ``jti`` and a short ``exp``; the header names the certificate
        by ``x5t#S256`` (and by SHA-1 ``x5t`` when ``sha1_header``, as Microsoft requires)."""
        issued = now or utcnow()
        der = self.der
        headers = {"typ": "JWT", "x5t#S256": _b64url(hashlib.sha256(der).digest())}
        if sha1_header:
            headers["x5t"] = _b64url(hashlib.sha1(der, usedforsecurity=False).digest())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": uuid.uuid4().hex,
            "iat": int(issued.timestamp()),
            "nbf": int(issued.timestamp()),
            "exp": int((issued + ASSERTION_LIFETIME).timestamp()),
        }
        return jwt.encode(claims, self.private_key_pem, algorithm=ALGORITHM, headers=headers)


@dataclass(frozen=True)
class CertificateFacts:
    """What the Config modal shows of a stored certificate (never its key)."""

    sha1_thumbprint: str
    sha256_thumbprint: str
    not_after: datetime
    subject: str


def facts(pem: str | None) -> CertificateFacts | None:
    """The facts of a PEM certificate; ``None`` without one (or when it cannot be read)."""
    if not pem:
        return None
    try:
        shown = ClientCertificate(pem, "")
        return CertificateFacts(
            shown.sha1_thumbprint, shown.sha256_thumbprint, shown.not_after, shown.subject
        )
    except ValueError:
        return None


def certificate_end(pem: str) -> date | None:
    """The (UTC) day a PEM certificate ends, or ``None`` when it cannot be read."""
    try:
        return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc.date()
    except ValueError:
        return None


def generate(subject: str, *, now: datetime | None = None) -> ClientCertificate:
    """A new RSA key pair and a self-signed certificate for it, valid from now for
    ``GENERATED_LIFETIME`` (two years); ``subject`` becomes its common name."""
    now = now or utcnow()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:64] or "mailoauth")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + GENERATED_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pair(certificate, key)


def load(data: bytes, password: str = "", *, now: datetime | None = None) -> ClientCertificate:
    """A certificate and its private key from a PEM file (both in it) or a PFX/PKCS#12 file,
    checked to be usable: an RSA key that matches the certificate, which has not expired.

    Raises :class:`~flask_mailoauth.errors.CertificateError` saying what is wrong.
    """
    if not data.strip():
        raise CertificateError(gettext("Choose a PEM or PFX file to import."))
    if len(data) > MAX_FILE_SIZE:
        raise CertificateError(gettext("The file is too big for a certificate and its key."))
    secret = password.encode() or None
    if data.lstrip().startswith(b"-----BEGIN"):
        certificate, key = _from_pem(data, secret)
    else:
        certificate, key = _from_pfx(data, secret)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError(
            gettext("The private key is not an RSA key; identity providers expect RSA here.")
        )
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or (
        key.public_key().public_numbers() != public.public_numbers()
    ):
        raise CertificateError(gettext("The private key does not belong to the certificate."))
    if certificate.not_valid_after_utc <= (now or utcnow()):
        raise CertificateError(
            gettext(
                "The certificate expired on %(date)s: import a valid one, or generate a new one.",
                date=certificate.not_valid_after_utc.date(),
            )
        )
    return _pair(certificate, key)


def _from_pem(data: bytes, password: bytes | None) -> tuple[x509.Certificate, PrivateKeyTypes]:
    """The first certificate and the private key of a PEM file."""
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    certificates = [block for label, block in blocks if label == b"CERTIFICATE"]
    keys = [block for label, block in blocks if label.endswith(b"PRIVATE KEY")]
    if not certificates:
        raise CertificateError(gettext("The PEM file holds no certificate."))
    if not keys:
        raise CertificateError(
            gettext(
                "The PEM file holds no private key: put the certificate and its private key in "
                "one file (or import a PFX file)."
            )
        )
    try:
        certificate = x509.load_pem_x509_certificate(certificates[0])
    except ValueError:
        raise CertificateError(gettext("The PEM file's certificate cannot be read.")) from None
    try:
        key = serialization.load_pem_private_key(keys[0], password)
    except TypeError:
        raise CertificateError(
            gettext("The private key is encrypted: enter its password.")
            if password is None
            else gettext("The private key is not encrypted: leave the password blank.")
        ) from None
    except ValueError:
        raise CertificateError(
            gettext("The private key cannot be read: check the password.")
        ) from None
    return certificate, key


def _from_pfx(data: bytes, password: bytes | None) -> tuple[x509.Certificate, PrivateKeyTypes]:
    """The certificate and private key of a PFX (PKCS#12) file."""
    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, TypeError):
        raise CertificateError(
            gettext(
                "The file is neither PEM nor a PFX file this password opens: check the password."
            )
        ) from None
    if certificate is None or key is None:
        raise CertificateError(gettext("The PFX file must hold a certificate and its private key."))
    return certificate, key


def _pair(certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> ClientCertificate:
    return ClientCertificate(
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


@dataclass(frozen=True)
class StoredCertificates:
    """An account's certificates: the ``current`` one, and the ``pending`` one of a rollover."""

    current: ClientCertificate | None = None
    pending: ClientCertificate | None = None

    @property
    def to_try(self) -> tuple[ClientCertificate, ...]:
        """The certificates a token request tries, in order: the pending one first."""
        return tuple(c for c in (self.pending, self.current) if c is not None)


def stored(st: MailOAuthState, account: AccountMixin) -> StoredCertificates:
    """The account's certificates, their private keys decrypted."""
    return StoredCertificates(
        current=_stored(st, account, "certificate", "private_key"),
        pending=_stored(st, account, "next_certificate", "next_private_key"),
    )


def _stored(
    st: MailOAuthState, account: AccountMixin, certificate: str, key: str
) -> ClientCertificate | None:
    pem = getattr(account, certificate)
    if not pem or getattr(account, key) is None:
        return None
    return ClientCertificate(pem, st.reveal(account, key))


def store(st: MailOAuthState, account: AccountMixin, new: ClientCertificate) -> None:
    """Store ``new``: the current certificate when the account has none, else the pending one
    (a rollover; a pending one already there is replaced)."""
    if account.certificate is None:
        account.certificate = new.certificate_pem
        st.seal(account, "private_key", new.private_key_pem)
    else:
        account.next_certificate = new.certificate_pem
        st.seal(account, "next_private_key", new.private_key_pem)


def discard_pending(account: AccountMixin) -> None:
    """Drop the pending certificate: the current one stays in use."""
    account.next_certificate = None
    account.next_private_key = None


def promote(st: MailOAuthState, account: AccountMixin, used: ClientCertificate) -> bool:
    """Make the pending certificate current when it is ``used`` (a token request succeeded
    with it), dropping the old one; whether it did."""
    pending = _stored(st, account, "next_certificate", "next_private_key")
    if pending is None or pending.certificate_pem != used.certificate_pem:
        return False
    account.certificate = pending.certificate_pem
    st.seal(account, "private_key", pending.private_key_pem)
    discard_pending(account)
    return True


def for_token_requests(
    st: MailOAuthState, account: AccountMixin, method: ClientAuth
) -> StoredCertificates:
    """What a token request of ``account`` authenticates with: its certificates for
    ``private_key_jwt``, none (nothing decrypted) otherwise."""
    return stored(st, account) if method == ClientAuth.PRIVATE_KEY_JWT else StoredCertificates()


def switched(st: MailOAuthState, account_id: int, used: ClientCertificate | None) -> None:
    """After a token request succeeded with ``used``: when it is the account's pending
    certificate, make it current and record that in the account's history."""
    if used is None:
        return
    with own_session(st.db) as s:
        account = s.get(st.models.Account, account_id)
        if account is None or not promote(st, account, used):
            return
        s.add(
            st.models.Event(
                account_id=account_id,
                kind=EventKind.CERTIFICATE_SWITCHED,
                message=gettext(
                    "The identity provider accepted the new certificate %(thumbprint)s: it is "
                    "now the current one, the old one was removed.",
                    thumbprint=used.sha1_thumbprint,
                ),
            )
        )
