"""The node's TLS certificate: building it, pinning it, and handing it to ``ssl``.

Owns the shape of the self-signed certificate nodes use for mutual TLS. Invariants:

* The key is ECDSA P-256 and the signature ECDSA-SHA256: every TLS 1.2 and 1.3 stack accepts
  them on both sides (Ed25519 certificates are not universally supported for TLS 1.2).
* The certificate is its own trust anchor — peers pin the SHA-256 of its SubjectPublicKeyInfo
  (:func:`protocol.keys.tls_pin`), listed in the agreement — so it is not a CA
  (``basicConstraints CA:FALSE``, critical), it may only sign (``keyUsage digitalSignature``,
  critical), and it serves both ends (``extendedKeyUsage serverAuth, clientAuth``), since a node
  is a server to its peers and a client of them.
* Subject and issuer are ``CN=<city>``; the subject alternative name lists the host names and
  addresses given (``localhost`` and ``127.0.0.1`` by default); validity starts five minutes back
  (a peer's clock may run late) and lasts a year by default.
* The private key is never written to disk in clear: :meth:`TlsMaterial.load_into` gives ``ssl``
  a ``0600`` temporary file encrypted under a one-time password, removed at once.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.private_files import private_temp_file
from protocol.keys import tls_pin

TLS_VALIDITY_DAYS: Final = 365
BACKDATE: Final = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """A TLS certificate and its private key (PKCS#8 PEM, unencrypted: keep it in memory only).

    Attributes:
        certificate_pem: the certificate, PEM.
        private_key_pem: the private key, PKCS#8 PEM; hidden from ``repr``.
    """

    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_pem_x509_certificate(self.certificate_pem)

    def spki_der(self) -> bytes:
        """Return the certificate's SubjectPublicKeyInfo, DER: what the TLS pin covers."""
        return self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def pin(self) -> bytes:
        """Return the 32-byte pin the agreement lists for this node (``protocol.keys.tls_pin``)."""
        return tls_pin(self.spki_der())

    def check_pair(self) -> None:
        """Check that the private key belongs to the certificate.

        Raises:
            ValueError: it does not, or either does not parse.
        """
        private = serialization.load_pem_private_key(self.private_key_pem, password=None)
        if private.public_key() != self.certificate.public_key():
            raise ValueError("the TLS private key does not match the certificate")

    def load_into(self, context: ssl.SSLContext, scratch_dir: Path) -> None:
        """Load the certificate and key into an SSL context (``ssl`` reads them from files only).

        Args:
            context: the server or client context.
            scratch_dir: a private (``0700``) directory for the short-lived, encrypted key file.

        Raises:
            ssl.SSLError: OpenSSL refused the pair.
        """
        password = secrets.token_bytes(32)
        private = serialization.load_pem_private_key(self.private_key_pem, password=None)
        encrypted = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        with private_temp_file(scratch_dir, encrypted + self.certificate_pem) as path:
            context.load_cert_chain(path, password=password)


def self_signed_certificate(
    city: str,
    *,
    now: datetime.datetime,
    hostnames: Iterable[str] = ("localhost",),
    addresses: Iterable[str] = ("127.0.0.1",),
    validity_days: int = TLS_VALIDITY_DAYS,
) -> TlsMaterial:
    """Generate a key and a self-signed certificate for a node.

    Args:
        city: the common name.
        now: the current time (timezone-aware).
        hostnames: DNS names for the subject alternative name.
        addresses: IP addresses for the subject alternative name.
        validity_days: days of validity from ``now``.

    Returns:
        The certificate and key.

    Raises:
        ValueError: an address does not parse, or ``validity_days`` is not positive.
    """
    if validity_days <= 0:
        raise ValueError("validity_days must be positive")
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, city)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsMaterial(certificate.public_bytes(serialization.Encoding.PEM), key_pem)
