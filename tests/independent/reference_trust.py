"""Keys (§6), the agreement (§7) and the key-history log (§8), for the independent implementation.

Part of the deliberately separate second implementation described in ``reference.py``: written
from ``docs/protocol.md`` alone, importing nothing from ``protocol``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from reference import (
    ENCRYPTION,
    IDENTITY,
    U32_MAX,
    IdentityKey,
    Refused,
    array,
    bin_,
    date,
    key_at,
    key_id,
    name,
    seq,
    str_,
    uint,
    unpack,
    verify,
)

# ---------------------------------------------------------------- §6 keys


@dataclass(frozen=True)
class EncryptionKeyRecord:
    key_id: bytes
    public_key: bytes
    epoch: int
    not_before: int
    not_after: int


@dataclass(frozen=True)
class Bundle:
    city: str
    identity_key: bytes
    current: EncryptionKeyRecord
    next: EncryptionKeyRecord
    tls_pins: tuple[bytes, ...]
    key_log: tuple[int, bytes]
    issued_at: int
    sequence: int


def _announcement(v: Any, identity: bytes, what: str) -> EncryptionKeyRecord:
    """§6.1: ``[record bytes, signature]``; signature first, then the record's rules."""
    a = array(v, 2, what)
    record_bytes, signature = bin_(a[0], what, 0, 512), bin_(a[1], what, 64, 64)
    if not verify(identity, "encryption-key", record_bytes, signature):
        raise Refused("bad_signature", what)
    r = array(unpack(record_bytes), 5, what)
    rec = EncryptionKeyRecord(
        bin_(r[0], "key_id", 16, 16),
        bin_(r[1], "public_key", 32, 32),
        uint(r[2], "epoch", 0, U32_MAX),
        uint(r[3], "not_before"),
        uint(r[4], "not_after"),
    )
    if rec.key_id != key_id(ENCRYPTION, rec.public_key) or rec.not_before >= rec.not_after:
        raise Refused("bad_key_bundle", what)
    return rec


def verify_bundle(data: bytes, expected_identity: bytes | None, now: int) -> Bundle:
    """§6.2 "Verifying a bundle", steps 1-9."""
    if len(data) > 256 * 1024:
        raise Refused("oversized")
    outer = array(unpack(data), 2, "signed bundle")
    bundle_bytes, signature = bin_(outer[0], "bundle", 0, 16384), bin_(outer[1], "sig", 64, 64)
    b = array(unpack(bundle_bytes), 9, "bundle")
    city, identity = name(b[0], "city"), bin_(b[1], "identity_key", 32, 32)
    kid = bin_(b[2], "identity_key_id", 16, 16)
    pins = seq(b[5], "tls_pins", 1, 4)
    log = array(b[6], 2, "key_log")
    key_log = (uint(log[0], "size"), bin_(log[1], "root", 32, 32))
    issued_at, sequence = uint(b[7], "issued_at"), uint(b[8], "sequence")
    pins_t = tuple(bin_(p, "pin", 32, 32) for p in pins)
    if kid != key_id(IDENTITY, identity):
        raise Refused("bad_key_bundle", "identity key id")
    if expected_identity is not None and identity != expected_identity:
        raise Refused("unknown_key")
    if not verify(identity, "key-bundle", bundle_bytes, signature):
        raise Refused("bad_signature")
    if issued_at > now + 300:
        raise Refused("from_future")
    cur, nxt = _announcement(b[3], identity, "current"), _announcement(b[4], identity, "next")
    if (
        nxt.epoch != cur.epoch + 1
        or nxt.public_key == cur.public_key
        or not cur.not_before < nxt.not_before <= cur.not_after < nxt.not_after
    ):
        raise Refused("bad_key_bundle", "windows")
    if cur.not_after < now:
        raise Refused("expired_key")
    if cur.not_before > now + 300 or len(set(pins_t)) != len(pins_t):
        raise Refused("bad_key_bundle")
    return Bundle(city, identity, cur, nxt, pins_t, key_log, issued_at, sequence)


def sealing_key_at(bundle: Bundle, t: int) -> EncryptionKeyRecord:
    """§6.2 "Which key to seal to": the highest epoch whose window holds ``t``."""
    for k in (bundle.next, bundle.current):
        if k.not_before <= t <= k.not_after:
            return k
    raise Refused("expired_key")


def fingerprint(identity_public: bytes, city: str) -> str:
    """§6.6: 5200 rounds of SHA-512, then six groups of five digits."""
    h = b"\x00\x00" + identity_public + city.encode("utf-8")
    for _ in range(5200):
        h = hashlib.sha512(h + identity_public).digest()
    return " ".join(f"{int.from_bytes(h[5 * j : 5 * j + 5], 'big') % 100000:05d}" for j in range(6))


def follow_succession(
    genesis: IdentityKey, statements: list[bytes], city: str | None = None
) -> list[IdentityKey]:
    """§6.3 "Following a chain": each key with its window."""
    if len(statements) > 64:
        raise Refused("bad_succession", "chain too long")
    chain = [genesis]
    for signed in statements:
        s = array(unpack(signed), 3, "signed succession")
        statement = bin_(s[0], "statement", 0, 512)
        st = array(unpack(statement), 4, "succession")
        c, old, new = name(st[0], "city"), bin_(st[1], "old", 32, 32), bin_(st[2], "new", 32, 32)
        t = uint(st[3], "effective_from")
        if old == new:
            raise Refused("bad_succession", "a key succeeding itself")
        if not (
            verify(old, "succession-old", statement, bin_(s[1], "old_sig", 64, 64))
            and verify(new, "succession-new", statement, bin_(s[2], "new_sig", 64, 64))
        ):
            raise Refused("bad_signature")
        if city is not None and c != city:
            raise Refused("bad_succession", "another city")
        city, last = c, chain[-1]
        revoked = last.revoked_since is not None and last.revoked_since <= t
        if (
            old != last.public
            or new in {k.public for k in chain}
            or t <= last.valid_from
            or revoked
        ):
            raise Refused("bad_succession")
        chain[-1] = IdentityKey(last.public, last.valid_from, t - 1, last.revoked_since)
        chain.append(IdentityKey(new, t))
    return chain


def apply_revocation(chain: list[IdentityKey], signed: bytes, city: str) -> list[IdentityKey]:
    """§6.4: mark the revoked key and every key its compromise may have introduced."""
    s = array(unpack(signed), 3, "signed revocation")
    statement, signer = bin_(s[0], "statement", 0, 512), bin_(s[1], "signer_key", 32, 32)
    if not verify(signer, "revocation", statement, bin_(s[2], "signature", 64, 64)):
        raise Refused("bad_signature")
    r = array(unpack(statement), 3, "revocation")
    c, key, since = name(r[0], "city"), bin_(r[1], "key", 32, 32), uint(r[2], "since")
    if c != city:
        raise Refused("invalid_field", "city")
    publics = [k.public for k in chain]
    if key not in publics or signer not in publics[publics.index(key) :]:
        raise Refused("unknown_key")
    at = publics.index(key)
    previous = chain[at].revoked_since
    if previous is not None:
        since = min(since, previous)
    out = list(chain)
    out[at] = IdentityKey(key, chain[at].valid_from, chain[at].valid_until, since)
    for j, k in enumerate(chain[at + 1 :], start=at + 1):
        if k.valid_from >= since:
            cut = k.valid_from if k.revoked_since is None else min(k.revoked_since, k.valid_from)
            out[j] = IdentityKey(k.public, k.valid_from, k.valid_until, cut)
    return out


# ---------------------------------------------------------------- §7 agreement


ENDPOINT = re.compile(r"https://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?")
THREAT_LEVELS = ("none", "low", "moderate", "high")


def display(v: Any, what: str, hi: int) -> str:
    """§7.1 title and display names: not blank, no control, separator, surrogate or bidi."""
    s = str_(v, what, 1, hi)
    bad = [c for c in s if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF]
    bad += [c for c in s if c in "\u2028\u2029" or "\u202a" <= c <= "\u202e"]
    if bad or any("\u2066" <= c <= "\u2069" for c in s) or s.isspace():
        raise Refused("invalid_field", what)
    return s


def _member(v: Any) -> dict[str, Any]:
    m = array(v, 6, "member")
    units = [array(u, 2, "unit") for u in seq(m[2], "units", 1, 64)]
    endpoint = str_(m[3], "endpoint", 9, 512)
    if not ENDPOINT.fullmatch(endpoint):
        raise Refused("invalid_field", "endpoint")
    return {
        "city": name(m[0], "city"),
        "display_name": display(m[1], "display_name", 200),
        "units": [
            {"id": name(u[0], "id"), "display_name": display(u[1], "unit", 200)} for u in units
        ],
        "endpoint": endpoint,
        "identity_key": bin_(m[4], "identity_key", 32, 32).hex(),
        "tls_pins": [bin_(p, "pin", 32, 32).hex() for p in seq(m[5], "tls_pins", 1, 4)],
    }


def threat_level(v: Any) -> str:
    """An enumeration value: unknown is `invalid_field` (§2), not `agreement_invalid`."""
    if str_(v, "eligible_threat_levels") not in THREAT_LEVELS:
        raise Refused("invalid_field", "eligible_threat_levels")
    return str(v)


def _distinct(items: list[Any]) -> bool:
    return len(set(items)) == len(items)


def decode_agreement(document_bytes: bytes) -> dict[str, Any]:
    """§7.1, by position, then the rules whose breach is `agreement_invalid`."""
    d = array(unpack(document_bytes), 10, "document")
    doc: dict[str, Any] = {
        "version": uint(d[0], "version", 1, U32_MAX),
        "previous_hash": None if d[1] is None else bin_(d[1], "previous_hash", 32, 32).hex(),
        "title": display(d[2], "title", 500),
        "valid_from": date(d[3], "valid_from", out_of_range="agreement_invalid"),
        "valid_until": date(d[4], "valid_until", out_of_range="agreement_invalid"),
        "members": [_member(m) for m in seq(d[5], "members", 1, 512)],
        "quota_per_home_city_per_year": uint(d[6], "quota", 0, 100),
        "eligible_threat_levels": [threat_level(x) for x in seq(d[7], "levels", 1, 4)],
        "signing_threshold": uint(d[8], "signing_threshold", 1, 512),
        "revoked_keys": [bin_(k, "revoked", 32, 32).hex() for k in seq(d[9], "revoked", 0, 1024)],
    }
    members, n = doc["members"], len(doc["members"])
    keys = [m["identity_key"] for m in members]
    ok = (
        (doc["previous_hash"] is None) == (doc["version"] == 1)
        and doc["valid_from"] <= doc["valid_until"]
        and _distinct([m["city"] for m in members])
        and _distinct(keys)
        and all(_distinct([u["id"] for u in m["units"]]) for m in members)
        and all(_distinct(m["tls_pins"]) for m in members)
        and _distinct(doc["eligible_threat_levels"])
        and n // 2 + 1 <= doc["signing_threshold"] <= n
        and _distinct(doc["revoked_keys"])
        and not set(doc["revoked_keys"]) & set(keys)
    )
    if not ok:
        raise Refused("agreement_invalid")
    return doc


@dataclass(frozen=True)
class Agreement:
    document_bytes: bytes
    document: dict[str, Any]
    signatures: tuple[tuple[bytes, bytes], ...]


def decode_signed_agreement(signed: bytes) -> Agreement:
    if len(signed) > 256 * 1024:
        raise Refused("oversized")
    outer = array(unpack(signed), 2, "signed agreement")
    doc_bytes = bin_(outer[0], "document")
    sigs = [array(s, 2, "signature") for s in seq(outer[1], "signatures", 0, 1024)]
    pairs = tuple((bin_(s[0], "kid", 16, 16), bin_(s[1], "sig", 64, 64)) for s in sigs)
    return Agreement(doc_bytes, decode_agreement(doc_bytes), pairs)


def count_side(
    a: Agreement, members: list[dict[str, Any]], excluded: set[str], threshold: int
) -> None:
    """§7.2 "Counting signatures": `not_a_member` or `agreement_threshold` on failure."""
    by_id = {key_id(IDENTITY, bytes.fromhex(m["identity_key"])): m["identity_key"] for m in members}
    named, counted = False, set()
    for kid, signature in a.signatures:
        if kid not in by_id:
            continue
        named, key = True, by_id[kid]
        if key in excluded or key in counted:
            continue
        if verify(bytes.fromhex(key), "agreement", a.document_bytes, signature):
            counted.add(key)
    if not named:
        raise Refused("not_a_member")
    if len(counted) < threshold:
        raise Refused("agreement_threshold")


def verify_genesis(signed: bytes, today: str, trusted: dict[str, str] | None) -> Agreement:
    """§7.3 version 1, the trust root (``trusted``: city → identity key hex)."""
    a = decode_signed_agreement(signed)
    doc = a.document
    if doc["version"] != 1:
        raise Refused("agreement_invalid")
    if trusted is not None and any(
        trusted.get(m["city"]) != m["identity_key"] for m in doc["members"]
    ):
        raise Refused("unknown_key")
    if today > doc["valid_until"]:
        raise Refused("agreement_expired")
    count_side(a, doc["members"], set(), doc["signing_threshold"])
    return a


def verify_successor(current: Agreement, signed: bytes, today: str) -> Agreement:
    """§7.3 version N+1 after the verified version N, steps 1-7."""
    nxt = decode_signed_agreement(signed)
    old, new = current.document, nxt.document
    if new["version"] < old["version"] or nxt.document_bytes == current.document_bytes:
        raise Refused("agreement_rollback")
    if new["version"] == old["version"]:
        raise Refused("agreement_fork")
    if new["version"] > old["version"] + 1:
        raise Refused("agreement_skipped_version")
    if new["previous_hash"] != hashlib.sha256(current.document_bytes).hexdigest():
        raise Refused("agreement_fork")
    if not set(old["revoked_keys"]) <= set(new["revoked_keys"]):
        raise Refused("agreement_invalid")
    if today > new["valid_until"]:
        raise Refused("agreement_expired")
    new_keys = {m["city"]: m["identity_key"] for m in new["members"]}
    replaced = {
        m["identity_key"]
        for m in old["members"]
        if m["city"] in new_keys and new_keys[m["city"]] != m["identity_key"]
    }
    count_side(nxt, old["members"], set(new["revoked_keys"]) | replaced, old["signing_threshold"])
    count_side(nxt, new["members"], set(), new["signing_threshold"])
    return nxt


# ---------------------------------------------------------------- §8 key-history log


def entry_hash(index: int, previous: bytes, timestamp: int, kind: int, payload: bytes) -> bytes:
    """§8.1: SHA-256 over the fixed binary layout, not over the MessagePack encoding."""
    return hashlib.sha256(
        b"citynode/v1 keylog-entry\x00"
        + index.to_bytes(8, "big")
        + previous
        + timestamp.to_bytes(8, "big")
        + bytes([kind])
        + len(payload).to_bytes(4, "big")
        + payload
    ).digest()


def _entry(v: Any) -> tuple[int, bytes, int, int, bytes]:
    e = array(v, 5, "entry")
    kind = uint(e[3], "kind", 1, 8)
    return (
        uint(e[0], "index", 0, U32_MAX),
        bin_(e[1], "previous_hash", 32, 32),
        uint(e[2], "timestamp"),
        kind,
        bin_(e[4], "payload", 1, 262144),
    )


def log_heads(log: bytes) -> list[bytes]:
    """§8.1 "Verifying a log": the head after each prefix (heads[0] is the empty log's)."""
    if len(log) > 8 * 1024 * 1024:
        raise Refused("oversized")
    entries = seq(unpack(log), "log", 0, 2**20)
    if len(entries) > 10000:
        raise Refused("keylog_broken", "10000")
    heads, last_ts = [bytes(32)], 0
    for i, raw in enumerate(entries):
        index, previous, ts, kind, payload = _entry(raw)
        if index != i or previous != heads[-1] or ts < last_ts:
            raise Refused("keylog_broken", str(i))
        heads.append(entry_hash(index, previous, ts, kind, payload))
        last_ts = ts
    return heads


def verify_checkpoint(v: Any, identities: dict[str, list[IdentityKey]]) -> dict[str, Any]:
    """§8.2; ``v`` is the decoded signed checkpoint (an array of 3)."""
    s = array(v, 3, "signed checkpoint")
    cp_bytes = bin_(s[0], "checkpoint_bytes", 0, 256)
    kid, signature = bin_(s[1], "signer_key_id", 16, 16), bin_(s[2], "signature", 64, 64)
    c = array(unpack(cp_bytes), 4, "checkpoint")
    cp: dict[str, Any] = {
        "city": name(c[0], "city"),
        "size": uint(c[1], "size", 1, 2**32),
        "head": bin_(c[2], "head", 32, 32),
        "timestamp": uint(c[3], "timestamp"),
    }
    if cp["city"] not in identities:
        raise Refused("unknown_sender")
    key = key_at(identities[cp["city"]], kid, cp["timestamp"])
    if not verify(key.public, "keylog-checkpoint", cp_bytes, signature):
        raise Refused("bad_signature")
    if cp["size"] > 10000:
        raise Refused("oversized")
    return cp


def verify_countersignature(wire: bytes, identities: dict[str, list[IdentityKey]]) -> str:
    """§8.4; returns the witness."""
    w = array(unpack(wire), 3, "countersignature")
    st_bytes = bin_(w[0], "statement_bytes", 0, 1024)
    kid, signature = bin_(w[1], "witness_key_id", 16, 16), bin_(w[2], "signature", 64, 64)
    st = array(unpack(st_bytes), 3, "statement")
    witness, seen_at = name(st[0], "witness"), uint(st[1], "seen_at")
    if witness not in identities:
        raise Refused("unknown_sender")
    key = key_at(identities[witness], kid, seen_at)
    if not verify(key.public, "keylog-countersign", st_bytes, signature):
        raise Refused("bad_signature")
    cp = verify_checkpoint(st[2], identities)
    if witness == cp["city"]:
        raise Refused("invalid_field", "witness")
    if cp["timestamp"] > seen_at + 300:
        raise Refused("from_future")
    return witness


def equivocation_proven(proof: bytes, identities: dict[str, list[IdentityKey]]) -> bool:
    """§8.5: whether a proof is valid (a checkpoint that does not verify: not valid)."""
    p = array(unpack(proof), 3, "proof")
    ext = [_entry(e) for e in seq(p[2], "extension", 0, 2**20)]
    try:
        first, second = verify_checkpoint(p[0], identities), verify_checkpoint(p[1], identities)
    except Refused:
        return False
    n, m = first["size"], second["size"]
    if first["city"] != second["city"] or n > m:
        return False
    if n == m:
        return not ext and first["head"] != second["head"]
    if len(ext) != m - n + 1:
        return False
    hashes = [entry_hash(*e) for e in ext]
    chained = all(ext[j][0] == n - 1 + j for j in range(len(ext))) and all(
        ext[j][1] == hashes[j - 1] for j in range(1, len(ext))
    )
    return chained and hashes[-1] == second["head"] and hashes[0] != first["head"]
