"""The fuzz targets: each peer-input decoder of the protocol, its valid seeds and its one property.

A :class:`Target` names a decoder, holds valid seeds built with the protocol's own functions
(``seal_envelope``, ``sign_bundle``, ``encode_signed``, ``sign_checkpoint``, ``encrypt_attachment``,
``sign_receipt``...) from the deterministic test keys of ``tests/protocol``, and runs one input.

The property, for every target: the input is either accepted or refused with the protocol's own
error. Peer input may only be refused with :class:`~protocol.errors.RemoteProtocolError` (the
peer's fault); a :class:`~protocol.errors.LocalProtocolError` or any other exception escaping a
decoder of peer input is a failure the harness records.

Targets that re-sign or re-seal what the mutator produced (``envelope_inner``,
``envelope_body``, ``key_bundle_body``) reach the code *behind* the cryptographic checks: the
inner framing, the signature check and the message and bundle validation.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agreement_fixtures import CITIES as AGREEMENT_CITIES
from agreement_fixtures import TODAY, document, genesis, signed
from keylog_fixtures import KEYRING, make_log, private_key, statements
from keylog_fixtures import T0 as KEYLOG_T0
from sealing_fixtures import (
    FakeReplayStore,
    T,
    decryption_keys,
    encryption_record,
    identity,
    known_cities,
    seal,
    verify_key,
)
from strategies import SAMPLE_MESSAGES

from node.config import NodeLimits
from node.delivery import ACCEPTED, DeliveryResult
from node.federation import wire
from protocol import (
    agreement,
    attachments,
    codec,
    equivocation,
    hpke,
    key_bundle,
    keylog,
    signing,
    succession,
)
from protocol.errors import RemoteProtocolError
from protocol.keylog import KeyLogHead
from protocol.keys import encryption_key
from protocol.messages import decode_message
from protocol.sealing import (
    HPKE_INFO_PREFIX,
    Header,
    open_envelope,
    receipt_for,
    sign_receipt,
    signed_payload,
    verify_receipt,
)
from protocol.signing import Purpose

PEER_ERRORS: Final = (RemoteProtocolError,)
"""What a decoder of peer input may raise: the peer's fault, with a stable code."""


@dataclass(frozen=True)
class Target:
    """One decoder under fuzz.

    Attributes:
        name: the target's name on the command line and in the report.
        seeds: valid inputs, built with the protocol's own functions.
        run: decodes (and verifies) one input; returns normally or raises.
        allowed: the exceptions that count as a refusal; anything else is a failure.
        weight: its share of a run's inputs (the slow targets get fewer).
    """

    name: str
    seeds: tuple[bytes, ...]
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...] = PEER_ERRORS
    weight: float = 1.0


# --- envelopes ----------------------------------------------------------------------------------


def _fixed_bytes(label: str, size: int) -> bytes:
    return (label.encode() * size)[:size]


@functools.cache
def _envelope_seeds() -> tuple[bytes, ...]:
    return tuple(
        seal(
            message=message,
            message_id=_fixed_bytes(f"id{i}", 16),
            ephemeral=_fixed_bytes(f"ephemeral {i}", 32),
        )
        for i, message in enumerate(SAMPLE_MESSAGES)
    )


def _open(data: bytes) -> object:
    return open_envelope(
        data,
        me="goteborg",
        my_keys=_GOTEBORG_KEYS,
        sender_keys=_SENDERS,
        replay=FakeReplayStore(),
        now=T + 1,
    )


_GOTEBORG_KEYS: Final = decryption_keys("goteborg")
_SENDERS: Final = known_cities()
_HEADER_BYTES: Final = codec.encode(
    Header(
        version=1,
        suite=1,
        sender="stockholm",
        recipient="goteborg",
        sender_key_id=verify_key("stockholm").key_id,
        recipient_key_id=encryption_record("goteborg").key_id,
        recipient_key_epoch=encryption_record("goteborg").epoch,
        agreement_version=3,
        message_id=bytes(range(16)),
        timestamp=T,
    )
)


def _reseal(plaintext: bytes) -> bytes:
    """An envelope under a genuine header whose sealed plaintext is ``plaintext``."""
    sealed = hpke.seal(
        encryption_record("goteborg").public_key,
        HPKE_INFO_PREFIX + _HEADER_BYTES,
        plaintext,
        bytes(32),
    )
    return codec.encode((_HEADER_BYTES, sealed))


def _open_inner(plaintext: bytes) -> object:
    return _open(_reseal(plaintext))


def _open_body(body: bytes) -> object:
    signature = signing.sign(
        identity("stockholm"), Purpose.ENVELOPE, signed_payload(_HEADER_BYTES, body)
    )
    return _open(_reseal(codec.encode((body, signature))))


def _inner_seeds() -> tuple[bytes, ...]:
    seeds = []
    for message in SAMPLE_MESSAGES:
        body = codec.encode(message)
        signature = signing.sign(
            identity("stockholm"), Purpose.ENVELOPE, signed_payload(_HEADER_BYTES, body)
        )
        seeds.append(codec.encode((body, signature)))
    return tuple(seeds)


def _decode_message(data: bytes) -> object:
    return decode_message(data)


# --- receipts -----------------------------------------------------------------------------------


def _receipt_seeds() -> tuple[bytes, ...]:
    opened = open_envelope(
        _envelope_seeds()[0],
        me="goteborg",
        my_keys=_GOTEBORG_KEYS,
        sender_keys=_SENDERS,
        replay=FakeReplayStore(),
        now=T + 1,
    )
    goteborg = identity("goteborg")
    key_id = verify_key("goteborg").key_id
    return tuple(
        sign_receipt(receipt_for(opened, received_at=T + 2, status=status), goteborg, key_id)
        for status in ("accepted", "replayed", "invalid_field")
    )


def _verify_receipt(data: bytes) -> object:
    return verify_receipt(data, signer="goteborg", verify_keys=[verify_key("goteborg")])


# --- agreements ---------------------------------------------------------------------------------

_GENESIS: Final = genesis()


def _agreement_seeds() -> tuple[bytes, ...]:
    first = signed(document(), AGREEMENT_CITIES)
    second = signed(document(version=2, previous=_GENESIS), AGREEMENT_CITIES)
    two_signers = signed(document(version=2, previous=_GENESIS, threshold=2), AGREEMENT_CITIES[:2])
    return (first, second, two_signers)


def _verify_agreement(data: bytes) -> object:
    # The same bytes go through both entry points: as a trust root, then as the next version.
    try:
        return agreement.verify_genesis(data, TODAY)
    except RemoteProtocolError:
        return agreement.verify_successor(_GENESIS, data, TODAY)


def _document_seeds() -> tuple[bytes, ...]:
    return (
        agreement.encode_document(document()),
        agreement.encode_document(document(version=2, previous=_GENESIS)),
    )


def _decode_document(data: bytes) -> object:
    return agreement.decode_document(data)


# --- key bundles --------------------------------------------------------------------------------

_BUNDLE_NOW: Final = 1_767_225_600 + 3600
_DAY: Final = 86_400


def _bundle_seeds() -> tuple[bytes, ...]:
    private = private_key("stockholm")
    t0 = _BUNDLE_NOW - 3600
    current = encryption_key(
        _fixed_bytes("x25519 one", 32), epoch=1, not_before=t0, not_after=t0 + 90 * _DAY
    )
    nxt = encryption_key(
        _fixed_bytes("x25519 two", 32),
        epoch=2,
        not_before=t0 + 60 * _DAY,
        not_after=t0 + 180 * _DAY,
    )
    return tuple(
        key_bundle.sign_bundle(
            private,
            city="stockholm",
            current=key_bundle.announce_encryption_key(private, current),
            next_key=key_bundle.announce_encryption_key(private, nxt),
            tls_pins=pins,
            key_log=KeyLogHead(size, bytes(range(32))),
            issued_at=_BUNDLE_NOW,
            sequence=sequence,
        )
        for pins, size, sequence in (
            ([_fixed_bytes("pin a", 32)], 5, 1),
            ([_fixed_bytes("pin a", 32), _fixed_bytes("pin b", 32)], 7, 2),
        )
    )


_STOCKHOLM_PUBLIC: Final = private_key("stockholm").public_key().public_bytes_raw()


def _verify_bundle(data: bytes) -> object:
    with contextlib.suppress(RemoteProtocolError):  # first contact: no expected identity yet
        key_bundle.verify_bundle(data, None, _BUNDLE_NOW)
    return key_bundle.verify_bundle(data, _STOCKHOLM_PUBLIC, _BUNDLE_NOW)


def _bundle_body_seeds() -> tuple[bytes, ...]:
    return tuple(
        codec.decode(seed, key_bundle.SignedKeyBundle, max_bytes=1 << 20, what="seed").bundle
        for seed in _bundle_seeds()
    )


def _verify_resigned_bundle(body: bytes) -> object:
    signature = signing.sign(private_key("stockholm"), Purpose.KEY_BUNDLE, body)
    data = codec.encode(key_bundle.SignedKeyBundle(body, signature))
    return key_bundle.verify_bundle(data, _STOCKHOLM_PUBLIC, _BUNDLE_NOW)


# --- key-history logs ---------------------------------------------------------------------------


def _keylog_seeds() -> tuple[bytes, ...]:
    return tuple(codec.encode(make_log(statements(n)).entries) for n in (1, 3, 8))


def _decode_log(data: bytes) -> object:
    return keylog.decode_log(data)


def _checkpoint_seeds() -> tuple[bytes, ...]:
    log = make_log(statements(4))
    return tuple(
        codec.encode(keylog.sign_checkpoint(log, city, KEYLOG_T0 + 86_400, private_key(city)))
        for city in ("stockholm", "goteborg")
    )


def _verify_checkpoint(data: bytes) -> object:
    return keylog.verify_checkpoint(keylog.decode_signed_checkpoint(data), KEYRING)


# --- identity-key successions and equivocation proofs -------------------------------------------


def _succession_seeds() -> tuple[bytes, ...]:
    return tuple(
        succession.sign_succession(
            private_key(old), private_key(new), city="stockholm", effective_from=KEYLOG_T0
        )
        for old, new in (("stockholm", "goteborg"), ("goteborg", "malmo"))
    )


def _verify_succession(data: bytes) -> object:
    return succession.verify_succession(data)


def _equivocation_seeds() -> tuple[bytes, ...]:
    honest = keylog.verify_checkpoint(
        keylog.sign_checkpoint(
            make_log(statements(3)), "stockholm", KEYLOG_T0 + 10, private_key("stockholm")
        ),
        KEYRING,
    )
    early = keylog.verify_checkpoint(
        keylog.sign_checkpoint(
            make_log(statements(3)), "stockholm", KEYLOG_T0 + 20, private_key("stockholm")
        ),
        KEYRING,
    )
    other_log = make_log(statements(3, "shown to malmo"))
    other = keylog.verify_checkpoint(
        keylog.sign_checkpoint(other_log, "stockholm", KEYLOG_T0 + 30, private_key("stockholm")),
        KEYRING,
    )
    fork = make_log([*statements(1), *statements(4, "forked")])
    late = keylog.verify_checkpoint(
        keylog.sign_checkpoint(fork, "stockholm", KEYLOG_T0 + 40, private_key("stockholm")),
        KEYRING,
    )
    proofs = (
        equivocation.detect_equivocation(honest, other),
        equivocation.detect_equivocation(early, late, fork),
    )
    return tuple(codec.encode(proof) for proof in proofs if proof is not None)


def _verify_equivocation(data: bytes) -> object:
    proof = equivocation.decode_equivocation_proof(data)
    return equivocation.verify_equivocation_proof(proof, KEYRING)


# --- the federation wire (what a peer's listener or client sends) --------------------------------

_WIRE_LIMITS: Final = NodeLimits()


def _batch_seeds() -> tuple[bytes, ...]:
    envelopes = _envelope_seeds()
    return (
        wire.encode_batch(envelopes[:1]),
        wire.encode_batch(envelopes[:4]),
        wire.encode_batch([]),
    )


def _decode_batch(data: bytes) -> object:
    return wire.decode_batch(data, _WIRE_LIMITS)


def _results_seeds() -> tuple[bytes, ...]:
    receipts = _receipt_seeds()
    return (
        wire.encode_results([DeliveryResult(ACCEPTED, receipts[0])]),
        wire.encode_results(
            [DeliveryResult(ACCEPTED, receipts[0]), DeliveryResult("rejected", None)]
        ),
    )


def _decode_results(data: bytes) -> object:
    # The client knows how many envelopes it sent; try the counts of both seeds.
    try:
        return wire.decode_results(data, expected=1, limits=_WIRE_LIMITS)
    except RemoteProtocolError:
        return wire.decode_results(data, expected=2, limits=_WIRE_LIMITS)


# --- attachments --------------------------------------------------------------------------------

ATTACHMENT_KEY: Final = _fixed_bytes("attachment key", 32)
ATTACHMENT_ID: Final = _fixed_bytes("attachment id", 16)
_CHUNK: Final = 64


def _attachment_seeds() -> tuple[bytes, ...]:
    texts = (b"", b"Testdokument, fiktivt.\n", b"Hotbildsbedomning (test).\n" * 9)
    return tuple(
        attachments.encrypt_attachment(ATTACHMENT_KEY, ATTACHMENT_ID, text, chunk_size=_CHUNK)[0]
        for text in texts
    )


def _open_attachment(data: bytes) -> object:
    # Fed in pieces of a length drawn from the input itself, so the same bytes always take the
    # same path: the reader must not care where a stream is cut.
    reader = attachments.AttachmentReader(ATTACHMENT_KEY, ATTACHMENT_ID)
    step = 1 + (data[-1] if data else 0) * 3
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step])
    return reader.finish()


# --- the catalogue ------------------------------------------------------------------------------


@functools.cache
def protocol_targets() -> tuple[Target, ...]:
    """Every protocol decoder target with its seeds (built once per process)."""
    envelope_seeds = _envelope_seeds()
    return (
        Target(
            "message", tuple(codec.encode(m) for m in SAMPLE_MESSAGES), _decode_message, weight=2
        ),
        Target("envelope", envelope_seeds, _open, weight=2),
        Target("envelope_inner", _inner_seeds(), _open_inner, weight=0.4),
        Target(
            "envelope_body", tuple(codec.encode(m) for m in SAMPLE_MESSAGES), _open_body, weight=0.4
        ),
        Target("receipt", _receipt_seeds(), _verify_receipt),
        Target("agreement", _agreement_seeds(), _verify_agreement),
        Target("agreement_document", _document_seeds(), _decode_document),
        Target("key_bundle", _bundle_seeds(), _verify_bundle),
        Target("key_bundle_body", _bundle_body_seeds(), _verify_resigned_bundle, weight=0.5),
        Target("keylog", _keylog_seeds(), _decode_log),
        Target("checkpoint", _checkpoint_seeds(), _verify_checkpoint),
        Target("attachment", _attachment_seeds(), _open_attachment),
        Target("succession", _succession_seeds(), _verify_succession, weight=0.5),
        Target("equivocation_proof", _equivocation_seeds(), _verify_equivocation, weight=0.5),
        Target("inbox_batch", _batch_seeds(), _decode_batch, weight=0.5),
        Target("inbox_results", _results_seeds(), _decode_results, weight=0.5),
    )


def target_named(name: str) -> Target:
    """The protocol target called ``name``.

    Raises:
        KeyError: no such target.
    """
    for target in protocol_targets():
        if target.name == name:
            return target
    raise KeyError(name)


def is_valid_seed(target: Target, seed: bytes) -> bool:
    """Whether a seed passes its own target (a harness self-check: seeds must be accepted)."""
    try:
        target.run(seed)
    except target.allowed:
        return False
    return True
