"""TLS for the test IdPs, as real IdPs have it: a CA made once per process and a server
certificate it signs for 127.0.0.1, ::1 and localhost.

The product trusts the CA through ``MAILOAUTH_CA_BUNDLE`` (:attr:`TestCA.ca_file`), never by
turning certificate checks off. :class:`TLSHTTPServer` is a ``ThreadingHTTPServer`` that speaks
https with it; the node IdP reads :attr:`TestCA.cert_file` and :attr:`TestCA.key_file`.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import functools
import hashlib
import ipaddress
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: the names and addresses the server certificate is valid for
NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")
#: the files of a CA directory: the CA certificate, the server's chain, the server's key
FILES = ("ca.pem", "server.pem", "server.key")
#: seconds a client may take for its TLS handshake before the server gives up on it
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TestCA:
    """The PEM files of one generated CA and its server certificate."""

    __test__ = False  # not a pytest class

    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def of(cls, directory: Path) -> TestCA:
        """The CA whose files :func:`_generate` wrote into ``directory``."""
        ca_file, cert_file, key_file = (directory / n for n in FILES)
        return cls(directory, ca_file, cert_file, key_file)

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the certificate (and its chain)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA alone (certificate and host name checked)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def server_spki(self) -> str:
        """The base64 SHA-256 of the server key (what Chromium's
        ``--ignore-certificate-errors-spki-list`` takes: trust this one key, nothing else)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()


#: names the directory of another process's CA to use instead of making one (a child process
#: whose peers a browser of the parent visits)
SHARED_DIR_ENV = "PEERS_TLS_DIR"


@functools.cache
def test_ca() -> TestCA:
    """The process's CA: the one :data:`SHARED_DIR_ENV` names, else one generated on first use
    and deleted at exit."""
    shared = os.environ.get(SHARED_DIR_ENV)
    if shared:
        return TestCA.of(Path(shared))
    directory = Path(tempfile.mkdtemp(prefix="mailoauth-test-ca-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return _generate(directory)


test_ca.__test__ = False  # type: ignore[attr-defined]


def _generate(directory: Path) -> TestCA:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flask-mailoauth test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca = TestCA.of(directory)
    ca_file, cert_file, key_file = ca.ca_file, ca.cert_file, ca.key_file
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    cert_file.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for path in (directory, ca_file, cert_file, key_file):
        path.chmod(0o755 if path.is_dir() else 0o644)  # Dovecot's auth process reads the CA
    return ca


class TLSHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server speaking https with the test CA's certificate.

    The handshake runs in the request's thread, so a client that connects and stalls (the
    deadline tests) never blocks the accept loop.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__(address, handler)
        self.context = test_ca().server_context()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a client that hung up or refused the certificate
        try:
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def shutdown_request(self, request: Any) -> None:
        if request.fileno() != -1:  # not handed over to TLS
            super().shutdown_request(request)
