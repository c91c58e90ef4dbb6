"""The independent implementation against every known-answer file in ``tests/vectors/``.

If these pass, a second team could have written ``reference*.py`` (and so these tests) from the
spec and the vectors alone: nothing here or there imports ``protocol``.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from reference import (
    IdentityKey,
    OwnEncryptionKey,
    Receiver,
    Refused,
    chunk_key,
    chunk_nonce_aad,
    envelope_payload,
    hpke_context,
    hpke_info,
    hpke_open,
    hpke_seal,
    key_id,
    open_envelope,
    open_stream,
    pack,
    seal_stream,
    signing_input,
    unpack,
    verify_receipt,
    x25519,
    x25519_public,
)
from reference_messages import decode_message, encode_message
from reference_trust import (
    apply_revocation,
    equivocation_proven,
    fingerprint,
    follow_succession,
    log_heads,
    sealing_key_at,
    verify_bundle,
    verify_checkpoint,
    verify_countersignature,
    verify_genesis,
    verify_successor,
)

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parent / "vectors"


@cache
def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text("utf-8"))
    return data


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def ed25519_public(seed: str) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(h(seed)).public_key().public_bytes_raw()


def by_name(vectors: list[dict[str, Any]]) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in vectors]


# --------------------------------------------------------------------- independence


@pytest.mark.parametrize("module", ["reference", "reference_messages", "reference_trust"])
def test_independent_implementation_imports_nothing_from_protocol(module: str) -> None:
    tree = ast.parse((HERE / f"{module}.py").read_text("utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert "protocol" not in imported
    assert imported <= {
        "__future__",
        "calendar",
        "collections",
        "dataclasses",
        "datetime",
        "hashlib",
        "hmac",
        "re",
        "typing",
        "msgpack",
        "cryptography",
        "blake3",
        "reference",
    }


# --------------------------------------------------------------------- §2 and §4: sealing


def envelope_identities() -> dict[str, list[IdentityKey]]:
    keys = load("envelopes")["keys"]
    return {
        city: [IdentityKey(h(k["identity_public"]), k["identity_valid_from"])]
        for city, k in keys.items()
    }


def receiver(me: str, now: int, **options: Any) -> Receiver:
    k = load("envelopes")["keys"][me]
    own = OwnEncryptionKey(
        h(k["encryption_seed"]), h(k["encryption_key_id"]), k["encryption_epoch"]
    )
    identities = options.pop("identities", envelope_identities())
    return Receiver(me, now, identities, [own], **options)


@pytest.mark.parametrize("city", ["stockholm", "goteborg", "malmo"])
def test_key_ids_of_the_envelope_keys_follow_from_their_seeds(city: str) -> None:
    k = load("envelopes")["keys"][city]
    assert ed25519_public(k["identity_seed"]).hex() == k["identity_public"]
    assert key_id(0x01, h(k["identity_public"])).hex() == k["identity_key_id"]
    assert x25519_public(h(k["encryption_seed"])).hex() == k["encryption_public"]
    assert key_id(0x02, h(k["encryption_public"])).hex() == k["encryption_key_id"]


def test_hand_built_hpke_key_schedule_gives_rfc9180_a2_1() -> None:
    a = load("hpke")["rfc9180_a2_1"]
    ctx = hpke_context(x25519(h(a["skEm"]), h(a["pkRm"])), h(a["enc"]), h(a["pkRm"]), h(a["info"]))
    assert (ctx.shared_secret.hex(), ctx.key.hex(), ctx.base_nonce.hex()) == (
        a["shared_secret"],
        a["key"],
        a["base_nonce"],
    )
    sealed = hpke_seal(
        h(a["skEm"]),
        h(a["pkRm"]),
        h(a["info"]),
        h(a["encryption"]["aad"]),
        h(a["encryption"]["pt"]),
    )
    assert sealed.hex() == a["enc"] + a["encryption"]["ct"]


@pytest.mark.parametrize("vector", by_name(load("hpke")["citynode"]))
def test_hpke_vector_seals_and_opens(vector: dict[str, Any]) -> None:
    sealed = hpke_seal(
        h(vector["skEm"]), h(vector["pkRm"]), h(vector["info"]), b"", h(vector["pt"])
    )
    assert sealed.hex() == vector["sealed"]
    assert hpke_open(h(vector["skRm"]), sealed, h(vector["info"]), b"").hex() == vector["pt"]


@pytest.mark.parametrize("vector", by_name(load("envelopes")["envelopes"]))
def test_envelope_opens_as_its_recipient_to_its_message(vector: dict[str, Any]) -> None:
    header, body = open_envelope(
        h(vector["envelope"]), receiver(vector["recipient"], vector["now"])
    )
    assert (header.sender, header.recipient, header.timestamp) == (
        vector["sender"],
        vector["recipient"],
        vector["timestamp"],
    )
    assert header.message_id.hex() == vector["message_id"]
    assert body.hex() == vector["body"]
    assert decode_message(body) == vector["message"]
    assert hashlib.sha256(h(vector["envelope"])).hexdigest() == vector["envelope_hash"]


@pytest.mark.parametrize("vector", by_name(load("envelopes")["envelopes"]))
def test_envelope_reseals_byte_for_byte_from_its_inputs(vector: dict[str, Any]) -> None:
    keys = load("envelopes")["keys"]
    sender, recipient = keys[vector["sender"]], keys[vector["recipient"]]
    header = pack(
        [
            1,
            1,
            vector["sender"],
            vector["recipient"],
            h(sender["identity_key_id"]),
            h(recipient["encryption_key_id"]),
            recipient["encryption_epoch"],
            vector["agreement_version"],
            h(vector["message_id"]),
            vector["timestamp"],
        ]
    )
    body = encode_message(vector["message"])
    to_sign = signing_input("envelope", envelope_payload(header, body))
    signature = Ed25519PrivateKey.from_private_bytes(h(sender["identity_seed"])).sign(to_sign)
    plaintext = pack([body, signature])
    sealed = hpke_seal(
        h(vector["ephemeral_private"]),
        h(recipient["encryption_public"]),
        hpke_info(header),
        b"",
        plaintext,
    )
    assert [header.hex(), body.hex(), to_sign.hex(), signature.hex()] == [
        vector["header"],
        vector["body"],
        vector["signing_input"],
        vector["signature"],
    ]
    assert (hpke_info(header).hex(), plaintext.hex()) == (
        vector["hpke_info"],
        vector["hpke_plaintext"],
    )
    assert (sealed.hex(), pack([header, sealed]).hex()) == (vector["sealed"], vector["envelope"])


@pytest.mark.parametrize("vector", by_name(load("envelopes")["rejections"]))
def test_envelope_rejection_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    options: dict[str, Any] = {}
    if "seen" in vector:
        options["seen"] = frozenset((city, h(mid)) for city, mid in vector["seen"])
    if "max_envelope_bytes" in vector:
        options["max_envelope_bytes"] = vector["max_envelope_bytes"]
    if "sender_revoked_since" in vector:
        identities = envelope_identities()
        key = identities["stockholm"][0]
        identities["stockholm"] = [
            IdentityKey(key.public, key.valid_from, None, vector["sender_revoked_since"])
        ]
        options["identities"] = identities
    with pytest.raises(Refused) as refused:
        open_envelope(h(vector["envelope"]), receiver(vector["me"], vector["now"], **options))
    assert refused.value.code == vector["code"]


@pytest.mark.parametrize("vector", load("receipts")["receipts"], ids=lambda v: v["status"])
def test_receipt_verifies_as_its_recipients_and_reproduces(vector: dict[str, Any]) -> None:
    fields = verify_receipt(h(vector["signed"]), vector["recipient"], envelope_identities())
    assert fields == {k: vector[k] for k in fields}
    receipt = pack(
        [
            h(vector["envelope_hash"]),
            h(vector["message_id"]),
            vector["sender"],
            vector["recipient"],
            vector["received_at"],
            vector["status"],
        ]
    )
    assert receipt.hex() == vector["receipt"]
    assert signing_input("receipt", receipt).hex() == vector["signing_input"]
    seed = load("receipts")["keys"][vector["recipient"]]["identity_seed"]
    signature = Ed25519PrivateKey.from_private_bytes(h(seed)).sign(
        signing_input("receipt", receipt)
    )
    assert pack([receipt, h(vector["signer_key_id"]), signature]).hex() == vector["signed"]


@pytest.mark.parametrize("vector", by_name(load("receipts")["rejections"]))
def test_receipt_rejection_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    with pytest.raises(Refused) as refused:
        verify_receipt(h(vector["signed"]), vector["signer"], envelope_identities())
    assert refused.value.code == vector["code"]


# --------------------------------------------------------------------- §5 attachments


@pytest.mark.parametrize("vector", by_name(load("attachments")["valid"]))
def test_attachment_stream_decrypts_and_reencrypts_exactly(vector: dict[str, Any]) -> None:
    a = load("attachments")
    key, attachment_id, plaintext = h(a["key"]), h(a["attachment_id"]), h(vector["plaintext"])
    assert chunk_key(key, attachment_id).hex() == a["chunk_key"]
    stream = h(vector["stream"])
    for i, frame in enumerate(vector["frames"]):
        nonce, aad = chunk_nonce_aad(stream[:25], i, i == len(vector["frames"]) - 1)
        assert (nonce.hex(), aad.hex()) == (frame["nonce"], frame["aad"])
    assert seal_stream(plaintext, key, attachment_id, a["chunk_size"]) == stream
    opened = open_stream(stream, key, attachment_id, vector["chunk_count"], h(vector["digest"]))
    assert opened == plaintext
    assert len(vector["frames"]) == vector["chunk_count"]
    assert len(opened) == vector["size"]


@pytest.mark.parametrize("vector", by_name(load("attachments")["invalid"]))
def test_attachment_stream_tampering_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    a = load("attachments")
    with pytest.raises(Refused) as refused:
        open_stream(h(vector["stream"]), h(a["key"]), h(a["attachment_id"]))
    assert refused.value.code == vector["error"]


# --------------------------------------------------------------------- §6 keys


@pytest.mark.parametrize("name", list(load("keys")["identities"]))
def test_identity_key_ids_follow_from_their_seeds(name: str) -> None:
    identity = load("keys")["identities"][name]
    assert ed25519_public(identity["seed"]).hex() == identity["public_key"]
    assert key_id(0x01, h(identity["public_key"])).hex() == identity["key_id"]


@pytest.mark.parametrize("vector", load("keys")["fingerprints"], ids=lambda v: v["city"])
def test_fingerprint_is_the_one_operators_compare(vector: dict[str, Any]) -> None:
    assert fingerprint(h(vector["identity_public"]), vector["city"]) == vector["fingerprint"]


def test_tls_pins_are_sha256_of_the_spki() -> None:
    for pin in load("keys")["tls_pins"]:
        assert hashlib.sha256(h(pin["spki_der"])).hexdigest() == pin["pin"]


def test_key_bundle_verifies_and_names_the_key_to_seal_to() -> None:
    keys = load("keys")
    b = keys["bundle"]
    bundle = verify_bundle(
        h(b["signed"]), h(keys["identities"][b["identity"]]["public_key"]), b["verify_at"]
    )
    assert (bundle.city, bundle.sequence, bundle.issued_at) == (
        b["city"],
        b["sequence"],
        b["issued_at"],
    )
    assert [p.hex() for p in bundle.tls_pins] == b["tls_pins"]
    assert (bundle.key_log[0], bundle.key_log[1].hex()) == (
        b["key_log"]["size"],
        b["key_log"]["root"],
    )
    for side, record in (("current", bundle.current), ("next", bundle.next)):
        expected = b[side]
        assert x25519_public(h(expected["x25519_seed"])) == record.public_key
        assert (record.key_id.hex(), record.epoch) == (expected["key_id"], expected["epoch"])
        assert (record.not_before, record.not_after) == (
            expected["not_before"],
            expected["not_after"],
        )
    for at, wanted in b["sealing_key_at"].items():
        assert sealing_key_at(bundle, int(at)).key_id.hex() == wanted


@pytest.mark.parametrize("vector", by_name(load("keys")["refused_bundles"]))
def test_refused_key_bundle_gives_its_code(vector: dict[str, Any]) -> None:
    with pytest.raises(Refused) as refused:
        verify_bundle(h(vector["signed"]), h(vector["expected_identity"]), int(vector["now"]))
    assert refused.value.code == vector["error"]


def chain_json(chain: list[IdentityKey]) -> list[dict[str, Any]]:
    return [
        {
            "key_id": k.key_id.hex(),
            "valid_from": k.valid_from,
            "valid_until": k.valid_until,
            "revoked_since": k.revoked_since,
        }
        for k in chain
    ]


def test_succession_chain_gives_each_key_its_window() -> None:
    keys = load("keys")
    s = keys["succession"]
    genesis = IdentityKey(h(keys["identities"][s["old"]]["public_key"]))
    chain = follow_succession(genesis, [h(s["signed"])], city=s["city"])
    assert chain_json(chain) == s["chain"]


def test_revocation_marks_the_compromised_key() -> None:
    keys = load("keys")
    r = keys["revocation"]
    genesis = IdentityKey(h(keys["identities"][r["revoked"]]["public_key"]))
    assert chain_json(apply_revocation([genesis], h(r["signed"]), r["city"])) == r["chain"]


# --------------------------------------------------------------------- §7 agreement


def test_agreement_chain_verifies_and_decodes_to_its_documents() -> None:
    g = load("agreement")
    first, second = g["versions"]
    v1 = verify_genesis(h(first["signed"]), g["today"], g["trusted_identity_keys"])
    v2 = verify_successor(v1, h(second["signed"]), g["today"])
    for verified, vector in ((v1, first), (v2, second)):
        assert verified.document == vector["document"]
        assert verified.document_bytes.hex() == vector["document_bytes"]
        assert hashlib.sha256(verified.document_bytes).hexdigest() == vector["document_hash"]
        assert [(k.hex(), s.hex()) for k, s in verified.signatures] == [
            (s["signer_key_id"], s["signature"]) for s in vector["signatures"]
        ]


@pytest.mark.parametrize("vector", by_name(load("agreement")["refused"]))
def test_refused_agreement_version_gives_its_code(vector: dict[str, Any]) -> None:
    g = load("agreement")
    first, second = g["versions"]
    v1 = verify_genesis(h(first["signed"]), g["today"], g["trusted_identity_keys"])
    current = {1: v1, 2: verify_successor(v1, h(second["signed"]), g["today"])}
    with pytest.raises(Refused) as refused:
        verify_successor(current[int(vector["current_version"])], h(vector["signed"]), g["today"])
    assert refused.value.code == vector["error"]


# --------------------------------------------------------------------- §8 key-history log


def keylog_identities() -> dict[str, list[IdentityKey]]:
    return {city: [IdentityKey(h(k["public_key"]))] for city, k in load("keylog")["keys"].items()}


def test_keylog_entry_hashes_and_heads_recompute() -> None:
    k = load("keylog")
    assert [head.hex() for head in log_heads(h(k["log_encoding"]))] == k["heads"]
    for entry in k["entries"]:
        assert pack(
            [
                entry["index"],
                h(entry["previous_hash"]),
                entry["timestamp"],
                entry["kind_code"],
                h(entry["payload"]),
            ]
        ) == h(entry["encoding"])
        hash_input = h(entry["hash_input"])
        assert hash_input.startswith(h(k["entry_domain"]))
        assert hashlib.sha256(hash_input).hexdigest() == entry["hash"]


def test_keylog_checkpoint_and_countersignature_verify() -> None:
    k = load("keylog")
    cp = k["checkpoint"]
    verified = verify_checkpoint(unpack(h(cp["wire"])), keylog_identities())
    assert (verified["city"], verified["size"], verified["head"].hex()) == (
        cp["city"],
        cp["size"],
        cp["head"],
    )
    assert (
        verify_countersignature(h(k["countersignature"]["wire"]), keylog_identities()) == "goteborg"
    )


@pytest.mark.parametrize("name", ["equivocation_same_size", "equivocation_extension"])
def test_equivocation_proof_is_valid(name: str) -> None:
    assert equivocation_proven(h(load("keylog")[name]["proof"]), keylog_identities())


def test_equivocation_proof_with_a_wrong_extension_is_not_valid() -> None:
    proof = unpack(h(load("keylog")["equivocation_extension"]["proof"]))
    proof[2] = proof[2][1:]
    assert not equivocation_proven(pack(proof), keylog_identities())


# --------------------------------------------------------------------- §3 messages


@pytest.mark.parametrize("vector", by_name(load("messages")["messages"]))
def test_message_body_decodes_by_position_and_reencodes(vector: dict[str, Any]) -> None:
    body = h(vector["body"])
    assert body[1] == vector["tag"]
    assert decode_message(body) == vector["message"]
    assert encode_message(vector["message"]) == body


@pytest.mark.parametrize("vector", by_name(load("messages")["noncanonical"]))
def test_noncanonical_message_body_decodes(vector: dict[str, Any]) -> None:
    assert decode_message(h(vector["body"])) == vector["message"]
    assert encode_message(vector["message"]).hex() == vector["canonical"]


@pytest.mark.parametrize("vector", by_name(load("messages")["refused"]))
def test_refused_message_body_gives_its_code(vector: dict[str, Any]) -> None:
    with pytest.raises(Refused) as refused:
        decode_message(h(vector["body"]), vector.get("max_body_bytes", 204800))
    assert refused.value.code == vector["code"]
