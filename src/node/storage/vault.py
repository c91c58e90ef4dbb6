"""Encryption at rest: per-case data keys, wrapped by the node's data key, and sealed fields.

Owns how anything sensitive is written to the database. Invariants:

* Every case has its own random 256-bit **case key**. The database holds it only *wrapped*
  (encrypted) under a key derived from the node's **data key**, which lives in the keystore
  (encrypted under the operator secret), never in the database. A database dump alone therefore
  reveals no identity and no message content: it holds ciphertext and wrapped keys only.
* A wrapped key is bound to its case id, and a sealed field to its case id and its purpose (such
  as ``"case.identity"``): a wrapped key copied to another case, or a sealed field copied to
  another case or another field, fails to open. Control payloads (not about a case) are sealed
  under a second key derived from the data key, bound to their purpose the same way.
* **Crypto-shredding**: setting a case's wrapped key to NULL (``CaseStore.shred``) destroys the
  only stored copy of the case key; everything sealed under it becomes unreadable, and asking for
  it raises :class:`CaseShredded`. Other cases are unaffected. (Old copies of the wrapped key in
  database backups stay readable to whoever also holds the data key: backups follow the same
  retention as the database.)
* Every failure to open (wrong key, case, purpose, tampering) is the one opaque
  :class:`VaultError`, like Fernet's ``InvalidToken``; it never says which check failed.

Formats (version 1; ``||`` concatenates, ``case_id`` is 16 bytes, ``purpose`` is UTF-8)::

    wrap key     = HKDF-SHA256(data key, salt = none, info = "citynode/v1 vault case-key-wrap")
    control key  = HKDF-SHA256(data key, salt = none, info = "citynode/v1 vault control")
    wrapped      = 0x01 || nonce(12) || ChaCha20-Poly1305(wrap key, nonce, case key,
                   ad = "citynode/v1 case-key" 0x00 || 0x01 || case_id)
    sealed field = 0x01 || nonce(12) || ChaCha20-Poly1305(case key, nonce, plaintext,
                   ad = "citynode/v1 case-field" 0x00 || 0x01 || case_id || purpose)
    sealed ctrl  = 0x01 || nonce(12) || ChaCha20-Poly1305(control key, nonce, plaintext,
                   ad = "citynode/v1 control-field" 0x00 || 0x01 || purpose)

Nonces are 96 random bits from the injected RNG (``os.urandom``): keys encrypt far fewer than the
2^32 messages at which random nonces would start to risk a collision.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import ClassVar, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.errors import NodeError

FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
CASE_ID_BYTES: Final = 16
OVERHEAD_BYTES: Final = 1 + NONCE_BYTES + TAG_BYTES
PURPOSE_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_.:/-]{0,199}$")

_VERSION: Final = bytes([FORMAT_VERSION])
_WRAP_INFO: Final = b"citynode/v1 vault case-key-wrap"
_CONTROL_INFO: Final = b"citynode/v1 vault control"
_WRAP_AD: Final = b"citynode/v1 case-key\x00" + _VERSION
_FIELD_AD: Final = b"citynode/v1 case-field\x00" + _VERSION
_CONTROL_AD: Final = b"citynode/v1 control-field\x00" + _VERSION


class VaultError(NodeError):
    """Sealed data did not open: wrong key, case or purpose, or altered. Says nothing more."""

    code: ClassVar[str] = "sealed_data_unreadable"


class CaseShredded(VaultError):
    """The case's key was destroyed (crypto-shredding): nothing sealed under it can be read."""

    code: ClassVar[str] = "case_shredded"


class CaseVault:
    """Wraps case keys under the node's data key and seals fields under case keys.

    Args:
        data_key: the node's 32-byte data key (``Keystore.load_data_key``).
        random_bytes: the RNG for keys and nonces (injected for tests).

    Raises:
        ValueError: a data key of the wrong length.
    """

    KEY_BYTES: ClassVar[int] = KEY_BYTES

    def __init__(
        self, data_key: bytes, *, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        if len(data_key) != KEY_BYTES:
            raise ValueError(f"the data key must be {KEY_BYTES} bytes")
        self._wrap = ChaCha20Poly1305(_derive(data_key, _WRAP_INFO))
        self._control = ChaCha20Poly1305(_derive(data_key, _CONTROL_INFO))
        self._random = random_bytes

    def new_case_key(self, case_id: bytes) -> tuple[bytes, bytes]:
        """Make a fresh key for a case.

        Args:
            case_id: the 16-byte case id.

        Returns:
            ``(case_key, wrapped)``: the key to use now, and the form to store in ``cases``.
        """
        _check_case_id(case_id)
        case_key = self._random(KEY_BYTES)
        return case_key, self._seal(self._wrap, _WRAP_AD + case_id, case_key)

    def unwrap(self, case_id: bytes, wrapped: bytes | None) -> bytes:
        """Recover a case key from its stored, wrapped form.

        Args:
            case_id: the case the key belongs to.
            wrapped: the stored wrapped key, or ``None`` once the case was shredded.

        Returns:
            The 32-byte case key.

        Raises:
            CaseShredded: ``wrapped`` is ``None``.
            VaultError: the wrapped key belongs to another case, another data key, or was altered.
        """
        _check_case_id(case_id)
        if wrapped is None:
            raise CaseShredded("the case was shredded: its key no longer exists")
        case_key = _open(self._wrap, _WRAP_AD + case_id, wrapped)
        if len(case_key) != KEY_BYTES:
            raise VaultError("sealed data does not open")
        return case_key

    def seal(self, case_key: bytes, case_id: bytes, purpose: str, plaintext: bytes) -> bytes:
        """Encrypt one field or document of a case.

        Args:
            case_key: the case's key (from :meth:`new_case_key` or :meth:`unwrap`).
            case_id: the case.
            purpose: what the field is (``"case.identity"``, ``"inbox:<sender>:<id>"``); it
                must be given again to open it. Lowercase, see :data:`PURPOSE_PATTERN`.
            plaintext: the bytes to protect.

        Returns:
            The sealed bytes (:data:`OVERHEAD_BYTES` longer than ``plaintext``).
        """
        return self._seal(_case_aead(case_key), _field_ad(case_id, purpose), plaintext)

    def open(self, case_key: bytes, case_id: bytes, purpose: str, sealed: bytes) -> bytes:
        """Decrypt what :meth:`seal` produced for the same key, case and purpose.

        Raises:
            VaultError: anything else (another case, another purpose, altered bytes).
        """
        return _open(_case_aead(case_key), _field_ad(case_id, purpose), sealed)

    def seal_with_data_key(self, purpose: str, plaintext: bytes) -> bytes:
        """Encrypt a control payload (not about a case) under the node's data key.

        Args:
            purpose: what it is, as for :meth:`seal`.
            plaintext: the bytes to protect.

        Returns:
            The sealed bytes.
        """
        return self._seal(self._control, _CONTROL_AD + _purpose_bytes(purpose), plaintext)

    def open_with_data_key(self, purpose: str, sealed: bytes) -> bytes:
        """Decrypt what :meth:`seal_with_data_key` produced for the same purpose.

        Raises:
            VaultError: another purpose, another data key, or altered bytes.
        """
        return _open(self._control, _CONTROL_AD + _purpose_bytes(purpose), sealed)

    def _seal(self, aead: ChaCha20Poly1305, associated: bytes, plaintext: bytes) -> bytes:
        nonce = self._random(NONCE_BYTES)
        return _VERSION + nonce + aead.encrypt(nonce, plaintext, associated)


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(data_key)


def _open(aead: ChaCha20Poly1305, associated: bytes, sealed: bytes) -> bytes:
    if len(sealed) < OVERHEAD_BYTES or sealed[:1] != _VERSION:
        raise VaultError("sealed data does not open")
    nonce = sealed[1 : 1 + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], associated)
    except InvalidTag as e:
        raise VaultError("sealed data does not open") from e


def _case_aead(case_key: bytes) -> ChaCha20Poly1305:
    if len(case_key) != KEY_BYTES:
        raise ValueError(f"a case key must be {KEY_BYTES} bytes")
    return ChaCha20Poly1305(case_key)


def _field_ad(case_id: bytes, purpose: str) -> bytes:
    _check_case_id(case_id)
    return _FIELD_AD + case_id + _purpose_bytes(purpose)


def _purpose_bytes(purpose: str) -> bytes:
    if not PURPOSE_PATTERN.fullmatch(purpose):
        raise ValueError(f"a sealing purpose must match {PURPOSE_PATTERN.pattern}")
    return purpose.encode("ascii")


def _check_case_id(case_id: bytes) -> None:
    if len(case_id) != CASE_ID_BYTES:
        raise ValueError(f"a case id must be {CASE_ID_BYTES} bytes")
