"""Protocol benchmark: our code against raw baselines measured in the same run.

1. Envelopes: ``seal_envelope`` and ``open_envelope`` of a 2 KiB referral, against the sum of
   the raw primitive calls they are built on, on inputs of the same sizes: Ed25519 sign, HPKE
   seal (``cryptography``'s ``hpke.Suite.encrypt``) and msgpack encode for sealing; HPKE open
   (``Suite.decrypt``), Ed25519 verify (libsodium, as ``protocol.signing``) and msgpack decode
   for opening. Measured and raw calls alternate call by call; the ratio is the median over
   rounds. Target: each <= 1.3x.
2. Attachments: a file (512 MiB; 32 MiB with ``--quick``) encrypted and decrypted, file to file,
   by the node's pipeline (``node.attachment_files``: the protocol's ``AttachmentWriter`` /
   ``AttachmentReader`` and an I/O thread) in a child process whose peak RSS is read, and by
   ``gpg --sign --encrypt -z 0`` / ``gpg --decrypt`` with a throwaway ed25519/cv25519 key; each
   round runs ours and GnuPG back to back (who goes first alternates), the speedup is the median
   of the rounds' ratios. Files live in ``/dev/shm`` when it has room, so the disk's write-back
   does not set the pace. Targets: >= 3x GnuPG's throughput both ways, peak RSS < 64 MiB.

Prints a Markdown table, or one JSON object with ``--json``. Always exits 0: the benchmark
reports, it does not judge.

Usage: ``python bench/bench_protocol.py [--quick] [--json] [--workdir DIR] [--only PART]``
(``make bench``, ``make bench-quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cryptography
import msgspec
import nacl.bindings
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.attachment_files import decrypt_file, encrypt_file
from protocol import codec
from protocol.keys import EncryptionKey, KeyKind, VerifyKey, key_id
from protocol.messages import AttachmentRef, Person, QuotaCount, Referral, decode_message
from protocol.sealing import (
    HPKE_INFO_PREFIX,
    DecryptionKey,
    open_envelope,
    seal_envelope,
    signed_payload,
)
from protocol.signing import Purpose, signing_input

MIB = 1024 * 1024
BLOCK = 256 * 1024  # block size for writing the random source file
TARGET_ENVELOPE_RATIO = 1.3
TARGET_SPEEDUP = 3.0
TARGET_RSS_MIB = 64.0
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
REFERRAL_BYTES = 2048
_FILLER = "Arbetsmarknadsinsats och motivationssamtal enligt planen, fiktivt exempel. " * 8


# --- 1. envelopes -----------------------------------------------------------------------------


class _NeverSeen:
    def seen(self, sender: str, message_id: bytes) -> bool:
        return False


def _referral(target_bytes: int) -> Referral:
    """A fake referral (Tolvan Tolvansson's test personnummer) padded to ``target_bytes``."""
    document = AttachmentRef(
        attachment_id=bytes(range(16)),
        filename="hotbildsbedomning-exempel.pdf",
        media_type="application/pdf",
        size=1_000_000,
        digest=bytes(32),
        key=bytes(range(32)),
        chunk_count=16,
    )

    def build(pad: int) -> Referral:
        return Referral(
            case_id=bytes(16),
            from_unit="jarva",
            person=Person(
                name="Tolvan Tolvansson",
                personnummer="191212121212",
                protected_identity=True,
                phone="+46 8 000 00 00",
                address=None,
            ),
            documents=(document,),
            interventions=(
                "Boende: tillfallig lagenhet under fyra manader (exempel)",
                "Stodsamtal varannan vecka (exempel)",
                *(_FILLER[:400] for _ in range(pad // 400)),
                *((_FILLER[: pad % 400],) if pad % 400 else ()),
            ),
            payer="jarva",
            quota=QuotaCount(year=2026, index=1, total=2),
        )

    estimate = target_bytes - len(codec.encode(build(1)))
    # String headers grow with their length: try the pads around the estimate, keep the closest.
    referral = min(
        (build(pad) for pad in range(max(1, estimate - 16), estimate + 16)),
        key=lambda r: abs(len(codec.encode(r)) - target_bytes),
    )
    # Decoded as a peer would, so every length bound is checked.
    decoded = decode_message(codec.encode(referral))
    assert isinstance(decoded, Referral)
    return decoded


@dataclass(frozen=True)
class _EnvelopeCase:
    """Everything one seal/open measurement needs, built once."""

    referral: Referral
    identity: Ed25519PrivateKey
    recipient_private: X25519PrivateKey
    recipient_key: EncryptionKey
    verify_key: VerifyKey
    envelope: bytes
    body: bytes
    payload: bytes
    signature: bytes
    info: bytes
    hpke_plaintext: bytes
    hpke_sealed: bytes


def _envelope_case() -> _EnvelopeCase:
    identity = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    recipient_private = X25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
    recipient_public = recipient_private.public_key().public_bytes_raw()
    recipient_key = EncryptionKey(
        key_id=key_id(KeyKind.ENCRYPTION, recipient_public),
        public_key=recipient_public,
        epoch=1,
        not_before=NOW - 86_400,
        not_after=NOW + 86_400,
    )
    identity_public = identity.public_key().public_bytes_raw()
    verify_key = VerifyKey(
        key_id=key_id(KeyKind.IDENTITY, identity_public),
        public_key=identity_public,
        valid_from=NOW - 86_400,
    )
    referral = _referral(REFERRAL_BYTES)
    envelope = _seal(referral, identity, recipient_key, bytes(16), bytes(range(3, 35)))
    # The raw primitives get inputs of the sizes our construction gives them.
    header_bytes = msgspec.msgpack.decode(envelope)[0]
    body = codec.encode(referral)
    payload = signing_input(Purpose.ENVELOPE, signed_payload(header_bytes, body))
    signature = identity.sign(payload)
    info = HPKE_INFO_PREFIX + header_bytes
    hpke_plaintext = codec.encode((body, signature))
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    sealed = suite.encrypt(hpke_plaintext, recipient_private.public_key(), info=info)
    return _EnvelopeCase(
        referral,
        identity,
        recipient_private,
        recipient_key,
        verify_key,
        envelope,
        body,
        payload,
        signature,
        info,
        hpke_plaintext,
        sealed,
    )


def _seal(
    referral: Referral,
    identity: Ed25519PrivateKey,
    recipient_key: EncryptionKey,
    message_id: bytes,
    ephemeral: bytes,
) -> bytes:
    return seal_envelope(
        sender="stockholm",
        sender_identity=identity,
        recipient="malmo",
        recipient_key=recipient_key,
        agreement_version=3,
        message=referral,
        message_id=message_id,
        timestamp=NOW,
        ephemeral=ephemeral,
    )


def _envelope_workloads(case: _EnvelopeCase) -> dict[str, Callable[[], object]]:
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    recipient_public = case.recipient_private.public_key()
    identity_raw = bytes(case.verify_key.public_key)  # verified by libsodium, as protocol.signing

    def raw_verify() -> object:
        return nacl.bindings.crypto_sign_open(case.signature + case.payload, identity_raw)

    my_keys = {case.recipient_key.key_id: DecryptionKey(1, case.recipient_private)}
    ephemeral = bytes(range(3, 35))
    verify_keys = [case.verify_key]

    def raw_seal() -> object:
        msgspec.msgpack.encode(case.referral)
        case.identity.sign(case.payload)
        return suite.encrypt(case.hpke_plaintext, recipient_public, info=case.info)

    def raw_open() -> object:
        suite.decrypt(case.hpke_sealed, case.recipient_private, info=case.info)
        raw_verify()
        return msgspec.msgpack.decode(case.body)

    return {
        "seal": lambda: _seal(
            case.referral, case.identity, case.recipient_key, bytes(16), ephemeral
        ),
        "seal_raw": raw_seal,
        "open": lambda: open_envelope(
            case.envelope,
            me="malmo",
            my_keys=my_keys,
            sender_keys=lambda city: verify_keys if city == "stockholm" else None,
            replay=_NeverSeen(),
            now=NOW,
        ),
        "open_raw": raw_open,
        "ed25519_sign": lambda: case.identity.sign(case.payload),
        "hpke_seal": lambda: suite.encrypt(case.hpke_plaintext, recipient_public, info=case.info),
        "msgpack_encode": lambda: msgspec.msgpack.encode(case.referral),
        "hpke_open": lambda: suite.decrypt(
            case.hpke_sealed, case.recipient_private, info=case.info
        ),
        "ed25519_verify": raw_verify,
        "msgpack_decode": lambda: msgspec.msgpack.decode(case.body),
        "msgpack_decode_typed": lambda: msgspec.msgpack.decode(case.body, type=Referral),
    }


def _time_batch(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n / 1000.0


def _paired(
    measured: Callable[[], object], raw: Callable[[], object], rounds: int, per_batch: int
) -> tuple[float, float, float]:
    """Time ``measured`` and ``raw`` call by call, alternately, so noise hits both alike.

    Returns the median over rounds of µs per measured call, µs per raw call, and their ratio.
    """
    clock = time.perf_counter_ns
    ours, base, ratios = [], [], []
    for _ in range(rounds):
        spent_measured = spent_raw = 0
        for i in range(per_batch):
            first, second = (measured, raw) if i % 2 == 0 else (raw, measured)
            t0 = clock()
            first()
            t1 = clock()
            second()
            t2 = clock()
            spent_measured += t1 - t0 if first is measured else t2 - t1
            spent_raw += t2 - t1 if first is measured else t1 - t0
        ours.append(spent_measured / per_batch / 1000)
        base.append(spent_raw / per_batch / 1000)
        ratios.append(spent_measured / spent_raw)
    return statistics.median(ours), statistics.median(base), statistics.median(ratios)


def bench_envelopes(quick: bool) -> dict[str, Any]:
    case = _envelope_case()
    work = _envelope_workloads(case)
    rounds, per_batch = (9, 40) if quick else (31, 200)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for fn in work.values():  # warm-up
            _time_batch(fn, 20)
        seal_us, seal_raw_us, seal_ratio = _paired(
            work["seal"], work["seal_raw"], rounds, per_batch
        )
        open_us, open_raw_us, open_ratio = _paired(
            work["open"], work["open_raw"], rounds, per_batch
        )
        primitives = {
            name: statistics.median(_time_batch(work[name], per_batch // 2) for _ in range(rounds))
            for name in (
                "ed25519_sign",
                "hpke_seal",
                "msgpack_encode",
                "hpke_open",
                "ed25519_verify",
                "msgpack_decode",
                "msgpack_decode_typed",
            )
        }
    finally:
        if gc_was_enabled:
            gc.enable()
    # Supplementary: the raw open with msgspec decoding into the typed Referral (which runs the
    # catalogue's own validation) instead of plain msgpack; not the target's baseline.
    open_raw_typed = open_raw_us - primitives["msgpack_decode"] + primitives["msgpack_decode_typed"]
    return {
        "referral_body_bytes": len(case.body),
        "envelope_bytes": len(case.envelope),
        "seal_us": round(seal_us, 2),
        "seal_raw_us": round(seal_raw_us, 2),
        "seal_ratio": round(seal_ratio, 3),
        "seal_target_met": seal_ratio <= TARGET_ENVELOPE_RATIO,
        "open_us": round(open_us, 2),
        "open_raw_us": round(open_raw_us, 2),
        "open_ratio": round(open_ratio, 3),
        "open_target_met": open_ratio <= TARGET_ENVELOPE_RATIO,
        "open_raw_typed_us": round(open_raw_typed, 2),
        "open_ratio_vs_typed": round(open_us / open_raw_typed, 3),
        "primitives_us": {name: round(us, 2) for name, us in primitives.items()},
    }


# --- 2. attachments ---------------------------------------------------------------------------


def _attachment_worker(args: list[str]) -> None:
    """Child process: encrypt or decrypt one file with the node's file pipeline; print JSON.

    ``node.attachment_files`` is the node's file-to-file pipeline over the protocol's writer/reader:
    the protocol's ``AttachmentWriter`` / ``AttachmentReader`` filling reused buffers, a helper
    thread writing them out, output staged in a temporary file, fsynced and linked into place.
    """
    mode, source, target, key_hex, id_hex = args[:5]
    key, attachment_id = bytes.fromhex(key_hex), bytes.fromhex(id_hex)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if mode == "encrypt":
        summary = encrypt_file(Path(source), Path(target), key=key, attachment_id=attachment_id)
    else:
        size, chunk_count, digest = int(args[5]), int(args[6]), bytes.fromhex(args[7])
        reference = AttachmentRef(
            attachment_id=attachment_id,
            filename="document.bin",
            media_type="application/octet-stream",
            size=size,
            digest=digest,
            key=key,
            chunk_count=chunk_count,
        )
        summary = decrypt_file(Path(source), Path(target), reference)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime - before.ru_utime + usage.ru_stime - before.ru_stime
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu,  # of the call, like "seconds"; the interpreter's start excluded
        "peak_rss_mib": usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
        "size": summary.size,
        "chunk_count": summary.chunk_count,
        "digest": summary.digest.hex(),
    }
    sys.stdout.write(json.dumps(result) + "\n")


def _timed_child(command: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run a child to completion; return its stdout, wall seconds and CPU seconds (user + sys)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return done.stdout, wall, cpu


def _run_worker(*args: str) -> tuple[dict[str, Any], float]:
    """Run our attachment worker in a child; return its report and its wall time."""
    command = [sys.executable, str(Path(__file__).resolve()), "--attachment-worker", *args]
    stdout, wall, _ = _timed_child(command)
    return json.loads(stdout), wall


def _make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            f.write(block)
            left -= len(block)


class _GnuPG:
    """A throwaway GnuPG home with an ed25519 signing key and a cv25519 encryption subkey."""

    def __init__(self, home: Path) -> None:
        self.gpg = shutil.which("gpg") or "/usr/bin/gpg"
        self.home = home
        home.mkdir(mode=0o700)
        self.env = {**os.environ, "GNUPGHOME": str(home)}
        base = ["--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        self.base = [self.gpg, *base]
        user = "citynode bench <bench@example.invalid>"
        self._run("--quick-gen-key", user, "ed25519", "sign", "never")
        listing = self._run("--with-colons", "--list-keys", user).stdout
        self.fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        self._run("--quick-add-key", self.fingerprint, "cv25519", "encr", "never")
        self.version = self._run("--version").stdout.splitlines()[0]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, check=True
        )

    def encrypt(self, source: Path, target: Path) -> tuple[float, float]:
        """Sign and encrypt, uncompressed; return wall and CPU seconds."""
        _, wall, cpu = _timed_child(
            [*self.base, "--yes", "-z", "0", "--trust-model", "always", "--sign", "--encrypt",
             "-r", self.fingerprint, "-o", str(target), str(source)],
            self.env,
        )  # fmt: skip
        return wall, cpu

    def decrypt(self, source: Path, target: Path) -> tuple[float, float]:
        """Decrypt and verify the signature; return wall and CPU seconds."""
        _, wall, cpu = _timed_child(
            [*self.base, "--yes", "-o", str(target), "--decrypt", str(source)], self.env
        )
        return wall, cpu

    def close(self) -> None:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:  # stop the agent this home started
            subprocess.run([gpgconf, "--kill", "gpg-agent"], env=self.env, check=False)


def _default_workdir(size: int) -> Path | None:
    """A RAM-backed directory when one has room, so the disk's write-back does not dominate."""
    shm = Path("/dev/shm")
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    return shm if stat.f_bavail * stat.f_frsize > 4 * size + 256 * MIB else None


def _settle_memory(root: Path, size: int) -> None:
    """Write and delete ``size`` bytes in the workdir just before a timed step.

    On a virtual machine that hands freed memory back to its host (virtio-balloon free page
    reporting, as here), the first write into a page the host took back costs several times a
    warm write: 2-4 ns a byte against 0.5 for tmpfs here. Whichever side happened to allocate
    after such a report would pay it. Touching the pages the step will need just before it, for
    ours and GnuPG alike, leaves the comparison to the two programs.
    """
    scratch = root / "settle.bin"
    block = bytes(MIB)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(-(-size // MIB)):
            os.write(fd, block)
    finally:
        os.close(fd)
        scratch.unlink()


def _ours(root: Path, source: Path, size: int) -> dict[str, float]:
    """Our encryption then decryption of ``source``, each in its own child process."""
    key, attachment_id = os.urandom(32), os.urandom(16)  # a fresh key per attachment, as a node
    sealed, opened = root / "ours.cnas", root / "ours.out"
    _settle_memory(root, size)
    enc, enc_wall = _run_worker("encrypt", str(source), str(sealed), key.hex(), attachment_id.hex())
    _settle_memory(root, size)
    dec, dec_wall = _run_worker(
        "decrypt", str(sealed), str(opened), key.hex(), attachment_id.hex(),
        str(enc["size"]), str(enc["chunk_count"]), enc["digest"],
    )  # fmt: skip
    if dec["digest"] != enc["digest"] or dec["size"] != size:
        raise RuntimeError("our decryption did not give the document back")
    sealed.unlink()
    opened.unlink()
    return {
        "ours_enc_s": enc["seconds"],
        "ours_dec_s": dec["seconds"],
        "ours_enc_wall_s": enc_wall,
        "ours_dec_wall_s": dec_wall,
        "ours_enc_cpu_s": enc["cpu_seconds"],
        "ours_dec_cpu_s": dec["cpu_seconds"],
        "peak_rss_mib": max(enc["peak_rss_mib"], dec["peak_rss_mib"]),
    }


def _theirs(root: Path, source: Path, size: int, gpg: _GnuPG) -> dict[str, float]:
    """GnuPG's signed encryption then decryption (with verification) of ``source``."""
    row: dict[str, float] = {}
    _settle_memory(root, size)
    row["gpg_enc_s"], row["gpg_enc_cpu_s"] = gpg.encrypt(source, root / "gpg.gpg")
    _settle_memory(root, size)
    row["gpg_dec_s"], row["gpg_dec_cpu_s"] = gpg.decrypt(root / "gpg.gpg", root / "gpg.out")
    (root / "gpg.gpg").unlink()
    (root / "gpg.out").unlink()
    return row


def _attachment_round(
    root: Path, source: Path, gpg: _GnuPG | None, ours_first: bool
) -> dict[str, float]:
    """One round: ours and GnuPG back to back, each way; seconds, CPU seconds and peak RSS."""
    size = source.stat().st_size
    row: dict[str, float] = {}
    if gpg is not None and not ours_first:
        row.update(_theirs(root, source, size, gpg))
    row.update(_ours(root, source, size))
    if gpg is not None and ours_first:
        row.update(_theirs(root, source, size, gpg))
    return row


def bench_attachments(quick: bool, workdir: Path | None) -> dict[str, Any]:
    size = (32 if quick else 512) * MIB
    rounds = 3 if quick else 5
    workdir = workdir or _default_workdir(size)
    with tempfile.TemporaryDirectory(prefix="cnbench-", dir=workdir) as tmp:
        root = Path(tmp)
        source = root / "document.bin"
        _make_file(source, size)
        try:
            gpg: _GnuPG | None = _GnuPG(root / "gnupg")
        except (OSError, subprocess.CalledProcessError) as e:
            sys.stderr.write(f"GnuPG unavailable, baseline skipped: {e}\n")
            gpg = None
        try:
            # Who goes first alternates, as in the envelope pairs.
            rows = [_attachment_round(root, source, gpg, i % 2 == 0) for i in range(rounds)]
        finally:
            if gpg is not None:
                gpg.close()

    def median(name: str) -> float | None:
        values = [row[name] for row in rows if name in row]
        return statistics.median(values) if values else None

    def mb_s(name: str) -> float | None:
        seconds = median(name)
        return round(size / 1e6 / seconds, 1) if seconds else None

    peak = max(row["peak_rss_mib"] for row in rows)
    result: dict[str, Any] = {
        "attach_bytes": size,
        "attach_rounds": rounds,
        "attach_workdir": str(workdir or tempfile.gettempdir()),
        "gpg_version": gpg.version if gpg else None,
        "attach_peak_rss_mib": round(peak, 1),
        "attach_rss_target_met": peak < TARGET_RSS_MIB,
    }
    for way in ("enc", "dec"):
        result[f"attach_{way}_mb_s"] = mb_s(f"ours_{way}_s")
        result[f"gpg_{way}_mb_s"] = mb_s(f"gpg_{way}_s")
        result[f"attach_{way}_process_mb_s"] = mb_s(f"ours_{way}_wall_s")
        result[f"attach_{way}_cpu_mb_s"] = mb_s(f"ours_{way}_cpu_s")
        result[f"gpg_{way}_cpu_mb_s"] = mb_s(f"gpg_{way}_cpu_s")
        # Each round's ours and GnuPG ran back to back: the median of the per-round ratios is
        # less sensitive to the machine's slow phases than a ratio of medians.
        ratios = [r[f"gpg_{way}_s"] / r[f"ours_{way}_s"] for r in rows if f"gpg_{way}_s" in r]
        speedup = round(statistics.median(ratios), 2) if ratios else None
        result[f"{way}_speedup"] = speedup
        result[f"{way}_speedup_target_met"] = speedup is not None and speedup >= TARGET_SPEEDUP
    return result


# --- report -----------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(r: dict[str, Any]) -> str:
    """The report: a heading, the machine and its load, and :func:`table`."""
    lines = [
        f"## citynode protocol benchmark ({'quick' if r['quick'] else 'full'})",
        "",
        f"1-minute load average {r['load_1m_start']} at the start, {r['load_1m_end']} at the end.",
        "",
        table(r),
    ]
    return "\n".join(lines)


def table(r: dict[str, Any]) -> str:
    """The figures next to their baselines from the same run, the ratios and the targets."""
    p = r["primitives_us"]
    lines = [
        f"Python {r['python']}, cryptography {r['cryptography']}, {r['cpu']}.",
        "",
        "| measurement | ours | raw baseline | ratio | target | met |",
        "|---|---:|---:|---:|---|---|",
        f"| seal {r['referral_body_bytes']} B referral | {r['seal_us']} µs | "
        f"{r['seal_raw_us']} µs | {r['seal_ratio']}x | ≤ 1.3x | {_mark(r['seal_target_met'])} |",
        f"| open {r['referral_body_bytes']} B referral | {r['open_us']} µs | "
        f"{r['open_raw_us']} µs | {r['open_ratio']}x | ≤ 1.3x | {_mark(r['open_target_met'])} |",
        f"| encrypt {r['attach_bytes'] // MIB} MiB attachment | {r['attach_enc_mb_s']} MB/s | "
        f"gpg {r['gpg_enc_mb_s']} MB/s | {r['enc_speedup']}x | ≥ 3x | "
        f"{_mark(r['enc_speedup_target_met'])} |",
        f"| decrypt {r['attach_bytes'] // MIB} MiB attachment | {r['attach_dec_mb_s']} MB/s | "
        f"gpg {r['gpg_dec_mb_s']} MB/s | {r['dec_speedup']}x | ≥ 3x | "
        f"{_mark(r['dec_speedup_target_met'])} |",
        f"| attachment peak RSS | {r['attach_peak_rss_mib']} MiB | | | < 64 MiB | "
        f"{_mark(r['attach_rss_target_met'])} |",
        "",
        f"Raw seal = Ed25519 sign {p['ed25519_sign']} + HPKE seal {p['hpke_seal']} + msgpack "
        f"encode {p['msgpack_encode']} µs. Raw open = HPKE open {p['hpke_open']} + Ed25519 "
        f"verify {p['ed25519_verify']} + msgpack decode {p['msgpack_decode']} µs. With the body "
        f"decoded into the typed, validated Referral ({p['msgpack_decode_typed']} µs) the raw open "
        f"would be {r['open_raw_typed_us']} µs and the ratio {r['open_ratio_vs_typed']}x.",
        f"Attachment throughput including the child's interpreter start: encrypt "
        f"{r['attach_enc_process_mb_s']} MB/s, decrypt {r['attach_dec_process_mb_s']} MB/s. "
        f"Baseline: {r['gpg_version']}. MB = 10^6 bytes.",
    ]
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--attachment-worker"]:
        _attachment_worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small file, fewer rounds (CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workdir", type=Path, help="where the temporary files go")
    parser.add_argument(
        "--only", choices=("envelopes", "attachments"), help="run one half (the report needs both)"
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "quick": args.quick,
        "python": sys.version.split()[0],
        "cryptography": cryptography.__version__,
        "cpu": _cpu(),
        # Other work on the machine moves every figure, ratios included: say how busy it was.
        "load_1m_start": round(os.getloadavg()[0], 2),
    }
    if args.only != "attachments":
        result.update(bench_envelopes(args.quick))
    if args.only != "envelopes":
        result.update(bench_attachments(args.quick, args.workdir))
    result["load_1m_end"] = round(os.getloadavg()[0], 2)
    if args.json or args.only:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
