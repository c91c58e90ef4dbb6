"""The ``cases`` table: the cases this node is a party to, their keys, and crypto-shredding.

Owns the life of a case's row and of its key. Invariants:

* A case row is created together with its case key (:meth:`CaseStore.create`); the key is stored
  only wrapped by the node's data key (:mod:`node.storage.vault`).
* The person's identity is stored only sealed under the case key (``sealed_identity``, purpose
  :data:`IDENTITY_PURPOSE`); received messages of the case are sealed under the same key by the
  inbox. :meth:`CaseStore.shred` destroys the wrapped key and the sealed identity in one
  transaction: from then on nothing of the case can be read (:class:`CaseShredded`), while the
  routing metadata (ids, states, times) stays for the balance report and the audit.
* This store does not decide whether a state change is allowed: ``protocol.cases`` does, in the
  case service (issue 4), which calls :meth:`CaseStore.set_state` with the result.
* **One transaction, one look-up per case.** Inside a write transaction the case rows read or
  created are remembered in the session (:func:`find_case`, :func:`preload_cases`), and so are
  the keys unwrapped (:func:`load_case_key`, by their wrapped form: a shredded case has none and
  is refused as before). A case created in a joined transaction is not flushed on its own: it is
  written with the transaction's next flush, so a batch of new cases costs one ``INSERT``. Whoever
  rolls a savepoint back must call :func:`forget_cases` (the rows it knew may be gone).

Reads of the identity must be audited by the caller (who, when, which case, why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from node.errors import NodeError
from node.storage.database import Database
from node.storage.schema import CaseRow
from node.storage.vault import CaseShredded, CaseVault
from protocol.cases import CaseState, Role, is_terminal

IDENTITY_PURPOSE: Final = "case.identity"
_KNOWN_CASES: Final = "citynode.known_cases"  # session.info: case id -> CaseRow | None
_CASE_KEYS: Final = "citynode.case_keys"  # session.info: wrapped key -> unwrapped key


class CaseNotFound(NodeError):
    """No case with this id is held by this node."""

    code: ClassVar[str] = "unknown_case"


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """A case row without its secrets.

    Attributes:
        case_id: the 16-byte case id, the same at both nodes.
        role: whether this node is the home or the receiving city.
        peer: the other city.
        unit: this node's unit handling the case.
        state: the case state.
        created_at: when the row was created (Unix seconds).
        updated_at: when it last changed.
        closed_at: when it reached a terminal state, or ``None``.
        shredded: whether its key was destroyed.
        has_identity: whether an identity is stored (sealed) for it.
    """

    case_id: bytes
    role: Role
    peer: str
    unit: str
    state: CaseState
    created_at: float
    updated_at: float
    closed_at: float | None
    shredded: bool
    has_identity: bool


class CaseStore:
    """Cases, their wrapped keys and their sealed identities.

    Args:
        db: the database.
        vault: the vault holding the node's data key.
        clock: Unix seconds now.
    """

    def __init__(self, db: Database, vault: CaseVault, clock: Callable[[], float]) -> None:
        self._db = db
        self._vault = vault
        self._clock = clock

    async def create(
        self,
        case_id: bytes,
        *,
        role: Role,
        peer: str,
        unit: str,
        state: CaseState,
        session: AsyncSession | None = None,
    ) -> bytes:
        """Create a case and its key.

        Args:
            case_id: the new case's id.
            role: this node's role in it.
            peer: the other city.
            unit: this node's unit.
            state: the initial state.
            session: a transaction to join, or ``None`` for a new one.

        Returns:
            The new case key (to seal the case's first fields in the same transaction).

        Raises:
            StorageConflict: a case with this id exists (in a transaction of its own).
            StorageError: the database failed.
        """
        case_key, wrapped = self._vault.new_case_key(case_id)
        now = self._clock()
        row = CaseRow(
            case_id=case_id,
            role=role.value,
            peer=peer,
            unit=unit,
            state=state.value,
            created_at=now,
            updated_at=now,
            closed_at=now if is_terminal(state) else None,
            wrapped_key=wrapped,
            sealed_identity=None,
        )
        if session is not None:  # written with the caller's next flush (see the module doc)
            session.add(row)
            _known(session)[case_id] = row
            _keys(session)[wrapped] = case_key
            return case_key
        async with self._db.transaction() as s:
            s.add(row)
        return case_key

    async def get(self, case_id: bytes) -> CaseRecord | None:
        """Return the case, or ``None`` if this node holds no such case."""
        async with self._db.reading() as s:
            row = await s.get(CaseRow, case_id)
            return None if row is None else _record(row)

    async def case_key(self, case_id: bytes, session: AsyncSession | None = None) -> bytes:
        """Return the case's key, unwrapped.

        Raises:
            CaseNotFound: no such case.
            CaseShredded: the case was shredded.
            VaultError: the wrapped key does not open under this node's data key.
        """
        if session is not None:
            return await load_case_key(session, self._vault, case_id)
        async with self._db.reading() as s:
            return await load_case_key(s, self._vault, case_id)

    async def set_state(
        self, case_id: bytes, state: CaseState, session: AsyncSession | None = None
    ) -> None:
        """Record the case's new state (decided by ``protocol.cases``); stamps ``closed_at``.

        Raises:
            CaseNotFound: no such case.
        """
        now = self._clock()
        async with self._db.transaction(session) as s:
            row = await _row(s, case_id)
            row.state = state.value
            row.updated_at = now
            if is_terminal(state) and row.closed_at is None:
                row.closed_at = now

    async def seal_identity(
        self, case_id: bytes, identity: bytes, session: AsyncSession | None = None
    ) -> None:
        """Store the person's identity (encoded by the caller), sealed under the case key.

        Raises:
            CaseNotFound: no such case.
            CaseShredded: the case was shredded.
        """
        now = self._clock()
        async with self._db.transaction(session) as s:
            row = await _row(s, case_id)
            case_key = _unwrap(s, self._vault, case_id, row.wrapped_key)
            row.sealed_identity = self._vault.seal(case_key, case_id, IDENTITY_PURPOSE, identity)
            row.updated_at = now

    async def open_identity(self, case_id: bytes) -> bytes | None:
        """Return the stored identity, or ``None`` if none was stored. The caller audits the read.

        Raises:
            CaseNotFound: no such case.
            CaseShredded: the case was shredded.
            VaultError: the sealed identity does not open.
        """
        async with self._db.reading() as s:
            row = await _row(s, case_id)
            case_key = self._vault.unwrap(case_id, row.wrapped_key)
            if row.sealed_identity is None:
                return None
            return self._vault.open(case_key, case_id, IDENTITY_PURPOSE, row.sealed_identity)

    async def shred(self, case_id: bytes, session: AsyncSession | None = None) -> bool:
        """Destroy the case key and the sealed identity: the case can never be read again.

        Returns:
            ``True`` if the case had a key to destroy, ``False`` if it was already shredded.

        Raises:
            CaseNotFound: no such case.
        """
        now = self._clock()
        async with self._db.transaction(session) as s:
            row = await _row(s, case_id)
            had_key = row.wrapped_key is not None
            row.wrapped_key = None
            row.sealed_identity = None
            row.updated_at = now
        return had_key


async def load_case_key(session: AsyncSession, vault: CaseVault, case_id: bytes) -> bytes:
    """Read and unwrap a case's key inside an open transaction (once per transaction).

    Raises:
        CaseNotFound: no such case.
        CaseShredded: the case was shredded.
        VaultError: the wrapped key does not open under this node's data key.
    """
    row = await _row(session, case_id)
    return _unwrap(session, vault, case_id, row.wrapped_key)


async def find_case(session: AsyncSession, case_id: bytes) -> CaseRow | None:
    """Return the case's row in this transaction (with its pending changes), or ``None``.

    A case looked up, preloaded or created before in the same transaction is answered without a
    query (and without flushing what is pending).
    """
    known = _known(session)
    if case_id in known:
        return known[case_id]
    row = await session.get(CaseRow, case_id)
    known[case_id] = row
    return row


async def preload_cases(session: AsyncSession, case_ids: Iterable[bytes]) -> None:
    """Look up several cases with one query, for :func:`find_case` to answer from."""
    known = _known(session)
    wanted = {case_id for case_id in case_ids if case_id not in known}
    if not wanted:
        return
    rows = await session.scalars(select(CaseRow).where(CaseRow.case_id.in_(wanted)))
    for row in rows:
        known[row.case_id] = row
    for case_id in wanted:
        known.setdefault(case_id, None)


def forget_cases(session: AsyncSession) -> None:
    """Drop what this transaction remembered of its cases (after a savepoint rolled back)."""
    session.info.pop(_KNOWN_CASES, None)
    session.info.pop(_CASE_KEYS, None)


def _known(session: AsyncSession) -> dict[bytes, CaseRow | None]:
    return cast(dict[bytes, CaseRow | None], session.info.setdefault(_KNOWN_CASES, {}))


def _keys(session: AsyncSession) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], session.info.setdefault(_CASE_KEYS, {}))


def _unwrap(
    session: AsyncSession, vault: CaseVault, case_id: bytes, wrapped: bytes | None
) -> bytes:
    """Unwrap a case key once per transaction; ``None`` (shredded) raises ``CaseShredded``."""
    if wrapped is None:
        raise CaseShredded("the case was shredded: its key no longer exists")
    keys = _keys(session)
    case_key = keys.get(wrapped)
    if case_key is None:
        case_key = keys[wrapped] = vault.unwrap(case_id, wrapped)
    return case_key


async def _row(session: AsyncSession, case_id: bytes) -> CaseRow:
    row = await find_case(session, case_id)
    if row is None:
        raise CaseNotFound("no case with this id is held by this node")
    return row


def _record(row: CaseRow) -> CaseRecord:
    return CaseRecord(
        case_id=row.case_id,
        role=Role(row.role),
        peer=row.peer,
        unit=row.unit,
        state=CaseState(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        closed_at=row.closed_at,
        shredded=row.wrapped_key is None,
        has_identity=row.sealed_identity is not None,
    )
