"""The node's private keys on disk, encrypted at rest under the operator secret.

Owns ``<data_dir>/keys/``: the identity keys (Ed25519), the encryption keys (X25519, the current
one and older ones kept for a grace window), the TLS key and certificate, and the data key that
wraps the per-case keys. Invariants:

* Every key file is sealed with ChaCha20-Poly1305 under a master key derived by Argon2id from the
  operator secret. The salt and the Argon2id parameters live in ``keystore.json`` beside the key
  files, with a check value that tells a wrong secret apart from a damaged key file.
* A key file's associated data binds the format version, the key kind and the file name — which
  carries the key id — so a file renamed, swapped or altered fails to open (layout below).
* The node's user alone may read or write: the data directory and ``keys/`` are ``0700``, every
  file ``0600``, no symlinks. :meth:`Keystore.open` refuses anything looser, naming the path, the
  mode and the ``chmod`` that fixes it, and decrypts every key file before returning, so a wrong
  secret or a damaged file stops the node at start, not at first use.
* Files are written atomically (:mod:`node.private_files`) and a new key never replaces an
  existing one; only the TLS pair may be replaced, on purpose: a TLS rotation stores the new pair
  beside it (``tls-next.key``) and :meth:`Keystore.promote_next_tls` makes it the one in use.
* :meth:`Keystore.destroy` overwrites a key file before unlinking it. On journaling file systems
  and SSDs old blocks may survive, still sealed under the master key: destroying a key protects
  against a later reader without the operator secret, not against one who has it and the disk.

Key file layout (version 1)::

    magic "CNKEY" | version 0x01 | kind (1 byte) | nonce (12 bytes) | ChaCha20-Poly1305 ciphertext
    associated data = magic | version | kind | UTF-8 file name
    plaintext = MessagePack array (see the ``_*Payload`` structs)

The node side may use the RNG and the clock: keys are generated here, and the clock is injected.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, ClassVar, Final, TypeVar

import msgspec
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.pwhash import argon2id

from node.errors import NodeError
from node.private_files import (
    TEMP_PREFIX,
    check_private,
    read_private,
    shred,
    write_private,
)
from node.secrets_source import OperatorSecret
from node.tls_material import TLS_VALIDITY_DAYS, TlsMaterial, self_signed_certificate
from protocol import codec
from protocol.errors import ProtocolError
from protocol.keys import KeyKind, key_id

logger = logging.getLogger(__name__)

KEYS_DIR: Final = "keys"
META_FILE: Final = "keystore.json"
FORMAT_VERSION: Final = 1
MAGIC: Final = b"CNKEY"
NONCE_BYTES: Final = 12
MASTER_KEY_BYTES: Final = 32
DATA_KEY_BYTES: Final = 32
MAX_KEY_FILE_BYTES: Final = 64 * 1024
_KDF_NAME: Final = "argon2id13"
_CHECK_DOMAIN: Final = b"citynode/v1 keystore-check\x00"
_CHECK_PLAINTEXT: Final = b"citynode keystore v1"
_MAX_MEMLIMIT: Final = 4 * 1024**3  # refuse a damaged keystore.json asking for more
_TLS_FILE: Final = "tls.key"
_TLS_NEXT_FILE: Final = "tls-next.key"  # a TLS rotation's new pair, until the node switches to it
_DATA_FILE: Final = "data.key"
_ASYMMETRIC_PREFIX: Final = {KeyKind.IDENTITY: "identity-", KeyKind.ENCRYPTION: "encryption-"}
_KEY_SUFFIX: Final = ".key"


# --- errors -------------------------------------------------------------------------------------


class KeystoreError(NodeError):
    """The keystore cannot be created, opened or used."""

    code: ClassVar[str] = "keystore_error"


class KeystoreExists(KeystoreError):
    """``create`` found a keystore already: it never overwrites one."""

    code: ClassVar[str] = "keystore_exists"


class KeystoreNotFound(KeystoreError):
    """``open`` found no keystore in the data directory."""

    code: ClassVar[str] = "keystore_not_found"


class WrongSecret(KeystoreError):
    """The operator secret does not open the keystore."""

    code: ClassVar[str] = "wrong_secret"


class KeystoreCorrupt(KeystoreError):
    """A keystore file is damaged, truncated, altered or of an unknown format."""

    code: ClassVar[str] = "keystore_corrupt"


class KeyNotFound(KeystoreError):
    """No such key: never stored, or destroyed."""

    code: ClassVar[str] = "key_not_found"


class KeyExists(KeystoreError):
    """A key of that id, epoch or kind is already stored; keys are never overwritten."""

    code: ClassVar[str] = "key_exists"


# --- public records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters: ``opslimit`` passes over ``memlimit`` bytes of memory."""

    opslimit: int
    memlimit: int

    def __post_init__(self) -> None:
        if not argon2id.OPSLIMIT_MIN <= self.opslimit <= argon2id.OPSLIMIT_MAX:
            raise ValueError("opslimit is outside Argon2id's bounds")
        if not argon2id.MEMLIMIT_MIN <= self.memlimit <= _MAX_MEMLIMIT:
            raise ValueError("memlimit is outside Argon2id's bounds")


PRODUCTION_KDF: Final = KdfParams(
    opslimit=argon2id.OPSLIMIT_MODERATE, memlimit=argon2id.MEMLIMIT_MODERATE
)
"""libsodium's MODERATE: 3 passes over 256 MiB, about half a second, once per start."""

INTERACTIVE_KDF: Final = KdfParams(
    opslimit=argon2id.OPSLIMIT_INTERACTIVE, memlimit=argon2id.MEMLIMIT_INTERACTIVE
)
"""libsodium's INTERACTIVE: 2 passes over 64 MiB. For demos, laptops and tests: a stolen data
directory is then cheaper to attack by guessing the secret; production nodes keep MODERATE."""

KDF_PROFILES: Final = {"moderate": PRODUCTION_KDF, "interactive": INTERACTIVE_KDF}


class KeyFileKind(IntEnum):
    """The kind byte of a key file; 1 and 2 equal :class:`protocol.keys.KeyKind`."""

    IDENTITY = 1
    ENCRYPTION = 2
    TLS = 3
    DATA = 4


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What the keystore knows about an identity or encryption key, without the private part.

    Attributes:
        kind: identity or encryption.
        key_id: ``protocol.keys.key_id(kind, public_key)``.
        epoch: the key's place in its sequence (0, 1, ...), one per kind.
        public_key: the raw 32-byte public key.
        created_at: Unix seconds when it was stored.
    """

    kind: KeyKind
    key_id: bytes
    epoch: int
    public_key: bytes
    created_at: int


# --- file payloads ------------------------------------------------------------------------------

_Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
_Pem = Annotated[bytes, msgspec.Meta(max_length=16 * 1024)]
_U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
_Time = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _Payload(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    pass


class _AsymmetricPayload(_Payload, frozen=True):
    epoch: _U32
    created_at: _Time
    private_key: _Key32


class _TlsPayload(_Payload, frozen=True):
    created_at: _Time
    private_key_pem: _Pem
    certificate_pem: _Pem


class _DataKeyPayload(_Payload, frozen=True):
    created_at: _Time
    key: _Key32


_P = TypeVar("_P", bound=_Payload)


class _Meta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    kdf: str
    opslimit: int
    memlimit: int
    salt: bytes
    check: bytes

    def check_aad(self) -> bytes:
        params = codec.encode((self.format, self.kdf, self.opslimit, self.memlimit, self.salt))
        return _CHECK_DOMAIN + params


# --- the keystore -------------------------------------------------------------------------------


class Keystore:
    """An open keystore: the master key in memory and an index of the keys on disk.

    Build one with :meth:`create` or :meth:`open`, never directly.
    """

    def __init__(self, directory: Path, master_key: bytes, clock: Callable[[], float]) -> None:
        self._dir = directory
        self._aead = ChaCha20Poly1305(master_key)
        self._clock = clock
        self._keys: dict[bytes, StoredKey] = {}

    @property
    def directory(self) -> Path:
        """The ``keys/`` directory."""
        return self._dir

    @staticmethod
    def exists(data_dir: Path) -> bool:
        """Return whether a keystore has been created in ``data_dir``."""
        return (Path(data_dir) / KEYS_DIR / META_FILE).exists()

    @classmethod
    def create(
        cls,
        data_dir: Path,
        secret: OperatorSecret,
        kdf_params: KdfParams = PRODUCTION_KDF,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Keystore:
        """Create an empty keystore in ``data_dir`` (made ``0700`` if it does not exist).

        Args:
            data_dir: the node's data directory.
            secret: the operator secret that will open it.
            kdf_params: Argon2id cost; tests pass cheap ones.
            clock: Unix seconds, for the creation times of keys.

        Returns:
            The open, empty keystore.

        Raises:
            KeystoreExists: a keystore (or any file) is already in ``data_dir/keys``.
            InsecurePermissions: ``data_dir`` exists and is open to other users.
        """
        data_dir = Path(data_dir)
        directory = data_dir / KEYS_DIR
        if cls.exists(data_dir) or (directory.exists() and any(directory.iterdir())):
            raise KeystoreExists(
                f"a keystore already exists in {directory}; refusing to replace it"
            )
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private(data_dir, is_dir=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # whatever the umask
        salt = secrets.token_bytes(argon2id.SALTBYTES)
        master = _derive(secret, salt, kdf_params)
        unsealed = _Meta(
            FORMAT_VERSION, _KDF_NAME, kdf_params.opslimit, kdf_params.memlimit, salt, b""
        )
        nonce = secrets.token_bytes(NONCE_BYTES)
        check = nonce + ChaCha20Poly1305(master).encrypt(
            nonce, _CHECK_PLAINTEXT, unsealed.check_aad()
        )
        meta = msgspec.structs.replace(unsealed, check=check)
        _write(directory / META_FILE, msgspec.json.encode(meta), replace=False)
        logger.info("keystore created in %s", directory)
        return cls(directory, master, clock)

    @classmethod
    def open(
        cls, data_dir: Path, secret: OperatorSecret, *, clock: Callable[[], float] = time.time
    ) -> Keystore:
        """Open the keystore of ``data_dir`` and check every key file in it.

        Args:
            data_dir: the node's data directory.
            secret: the operator secret.
            clock: Unix seconds, for the creation times of new keys.

        Returns:
            The open keystore.

        Raises:
            KeystoreNotFound: there is no keystore in ``data_dir``.
            InsecurePermissions: a directory or file is open to other users, a symlink, not ours.
            WrongSecret: the secret does not open the keystore.
            KeystoreCorrupt: ``keystore.json`` or a key file is damaged or altered.
        """
        data_dir = Path(data_dir)
        directory = data_dir / KEYS_DIR
        if not cls.exists(data_dir):
            raise KeystoreNotFound(f"no keystore in {directory}; run `citynode init` first")
        check_private(data_dir, is_dir=True)
        check_private(directory, is_dir=True)
        entries = sorted(directory.iterdir())
        for entry in entries:
            check_private(entry, is_dir=False)
        meta = _read_meta(directory / META_FILE)
        master = _derive(secret, meta.salt, KdfParams(meta.opslimit, meta.memlimit))
        nonce, sealed = meta.check[:NONCE_BYTES], meta.check[NONCE_BYTES:]
        try:
            ChaCha20Poly1305(master).decrypt(nonce, sealed, meta.check_aad())
        except InvalidTag:
            raise WrongSecret(
                f"the operator secret does not open the keystore in {directory}"
            ) from None
        keystore = cls(directory, master, clock)
        keystore._index(entry.name for entry in entries)
        return keystore

    # --- identity and encryption keys ----------------------------------------------------------

    def generate_identity(self) -> StoredKey:
        """Generate and store a new identity key (Ed25519), at the next identity epoch."""
        return self.store_identity(Ed25519PrivateKey.generate(), self._next_epoch(KeyKind.IDENTITY))

    def store_identity(self, private_key: Ed25519PrivateKey, epoch: int) -> StoredKey:
        """Store an identity private key.

        Raises:
            KeyExists: the key, or another identity key of that epoch, is already stored.
        """
        raw = private_key.private_bytes_raw()
        public = private_key.public_key().public_bytes_raw()
        return self._store_asymmetric(KeyKind.IDENTITY, raw, public, epoch)

    def load_identity(self, key_id: bytes) -> Ed25519PrivateKey:
        """Return the identity private key of that id.

        Raises:
            KeyNotFound: no such identity key (never stored, or destroyed).
            KeystoreCorrupt: its file was damaged or altered since the keystore was opened.
        """
        payload = self._load_asymmetric(KeyKind.IDENTITY, key_id)
        return Ed25519PrivateKey.from_private_bytes(payload.private_key)

    def generate_encryption(self) -> StoredKey:
        """Generate and store a new encryption key (X25519), at the next encryption epoch."""
        return self.store_encryption(
            X25519PrivateKey.generate(), self._next_epoch(KeyKind.ENCRYPTION)
        )

    def store_encryption(self, private_key: X25519PrivateKey, epoch: int) -> StoredKey:
        """Store an encryption private key.

        Raises:
            KeyExists: the key, or another encryption key of that epoch, is already stored.
        """
        raw = private_key.private_bytes_raw()
        public = private_key.public_key().public_bytes_raw()
        return self._store_asymmetric(KeyKind.ENCRYPTION, raw, public, epoch)

    def load_encryption(self, key_id: bytes) -> X25519PrivateKey:
        """Return the encryption private key of that id.

        Raises:
            KeyNotFound: no such encryption key (never stored, or destroyed).
            KeystoreCorrupt: its file was damaged or altered since the keystore was opened.
        """
        payload = self._load_asymmetric(KeyKind.ENCRYPTION, key_id)
        return X25519PrivateKey.from_private_bytes(payload.private_key)

    def keys(self, kind: KeyKind) -> tuple[StoredKey, ...]:
        """Return the stored keys of a kind, oldest epoch first."""
        of_kind = (k for k in self._keys.values() if k.kind == kind)
        return tuple(sorted(of_kind, key=lambda k: k.epoch))

    def destroy(self, key_id: bytes) -> None:
        """Overwrite and remove an identity or encryption key; it can never be loaded again.

        Raises:
            KeyNotFound: no such key.
        """
        stored = self._keys.get(key_id)
        if stored is None:
            raise KeyNotFound("no stored key has that id")
        shred(self._dir / _asymmetric_name(stored.kind, key_id))
        del self._keys[key_id]
        logger.info("destroyed %s key %s", stored.kind.name.lower(), key_id.hex())

    def rescan(self) -> None:
        """Index the key files again: keys another process (``citynode keys rotate``) added or
        destroyed since this keystore was opened.

        Raises:
            InsecurePermissions: a file is open to other users, a symlink, not ours.
            KeystoreCorrupt: a key file is damaged or altered.
        """
        entries = sorted(self._dir.iterdir())
        for entry in entries:
            check_private(entry, is_dir=False)
        self._keys = {}
        self._index(entry.name for entry in entries)

    # --- TLS and the data key ------------------------------------------------------------------

    def generate_tls(
        self,
        city: str,
        *,
        hostnames: Iterable[str] = ("localhost",),
        addresses: Iterable[str] = ("127.0.0.1",),
        validity_days: int = TLS_VALIDITY_DAYS,
        replace: bool = False,
    ) -> TlsMaterial:
        """Generate and store a self-signed ECDSA P-256 certificate for mutual TLS.

        Args:
            city: the certificate's common name.
            hostnames: DNS names in the subject alternative name.
            addresses: IP addresses in the subject alternative name.
            validity_days: how long it is valid from now.
            replace: replace an existing TLS pair (its pin in the agreement must change too).

        Returns:
            The certificate and key.

        Raises:
            KeyExists: a TLS pair is stored and ``replace`` is false.
        """
        now = datetime.datetime.fromtimestamp(self._now(), tz=datetime.UTC)
        material = self_signed_certificate(
            city, now=now, hostnames=hostnames, addresses=addresses, validity_days=validity_days
        )
        self.store_tls(material, replace=replace)
        return material

    def store_tls(self, material: TlsMaterial, *, replace: bool = False) -> None:
        """Store the TLS certificate and key (which must belong together).

        Raises:
            KeyExists: a TLS pair is stored and ``replace`` is false.
            ValueError: the key does not match the certificate.
        """
        material.check_pair()
        payload = _TlsPayload(self._now(), material.private_key_pem, material.certificate_pem)
        self._write(KeyFileKind.TLS, _TLS_FILE, payload, replace=replace)

    def load_tls(self) -> TlsMaterial:
        """Return the TLS certificate and key.

        Raises:
            KeyNotFound: no TLS pair is stored.
        """
        payload = self._read(KeyFileKind.TLS, _TLS_FILE, _TlsPayload)
        return TlsMaterial(payload.certificate_pem, payload.private_key_pem)

    def store_next_tls(self, material: TlsMaterial) -> None:
        """Store a TLS rotation's new pair beside the one in use (``keys rotate --kind tls``).

        Raises:
            KeyExists: a rotation's pair is stored already.
            ValueError: the key does not match the certificate.
        """
        material.check_pair()
        payload = _TlsPayload(self._now(), material.private_key_pem, material.certificate_pem)
        self._write(KeyFileKind.TLS, _TLS_NEXT_FILE, payload)

    def load_next_tls(self) -> TlsMaterial | None:
        """Return a TLS rotation's new pair, or ``None`` when no rotation is under way."""
        try:
            payload = self._read(KeyFileKind.TLS, _TLS_NEXT_FILE, _TlsPayload)
        except KeyNotFound:  # no rotation, or the node switched a moment ago
            return None
        return TlsMaterial(payload.certificate_pem, payload.private_key_pem)

    def promote_next_tls(self) -> TlsMaterial:
        """Make the rotation's new pair the one in use; the old pair is overwritten.

        Crash-safe: the pair in use is replaced atomically first, then the rotation's file is
        destroyed; a rotation's file equal to the pair in use is only a leftover.

        Raises:
            KeyNotFound: no rotation's pair is stored.
        """
        material = self.load_next_tls()
        if material is None:
            raise KeyNotFound(f"{_TLS_NEXT_FILE} is not stored")
        if self.load_tls() != material:
            self.store_tls(material, replace=True)
        shred(self._dir / _TLS_NEXT_FILE)
        return material

    def load_tls_into(self, context: ssl.SSLContext) -> None:
        """Load the TLS pair into an SSL context; the key never touches the disk in clear.

        Raises:
            KeyNotFound: no TLS pair is stored.
            ssl.SSLError: OpenSSL refused the pair.
        """
        self.load_tls().load_into(context, self._dir)

    def generate_data_key(self) -> None:
        """Generate and store the node's data key (32 random bytes).

        Raises:
            KeyExists: a data key is stored; replacing it would make every case unreadable.
        """
        payload = _DataKeyPayload(self._now(), secrets.token_bytes(DATA_KEY_BYTES))
        self._write(KeyFileKind.DATA, _DATA_FILE, payload, replace=False)

    def load_data_key(self) -> bytes:
        """Return the data key.

        Raises:
            KeyNotFound: no data key is stored.
        """
        return self._read(KeyFileKind.DATA, _DATA_FILE, _DataKeyPayload).key

    # --- internals -----------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock())

    def _next_epoch(self, kind: KeyKind) -> int:
        stored = self.keys(kind)
        return stored[-1].epoch + 1 if stored else 0

    def _store_asymmetric(self, kind: KeyKind, raw: bytes, public: bytes, epoch: int) -> StoredKey:
        if any(k.epoch == epoch for k in self.keys(kind)):
            raise KeyExists(f"a {kind.name.lower()} key of epoch {epoch} is already stored")
        stored = StoredKey(kind, key_id(kind, public), epoch, public, self._now())
        payload = _AsymmetricPayload(epoch, stored.created_at, raw)
        self._write(KeyFileKind(kind), _asymmetric_name(kind, stored.key_id), payload)
        self._keys[stored.key_id] = stored
        return stored

    def _load_asymmetric(self, kind: KeyKind, wanted: bytes) -> _AsymmetricPayload:
        stored = self._keys.get(wanted)
        if stored is None or stored.kind != kind:
            raise KeyNotFound(f"no stored {kind.name.lower()} key has that id")
        return self._read(KeyFileKind(kind), _asymmetric_name(kind, wanted), _AsymmetricPayload)

    def _index(self, names: Iterable[str]) -> None:
        """Decrypt every key file once, so damage shows at start, and index the public parts."""
        known: dict[str, tuple[KeyFileKind, type[_Payload]]] = {
            _TLS_FILE: (KeyFileKind.TLS, _TlsPayload),
            _TLS_NEXT_FILE: (KeyFileKind.TLS, _TlsPayload),
            _DATA_FILE: (KeyFileKind.DATA, _DataKeyPayload),
        }
        for name in names:
            kind = _asymmetric_kind(name)
            if kind is not None:
                payload = self._read(KeyFileKind(kind), name, _AsymmetricPayload)
                self._keys.update([_stored_from(kind, name, payload)])
            elif name in known:
                self._read(known[name][0], name, known[name][1])
            elif name != META_FILE and not name.startswith(TEMP_PREFIX):
                logger.warning("ignoring unexpected file %s in the keystore", name)

    def _write(
        self, kind: KeyFileKind, name: str, payload: _Payload, *, replace: bool = False
    ) -> None:
        header = MAGIC + bytes([FORMAT_VERSION, kind])
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, codec.encode(payload), header + name.encode())
        _write(self._dir / name, header + nonce + sealed, replace=replace)

    def _read(self, kind: KeyFileKind, name: str, payload_type: type[_P]) -> _P:
        path = self._dir / name
        data = _read(path)
        header = MAGIC + bytes([FORMAT_VERSION, kind])
        if len(data) < len(header) + NONCE_BYTES + 16 or not data.startswith(header):
            raise KeystoreCorrupt(f"{path} is not a version {FORMAT_VERSION} {kind.name} key file")
        body = data[len(header) :]
        try:
            plain = self._aead.decrypt(
                body[:NONCE_BYTES], body[NONCE_BYTES:], header + name.encode()
            )
            return codec.decode(plain, payload_type, max_bytes=MAX_KEY_FILE_BYTES, what=name)
        except (InvalidTag, ProtocolError) as e:
            raise KeystoreCorrupt(
                f"{path} is damaged or was altered; restore it from a backup"
            ) from e


# --- files --------------------------------------------------------------------------------------


def _asymmetric_name(kind: KeyKind, key_id: bytes) -> str:
    return f"{_ASYMMETRIC_PREFIX[kind]}{key_id.hex()}{_KEY_SUFFIX}"


def _asymmetric_kind(name: str) -> KeyKind | None:
    for kind, prefix in _ASYMMETRIC_PREFIX.items():
        if name.startswith(prefix) and name.endswith(_KEY_SUFFIX):
            return kind
    return None


def _stored_from(kind: KeyKind, name: str, payload: _AsymmetricPayload) -> tuple[bytes, StoredKey]:
    """Index a decrypted key file, checking that its key is the one its name claims."""
    if kind == KeyKind.IDENTITY:
        public = Ed25519PrivateKey.from_private_bytes(payload.private_key).public_key()
        public_raw = public.public_bytes_raw()
    else:
        exchange = X25519PrivateKey.from_private_bytes(payload.private_key).public_key()
        public_raw = exchange.public_bytes_raw()
    stored = StoredKey(
        kind, key_id(kind, public_raw), payload.epoch, public_raw, payload.created_at
    )
    if name != _asymmetric_name(kind, stored.key_id):
        raise KeystoreCorrupt(f"{name} holds a key that does not match its name")
    return stored.key_id, stored


def _derive(secret: OperatorSecret, salt: bytes, params: KdfParams) -> bytes:
    try:
        return argon2id.kdf(
            MASTER_KEY_BYTES, secret.value, salt, opslimit=params.opslimit, memlimit=params.memlimit
        )
    except (nacl.exceptions.RuntimeError, MemoryError) as e:  # libsodium could not allocate
        raise KeystoreError("Argon2id could not derive the master key (out of memory?)") from e


def _read_meta(path: Path) -> _Meta:
    data = _read(path)
    try:
        meta = msgspec.json.decode(data, type=_Meta)
        KdfParams(meta.opslimit, meta.memlimit)
    except (msgspec.DecodeError, ValueError) as e:
        raise KeystoreCorrupt(f"{path} is damaged; restore it from a backup") from e
    if meta.format != FORMAT_VERSION or meta.kdf != _KDF_NAME:
        raise KeystoreCorrupt(f"{path} is of an unknown keystore format")
    if len(meta.salt) != argon2id.SALTBYTES or len(meta.check) <= NONCE_BYTES:
        raise KeystoreCorrupt(f"{path} is damaged; restore it from a backup")
    return meta


def _read(path: Path) -> bytes:
    try:
        return read_private(path, max_bytes=MAX_KEY_FILE_BYTES)
    except FileNotFoundError as e:
        raise KeyNotFound(f"{path.name} is not stored") from e
    except ValueError as e:
        raise KeystoreCorrupt(f"{path} is larger than any key file") from e
    except OSError as e:
        raise KeystoreError(f"{path} cannot be read ({e.strerror})") from e


def _write(path: Path, data: bytes, *, replace: bool) -> None:
    try:
        write_private(path, data, replace=replace)
    except FileExistsError:
        raise KeyExists(f"{path} exists; keys are never overwritten") from None
