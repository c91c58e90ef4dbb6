"""Attack rows delivered to Göteborg's real inbox processor: every header field, the body, framing,
replay, routing, time and keys. Each returns the observed ``(code, answer)`` of
:meth:`attack_support.World.refused`, which has already checked that nothing changed and that
the node still serves.

The expected codes follow the fixed order of checks of ``protocol.sealing.open_envelope``
(size, framing, version, suite, route, sender, time window, replay, own key, decrypt, signer key,
signature, body): a header field changed in transit is refused by the first check it breaks, and
every field that passes the cleartext checks is still bound by the HPKE ``info``
(``decrypt_failed``).
"""

from __future__ import annotations

import secrets
from typing import Final

import msgspec
from attack_support import Attack, Observed, World, attack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from node_fixtures import (
    forge,
    header_of,
    inquiry,
    new_case_id,
    referral,
    reframe,
    seal,
    split,
    verify_key_of,
    with_sender_keys,
)

from node.delivery import ACCEPTED, DUPLICATE
from protocol import codec, hpke
from protocol.sealing import HPKE_INFO_PREFIX

REJECTED: Final = "rejected"
"""What the peer is told of a cryptographic refusal (the precise code stays in the log)."""


def _genuine(world: World) -> bytes:
    """A fresh referral of the fake person, sealed by Stockholm to Göteborg."""
    return seal(
        world.stockholm, "goteborg", referral(new_case_id(), year=world.stockholm.today().year)
    )


def _tampered(world: World, **changes: object) -> bytes:
    """A genuine envelope whose cleartext header was changed in transit (not re-sealed)."""
    envelope = _genuine(world)
    return reframe(envelope, header=msgspec.structs.replace(header_of(envelope), **changes))


HEADER_CHANGES: Final = {
    "version": (2, "unsupported_version", None),
    "suite": (2, "unsupported_suite", None),
    # The sender is compared with the connection's peer only once the envelope is open; the
    # header is bound by the HPKE info, so the changed header fails decryption first.
    "sender": ("malmo", "decrypt_failed", REJECTED),
    "recipient": ("malmo", "wrong_recipient", None),
    "sender_key_id": (bytes(16), "decrypt_failed", REJECTED),
    "recipient_key_id": (bytes(16), "unknown_key", None),
    "recipient_key_epoch": (None, "unknown_key", None),  # None: the current epoch + 1
    "agreement_version": (None, "decrypt_failed", REJECTED),  # + 1
    "message_id": (None, "decrypt_failed", REJECTED),  # 16 fresh random bytes
    "timestamp": (None, "decrypt_failed", REJECTED),  # one second earlier
}
_WHY: Final = {
    "version": "a version this node does not speak",
    "suite": "a suite number this node does not support",
    "sender": "another member of the agreement, over Stockholm's connection",
    "recipient": "another member of the agreement",
    "sender_key_id": "zeros: a key id nobody has",
    "recipient_key_id": "zeros: an encryption key Göteborg never had",
    "recipient_key_epoch": "the next epoch",
    "agreement_version": "the next agreement version",
    "message_id": "fresh random bytes",
    "timestamp": "one second earlier",
}


def _header_case(field: str) -> Attack:
    value, code, answer = HEADER_CHANGES[field]

    async def run(world: World) -> Observed:
        header = header_of(_genuine(world))
        changed = value
        if value is None:
            current = getattr(header, field)
            changed = (
                secrets.token_bytes(16)
                if field == "message_id"
                else current - 1
                if field == "timestamp"
                else current + 1
            )
        return await world.refused(_tampered(world, **{field: changed}))

    return attack(
        f"header_{field}_tampered",
        "inbox",
        f"Change the header's `{field}` in transit to {_WHY[field]}, without re-sealing.",
        code,
        answer,
    )(run)


HEADER_CASES: Final = tuple(_header_case(field) for field in HEADER_CHANGES)


@attack(
    "body_bit_flipped",
    "inbox",
    "Flip one bit of the sealed ciphertext.",
    "decrypt_failed",
    REJECTED,
)
async def body_bit_flipped(world: World) -> Observed:
    envelope = _genuine(world)
    _, _, sealed = split(envelope)
    flipped = sealed[:40] + bytes([sealed[40] ^ 0x10]) + sealed[41:]
    return await world.refused(reframe(envelope, sealed=flipped))


@attack("envelope_truncated", "inbox", "Cut the last 7 bytes off a genuine envelope.", "malformed")
async def envelope_truncated(world: World) -> Observed:
    return await world.refused(_genuine(world)[:-7])


@attack("envelope_extended", "inbox", "Append one byte after a genuine envelope.", "malformed")
async def envelope_extended(world: World) -> Observed:
    return await world.refused(_genuine(world) + b"\x00")


@attack(
    "replay_same_envelope",
    "inbox",
    "Deliver an accepted envelope a second time: answered with the original receipt, not stored.",
    DUPLICATE,
)
async def replay_same_envelope(world: World) -> Observed:
    envelope = seal(world.stockholm, "goteborg", inquiry(new_case_id()))
    [(first, _)] = await world.deliver([envelope])
    assert first == ACCEPTED
    return await world.refused(envelope)


@attack(
    "replay_message_id_new_bytes",
    "inbox",
    "Re-seal another message under the message id of an accepted one.",
    "replayed",
)
async def replay_message_id_new_bytes(world: World) -> Observed:
    envelope = seal(world.stockholm, "goteborg", inquiry(new_case_id()))
    [(first, _)] = await world.deliver([envelope])
    assert first == ACCEPTED
    twin = seal(
        world.stockholm,
        "goteborg",
        inquiry(new_case_id()),
        message_id=header_of(envelope).message_id,
    )
    return await world.refused(twin)


async def _accepted_then_restarted(world: World) -> bytes:
    envelope = seal(world.stockholm, "goteborg", inquiry(new_case_id()))
    [(first, _)] = await world.deliver([envelope])
    assert first == ACCEPTED
    await world.fed.restart("goteborg")  # reopened on the same database
    return envelope


@attack(
    "replay_after_restart_same_envelope",
    "inbox",
    "Deliver an accepted envelope again after the receiver restarted on the same database.",
    DUPLICATE,
)
async def replay_after_restart_same_envelope(world: World) -> Observed:
    return await world.refused(await _accepted_then_restarted(world))


@attack(
    "replay_after_restart_message_id",
    "inbox",
    "After the receiver restarted, re-seal another message under an accepted message id.",
    "replayed",
)
async def replay_after_restart_message_id(world: World) -> Observed:
    envelope = await _accepted_then_restarted(world)
    message_id = header_of(envelope).message_id
    twin = seal(world.stockholm, "goteborg", inquiry(new_case_id()), message_id=message_id)
    return await world.refused(twin)


@attack(
    "reflected_to_sender",
    "inbox",
    "Send Göteborg an envelope whose header names Göteborg itself as the sender.",
    "reflected",
)
async def reflected_to_sender(world: World) -> Observed:
    # seal_envelope refuses to seal an envelope to its own sender: it is built by hand.
    genuine = _genuine(world)
    recipient = world.stockholm.trust().sealing_key("goteborg", int(world.stockholm.clock()))
    reflected = forge(
        msgspec.structs.replace(header_of(genuine), sender="goteborg"),
        inquiry(new_case_id()),
        signer=world.stockholm.own.identity,
        recipient_public=recipient.public_key,
    )
    return await world.refused(reflected)


@attack(
    "signed_message_resealed_to_third_city",
    "inbox",
    "Göteborg opens Stockholm's signed envelope and re-seals body and signature to Malmö under "
    "a header naming Malmö.",
    "bad_signature",
    REJECTED,
)
async def signed_message_resealed_to_third_city(world: World) -> Observed:
    envelope = _genuine(world)
    header, header_bytes, sealed = split(envelope)
    own = world.goteborg.decryption()[header.recipient_key_id].private_key
    plaintext = hpke.open(own, HPKE_INFO_PREFIX + header_bytes, sealed)
    malmo_key = world.stockholm.trust().sealing_key("malmo", int(world.stockholm.clock()))
    new_header = codec.encode(
        msgspec.structs.replace(
            header,
            recipient="malmo",
            recipient_key_id=malmo_key.key_id,
            recipient_key_epoch=malmo_key.epoch,
        )
    )
    resealed = hpke.seal(
        malmo_key.public_key, HPKE_INFO_PREFIX + new_header, plaintext, secrets.token_bytes(32)
    )
    return await world.refused(codec.encode((new_header, resealed)), receiver="malmo")


@attack(
    "wrong_recipient",
    "inbox",
    "Deliver to Göteborg an envelope Stockholm sealed to Malmö.",
    "wrong_recipient",
)
async def wrong_recipient(world: World) -> Observed:
    return await world.refused(seal(world.stockholm, "malmo", inquiry(new_case_id())))


@attack(
    "unknown_sender",
    "inbox",
    "An envelope from a city outside the agreement, signed by a key nobody trusts.",
    "unknown_sender",
)
async def unknown_sender(world: World) -> Observed:
    outsider = seal(
        world.stockholm,
        "goteborg",
        inquiry(new_case_id()),
        identity=Ed25519PrivateKey.generate(),
        sender_city="uppsala",
    )
    return await world.refused(outsider)


@attack(
    "relayed_by_another_peer",
    "inbox",
    "A genuine envelope from Malmö delivered over Stockholm's authenticated connection.",
    "unknown_sender",
)
async def relayed_by_another_peer(world: World) -> Observed:
    return await world.refused(seal(world.malmo, "goteborg", inquiry(new_case_id())))


@attack(
    "expired_timestamp",
    "inbox",
    "A genuine envelope stamped one minute before the replay window.",
    "stale",
)
async def expired_timestamp(world: World) -> Observed:
    window = world.goteborg.config.limits.protocol.max_message_age_s
    old = int(world.goteborg.clock()) - window - 60
    return await world.refused(
        seal(world.stockholm, "goteborg", inquiry(new_case_id()), timestamp=old)
    )


@attack(
    "future_timestamp",
    "inbox",
    "A genuine envelope stamped one minute beyond the allowed clock skew.",
    "from_future",
)
async def future_timestamp(world: World) -> Observed:
    skew = world.goteborg.config.limits.protocol.max_clock_skew_s
    ahead = int(world.goteborg.clock()) + skew + 60
    envelope = seal(world.stockholm, "goteborg", inquiry(new_case_id()), timestamp=ahead)
    return await world.refused(envelope)


def _sender_keys_with(world: World, old: Ed25519PrivateKey, **validity: int) -> object:
    now = int(world.goteborg.clock())
    keys = (
        verify_key_of(old, **validity),
        verify_key_of(world.stockholm.own.identity, valid_from=now - 600),
    )
    return with_sender_keys(world.goteborg.trust(), "stockholm", keys)


@attack(
    "retired_identity_key",
    "inbox",
    "Sign with Stockholm's identity key that was retired an hour ago.",
    "expired_key",
)
async def retired_identity_key(world: World) -> Observed:
    now = int(world.goteborg.clock())
    retired = Ed25519PrivateKey.generate()
    trust = _sender_keys_with(world, retired, valid_from=now - 90 * 86400, valid_until=now - 3600)
    envelope = seal(world.stockholm, "goteborg", inquiry(new_case_id()), identity=retired)
    return await world.refused(envelope, trust=trust)  # type: ignore[arg-type]


@attack(
    "revoked_identity_key",
    "inbox",
    "Sign with a Stockholm identity key revoked ten minutes ago (a stolen key).",
    "revoked_key",
)
async def revoked_identity_key(world: World) -> Observed:
    now = int(world.goteborg.clock())
    stolen = Ed25519PrivateKey.generate()
    trust = _sender_keys_with(world, stolen, valid_from=now - 86400, revoked_since=now - 600)
    envelope = seal(world.stockholm, "goteborg", inquiry(new_case_id()), identity=stolen)
    return await world.refused(envelope, trust=trust)  # type: ignore[arg-type]


@attack(
    "encryption_key_from_the_future",
    "inbox",
    "Seal properly, but to Göteborg's key id under an epoch it has not reached yet.",
    "unknown_key",
)
async def encryption_key_from_the_future(world: World) -> Observed:
    current = world.stockholm.trust().sealing_key("goteborg", int(world.stockholm.clock()))
    future = msgspec.structs.replace(current, epoch=current.epoch + 1000)
    return await world.refused(
        seal(world.stockholm, "goteborg", inquiry(new_case_id()), recipient_key=future)
    )


@attack(
    "suite_downgrade",
    "inbox",
    "Change the header's suite to 0, an older and weaker suite than the only one supported.",
    "unsupported_suite",
)
async def suite_downgrade(world: World) -> Observed:
    return await world.refused(_tampered(world, suite=0))


@attack(
    "oversized_envelope",
    "inbox",
    "An envelope one byte over the envelope bound (a valid MessagePack `bin`).",
    "oversized",
)
async def oversized_envelope(world: World) -> Observed:
    bound = world.goteborg.config.limits.protocol.max_envelope_bytes
    return await world.refused(codec.encode((b"", bytes(bound - 7))))


@attack(
    "deeply_nested_envelope",
    "inbox",
    "An envelope whose header is 100,000 nested MessagePack arrays.",
    "bad_type",
)
async def deeply_nested_envelope(world: World) -> Observed:
    return await world.refused(b"\x92" + b"\x91" * 100_000 + b"\xc0" + b"\xc4\x00")


@attack(
    "invalid_utf8_in_header",
    "inbox",
    "A genuine envelope whose header's sender name is made invalid UTF-8 (same length).",
    "invalid_utf8",
)
async def invalid_utf8_in_header(world: World) -> Observed:
    _, header_bytes, sealed = split(_genuine(world))
    assert header_bytes.count(b"\xa9stockholm") == 1
    broken = header_bytes.replace(b"\xa9stockholm", b"\xa9stockho\xff\xfe")
    return await world.refused(codec.encode((broken, sealed)))


@attack(
    "forged_signature_under_peer_key_id",
    "inbox",
    "Sign with a new key but name Stockholm's identity key id in the header.",
    "bad_signature",
    REJECTED,
)
async def forged_signature_under_peer_key_id(world: World) -> Observed:
    genuine = _genuine(world)
    recipient = world.stockholm.trust().sealing_key("goteborg", int(world.stockholm.clock()))
    forged = forge(
        header_of(genuine),
        inquiry(new_case_id()),
        signer=Ed25519PrivateKey.generate(),
        recipient_public=recipient.public_key,
    )
    return await world.refused(forged)


INBOX_CASES: Final = (
    *HEADER_CASES,
    body_bit_flipped,
    envelope_truncated,
    envelope_extended,
    replay_same_envelope,
    replay_message_id_new_bytes,
    replay_after_restart_same_envelope,
    replay_after_restart_message_id,
    reflected_to_sender,
    signed_message_resealed_to_third_city,
    wrong_recipient,
    unknown_sender,
    relayed_by_another_peer,
    expired_timestamp,
    future_timestamp,
    retired_identity_key,
    revoked_identity_key,
    encryption_key_from_the_future,
    suite_downgrade,
    oversized_envelope,
    deeply_nested_envelope,
    invalid_utf8_in_header,
    forged_signature_under_peer_key_id,
)
