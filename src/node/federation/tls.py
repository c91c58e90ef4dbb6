"""Mutual TLS between city nodes: the SSL contexts and the pin table that names the peer.

Owns how a node authenticates the other end of a federation connection. There are no
certificate authorities: every node's certificate is self-signed (``node.tls_material``) and is
its own trust anchor, and the agreement lists each member's TLS pin (SHA-256 of the
certificate's SubjectPublicKeyInfo, :func:`protocol.keys.tls_pin`).

The two-layer rule (server side):

1. **The handshake** needs the client's certificate to chain to a trust anchor, so the server's
   SSL context trusts the peers' certificates (:func:`server_context`, and
   :func:`trust_peer_certificates` to add a rotated certificate to a live context). OpenSSL
   cannot forget an anchor without a restart, so this trust store is only ever a *superset* of
   the certificates currently allowed: it makes the handshake possible, it does not authorise.
2. **The pin table is the authority.** After the handshake, every request maps the client
   certificate's pin to a city through the current :class:`PinTable` (read again at each
   request, so a rotation applies without a restart). A certificate whose pin is not in the
   table — a retired pin still in the trust store, say — is refused with ``403 unknown_peer``.

Client side, one context per peer trusts *only that peer's* certificates
(:func:`client_context_for`), so the handshake itself pins the server; host names are not
checked because the pins replace them.

A TLS rotation (``node.rotation``, ``node.key_exchange``) never leaves a peer without a pin it
accepts: the new pin is announced beside the old one (both in the :class:`PinTable` at every
peer), the node switches to the new certificate (:func:`present_certificate`) only once every
peer accepts it, and retires the old pin after that.

Invariants: a peer certificate is accepted only as an exact member of the trust store (OpenSSL's
partial-chain mode: two certificates of one city share a subject name during a rotation); TLS 1.2
is the floor; TLS 1.2 is restricted to ECDHE key exchange with AEAD ciphers
(forward secrecy, no CBC); TLS 1.3 keeps OpenSSL's suites (all AEAD); compression and
renegotiation are off; no session tickets are issued, so every connection authenticates its
client with a full handshake. Every context requires the peer's certificate.
"""

from __future__ import annotations

import functools
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from node.tls_material import TlsMaterial
from protocol.keys import tls_pin

PIN_BYTES: Final = 32
# TLS 1.2 only (TLS 1.3 suites are not set by this string): ECDHE, then AES-GCM or ChaCha20.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


class PinTable:
    """Which city each allowed TLS pin belongs to; immutable.

    A city may have several pins at once (its old and new certificates overlap during a
    rotation); a pin belongs to exactly one city.
    """

    __slots__ = ("_by_pin",)

    def __init__(self, pins_by_city: Mapping[str, Iterable[bytes]]) -> None:
        """Build the table.

        Args:
            pins_by_city: for each city, its 32-byte pins.

        Raises:
            ValueError: a pin is not 32 bytes, or is listed for two cities.
        """
        by_pin: dict[bytes, str] = {}
        for city, pins in pins_by_city.items():
            for raw in pins:
                pin = bytes(raw)
                if len(pin) != PIN_BYTES:
                    raise ValueError(f"a TLS pin of {city} is not {PIN_BYTES} bytes")
                owner = by_pin.setdefault(pin, city)
                if owner != city:
                    raise ValueError(f"a TLS pin is listed for both {owner} and {city}")
        self._by_pin: Mapping[bytes, str] = MappingProxyType(by_pin)

    @classmethod
    def from_certificates(cls, certificates_by_city: Mapping[str, Iterable[bytes]]) -> PinTable:
        """Build the table from each city's PEM certificates.

        Raises:
            ValueError: a certificate does not parse, or two cities share a key.
        """
        return cls(
            {
                city: [pin_of_certificate_pem(pem) for pem in pems]
                for city, pems in certificates_by_city.items()
            }
        )

    def city_for_pin(self, pin: bytes) -> str | None:
        """Return the city a pin belongs to, or ``None``."""
        return self._by_pin.get(pin)

    def city_for_certificate(self, der: bytes) -> str | None:
        """Return the city whose pin matches a DER certificate, or ``None`` (also if malformed)."""
        pin = pin_of_certificate_der(bytes(der))
        return None if pin is None else self._by_pin.get(pin)

    def pins_of(self, city: str) -> frozenset[bytes]:
        """Return the pins currently allowed for a city."""
        return frozenset(pin for pin, owner in self._by_pin.items() if owner == city)

    @property
    def cities(self) -> frozenset[str]:
        """Every city with at least one pin."""
        return frozenset(self._by_pin.values())

    def __len__(self) -> int:
        return len(self._by_pin)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._by_pin)

    def __repr__(self) -> str:
        return f"PinTable(cities={sorted(self.cities)}, pins={len(self)})"


def pin_of_certificate_pem(pem: bytes) -> bytes:
    """Return the TLS pin of a PEM certificate.

    Raises:
        ValueError: it does not parse.
    """
    return tls_pin(_spki_der(x509.load_pem_x509_certificate(pem)))


@functools.lru_cache(maxsize=64)
def pin_of_certificate_der(der: bytes) -> bytes | None:
    """Return the TLS pin of a DER certificate, or ``None`` when it does not parse.

    Cached: a peer's certificate is looked up on every request of a keep-alive connection.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return tls_pin(_spki_der(certificate))


def _spki_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def server_context(
    own: TlsMaterial, peer_certificates: Sequence[bytes], *, scratch_dir: Path | None = None
) -> ssl.SSLContext:
    """Build the federation listener's SSL context.

    Args:
        own: this node's certificate and key.
        peer_certificates: the PEM certificates of every peer (their own trust anchors); the
            handshake accepts these, the :class:`PinTable` then decides.
        scratch_dir: a private directory for the short-lived encrypted key file ``ssl`` reads;
            a fresh private temporary directory when ``None``.

    Returns:
        A context requiring a client certificate, TLS 1.2 or later.

    Raises:
        ValueError: no peer certificate was given.
        ssl.SSLError: a certificate or the key was refused by OpenSSL.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.num_tickets = 0  # TLS 1.3: no resumption, every connection shows its certificate
    _load_own(context, own, scratch_dir)
    trust_peer_certificates(context, peer_certificates)
    return context


def client_context_for(
    own: TlsMaterial, peer_certificates: Sequence[bytes], *, scratch_dir: Path | None = None
) -> ssl.SSLContext:
    """Build the SSL context for connections to ONE peer, trusting only its certificates.

    Args:
        own: this node's certificate and key (presented as the client certificate).
        peer_certificates: that peer's PEM certificate(s) (two during its rotation).
        scratch_dir: as for :func:`server_context`.

    Returns:
        A context that completes a handshake only with a server holding one of those
        certificates; host names are not checked (the pin replaces them).

    Raises:
        ValueError: no peer certificate was given.
        ssl.SSLError: a certificate or the key was refused by OpenSSL.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = False
    _load_own(context, own, scratch_dir)
    trust_peer_certificates(context, peer_certificates)
    return context


def trust_peer_certificates(context: ssl.SSLContext, peer_certificates: Sequence[bytes]) -> None:
    """Add peer certificates to a (possibly live) context's trust anchors.

    New connections accept them at once; nothing can be removed (see the two-layer rule).

    Raises:
        ValueError: no certificate was given.
        ssl.SSLError: a certificate does not parse.
    """
    if not peer_certificates:
        raise ValueError("at least one peer certificate is needed to build a trust store")
    context.load_verify_locations(cadata=b"".join(peer_certificates).decode("ascii"))


def present_certificate(
    context: ssl.SSLContext, own: TlsMaterial, *, scratch_dir: Path | None = None
) -> None:
    """Make a (possibly live) context present another certificate of this node.

    New handshakes show it at once; connections already open keep the certificate they were
    made with. Used by a TLS rotation's switch, once every peer accepts the new certificate.

    Raises:
        ssl.SSLError: OpenSSL refused the pair.
    """
    _load_own(context, own, scratch_dir)


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    # A peer's certificate is trusted as itself (exact match in the store), not found by its
    # subject name: during a rotation a city has two certificates with the same subject
    # ("CN=<city>") and no key identifiers, and OpenSSL's lookup by name would try only the
    # first and refuse the other. The store holds only self-signed CA:FALSE certificates, so
    # nothing can chain through them; validity dates are still checked.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET


def _load_own(context: ssl.SSLContext, own: TlsMaterial, scratch_dir: Path | None) -> None:
    if scratch_dir is not None:
        own.load_into(context, scratch_dir)
        return
    with tempfile.TemporaryDirectory(prefix="citynode-tls-") as directory:  # created 0700
        own.load_into(context, Path(directory))
