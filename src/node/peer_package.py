"""A node's public package: its signed key bundle and the TLS certificates the bundle pins.

Owns the format an operator exports (``peers export``) and a node serves at
``GET /federation/v1/keys``: MessagePack ``[bundle: bin, [certificate_pem: bin, ...]]``. The
bundle is signed by the node's identity key; each certificate must match one of the bundle's TLS
pins, so the package as a whole is vouched for by that one signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from node.federation.tls import pin_of_certificate_pem
from protocol import codec
from protocol.errors import DecodeError, ErrorCode
from protocol.key_bundle import VerifiedKeyBundle, verify_bundle
from protocol.keys import fingerprint
from protocol.limits import Limits

MAX_PACKAGE_BYTES: Final = 64 * 1024
MAX_CERTIFICATES: Final = 4


class _Package(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    bundle: Annotated[bytes, msgspec.Meta(max_length=MAX_PACKAGE_BYTES)]
    certificates: Annotated[
        tuple[Annotated[bytes, msgspec.Meta(max_length=16 * 1024)], ...],
        msgspec.Meta(min_length=1, max_length=MAX_CERTIFICATES),
    ]


@dataclass(frozen=True, slots=True)
class PeerPackage:
    """A verified package.

    Attributes:
        bundle: the verified key bundle.
        certificates: the TLS certificates (PEM), each matching a pin of the bundle.
        fingerprint: the numeric fingerprint of the identity key, for operators to compare.
    """

    bundle: VerifiedKeyBundle
    certificates: tuple[bytes, ...]
    fingerprint: str


def encode_package(bundle: bytes, certificates: tuple[bytes, ...]) -> bytes:
    """Encode a signed bundle and its certificates (PEM) as a package."""
    return codec.encode(_Package(bundle, certificates))


def read_package(
    data: bytes, *, expected_identity: bytes | None, now: int, limits: Limits
) -> PeerPackage:
    """Decode and verify a package.

    Args:
        data: the package bytes.
        expected_identity: the identity key we trust for the node, or ``None`` on first contact
            (then the operators must compare the returned fingerprint).
        now: Unix seconds.
        limits: the protocol limits.

    Returns:
        The verified package.

    Raises:
        DecodeError: malformed, or a certificate not pinned by the bundle (``bad_key_bundle``).
        RemoteProtocolError: the bundle does not verify.
    """
    package = codec.decode(data, _Package, max_bytes=MAX_PACKAGE_BYTES, what="peer package")
    bundle = verify_bundle(package.bundle, expected_identity, now, limits)
    for pem in package.certificates:
        try:
            pin = pin_of_certificate_pem(pem)
        except ValueError as e:
            raise DecodeError(ErrorCode.BAD_KEY_BUNDLE, "a certificate does not parse") from e
        if pin not in bundle.tls_pins:
            raise DecodeError(ErrorCode.BAD_KEY_BUNDLE, "a certificate is not pinned by the bundle")
    return PeerPackage(
        bundle=bundle,
        certificates=package.certificates,
        fingerprint=fingerprint(bundle.city, bundle.identity_key),
    )
