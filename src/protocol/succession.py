"""Identity key succession and revocation: how a city's identity key changes, and is disowned.

Owns the succession and revocation statements and how a peer follows them from the identity key it
trusts (from the agreement) to the list of :class:`~protocol.keys.VerifyKey` that
:func:`protocol.keys.key_at` consults. Invariants:

* Identity keys change only by a :class:`Succession` signed by the old and the new key, effective
  from a time ``T``: the old key's signatures count up to ``T - 1``, the new key's from ``T``.
  A chain never forks, loops back to an earlier key or goes back in time.
* A :class:`Revocation` ("key K compromised since T") is signed by ``K`` or a successor of ``K``;
  the earliest compromise time wins and successions made effective at or after it are distrusted.
* Signatures cover the exact statement bytes received; nothing is re-encoded to verify.

The wire formats and signing inputs are in ``docs/spec/50-keys.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codec
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.fields import CityName, Signature, Timestamp
from protocol.keys import (
    MAX_STATEMENT_BYTES,
    PublicKey,
    StatementBytes,
    VerifyKey,
    identity_key,
    public_bytes,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.signing import Purpose, check_public_key, check_signature, sign


class Succession(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Statement: identity ``old_key`` is succeeded by ``new_key`` from ``effective_from``."""

    city: CityName
    old_key: PublicKey
    new_key: PublicKey
    effective_from: Timestamp


class SignedSuccession(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[statement, old_signature, new_signature]``: both keys sign the same statement bytes."""

    statement: StatementBytes
    old_signature: Signature
    new_signature: Signature


class Revocation(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Statement: a city's identity ``key`` is compromised since ``compromised_since``."""

    city: CityName
    key: PublicKey
    compromised_since: Timestamp


class SignedRevocation(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[statement, signer_key, signature]``: by the revoked key or one of its successors."""

    statement: StatementBytes
    signer_key: PublicKey
    signature: Signature


def sign_succession(
    old_private: Ed25519PrivateKey,
    new_private: Ed25519PrivateKey,
    *,
    city: str,
    effective_from: int,
) -> bytes:
    """Make "the old identity key is succeeded by the new one from ``effective_from``".

    Returns:
        ``[statement, old_signature, new_signature]`` encoded.

    Raises:
        LocalProtocolError: ``bad_succession`` when both keys are the same.
    """
    old, new = public_bytes(old_private), public_bytes(new_private)
    if old == new:
        raise LocalProtocolError(ErrorCode.BAD_SUCCESSION, "a key cannot succeed itself")
    statement = codec.encode(Succession(city, old, new, effective_from))
    return codec.encode(
        SignedSuccession(
            statement,
            sign(old_private, Purpose.SUCCESSION_OLD, statement),
            sign(new_private, Purpose.SUCCESSION_NEW, statement),
        )
    )


def verify_succession(data: bytes) -> Succession:
    """Decode a succession statement and check both of its signatures.

    Raises:
        RemoteProtocolError: ``bad_signature``, ``bad_succession`` or a decoding code.
    """
    signed = codec.decode(
        data, SignedSuccession, max_bytes=MAX_STATEMENT_BYTES * 2, what="succession"
    )
    statement = codec.decode(
        signed.statement, Succession, max_bytes=MAX_STATEMENT_BYTES, what="succession statement"
    )
    if statement.old_key == statement.new_key:
        raise RemoteProtocolError(ErrorCode.BAD_SUCCESSION, "a key cannot succeed itself")
    check_public_key(statement.new_key, what="succession new key", code=ErrorCode.BAD_SUCCESSION)
    for key, purpose, signature in (
        (statement.old_key, Purpose.SUCCESSION_OLD, signed.old_signature),
        (statement.new_key, Purpose.SUCCESSION_NEW, signed.new_signature),
    ):
        check_signature(key, purpose, signed.statement, signature, what="succession")
    return statement


def _check_successor(last: VerifyKey, step: Succession, seen: set[bytes]) -> None:
    if step.old_key != last.public_key:
        raise RemoteProtocolError(
            ErrorCode.BAD_SUCCESSION, "succession does not continue the chain"
        )
    if step.new_key in seen:
        raise RemoteProtocolError(ErrorCode.BAD_SUCCESSION, "succession returns to an earlier key")
    if step.effective_from <= last.valid_from:
        raise RemoteProtocolError(
            ErrorCode.BAD_SUCCESSION, "succession is not later than the key it ends"
        )
    if last.revoked_since is not None and step.effective_from >= last.revoked_since:
        raise RemoteProtocolError(
            ErrorCode.BAD_SUCCESSION, "succession made by an already revoked key"
        )


def verify_succession_chain(
    genesis_key: VerifyKey,
    statements: Sequence[bytes],
    *,
    city: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[VerifyKey, ...]:
    """Follow a city's identity keys from the key we trust through its succession statements.

    Args:
        genesis_key: the identity key we trust (from the agreement), as a
            :class:`~protocol.keys.VerifyKey`.
        statements: the signed succession statements, oldest first.
        city: if given, every statement must name this city.
        limits: ``max_key_successions`` bounds the chain.

    Returns:
        Every key, oldest first: each succeeded key valid up to ``effective_from - 1`` of the
        statement that ends it (so its archived signatures still verify for their time), the last
        one current (``valid_until`` ``None``).

    Raises:
        RemoteProtocolError: ``bad_succession`` (gap, fork, loop, time going back, another city,
            too long), ``bad_signature``, or a decoding code.
    """
    if len(statements) > limits.max_key_successions:
        raise RemoteProtocolError(ErrorCode.BAD_SUCCESSION, "succession chain is too long")
    keys = [genesis_key]
    seen = {genesis_key.public_key}
    for data in statements:
        step = verify_succession(data)
        if city is not None and step.city != city:
            raise RemoteProtocolError(ErrorCode.BAD_SUCCESSION, "succession names another city")
        city = step.city
        _check_successor(keys[-1], step, seen)
        keys[-1] = msgspec.structs.replace(keys[-1], valid_until=step.effective_from - 1)
        keys.append(identity_key(step.new_key, step.effective_from))
        seen.add(step.new_key)
    return tuple(keys)


def sign_revocation(
    signer_private: Ed25519PrivateKey, *, city: str, revoked_key: bytes, compromised_since: int
) -> bytes:
    """Make "``revoked_key`` is compromised since ``compromised_since``".

    Args:
        signer_private: the revoked key itself, or a key that succeeds it.
        city: the city whose identity key it is.
        revoked_key: the raw public key revoked.
        compromised_since: from this second on, its signatures are refused.

    Returns:
        ``[statement, signer_key, signature]`` encoded.
    """
    statement = codec.encode(Revocation(city, revoked_key, compromised_since))
    signature = sign(signer_private, Purpose.REVOCATION, statement)
    return codec.encode(SignedRevocation(statement, public_bytes(signer_private), signature))


def _index_of(keys: Sequence[VerifyKey], public_key: bytes) -> int | None:
    for index, key in enumerate(keys):
        if key.public_key == public_key:
            return index
    return None


def apply_revocation(
    keys: Sequence[VerifyKey], data: bytes, *, city: str | None = None
) -> tuple[VerifyKey, ...]:
    """Apply a signed revocation to a city's verified identity keys.

    The revoked key gets ``revoked_since`` = the earlier of its current value and the statement's.
    Every later key whose ``valid_from`` is at or after that time was made effective by a key
    that was already compromised, so it is distrusted too (``revoked_since = valid_from``).

    Args:
        keys: the chain from :func:`verify_succession_chain`, oldest first.
        data: the signed revocation received.
        city: if given, the statement must name this city.

    Returns:
        The chain with the revocation applied.

    Raises:
        RemoteProtocolError: ``unknown_key`` (revoked key not in the chain, or signer neither the
            key nor a successor of it), ``bad_signature``, ``invalid_field`` (another city), or a
            decoding code.
    """
    signed = codec.decode(
        data, SignedRevocation, max_bytes=MAX_STATEMENT_BYTES * 2, what="revocation"
    )
    check_signature(
        signed.signer_key, Purpose.REVOCATION, signed.statement, signed.signature, what="revocation"
    )
    statement = codec.decode(
        signed.statement, Revocation, max_bytes=MAX_STATEMENT_BYTES, what="revocation statement"
    )
    if city is not None and statement.city != city:
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "revocation names another city")
    revoked = _index_of(keys, statement.key)
    signer = _index_of(keys, signed.signer_key)
    if revoked is None or signer is None or signer < revoked:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_KEY, "revocation is not by the key or its successor"
        )
    since = statement.compromised_since
    previous = keys[revoked].revoked_since
    if previous is not None:
        since = min(since, previous)
    result = list(keys)
    result[revoked] = msgspec.structs.replace(keys[revoked], revoked_since=since)
    for index in range(revoked + 1, len(result)):
        key = result[index]
        if key.valid_from >= since:
            cut = (
                key.valid_from
                if key.revoked_since is None
                else min(key.revoked_since, key.valid_from)
            )
            result[index] = msgspec.structs.replace(key, revoked_since=cut)
    return tuple(result)
