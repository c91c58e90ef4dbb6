"""A node's public package: its signed key bundle, the TLS certificates the bundle pins, and the
statements about its identity keys.

Owns the format an operator exports (``peers export``) and a node serves at
``GET /federation/v1/keys``: MessagePack ``[bundle: bin, [certificate_pem: bin, ...],
[succession: bin, ...], [revocation: bin, ...]]`` (trailing empty lists may be left out). The
bundle is signed by the node's current identity key; each certificate must be self-signed (its
signature verifies under its own key, so no byte of it was altered) and match one of the
bundle's TLS pins, so the package as a whole is vouched for by that one signature. The
successions (each signed by the old and the new key, ``protocol.succession``) lead from the
identity key a peer trusts — the agreement's — to the key that signed the bundle; the
revocations (``keys revoke``) mark keys of that chain compromised from a time on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from node.federation.tls import pin_of_certificate_pem
from protocol import codec
from protocol.errors import DecodeError, ErrorCode
from protocol.key_bundle import VerifiedKeyBundle, verify_bundle
from protocol.keys import VerifyKey, fingerprint, identity_key
from protocol.limits import Limits
from protocol.succession import apply_revocation, verify_succession_chain

MAX_PACKAGE_BYTES: Final = 64 * 1024
MAX_CERTIFICATES: Final = 4
MAX_SUCCESSIONS: Final = 64


class _Package(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    bundle: Annotated[bytes, msgspec.Meta(max_length=MAX_PACKAGE_BYTES)]
    certificates: Annotated[
        tuple[Annotated[bytes, msgspec.Meta(max_length=16 * 1024)], ...],
        msgspec.Meta(min_length=1, max_length=MAX_CERTIFICATES),
    ]
    successions: Annotated[
        tuple[Annotated[bytes, msgspec.Meta(max_length=2048)], ...],
        msgspec.Meta(max_length=MAX_SUCCESSIONS),
    ] = ()
    revocations: Annotated[
        tuple[Annotated[bytes, msgspec.Meta(max_length=2048)], ...],
        msgspec.Meta(max_length=MAX_SUCCESSIONS),
    ] = ()


@dataclass(frozen=True, slots=True)
class PeerPackage:
    """A verified package.

    Attributes:
        bundle: the verified key bundle.
        certificates: the TLS certificates (PEM), each matching a pin of the bundle.
        fingerprint: the numeric fingerprint of the identity key, for operators to compare.
        identity_chain: the node's identity keys, oldest first, each with its window (the
            agreement's key first); just the bundle's key on first contact.
        successions: the succession statements, as received.
        revocations: the revocations of its identity keys, as received (applied to the chain).
    """

    bundle: VerifiedKeyBundle
    certificates: tuple[bytes, ...]
    fingerprint: str
    identity_chain: tuple[VerifyKey, ...] = ()
    successions: tuple[bytes, ...] = ()
    revocations: tuple[bytes, ...] = ()


def encode_package(
    bundle: bytes,
    certificates: tuple[bytes, ...],
    successions: tuple[bytes, ...] = (),
    revocations: tuple[bytes, ...] = (),
) -> bytes:
    """Encode a signed bundle, its certificates (PEM) and identity statements as a package."""
    if not successions and not revocations:  # the two-element form, before any key change
        return codec.encode(_Package(bundle, certificates))
    if not revocations:
        return codec.encode(_Package(bundle, certificates, successions))
    return codec.encode(_Package(bundle, certificates, successions, revocations))


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
        RemoteProtocolError: the bundle does not verify, or the successions do not lead from
            ``expected_identity`` to its signer (``bad_succession``).
    """
    package = codec.decode(data, _Package, max_bytes=MAX_PACKAGE_BYTES, what="peer package")
    chain: tuple[VerifyKey, ...] = ()
    signer = expected_identity
    if expected_identity is not None:
        chain = verify_succession_chain(
            identity_key(expected_identity), package.successions, limits=limits
        )
        signer = chain[-1].public_key
        for revocation in package.revocations:
            chain = apply_revocation(chain, revocation)
    bundle = verify_bundle(package.bundle, signer, now, limits)
    if not chain:
        chain = (identity_key(bundle.identity_key),)
    for pem in package.certificates:
        try:
            pin = pin_of_certificate_pem(pem)
            certificate = x509.load_pem_x509_certificate(pem)
            certificate.verify_directly_issued_by(certificate)
        except ValueError as e:
            raise DecodeError(ErrorCode.BAD_KEY_BUNDLE, "a certificate does not parse") from e
        except (InvalidSignature, TypeError) as e:  # altered: nodes' certificates are self-signed
            raise DecodeError(
                ErrorCode.BAD_KEY_BUNDLE, "a certificate's self-signature does not verify"
            ) from e
        if pin not in bundle.tls_pins:
            raise DecodeError(ErrorCode.BAD_KEY_BUNDLE, "a certificate is not pinned by the bundle")
    return PeerPackage(
        bundle=bundle,
        certificates=package.certificates,
        fingerprint=fingerprint(bundle.city, bundle.identity_key),
        identity_chain=chain,
        successions=package.successions,
        revocations=package.revocations,
    )
