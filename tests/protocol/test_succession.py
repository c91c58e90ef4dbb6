"""Identity succession and revocation: following a city's identity keys from the key we trust,
and the succession and revocation vectors of tests/vectors/keys.json."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from key_fixtures import DAY, T0, VECTORS, ed25519, pub, vector_identity

from protocol import codec, keys, succession
from protocol.errors import ErrorCode, LocalProtocolError, ProtocolError
from protocol.keys import KeyKind, VerifyKey
from protocol.limits import Limits
from protocol.signing import Purpose, sign, verify
from protocol.succession import SignedSuccession

# --- Identity succession -----------------------------------------------------------------------

SUCCESSION_AT = T0 + 100 * DAY


def succeed(old: str, new: str, at: int = SUCCESSION_AT, city: str = "stockholm") -> bytes:
    return succession.sign_succession(ed25519(old), ed25519(new), city=city, effective_from=at)


def genesis(label: str = "stockholm") -> VerifyKey:
    return keys.identity_key(pub(label), T0)


def chain_error(statements: list[bytes], **kwargs: Any) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        succession.verify_succession_chain(genesis(), statements, **kwargs)
    return caught.value.code


def test_archived_signature_by_the_old_key_still_verifies_for_its_time() -> None:
    chain = succession.verify_succession_chain(genesis(), [succeed("stockholm", "stockholm-2")])
    archived_at = SUCCESSION_AT - 1
    payload = b"archived receipt"
    signature = sign(ed25519("stockholm"), Purpose.RECEIPT, payload)
    old = keys.key_at(chain, keys.key_id(KeyKind.IDENTITY, pub("stockholm")), archived_at)
    assert verify(old.public_key, Purpose.RECEIPT, payload, signature)
    assert (chain[0].valid_until, chain[1].valid_from) == (SUCCESSION_AT - 1, SUCCESSION_AT)
    assert chain[1].valid_until is None


def test_new_signature_by_the_old_key_after_succession_is_refused() -> None:
    chain = succession.verify_succession_chain(genesis(), [succeed("stockholm", "stockholm-2")])
    old_id = keys.key_id(KeyKind.IDENTITY, pub("stockholm"))
    with pytest.raises(ProtocolError) as caught:
        keys.key_at(chain, old_id, SUCCESSION_AT)
    assert caught.value.code is ErrorCode.EXPIRED_KEY
    new = keys.key_at(chain, keys.key_id(KeyKind.IDENTITY, pub("stockholm-2")), SUCCESSION_AT)
    assert new.public_key == pub("stockholm-2")


def test_two_successions_give_three_consecutive_windows() -> None:
    later = SUCCESSION_AT + 50 * DAY
    chain = succession.verify_succession_chain(
        genesis(),
        [succeed("stockholm", "stockholm-2"), succeed("stockholm-2", "stockholm-3", later)],
        city="stockholm",
    )
    assert [(k.valid_from, k.valid_until) for k in chain] == [
        (T0, SUCCESSION_AT - 1),
        (SUCCESSION_AT, later - 1),
        (later, None),
    ]


def test_succession_signed_by_one_of_the_two_keys_only_is_refused() -> None:
    signed = codec.decode(
        succeed("stockholm", "stockholm-2"), SignedSuccession, max_bytes=4096, what="t"
    )
    only_old = msgspec.structs.replace(signed, new_signature=bytes(64))
    only_new = msgspec.structs.replace(signed, old_signature=bytes(64))
    swapped = msgspec.structs.replace(
        signed, old_signature=signed.new_signature, new_signature=signed.old_signature
    )
    for forged in (only_old, only_new, swapped):
        assert chain_error([codec.encode(forged)]) is ErrorCode.BAD_SIGNATURE


def test_succession_not_starting_from_the_trusted_key_is_refused() -> None:
    assert chain_error([succeed("stockholm-2", "stockholm-3")]) is ErrorCode.BAD_SUCCESSION


def test_succession_back_to_an_earlier_key_is_refused() -> None:
    statements = [
        succeed("stockholm", "stockholm-2"),
        succeed("stockholm-2", "stockholm", SUCCESSION_AT + DAY),
    ]
    assert chain_error(statements) is ErrorCode.BAD_SUCCESSION


def test_succession_going_back_in_time_is_refused() -> None:
    statements = [
        succeed("stockholm", "stockholm-2"),
        succeed("stockholm-2", "stockholm-3", SUCCESSION_AT),
    ]
    assert chain_error(statements) is ErrorCode.BAD_SUCCESSION
    assert chain_error([succeed("stockholm", "stockholm-2", T0)]) is ErrorCode.BAD_SUCCESSION


def test_succession_for_another_city_is_refused() -> None:
    other = succeed("stockholm", "stockholm-2", city="malmo")
    assert chain_error([other], city="stockholm") is ErrorCode.BAD_SUCCESSION


def test_succession_chain_longer_than_the_limit_is_refused() -> None:
    statements = [succeed("stockholm", "stockholm-2")]
    assert chain_error(statements, limits=Limits(max_key_successions=0)) is ErrorCode.BAD_SUCCESSION


def test_key_cannot_be_made_to_succeed_itself() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        succeed("stockholm", "stockholm")
    assert caught.value.code is ErrorCode.BAD_SUCCESSION


# --- Revocation --------------------------------------------------------------------------------

COMPROMISED = T0 + 40 * DAY


def revocation(signer: str, revoked: str = "stockholm", since: int = COMPROMISED) -> bytes:
    return succession.sign_revocation(
        ed25519(signer), city="stockholm", revoked_key=pub(revoked), compromised_since=since
    )


def test_revoked_key_counts_before_the_compromise_and_not_after() -> None:
    chain = succession.apply_revocation([genesis()], revocation("stockholm"), city="stockholm")
    kid = keys.key_id(KeyKind.IDENTITY, pub("stockholm"))
    assert chain[0].revoked_since == COMPROMISED
    assert keys.key_at(chain, kid, COMPROMISED - 1).public_key == pub("stockholm")
    with pytest.raises(ProtocolError) as caught:
        keys.key_at(chain, kid, COMPROMISED)
    assert caught.value.code is ErrorCode.REVOKED_KEY


def test_successor_may_revoke_a_retired_key_leaked_after_its_retirement() -> None:
    chain = succession.verify_succession_chain(genesis(), [succeed("stockholm", "stockholm-2")])
    leaked = SUCCESSION_AT + 10 * DAY
    revoked = succession.apply_revocation(chain, revocation("stockholm-2", since=leaked))
    assert revoked[0].revoked_since == leaked
    assert revoked[1].revoked_since is None  # its succession predates the compromise


def test_succession_made_effective_after_the_compromise_is_distrusted() -> None:
    chain = succession.verify_succession_chain(genesis(), [succeed("stockholm", "stockholm-2")])
    early = revocation("stockholm", since=SUCCESSION_AT - DAY)
    revoked = succession.apply_revocation(chain, early)
    assert revoked[1].revoked_since == SUCCESSION_AT
    with pytest.raises(ProtocolError) as caught:
        keys.key_at(revoked, revoked[1].key_id, SUCCESSION_AT + 1)
    assert caught.value.code is ErrorCode.REVOKED_KEY


def test_earliest_compromise_time_wins() -> None:
    once = succession.apply_revocation([genesis()], revocation("stockholm", since=COMPROMISED))
    later = succession.apply_revocation(once, revocation("stockholm", since=COMPROMISED + DAY))
    earlier = succession.apply_revocation(once, revocation("stockholm", since=COMPROMISED - DAY))
    assert later[0].revoked_since == COMPROMISED
    assert earlier[0].revoked_since == COMPROMISED - DAY


def test_revocation_by_a_predecessor_or_a_stranger_is_refused() -> None:
    chain = succession.verify_succession_chain(genesis(), [succeed("stockholm", "stockholm-2")])
    for signed in (revocation("stockholm", "stockholm-2"), revocation("goteborg")):
        with pytest.raises(ProtocolError) as caught:
            succession.apply_revocation(chain, signed)
        assert caught.value.code is ErrorCode.UNKNOWN_KEY


def test_revocation_with_a_forged_signature_or_for_another_city_is_refused() -> None:
    signed = codec.decode(
        revocation("stockholm"), succession.SignedRevocation, max_bytes=4096, what="t"
    )
    forged = codec.encode(msgspec.structs.replace(signed, signature=bytes(64)))
    with pytest.raises(ProtocolError) as caught:
        succession.apply_revocation([genesis()], forged)
    assert caught.value.code is ErrorCode.BAD_SIGNATURE
    with pytest.raises(ProtocolError):
        succession.apply_revocation([genesis()], revocation("stockholm"), city="malmo")


# --- Known-answer vectors ----------------------------------------------------------------------


def _chain_json(chain: tuple[VerifyKey, ...]) -> list[dict[str, Any]]:
    return [
        {
            "key_id": k.key_id.hex(),
            "valid_from": k.valid_from,
            "valid_until": k.valid_until,
            "revoked_since": k.revoked_since,
        }
        for k in chain
    ]


def test_vector_succession_is_reproduced_and_verifies() -> None:
    vector = VECTORS["succession"]
    signed = succession.sign_succession(
        vector_identity(vector["old"]),
        vector_identity(vector["new"]),
        city=vector["city"],
        effective_from=vector["effective_from"],
    )
    assert signed.hex() == vector["signed"]
    wire = codec.decode(signed, SignedSuccession, max_bytes=4096, what="t")
    assert wire.statement.hex() == vector["statement"]
    assert (wire.old_signature.hex(), wire.new_signature.hex()) == (
        vector["old_signature"],
        vector["new_signature"],
    )
    old = bytes.fromhex(VECTORS["identities"][vector["old"]]["public_key"])
    chain = succession.verify_succession_chain(
        keys.identity_key(old), [bytes.fromhex(vector["signed"])]
    )
    assert _chain_json(chain) == vector["chain"]


def test_vector_revocation_is_reproduced_and_applies() -> None:
    vector = VECTORS["revocation"]
    revoked = bytes.fromhex(VECTORS["identities"][vector["revoked"]]["public_key"])
    signed = succession.sign_revocation(
        vector_identity(vector["signer"]),
        city=vector["city"],
        revoked_key=revoked,
        compromised_since=vector["compromised_since"],
    )
    assert signed.hex() == vector["signed"]
    chain = succession.apply_revocation(
        [keys.identity_key(revoked)], bytes.fromhex(vector["signed"])
    )
    assert _chain_json(chain) == vector["chain"]
