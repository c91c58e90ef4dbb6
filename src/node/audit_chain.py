"""The audit trail's hash chain: the entry, its encoding, and the checker that names damage.

Pure (no database, no disk, no clock): shared by :class:`node.audit.AuditTrail` (entries read from
the database) and :func:`node.audit.verify_file` (entries read from an export, offline).

The chain. Entries are numbered ``seq`` = 1, 2, 3... without gaps. Each carries
``previous_hash``, the ``entry_hash`` of the entry before it (32 zero bytes for entry 1), and its
own ``entry_hash`` = SHA-256 of this encoding, all integers big-endian:

    "citynode/audit-entry/v1" 0x00         domain separation
    seq                u64
    at                 IEEE 754 binary64 (Unix seconds)
    user, role, action, subject, case_id, purpose, outcome, each as
        0x00                               absent (NULL)
        0x01 len:u32 bytes                 present (text as UTF-8; case_id its 16 bytes)
    previous_hash      32 bytes

What the checker finds, each named by the ``seq`` it concerns (:class:`Problem`):

* ``edited`` — an entry's fields no longer hash to its ``entry_hash``; or, when it was re-hashed,
  the next entry chains to a different one.
* ``deleted`` — numbers missing from the sequence; or, when the entries after were renumbered to
  close the gap, the original numbers whose content is nowhere.
* ``inserted`` — an entry that the entries after it do not chain to, or a number seen twice.
* ``reordered`` — an entry whose content is another number's (rows swapped or renumbered: an
  entry's ``previous_hash`` tells which number it had), or a number that appears after a later
  one (lines of an export moved). A run of entries moved alike is one finding.
* ``truncated`` / ``head_mismatch`` — the end of the chain is not the head recorded earlier
  (an export's head line, or an anchor an auditor kept). Deleting the newest entries, or
  re-hashing the whole chain, can only be seen against such an independently kept head.
* ``malformed`` — a line of an export that is not an entry.

Memory and time are bounded: the checker remembers the last :data:`WINDOW` entries' hashes to
explain moved and inserted entries, and keeps :data:`MAX_FINDINGS` findings; damage it cannot
explain is still found, as ``edited``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

HASH_BYTES: Final = 32
ZERO_HASH: Final = bytes(HASH_BYTES)
DOMAIN: Final = b"citynode/audit-entry/v1\x00"
WINDOW: Final = 65_536  # entries remembered to explain moves and insertions
MAX_FINDINGS: Final = 100  # findings kept in a report; the rest are counted
SEARCH_SPAN: Final = 4_096  # later numbers tried for an entry renumbered after a deletion
MAX_SEARCHES: Final = 16  # such searches per check (each costs up to SEARCH_SPAN hashes)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit trail.

    Attributes:
        seq: its number, 1 for the first entry.
        at: when it was recorded (Unix seconds).
        user: the account that acted, or ``None`` (not authenticated).
        role: that account's role then, or ``None``.
        action: what was done or asked (``read_identity``, ``user_added``...).
        subject: the account an administrative action was about (``user_added``), or ``None``.
        case_id: the case concerned (16 bytes), or ``None``.
        purpose: why, in a few words ("handover meeting"); never personal data.
        outcome: ``ok`` or the error code of the refusal.
        previous_hash: the ``entry_hash`` of entry ``seq - 1`` (zeros for entry 1).
        entry_hash: SHA-256 of this entry's canonical encoding (module docstring).
    """

    seq: int
    at: float
    user: str | None
    role: str | None
    action: str
    subject: str | None
    case_id: bytes | None
    purpose: str | None
    outcome: str
    previous_hash: bytes
    entry_hash: bytes

    def as_json(self) -> dict[str, Any]:
        """The entry as JSON-ready values (bytes as lowercase hex)."""
        return {
            "seq": self.seq,
            "at": self.at,
            "user": self.user,
            "role": self.role,
            "action": self.action,
            "subject": self.subject,
            "case_id": None if self.case_id is None else self.case_id.hex(),
            "purpose": self.purpose,
            "outcome": self.outcome,
            "previous_hash": self.previous_hash.hex(),
            "entry_hash": self.entry_hash.hex(),
        }


def _optional(value: bytes | None) -> bytes:
    if value is None:
        return b"\x00"
    return b"\x01" + struct.pack(">I", len(value)) + value


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def entry_hash(entry: AuditEntry, *, seq: int | None = None) -> bytes:
    """Compute the ``entry_hash`` of ``entry``'s fields (with ``seq`` instead of its own, if given).

    Raises:
        ValueError: ``seq`` outside 0..2**64-1, or ``at`` not finite.
    """
    number = entry.seq if seq is None else seq
    if not 0 <= number < 2**64 or not math.isfinite(entry.at):
        raise ValueError("seq or at is out of range")
    parts = [
        DOMAIN,
        struct.pack(">Q", number),
        struct.pack(">d", entry.at),
        _optional(_text(entry.user)),
        _optional(_text(entry.role)),
        _optional(_text(entry.action)),
        _optional(_text(entry.subject)),
        _optional(entry.case_id),
        _optional(_text(entry.purpose)),
        _optional(_text(entry.outcome)),
        entry.previous_hash,
    ]
    return hashlib.sha256(b"".join(parts)).digest()


@dataclass(frozen=True, slots=True)
class Head:
    """The newest entry of a chain: what an auditor writes down to detect later truncation.

    Attributes:
        seq: its number (0 for an empty chain).
        entry_hash: its hash (zeros for an empty chain).
    """

    seq: int
    entry_hash: bytes

    def __str__(self) -> str:
        return f"{self.seq}:{self.entry_hash.hex()}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """Parse ``SEQ:HEX`` (as printed by ``str``).

        Raises:
            ValueError: not that form.
        """
        seq_text, _, hash_text = text.strip().partition(":")
        digest = bytes.fromhex(hash_text)
        if not seq_text.isdigit() or len(digest) != HASH_BYTES:
            raise ValueError("a head is SEQ:HASH with a 64-digit hex hash")
        return cls(int(seq_text), digest)


EMPTY_HEAD: Final = Head(0, ZERO_HASH)


class Problem(StrEnum):
    """What is wrong with an entry (module docstring)."""

    DELETED = "deleted"
    INSERTED = "inserted"
    EDITED = "edited"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    HEAD_MISMATCH = "head_mismatch"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong, named by the entry it concerns.

    Attributes:
        seq: the entry (the first of a range).
        last_seq: the last entry of a range of entries with the same problem (else ``seq``).
        problem: what is wrong.
        detail: a sentence naming the entries involved.
        line: the line of an export file, when the finding comes from one.
        shift: for a reordered entry, how far its content moved (merges runs of one shift).
    """

    seq: int
    last_seq: int
    problem: Problem
    detail: str
    line: int | None = None
    shift: int | None = None

    def describe(self) -> str:
        """One line for people: ``entry 5: edited: its fields do not match its hash``."""
        where = (
            f"entry {self.seq}"
            if self.last_seq == self.seq
            else (f"entries {self.seq}-{self.last_seq}")
        )
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.problem}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        """The finding as JSON-ready values."""
        return {
            "seq": self.seq,
            "last_seq": self.last_seq,
            "problem": self.problem.value,
            "detail": self.detail,
            "line": self.line,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of checking a chain.

    Attributes:
        count: entries read.
        head: the newest entry read (by number).
        findings: what is wrong, in order of ``seq`` (empty when the chain verifies).
        omitted: findings beyond :data:`MAX_FINDINGS`, counted but not kept.
    """

    count: int
    head: Head
    findings: tuple[Finding, ...]
    omitted: int = 0

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {
            "ok": self.ok,
            "count": self.count,
            "head": str(self.head),
            "findings": [f.as_json() for f in self.findings],
            "omitted": self.omitted,
        }


_PROBLEM_ORDER: Final = {problem: rank for rank, problem in enumerate(Problem)}


def _reading_order(finding: Finding) -> tuple[int, int, int]:
    """By entry; at one entry, what happened to the chain (deleted, inserted) before the rest."""
    return finding.seq, _PROBLEM_ORDER[finding.problem], finding.line or 0


@dataclass
class _Seen:
    """What the checker remembers of a recent entry."""

    origin: int | None  # the number its content hashes under (None: edited, or not known yet)
    intact: bool  # its content hashes under its own number
    waiting: bool = False  # held until the entry it chains to is explained


_Work = list[tuple[AuditEntry, int | None]]


@dataclass
class ChainChecker:
    """Checks entries fed in stored order (by ``seq`` from a database, by line from a file).

    Call :meth:`add` for each entry, :meth:`malformed` for an unreadable line, then
    :meth:`finish` once.
    """

    anchor: Head | None = None
    window: int = WINDOW
    line: int | None = None  # the file line of the entry being added, for findings
    _count: int = 0
    _last: AuditEntry | None = None
    _last_intact: bool = False
    _by_hash: OrderedDict[bytes, _Seen] = field(default_factory=OrderedDict)
    _by_seq: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    _pending: dict[bytes, list[AuditEntry]] = field(default_factory=dict)
    _pending_count: int = 0
    _gaps: list[list[int]] = field(default_factory=list)
    _findings: list[Finding] = field(default_factory=list)
    _reported: set[tuple[int, Problem]] = field(default_factory=set)
    _omitted: int = 0
    _anchor_seen: bytes | None = None

    def add(self, entry: AuditEntry) -> None:
        """Check one entry against its own hash and against the entries before it."""
        self._count += 1
        if self.anchor is not None and entry.seq == self.anchor.seq:
            self._anchor_seen = entry.entry_hash
        intact = entry_hash(entry) == entry.entry_hash
        if intact:
            self._remember(entry, _Seen(entry.seq, True))
            self._release(entry.entry_hash, entry.seq)
        else:
            self._explain(entry)
        self._check_position(entry, intact)

    def malformed(self, line: int, reason: str) -> None:
        """Report a line of an export that is not an entry."""
        seq = self._last.seq + 1 if self._last is not None else 1
        self._report(Finding(seq, seq, Problem.MALFORMED, reason, line=line))

    def finish(
        self, *, claimed_head: Head | None = None, claimed_count: int | None = None
    ) -> VerifyReport:
        """Conclude: explain what waited, report gaps, and the head against what was claimed.

        Args:
            claimed_head: the head an export's last line states, to compare with its entries.
            claimed_count: the number of entries that line states.

        Returns:
            The report.
        """
        self._settle_orphans()
        for low, high in self._gaps:
            self._report(Finding(low, high, Problem.DELETED, "missing from the sequence"))
        self._report_renumbered_deletions()
        head = EMPTY_HEAD if self._last is None else Head(self._last.seq, self._last.entry_hash)
        self._check_claims(head, claimed_head, claimed_count)
        self._check_anchor(head)
        findings = tuple(sorted(self._findings, key=_reading_order))
        return VerifyReport(self._count, head, findings, self._omitted)

    # --- what an entry's content says -------------------------------------------------------

    def _explain(self, entry: AuditEntry) -> None:
        """An entry that does not hash under its own number: moved, edited, or wait and see."""
        if entry.previous_hash == ZERO_HASH:
            self._decide([(entry, 1)])
            return
        before = self._by_hash.get(entry.previous_hash)
        if before is None or before.waiting:  # it may come later (rows swapped), or be gone
            self._hold(entry)
            return
        self._decide([(entry, None if before.origin is None else before.origin + 1)])

    def _decide(self, work: _Work) -> None:
        """Settle entries whose original number is known (or ``None``: edited), then the entries
        that waited for them, in turn (iteratively: such a run can be long)."""
        while work:
            entry, origin = work.pop()
            settled: int | None = None
            if (
                origin is not None
                and origin != entry.seq
                and entry_hash(entry, seq=origin) == entry.entry_hash
            ):
                settled = origin
            if settled is None:
                self._edited(entry)
            else:
                self._moved(entry, settled)
            self._remember(entry, _Seen(settled, False))
            work.extend(self._waiting_for(entry.entry_hash, settled))

    def _release(self, digest: bytes, origin: int) -> None:
        """Settle the entries that waited for the entry ``digest``, now known as ``origin``."""
        self._decide(self._waiting_for(digest, origin))

    def _waiting_for(self, digest: bytes, origin: int | None) -> _Work:
        waiting = self._pending.pop(digest, [])
        self._pending_count -= len(waiting)
        return [(entry, None if origin is None else origin + 1) for entry in waiting]

    def _hold(self, entry: AuditEntry) -> None:
        self._remember(entry, _Seen(None, False, waiting=True))
        self._pending.setdefault(entry.previous_hash, []).append(entry)
        self._pending_count += 1
        if self._pending_count > self.window:  # bounded: give up on the oldest
            oldest = next(iter(self._pending))
            self._decide(self._waiting_for(oldest, None))

    def _settle_orphans(self) -> None:
        """Explain the entries whose predecessor never appeared: the first of a run renumbered
        down after a deletion hashes under a later number (searched), its run follows it."""
        searches = 0
        for digest in list(self._pending):
            if digest not in self._pending or digest in self._by_hash:
                continue
            for entry, _ in self._waiting_for(digest, None):
                found = self._search_origin(entry) if searches < MAX_SEARCHES else None
                searches += 1
                self._decide([(entry, found)])
        for digest in list(self._pending):  # what still waits can no longer be explained
            self._decide(self._waiting_for(digest, None))

    @staticmethod
    def _search_origin(entry: AuditEntry) -> int | None:
        for origin in range(entry.seq + 1, entry.seq + 1 + SEARCH_SPAN):
            if entry_hash(entry, seq=origin) == entry.entry_hash:
                return origin
        return None

    def _report_renumbered_deletions(self) -> None:
        """A run of entries holding later numbers' content, with the content just before its
        first one found nowhere: those entries were deleted and the rest renumbered."""
        present = {seen.origin for seen in self._by_hash.values() if seen.origin is not None}
        for finding in list(self._findings):
            if finding.problem is not Problem.REORDERED or not finding.shift or finding.shift > 0:
                continue
            first_missing = finding.seq - finding.shift - 1
            last_missing = first_missing
            while first_missing >= 1 and first_missing not in present:
                first_missing -= 1
            if first_missing < last_missing:
                self._report(
                    Finding(
                        first_missing + 1,
                        last_missing,
                        Problem.DELETED,
                        "removed, and the entries after renumbered to close the gap",
                    )
                )

    def _moved(self, entry: AuditEntry, origin: int) -> None:
        stored = self._by_seq.get(origin)
        if origin < entry.seq and stored is not None:
            seen = self._by_hash.get(stored)
            if seen is not None and seen.intact:  # an intact entry took the moved one's place
                self._report(
                    Finding(
                        origin,
                        origin,
                        Problem.INSERTED,
                        f"the entries after it chain past it (entry {origin}'s content now "
                        f"sits at {entry.seq})",
                    )
                )
        self._report(
            Finding(
                entry.seq,
                entry.seq,
                Problem.REORDERED,
                f"holds the content of entry {origin}: moved by {entry.seq - origin:+d}",
                line=self.line,
                shift=entry.seq - origin,
            )
        )

    def _edited(self, entry: AuditEntry) -> None:
        self._report(
            Finding(
                entry.seq,
                entry.seq,
                Problem.EDITED,
                "its fields do not match its entry_hash",
                line=self.line,
            )
        )

    def _remember(self, entry: AuditEntry, seen: _Seen) -> None:
        self._by_hash[entry.entry_hash] = seen
        self._by_seq.setdefault(entry.seq, entry.entry_hash)
        while len(self._by_hash) > self.window:
            self._by_hash.popitem(last=False)
        while len(self._by_seq) > self.window:
            self._by_seq.popitem(last=False)

    # --- where an entry stands ----------------------------------------------------------------

    def _check_position(self, entry: AuditEntry, intact: bool) -> None:
        last = self._last
        if last is not None and entry.seq <= last.seq:
            self._out_of_place(entry, last)
            return
        expected = 1 if last is None else last.seq + 1
        if entry.seq > expected:
            self._gaps.append([expected, entry.seq - 1])
        elif intact:
            self._check_link(entry, last)
        self._last, self._last_intact = entry, intact

    def _out_of_place(self, entry: AuditEntry, last: AuditEntry) -> None:
        for gap in self._gaps:
            if gap[0] <= entry.seq <= gap[1]:
                self._fill(gap, entry.seq)
                self._report(
                    Finding(
                        entry.seq,
                        entry.seq,
                        Problem.REORDERED,
                        f"appears after entry {last.seq}",
                        line=self.line,
                    )
                )
                return
        self._report(
            Finding(
                entry.seq, entry.seq, Problem.INSERTED, "its number appears twice", line=self.line
            )
        )

    def _fill(self, gap: list[int], seq: int) -> None:
        self._gaps.remove(gap)
        if gap[0] < seq:
            self._gaps.append([gap[0], seq - 1])
        if seq < gap[1]:
            self._gaps.append([seq + 1, gap[1]])
        self._gaps.sort()

    def _check_link(self, entry: AuditEntry, last: AuditEntry | None) -> None:
        """An intact entry in its place must chain to the entry stored before it."""
        expected = ZERO_HASH if last is None else last.entry_hash
        if entry.previous_hash == expected:
            return
        if last is None:
            self._report(
                Finding(entry.seq, entry.seq, Problem.EDITED, "the first entry must chain to zeros")
            )
            return
        if not self._last_intact:  # it is reported on its own (edited, moved or waiting)
            return
        if entry.previous_hash in self._by_hash:
            detail = f"entry {entry.seq} chains to an earlier entry, past this one"
            self._report(Finding(last.seq, last.seq, Problem.INSERTED, detail))
        else:
            detail = f"re-hashed: entry {entry.seq} chained to a different entry {last.seq}"
            self._report(Finding(last.seq, last.seq, Problem.EDITED, detail))

    # --- the end of the chain -----------------------------------------------------------------

    def _check_claims(self, head: Head, claimed: Head | None, count: int | None) -> None:
        if claimed is None:
            return
        if claimed.seq > head.seq:
            detail = f"the head line names entry {claimed.seq}, the entries end at {head.seq}"
            self._report(Finding(head.seq + 1, claimed.seq, Problem.TRUNCATED, detail))
        elif claimed != head:
            detail = f"the head line names {claimed}, the last entry is {head}"
            self._report(Finding(head.seq, head.seq, Problem.HEAD_MISMATCH, detail))
        elif count is not None and count != self._count:
            detail = f"the head line counts {count} entries, the file holds {self._count}"
            self._report(Finding(head.seq, head.seq, Problem.HEAD_MISMATCH, detail))

    def _check_anchor(self, head: Head) -> None:
        anchor = self.anchor
        if anchor is None or anchor.seq == 0:
            return
        if self._anchor_seen is None:
            detail = f"entry {anchor.seq} of the anchor is gone: the chain ends at {head.seq}"
            self._report(Finding(anchor.seq, anchor.seq, Problem.TRUNCATED, detail))
        elif self._anchor_seen != anchor.entry_hash:
            detail = "differs from the anchor kept earlier (edited, re-hashed or replaced)"
            self._report(Finding(anchor.seq, anchor.seq, Problem.HEAD_MISMATCH, detail))

    def _report(self, finding: Finding) -> None:
        """Keep a finding, merging a run of one problem (and one shift) into a range."""
        if (finding.seq, finding.problem) in self._reported:
            return
        self._reported.add((finding.seq, finding.problem))
        previous = self._findings[-1] if self._findings else None
        if (
            previous is not None
            and previous.problem is finding.problem
            and previous.shift == finding.shift
            and previous.last_seq + 1 == finding.seq
            and finding.problem in (Problem.EDITED, Problem.REORDERED)
            and previous.line is None
        ):
            self._findings[-1] = Finding(
                previous.seq,
                finding.last_seq,
                previous.problem,
                previous.detail + " (and each entry after it in the range likewise)"
                if previous.last_seq == previous.seq
                else previous.detail,
                shift=previous.shift,
            )
            return
        if len(self._findings) >= MAX_FINDINGS:
            self._omitted += 1
            return
        self._findings.append(finding)
