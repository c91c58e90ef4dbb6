"""The audit trail: who read or did what, when, to which case, why, and how it ended.

Owns the ``audit_log`` table. Invariants:

* **Append only, hash-chained** (the chain and its encoding: :mod:`node.audit_chain`). Entry
  ``n`` carries the hash of entry ``n - 1``; :meth:`AuditTrail.verify` finds an edited, deleted,
  inserted or reordered entry and names it by its number.
* **One transaction with the action.** :meth:`AuditTrail.record` given the caller's session writes
  the entry in the caller's transaction, so an action and its entry commit together or not at all
  (a rolled-back action leaves no entry, a kept one always has its entry).
* **The chain never forks.** Appending takes the audit lock first: on SQLite every write
  transaction is already exclusive (``BEGIN IMMEDIATE``); on PostgreSQL the transaction locks
  ``audit_log`` in ``EXCLUSIVE`` mode (readers go on, appenders queue), so two appenders can never
  both chain to the same entry. The lock is held until the caller commits: record the entry as the
  **last** statement of the transaction, so the audit lock is always taken last (no lock-order
  deadlock) and held briefly.
* **No personal data.** An entry holds account names, a role, an action code, an opaque case id,
  an outcome code, and a *purpose*: short free text naming why (for example "handover meeting",
  "quarterly review", "follow-up call"), at most :data:`MAX_PURPOSE_CHARS` characters on one line.
  A purpose that looks like it carries a person's data — a run of six or more digits (a
  personnummer, phone or file number) or an ``@`` (an e-mail address) — is refused
  (:class:`InvalidPurpose`); it is still the caller's duty never to put a name there.
* **Offline verification.** :meth:`AuditTrail.export` writes JSON lines (each entry with its
  hashes, then a head line); :func:`verify_file` checks such a file with no database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO, ClassVar, Final, Literal

import msgspec
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from node.access import Principal
from node.audit_chain import (
    EMPTY_HEAD,
    HASH_BYTES,
    ZERO_HASH,
    AuditEntry,
    ChainChecker,
    Finding,
    Head,
    Problem,
    VerifyReport,
    entry_hash,
)
from node.errors import NodeError
from node.storage.database import Database
from node.storage.schema import PURPOSE_CHARS, AuditRow

logger = logging.getLogger(__name__)

MAX_PURPOSE_CHARS: Final = PURPOSE_CHARS
MAX_LIMIT: Final = 10_000
PAGE: Final = 1_000  # entries read per query when verifying or exporting
MAX_LINE_BYTES: Final = 4_096  # one export line (an entry is well under 1 KiB)
FILE_FORMAT: Final = "citynode-audit/1"
CASE_ID_BYTES: Final = 16
ACCOUNT_NAME: Final = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_CODE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ONE_LINE: Final = re.compile(r"^[^\x00-\x1f\x7f\u2028\u2029]+$")
_AUDIT: Final = AuditRow.metadata.tables[AuditRow.__tablename__]
# Built once: every audited action runs them (building a statement costs more than running it).
_LAST_ENTRY: Final = (
    select(_AUDIT.c.seq, _AUDIT.c.entry_hash).order_by(_AUDIT.c.seq.desc()).limit(1)
)
_APPEND: Final = insert(_AUDIT)
_LOOKS_PERSONAL: Final = re.compile(r"\d{6}|@")


class AuditError(NodeError):
    """An audit entry that cannot be written as asked, or an export that cannot be read/written."""

    code: ClassVar[str] = "audit_invalid"


class InvalidPurpose(AuditError):
    """The purpose is empty, too long, not one line, or looks like it carries personal data."""

    code: ClassVar[str] = "invalid_purpose"


def check_purpose(purpose: str | None) -> str | None:
    """Check a purpose at the edge (the case API), before it reaches :meth:`AuditTrail.record`.

    Args:
        purpose: the text, or ``None``.

    Returns:
        The purpose without surrounding spaces, or ``None``.

    Raises:
        InvalidPurpose: empty, longer than :data:`MAX_PURPOSE_CHARS`, several lines, or holding
            six digits in a row or an ``@``. The message never quotes it.
    """
    if purpose is None:
        return None
    cleaned = purpose.strip()
    if not cleaned or len(cleaned) > MAX_PURPOSE_CHARS or not _ONE_LINE.fullmatch(cleaned):
        raise InvalidPurpose(f"purpose must be one line of 1 to {MAX_PURPOSE_CHARS} characters")
    if _LOOKS_PERSONAL.search(cleaned):
        raise InvalidPurpose(
            "purpose must say why in a few words, without numbers or addresses: "
            "it may not hold personal data"
        )
    return cleaned


def _check_entry(
    principal: Principal | None,
    action: str,
    subject: str | None,
    case_id: bytes | None,
    outcome: str,
) -> None:
    if not _CODE.fullmatch(action) or not _CODE.fullmatch(outcome):
        raise AuditError("action and outcome must be short lowercase codes")
    if subject is not None and not ACCOUNT_NAME.fullmatch(subject):
        raise AuditError("subject must be an account name")
    if principal is not None and not ACCOUNT_NAME.fullmatch(principal.user):
        raise AuditError("the principal's user must be an account name")
    if case_id is not None and len(case_id) != CASE_ID_BYTES:
        raise AuditError(f"case_id must be {CASE_ID_BYTES} bytes")


def _entry_of(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        at=row.at,
        user=row.user_name,
        role=row.role,
        action=row.action,
        subject=row.subject,
        case_id=None if row.case_id is None else bytes(row.case_id),
        purpose=row.purpose,
        outcome=row.outcome,
        previous_hash=bytes(row.previous_hash),
        entry_hash=bytes(row.entry_hash),
    )


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :meth:`AuditTrail.export` wrote.

    Attributes:
        path: the file.
        count: entries written.
        head: the newest entry written (keep it: it detects later truncation).
    """

    path: Path
    count: int
    head: Head


class AuditTrail:
    """The node's audit trail in its database."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    @property
    def db(self) -> Database:
        """The database the trail is in (to open a transaction that records into it)."""
        return self._db

    async def record(
        self,
        session: AsyncSession | None,
        *,
        principal: Principal | None,
        action: str,
        case_id: bytes | None,
        purpose: str | None,
        outcome: str,
        subject: str | None = None,
    ) -> AuditEntry:
        """Append an entry: in the caller's transaction when ``session`` is given.

        Record it as the last statement before the caller commits (module docstring: the audit
        lock is held from here to the commit).

        Args:
            session: a session of :meth:`Database.transaction`, or ``None`` for a transaction of
                its own.
            principal: who acted (``None``: not authenticated).
            action: what was done or asked, a code such as ``read_identity`` or ``user_added``.
            case_id: the case concerned, 16 bytes, or ``None``.
            purpose: why (:func:`check_purpose`), or ``None``.
            outcome: ``ok``, or the error code of the refusal (``forbidden``...).
            subject: the account an administrative action concerns, or ``None``.

        Returns:
            The entry as appended.

        Raises:
            AuditError, InvalidPurpose: a field is not acceptable (nothing was written).
            StorageError: the database failed (with ``session``, the caller's transaction fails).
        """
        _check_entry(principal, action, subject, case_id, outcome)
        checked_purpose = check_purpose(purpose)
        async with self._db.transaction(session) as s:
            await self._lock(s)
            last = (await s.execute(_LAST_ENTRY)).first()
            draft = AuditEntry(
                seq=1 if last is None else last.seq + 1,
                at=self._clock(),
                user=None if principal is None else principal.user,
                role=None if principal is None else principal.role.value,
                action=action,
                subject=subject,
                case_id=case_id,
                purpose=checked_purpose,
                outcome=outcome,
                previous_hash=ZERO_HASH if last is None else bytes(last.entry_hash),
                entry_hash=ZERO_HASH,
            )
            entry = dataclasses.replace(draft, entry_hash=entry_hash(draft))
            await s.execute(_APPEND, _row_values(entry))  # a Core insert: no ORM object
        return entry

    async def _lock(self, session: AsyncSession) -> None:
        """Serialise appenders (SQLite: the write transaction is already exclusive)."""
        if self._db.dialect == "postgresql":
            await session.execute(text(f"LOCK TABLE {AuditRow.__tablename__} IN EXCLUSIVE MODE"))

    async def entries(
        self, case_id: bytes | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """The newest entries first, for auditors.

        Args:
            case_id: only the entries about this case.
            since: only the entries recorded at or after this time (Unix seconds).
            limit: at most this many (1..:data:`MAX_LIMIT`).

        Returns:
            The entries, newest first.

        Raises:
            AuditError: ``limit`` out of range.
            StorageError: the database failed.
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise AuditError(f"limit must be 1 to {MAX_LIMIT}")
        query = select(AuditRow).order_by(AuditRow.seq.desc()).limit(limit)
        if case_id is not None:
            query = query.where(AuditRow.case_id == case_id)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        async with self._db.reading() as s:
            return [_entry_of(row) for row in (await s.scalars(query)).all()]

    async def verify(self, anchor: Head | None = None) -> VerifyReport:
        """Check the whole chain in the database.

        Args:
            anchor: a head kept earlier (an export's, or one an auditor wrote down); the chain
                must still hold that entry unchanged, which detects deleting the newest entries.

        Returns:
            The report; ``report.ok`` when nothing is wrong, else each finding names its entry.

        Raises:
            StorageError: the database failed.
        """
        checker = ChainChecker(anchor=anchor)
        after = 0
        while True:
            page = await self._page(after)
            for entry in page:
                checker.add(entry)
            if len(page) < PAGE:
                break
            after = page[-1].seq
        report = checker.finish()
        if not report.ok:
            logger.warning("audit trail verification failed: %s", report.findings[0].describe())
        return report

    async def _page(self, after: int) -> list[AuditEntry]:
        query = select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(PAGE)
        async with self._db.reading() as s:
            return [_entry_of(row) for row in (await s.scalars(query)).all()]

    async def export(self, path: Path) -> ExportResult:
        """Write the whole trail to ``path`` (JSON lines, then the head line), mode ``0600``.

        The file appears complete or not at all (written aside, then linked into place).

        Returns:
            What was written, with the head to keep.

        Raises:
            AuditError: ``path`` exists or cannot be written.
            StorageError: the database failed.
        """
        if path.exists():
            raise AuditError(f"{path} exists: export to a new file")
        count, head = 0, EMPTY_HEAD
        with _new_private_file(path) as out:
            after = 0
            while True:
                page = await self._page(after)
                for entry in page:
                    out.write(_ENTRY_ENCODER.encode(_line_of(entry)) + b"\n")
                    count, head = count + 1, Head(entry.seq, entry.entry_hash)
                if len(page) < PAGE:
                    break
                after = page[-1].seq
            line = HeadLine(
                format=FILE_FORMAT, seq=head.seq, entry_hash=head.entry_hash.hex(), count=count
            )
            out.write(_ENTRY_ENCODER.encode(line) + b"\n")
        logger.info("audit trail exported: %d entries, head %d", count, head.seq)
        return ExportResult(path, count, head)


def _row_values(entry: AuditEntry) -> dict[str, object]:
    return {
        "seq": entry.seq,
        "at": entry.at,
        "user_name": entry.user,
        "role": entry.role,
        "action": entry.action,
        "subject": entry.subject,
        "case_id": entry.case_id,
        "purpose": entry.purpose,
        "outcome": entry.outcome,
        "previous_hash": entry.previous_hash,
        "entry_hash": entry.entry_hash,
    }


# --- the export file -----------------------------------------------------------------------------

_Hex32 = Annotated[str, msgspec.Meta(pattern=f"^[0-9a-f]{{{2 * HASH_BYTES}}}$")]
_Hex16 = Annotated[str, msgspec.Meta(pattern=f"^[0-9a-f]{{{2 * CASE_ID_BYTES}}}$")]
_Short = Annotated[str, msgspec.Meta(max_length=64)]
_Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class EntryLine(msgspec.Struct, tag="entry", tag_field="kind", forbid_unknown_fields=True):
    """One entry in an export file (``{"kind": "entry", ...}``): the fields, bytes as hex."""

    seq: _Seq
    at: float
    user: _Short | None
    role: _Short | None
    action: _Short
    subject: _Short | None
    case_id: _Hex16 | None
    purpose: Annotated[str, msgspec.Meta(max_length=MAX_PURPOSE_CHARS)] | None
    outcome: _Short
    previous_hash: _Hex32
    entry_hash: _Hex32


class HeadLine(msgspec.Struct, tag="head", tag_field="kind", forbid_unknown_fields=True):
    """The last line of an export file: the head of the chain exported and the entry count."""

    format: Literal["citynode-audit/1"]
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    entry_hash: _Hex32
    count: Annotated[int, msgspec.Meta(ge=0)]


_ENTRY_ENCODER: Final = msgspec.json.Encoder()
_LINE_DECODER: Final = msgspec.json.Decoder(EntryLine | HeadLine)


def _line_of(entry: AuditEntry) -> EntryLine:
    return EntryLine(
        seq=entry.seq,
        at=entry.at,
        user=entry.user,
        role=entry.role,
        action=entry.action,
        subject=entry.subject,
        case_id=None if entry.case_id is None else entry.case_id.hex(),
        purpose=entry.purpose,
        outcome=entry.outcome,
        previous_hash=entry.previous_hash.hex(),
        entry_hash=entry.entry_hash.hex(),
    )


def _entry_from_line(line: EntryLine) -> AuditEntry:
    return AuditEntry(
        seq=line.seq,
        at=line.at,
        user=line.user,
        role=line.role,
        action=line.action,
        subject=line.subject,
        case_id=None if line.case_id is None else bytes.fromhex(line.case_id),
        purpose=line.purpose,
        outcome=line.outcome,
        previous_hash=bytes.fromhex(line.previous_hash),
        entry_hash=bytes.fromhex(line.entry_hash),
    )


@contextlib.contextmanager
def _new_private_file(path: Path) -> Iterator[BinaryIO]:
    """Write a new ``0600`` file: aside first, then linked into place (never over a file)."""
    try:
        fd, temp_name = tempfile.mkstemp(prefix=".tmp-audit-", dir=path.parent)
    except OSError as e:
        raise AuditError(f"cannot write in {path.parent}: {e.strerror}") from e
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)
    except FileExistsError as e:
        raise AuditError(f"{path} exists: export to a new file") from e
    except OSError as e:
        raise AuditError(f"cannot write {path}: {e.strerror}") from e
    finally:
        temp.unlink(missing_ok=True)


def verify_file(path: Path, anchor: Head | None = None) -> VerifyReport:
    """Check an export offline: every entry's hash, the chain, and the head line at the end.

    Args:
        path: a file written by :meth:`AuditTrail.export`.
        anchor: a head kept earlier, which the file must still contain unchanged.

    Returns:
        The report; each finding names the entry (and the file line) concerned.

    Raises:
        AuditError: the file cannot be read.
    """
    checker = ChainChecker(anchor=anchor)
    head_line: HeadLine | None = None
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(_lines(f), start=1):
                checker.line = number
                if head_line is not None:
                    checker.malformed(number, "a line after the head line")
                    continue
                parsed = _parse_line(raw)
                if isinstance(parsed, str):
                    checker.malformed(number, parsed)
                elif isinstance(parsed, HeadLine):
                    head_line = parsed
                else:
                    checker.add(_entry_from_line(parsed))
    except OSError as e:
        raise AuditError(f"cannot read {path}: {e.strerror}") from e
    checker.line = None
    if head_line is None:
        return _without_head(checker)
    claimed = Head(head_line.seq, bytes.fromhex(head_line.entry_hash))
    return checker.finish(claimed_head=claimed, claimed_count=head_line.count)


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """The file's lines; a line longer than :data:`MAX_LINE_BYTES` comes out empty (unparsable)."""
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield b""  # too long: reported as not an entry
            continue
        yield raw.rstrip(b"\n")


def _parse_line(raw: bytes) -> EntryLine | HeadLine | str:
    """The line's record, or why it is not one (the reason never quotes the line)."""
    try:
        parsed: EntryLine | HeadLine = _LINE_DECODER.decode(raw)
    except msgspec.ValidationError as e:
        return f"not an audit entry ({e})"
    except msgspec.DecodeError:
        return "not a JSON audit record"
    return parsed


def _without_head(checker: ChainChecker) -> VerifyReport:
    """A file without its head line was cut short: say so, after what the entries show."""
    report = checker.finish()
    missing = Finding(
        report.head.seq + 1,
        report.head.seq + 1,
        Problem.TRUNCATED,
        "the file has no head line: it was cut short",
    )
    return VerifyReport(report.count, report.head, (*report.findings, missing), report.omitted)
