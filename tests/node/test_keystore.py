"""Keystore and operator secret: keys survive a restart, and every unsafe state is refused."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.pwhash import argon2id

from node.keystore import (
    KEYS_DIR,
    META_FILE,
    PRODUCTION_KDF,
    KdfParams,
    KeyExists,
    KeyNotFound,
    Keystore,
    KeystoreCorrupt,
    KeystoreExists,
    KeystoreNotFound,
    WrongSecret,
)
from node.private_files import InsecurePermissions
from node.secrets_source import (
    MIN_NEW_SECRET_CHARS,
    SECRET_ENV,
    SECRET_FILE_ENV,
    OperatorSecret,
    SecretUnavailable,
    read_operator_secret,
)
from node.tls_material import TlsMaterial, self_signed_certificate
from protocol.keys import KeyKind, key_id, tls_pin

FAST = KdfParams(opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)
SECRET = OperatorSecret(b"correct horse battery staple")
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def clock() -> float:
    return NOW + 0.75


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "stockholm"


@pytest.fixture
def keystore(data_dir: Path) -> Keystore:
    return Keystore.create(data_dir, SECRET, FAST, clock=clock)


@pytest.fixture
def full(keystore: Keystore) -> Keystore:
    """A keystore holding every kind of key, as `citynode init` leaves it."""
    keystore.generate_identity()
    keystore.generate_encryption()
    keystore.generate_tls("stockholm")
    keystore.generate_data_key()
    return keystore


def key_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / KEYS_DIR).iterdir())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- round trip -----------------------------------------------------------------------------------


def test_every_kind_of_key_survives_closing_and_reopening(full: Keystore, data_dir: Path) -> None:
    identity = full.keys(KeyKind.IDENTITY)[0]
    encryption = full.keys(KeyKind.ENCRYPTION)[0]
    tls = full.load_tls()
    data_key = full.load_data_key()

    reopened = Keystore.open(data_dir, SECRET)

    assert reopened.keys(KeyKind.IDENTITY) == (identity,)
    assert reopened.keys(KeyKind.ENCRYPTION) == (encryption,)
    signer = reopened.load_identity(identity.key_id)
    assert signer.public_key().public_bytes_raw() == identity.public_key
    exchange = reopened.load_encryption(encryption.key_id)
    assert exchange.public_key().public_bytes_raw() == encryption.public_key
    assert reopened.load_tls() == tls
    assert reopened.load_data_key() == data_key
    assert len(data_key) == 32


def test_stored_keys_are_named_by_the_protocol_key_id_and_the_injected_clock(
    full: Keystore,
) -> None:
    for kind in (KeyKind.IDENTITY, KeyKind.ENCRYPTION):
        (stored,) = full.keys(kind)
        assert stored.key_id == key_id(kind, stored.public_key)
        assert stored.created_at == NOW
        assert (full.directory / f"{kind.name.lower()}-{stored.key_id.hex()}.key").is_file()


def test_encryption_keys_take_successive_epochs_and_old_ones_stay_loadable(
    keystore: Keystore, data_dir: Path
) -> None:
    first = keystore.generate_encryption()
    second = keystore.generate_encryption()

    reopened = Keystore.open(data_dir, SECRET)

    assert [k.epoch for k in reopened.keys(KeyKind.ENCRYPTION)] == [0, 1]
    assert reopened.keys(KeyKind.ENCRYPTION) == (first, second)
    old = reopened.load_encryption(first.key_id)
    assert old.public_key().public_bytes_raw() == first.public_key


def test_a_second_key_with_a_used_epoch_is_refused(keystore: Keystore) -> None:
    keystore.generate_identity()
    with pytest.raises(KeyExists, match="epoch 0"):
        keystore.store_identity(Ed25519PrivateKey.generate(), 0)


def test_loading_an_identity_id_as_an_encryption_key_is_refused(full: Keystore) -> None:
    (identity,) = full.keys(KeyKind.IDENTITY)
    with pytest.raises(KeyNotFound):
        full.load_encryption(identity.key_id)


# --- create and open refusals ---------------------------------------------------------------------


def test_create_refuses_to_overwrite_an_existing_keystore(full: Keystore, data_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in key_files(data_dir)}

    with pytest.raises(KeystoreExists, match="already exists"):
        Keystore.create(data_dir, OperatorSecret(b"another operator secret"), FAST)

    assert {p.name: p.read_bytes() for p in key_files(data_dir)} == before
    assert Keystore.open(data_dir, SECRET).load_data_key() == full.load_data_key()


def test_create_refuses_a_keys_directory_that_already_holds_files(data_dir: Path) -> None:
    (data_dir / KEYS_DIR).mkdir(parents=True, mode=0o700)
    (data_dir / KEYS_DIR / "identity-stray.key").write_bytes(b"x")
    with pytest.raises(KeystoreExists):
        Keystore.create(data_dir, SECRET, FAST)


def test_open_without_a_keystore_says_to_run_init(data_dir: Path) -> None:
    with pytest.raises(KeystoreNotFound, match="citynode init"):
        Keystore.open(data_dir, SECRET)


def test_wrong_secret_is_refused_with_one_message_that_reveals_nothing(
    full: Keystore, data_dir: Path
) -> None:
    with pytest.raises(WrongSecret) as wrong:
        Keystore.open(data_dir, OperatorSecret(b"correct horse battery stapler"))
    with pytest.raises(WrongSecret) as empty:
        Keystore.open(data_dir, OperatorSecret(b"x"))

    assert str(wrong.value) == str(empty.value)
    assert "operator secret does not open the keystore" in str(wrong.value)
    assert wrong.value.code == "wrong_secret"
    assert "staple" not in str(wrong.value)


# --- permissions ----------------------------------------------------------------------------------


def test_key_files_are_0600_and_directories_0700_whatever_the_umask(data_dir: Path) -> None:
    old_umask = os.umask(0)
    try:
        keystore = Keystore.create(data_dir, SECRET, FAST)
        keystore.generate_identity()
        keystore.generate_encryption()
        keystore.generate_tls("stockholm")
        keystore.generate_data_key()
    finally:
        os.umask(old_umask)

    assert mode(data_dir) == 0o700
    assert mode(data_dir / KEYS_DIR) == 0o700
    files = key_files(data_dir)
    assert {p.name.split("-")[0] for p in files} >= {"identity", "encryption", "tls.key"}
    assert all(mode(p) == 0o600 for p in files)


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_key_file_open_to_others_is_refused_naming_path_mode_and_fix(
    full: Keystore, data_dir: Path, loose: int
) -> None:
    target = next(p for p in key_files(data_dir) if p.name.startswith("encryption-"))
    target.chmod(loose)

    with pytest.raises(InsecurePermissions) as caught:
        Keystore.open(data_dir, SECRET)

    message = str(caught.value)
    assert str(target) in message
    assert f"{loose:04o}" in message
    assert f"chmod 600 {target}" in message
    assert caught.value.code == "insecure_permissions"


def test_keystore_metadata_file_open_to_others_is_refused(full: Keystore, data_dir: Path) -> None:
    (data_dir / KEYS_DIR / META_FILE).chmod(0o644)
    with pytest.raises(InsecurePermissions, match="chmod 600"):
        Keystore.open(data_dir, SECRET)


@pytest.mark.parametrize("which", ["keys", "data"])
def test_directory_open_to_others_is_refused_with_chmod_700(
    full: Keystore, data_dir: Path, which: str
) -> None:
    directory = data_dir / KEYS_DIR if which == "keys" else data_dir
    directory.chmod(0o750)

    with pytest.raises(InsecurePermissions) as caught:
        Keystore.open(data_dir, SECRET)

    assert f"chmod 700 {directory}" in str(caught.value)
    assert "0750" in str(caught.value)


def test_create_refuses_an_existing_data_directory_open_to_others(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    with pytest.raises(InsecurePermissions, match=f"chmod 700 {data_dir}"):
        Keystore.create(data_dir, SECRET, FAST)


def test_symlinked_key_file_is_refused(full: Keystore, data_dir: Path, tmp_path: Path) -> None:
    target = next(p for p in key_files(data_dir) if p.name.startswith("identity-"))
    moved = tmp_path / "elsewhere.key"
    target.rename(moved)
    target.symlink_to(moved)

    with pytest.raises(InsecurePermissions, match="symbolic link"):
        Keystore.open(data_dir, SECRET)


def test_key_file_swapped_for_a_symlink_after_open_is_refused_at_load(
    full: Keystore, tmp_path: Path
) -> None:
    (stored,) = full.keys(KeyKind.ENCRYPTION)
    target = full.directory / f"encryption-{stored.key_id.hex()}.key"
    moved = tmp_path / "elsewhere.key"
    target.rename(moved)
    target.symlink_to(moved)

    with pytest.raises(InsecurePermissions, match="symbolic link"):
        full.load_encryption(stored.key_id)


def test_key_file_made_readable_after_open_is_refused_at_load(full: Keystore) -> None:
    (stored,) = full.keys(KeyKind.IDENTITY)
    target = full.directory / f"identity-{stored.key_id.hex()}.key"
    target.chmod(0o644)

    with pytest.raises(InsecurePermissions, match=f"chmod 600 {target}"):
        full.load_identity(stored.key_id)


# --- damage and tampering -------------------------------------------------------------------------


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("prefix", ["identity-", "encryption-", "tls.key", "data.key"])
def test_tampered_key_file_is_refused_at_open_naming_it(
    full: Keystore, data_dir: Path, prefix: str
) -> None:
    target = next(p for p in key_files(data_dir) if p.name.startswith(prefix))
    flip_last_byte(target)

    with pytest.raises(KeystoreCorrupt) as caught:
        Keystore.open(data_dir, SECRET)

    assert str(target) in str(caught.value)
    assert caught.value.code == "keystore_corrupt"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:10], id="truncated_header"),
        pytest.param(lambda b: b[:-1], id="truncated_tag"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"XXKEY" + b[5:], id="bad_magic"),
        pytest.param(lambda b: b[:5] + b"\x02" + b[6:], id="unknown_version"),
        pytest.param(lambda b: b[:6] + b"\x01" + b[7:], id="kind_byte_changed"),
    ],
)
def test_damaged_encryption_key_file_is_refused(
    full: Keystore, data_dir: Path, damage: object
) -> None:
    target = next(p for p in key_files(data_dir) if p.name.startswith("encryption-"))
    target.write_bytes(damage(target.read_bytes()))  # type: ignore[operator]

    with pytest.raises(KeystoreCorrupt, match=str(target)):
        Keystore.open(data_dir, SECRET)


def test_key_file_renamed_to_another_key_id_is_refused(keystore: Keystore, data_dir: Path) -> None:
    first = keystore.generate_encryption()
    second = keystore.generate_encryption()
    first_path = keystore.directory / f"encryption-{first.key_id.hex()}.key"
    second_path = keystore.directory / f"encryption-{second.key_id.hex()}.key"
    second_path.write_bytes(first_path.read_bytes())  # swap in the old key under the new name

    with pytest.raises(KeystoreCorrupt, match=second.key_id.hex()):
        Keystore.open(data_dir, SECRET)


def test_key_file_tampered_after_open_is_refused_at_load(full: Keystore) -> None:
    (stored,) = full.keys(KeyKind.IDENTITY)
    flip_last_byte(full.directory / f"identity-{stored.key_id.hex()}.key")
    with pytest.raises(KeystoreCorrupt):
        full.load_identity(stored.key_id)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda m: "not json", id="not_json"),
        pytest.param(lambda m: json.dumps({**m, "format": 2}), id="unknown_format"),
        pytest.param(lambda m: json.dumps({**m, "memlimit": 2**50}), id="absurd_memlimit"),
        pytest.param(lambda m: json.dumps({**m, "salt": "AAAA"}), id="short_salt"),
        pytest.param(lambda m: json.dumps({**m, "extra": 1}), id="unknown_field"),
    ],
)
def test_damaged_keystore_metadata_is_refused(full: Keystore, data_dir: Path, edit: object) -> None:
    meta_path = data_dir / KEYS_DIR / META_FILE
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(edit(meta))  # type: ignore[operator]

    with pytest.raises(KeystoreCorrupt, match=str(meta_path)):
        Keystore.open(data_dir, SECRET)


def test_lowered_kdf_cost_in_metadata_reads_as_a_wrong_secret(
    full: Keystore, data_dir: Path
) -> None:
    # The check value binds the parameters: editing them cannot weaken the derivation silently.
    meta_path = data_dir / KEYS_DIR / META_FILE
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "opslimit": meta["opslimit"] + 1}))
    with pytest.raises(WrongSecret):
        Keystore.open(data_dir, SECRET)


def test_stray_temporary_file_from_a_crashed_write_does_not_stop_the_node(
    full: Keystore, data_dir: Path
) -> None:
    stray = data_dir / KEYS_DIR / ".tmp-crashed"
    stray.write_bytes(b"half written")
    stray.chmod(0o600)
    assert Keystore.open(data_dir, SECRET).load_data_key() == full.load_data_key()


# --- destroying and overwriting -------------------------------------------------------------------


def test_destroyed_encryption_key_cannot_be_loaded_now_or_after_restart(
    keystore: Keystore, data_dir: Path
) -> None:
    old = keystore.generate_encryption()
    current = keystore.generate_encryption()
    path = keystore.directory / f"encryption-{old.key_id.hex()}.key"

    keystore.destroy(old.key_id)

    assert not path.exists()
    with pytest.raises(KeyNotFound):
        keystore.load_encryption(old.key_id)
    reopened = Keystore.open(data_dir, SECRET)
    assert reopened.keys(KeyKind.ENCRYPTION) == (current,)
    with pytest.raises(KeyNotFound):
        reopened.load_encryption(old.key_id)
    assert reopened.load_encryption(current.key_id).public_key().public_bytes_raw() == (
        current.public_key
    )


def test_destroy_overwrites_the_file_before_removing_it(
    keystore: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = keystore.generate_encryption()
    path = keystore.directory / f"encryption-{stored.key_id.hex()}.key"
    original = path.read_bytes()
    seen: list[bytes] = []
    real_unlink = os.unlink

    def spy_unlink(target: os.PathLike[str] | str, *args: object, **kwargs: object) -> None:
        if Path(target) == path:
            seen.append(path.read_bytes())
        real_unlink(target)

    monkeypatch.setattr(os, "unlink", spy_unlink)
    keystore.destroy(stored.key_id)

    assert len(seen) == 1
    assert len(seen[0]) == len(original)
    assert seen[0] != original


def test_destroying_an_unknown_key_is_refused(keystore: Keystore) -> None:
    with pytest.raises(KeyNotFound):
        keystore.destroy(b"\x00" * 16)


def test_data_key_is_never_replaced(full: Keystore) -> None:
    before = full.load_data_key()
    with pytest.raises(KeyExists):
        full.generate_data_key()
    assert full.load_data_key() == before


# --- TLS ------------------------------------------------------------------------------------------


def test_tls_certificate_is_p256_self_signed_for_the_city_on_loopback(full: Keystore) -> None:
    material = full.load_tls()
    cert = material.certificate

    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert cert.subject.rfc4514_string() == "CN=stockholm" == cert.issuer.rfc4514_string()
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    start = datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC)
    assert cert.not_valid_before_utc == start - datetime.timedelta(minutes=5)
    assert cert.not_valid_after_utc == start + datetime.timedelta(days=365)


def test_tls_pin_is_sha256_of_the_certificate_spki(full: Keystore) -> None:
    material = full.load_tls()
    spki = material.spki_der()
    assert material.pin() == tls_pin(spki) == hashlib.sha256(spki).digest()
    assert spki == material.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_tls_pair_is_replaced_only_on_purpose(full: Keystore) -> None:
    before = full.load_tls()
    with pytest.raises(KeyExists):
        full.generate_tls("stockholm")
    assert full.load_tls() == before

    after = full.generate_tls("stockholm", replace=True)

    assert after.pin() != before.pin()
    assert full.load_tls() == after


def test_tls_key_that_does_not_match_the_certificate_is_refused(keystore: Keystore) -> None:
    now = datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC)
    one = self_signed_certificate("stockholm", now=now)
    two = self_signed_certificate("stockholm", now=now)
    with pytest.raises(ValueError, match="does not match"):
        keystore.store_tls(TlsMaterial(one.certificate_pem, two.private_key_pem))


def test_tls_private_key_is_hidden_from_repr(full: Keystore) -> None:
    assert "PRIVATE KEY" not in repr(full.load_tls())


def handshake(
    server: Keystore, client: Keystore, version: ssl.TLSVersion
) -> tuple[str | None, object]:
    """Run one mutual-TLS handshake over a socket pair; each side trusts the other's cert."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_tls_into(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=client.load_tls().certificate_pem.decode())
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_tls_into(client_ctx)
    client_ctx.load_verify_locations(cadata=server.load_tls().certificate_pem.decode())
    for ctx in (server_ctx, client_ctx):
        ctx.minimum_version = ctx.maximum_version = version
    left, right = socket.socketpair()
    peer: dict[str, object] = {}

    def serve() -> None:
        with server_ctx.wrap_socket(left, server_side=True) as tls:
            peer["cert"] = tls.getpeercert()

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(right, server_hostname="localhost") as tls:
        negotiated = tls.version()
    thread.join(timeout=10)
    return negotiated, peer.get("cert")


@pytest.fixture
def two_nodes(tmp_path: Path) -> tuple[Keystore, Keystore]:
    stockholm = Keystore.create(tmp_path / "stockholm", SECRET, FAST)
    stockholm.generate_tls("stockholm")
    malmo = Keystore.create(tmp_path / "malmo", SECRET, FAST)
    malmo.generate_tls("malmo")
    return stockholm, malmo


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_two_nodes_complete_a_mutual_tls_handshake_with_their_certificates(
    two_nodes: tuple[Keystore, Keystore], version: ssl.TLSVersion, name: str
) -> None:
    stockholm, malmo = two_nodes

    negotiated, client_cert = handshake(stockholm, malmo, version)

    assert negotiated == name
    assert client_cert is not None
    assert (("commonName", "malmo"),) in client_cert["subject"]  # type: ignore[index]
    assert [p.name for p in stockholm.directory.iterdir() if p.name.startswith(".")] == []


# --- KDF parameters -------------------------------------------------------------------------------


def test_production_kdf_is_libsodium_moderate_and_the_default(data_dir: Path) -> None:
    assert KdfParams(opslimit=3, memlimit=256 * 1024 * 1024) == PRODUCTION_KDF

    Keystore.create(data_dir, SECRET)  # the one slow test: a real production derivation

    meta = json.loads((data_dir / KEYS_DIR / META_FILE).read_text())
    assert (meta["kdf"], meta["opslimit"], meta["memlimit"]) == (
        "argon2id13",
        PRODUCTION_KDF.opslimit,
        PRODUCTION_KDF.memlimit,
    )


def test_kdf_params_outside_argon2id_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="opslimit"):
        KdfParams(opslimit=0, memlimit=argon2id.MEMLIMIT_MIN)
    with pytest.raises(ValueError, match="memlimit"):
        KdfParams(opslimit=1, memlimit=1024)


# --- operator secret ------------------------------------------------------------------------------


def no_prompt(text: str) -> str:
    raise AssertionError("must not prompt")


def private_file(path: Path, content: bytes, file_mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(file_mode)
    return path


def test_operator_secret_is_hidden_from_repr_and_str() -> None:
    assert "staple" not in repr(SECRET)
    assert "staple" not in str(SECRET)
    assert "staple" not in f"{SECRET}"


def test_secret_comes_from_the_environment_before_any_prompt() -> None:
    secret = read_operator_secret(
        environ={SECRET_ENV: "from the environment"}, prompt=no_prompt, is_interactive=lambda: True
    )
    assert secret.value == b"from the environment"


def test_explicit_secret_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = private_file(tmp_path / "secret", b"from the file\n")
    secret = read_operator_secret(
        secret_file=path, environ={SECRET_ENV: "from the environment"}, prompt=no_prompt
    )
    assert secret.value == b"from the file"


def test_secret_file_named_by_the_environment_is_read_with_crlf_stripped(tmp_path: Path) -> None:
    path = private_file(tmp_path / "secret", b"from a credential\r\n", 0o400)
    secret = read_operator_secret(
        environ={SECRET_FILE_ENV: str(path)}, prompt=no_prompt, is_interactive=lambda: False
    )
    assert secret.value == b"from a credential"


def test_secret_file_readable_by_others_is_refused_with_the_chmod_fix(tmp_path: Path) -> None:
    path = private_file(tmp_path / "secret", b"hunter2-hunter2\n", 0o644)
    with pytest.raises(SecretUnavailable, match=f"chmod 600 {path}") as caught:
        read_operator_secret(secret_file=path, environ={})
    assert "0644" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\n", "is empty"), (b"x" * 5000, "longer than 4096")],
)
def test_unusable_secret_file_is_refused(tmp_path: Path, content: bytes, words: str) -> None:
    path = private_file(tmp_path / "secret", content)
    with pytest.raises(SecretUnavailable, match=words):
        read_operator_secret(secret_file=path, environ={})


def test_missing_secret_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(SecretUnavailable, match=str(path)):
        read_operator_secret(environ={SECRET_FILE_ENV: str(path)}, is_interactive=lambda: False)


def test_prompt_is_used_only_on_a_terminal() -> None:
    answers = iter(["typed at the terminal"])
    secret = read_operator_secret(
        environ={}, prompt=lambda _: next(answers), is_interactive=lambda: True
    )
    assert secret.value == b"typed at the terminal"


def test_without_any_source_and_no_terminal_the_error_lists_every_way() -> None:
    with pytest.raises(SecretUnavailable) as caught:
        read_operator_secret(environ={}, prompt=no_prompt, is_interactive=lambda: False)
    for way in (SECRET_ENV, SECRET_FILE_ENV, "--secret-file", "terminal"):
        assert way in str(caught.value)
    assert caught.value.code == "secret_unavailable"


def test_new_secret_is_prompted_twice_and_must_match() -> None:
    answers = iter(["a long new secret", "a long new secreT"])
    with pytest.raises(SecretUnavailable, match="differ"):
        read_operator_secret(
            new=True, environ={}, prompt=lambda _: next(answers), is_interactive=lambda: True
        )


def test_new_secret_shorter_than_the_minimum_is_refused() -> None:
    short = "s" * (MIN_NEW_SECRET_CHARS - 1)
    with pytest.raises(SecretUnavailable, match=f"at least {MIN_NEW_SECRET_CHARS}"):
        read_operator_secret(new=True, environ={SECRET_ENV: short})
    assert read_operator_secret(environ={SECRET_ENV: short}).value == short.encode()


def test_secret_from_the_environment_opens_the_keystore_it_created(data_dir: Path) -> None:
    environ = {SECRET_ENV: "a sufficiently long secret"}
    Keystore.create(data_dir, read_operator_secret(new=True, environ=environ), FAST)
    assert (
        Keystore.open(data_dir, read_operator_secret(environ=environ)).keys(KeyKind.IDENTITY) == ()
    )
