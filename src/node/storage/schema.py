"""The node's database schema: one declarative model per table, portable to SQLite and PostgreSQL.

Owns the shape of every stored row. The Alembic revisions in ``migrations/versions`` create exactly
this schema (a test compares them with autogenerate), so a change here needs a new revision.

Conventions (every table):

* Bytes are ``LargeBinary`` (BLOB / BYTEA); ids of cases and messages are 16 bytes, hashes 32.
* Times are Unix seconds as ``Double`` (REAL / DOUBLE PRECISION), named ``*_at``; the header
  timestamp a peer signed is an integer number of seconds, stored exactly in the same type.
* Sequence numbers are ``BigInteger`` (``INTEGER`` on SQLite, which only auto-increments an
  ``INTEGER PRIMARY KEY``); ``sqlite_autoincrement`` keeps them strictly increasing even after the
  newest row is deleted, so the outbox order is a total order forever.
* Enumerations are short strings with a ``CHECK`` constraint, never database enum types, so the
  same migrations run on both backends.
* Constraint and index names follow :data:`NAMING_CONVENTION`, so migrations can name them.
* Rows written in batches have a client-side column, unique within a batch, marked
  ``insert_sentinel`` (the message id): SQLAlchemy then inserts a whole batch with one
  ``INSERT ... RETURNING`` on SQLite too, instead of one statement per row. It changes no DDL.

What is sensitive, and where it lives: the identity of a person (``cases.sealed_identity``) and the
content of every received message (``inbox.payload``) and of every case message sent or
received (``case_messages.body``) are encrypted by :mod:`node.storage.vault`
under a per-case key, itself stored only wrapped by the node's data key (``cases.wrapped_key``),
which lives in the keystore, never in the database. The rest is routing metadata (cities, units,
opaque 16-byte ids, times, states). There are deliberately no foreign keys from the delivery
tables to ``cases``: a receipt is evidence that outlives the case it was about.
"""

from __future__ import annotations

import datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from node.access import UserRole
from node.delivery import DeliveryState
from protocol.cases import CaseState, Direction, Role

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_BYTES: Final = 16
HASH_BYTES: Final = 32
NAME_CHARS: Final = 64  # a city or unit name (protocol CityName / UnitName)
TYPE_CHARS: Final = 32  # a message type name such as "progress_report"
CODE_CHARS: Final = 64  # an error code
STATE_CHARS: Final = 16
ENDPOINT_CHARS: Final = 2048

# An auto-incrementing 64-bit key on PostgreSQL, the rowid alias on SQLite.
SequenceNumber = BigInteger().with_variant(Integer(), "sqlite")


def _one_of(column: str, values: list[str]) -> str:
    """A CHECK expression allowing only ``values`` (our own enum members, never user input)."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


DELIVERY_STATES: Final = [state.value for state in DeliveryState]
_IN_FLIGHT: Final = "state IN ('queued', 'sent')"  # undelivered: see OutboxRow
CASE_STATES: Final = [state.value for state in CaseState]
ROLES: Final = [role.value for role in Role]
DIRECTIONS: Final = [direction.value for direction in Direction]


class Base(DeclarativeBase):
    """Declarative base of every table, carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class OutboxRow(Base):
    """One sealed envelope to send: the global FIFO queue, and the evidence once receipted.

    A message id is unique among the envelopes in flight (``queued`` or ``sent``) only: a message
    resent after the peer's restore (``node.resend``) has a new row beside its earlier ones.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_peer_state_seq", "peer", "state", "seq"),
        Index(
            "uq_outbox_message_id_in_flight",
            "message_id",
            unique=True,
            sqlite_where=text(_IN_FLIGHT),
            postgresql_where=text(_IN_FLIGHT),
        ),
        CheckConstraint(_one_of("state", DELIVERY_STATES), name="state"),
        CheckConstraint("attempts >= 0", name="attempts"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(SequenceNumber, primary_key=True, autoincrement=True)
    peer: Mapped[str] = mapped_column(String(NAME_CHARS))
    case_id: Mapped[bytes | None] = mapped_column(LargeBinary(ID_BYTES), index=True)
    message_id: Mapped[bytes] = mapped_column(
        LargeBinary(ID_BYTES), index=True, insert_sentinel=True
    )
    message_type: Mapped[str] = mapped_column(String(TYPE_CHARS))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(STATE_CHARS))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Double)
    last_attempt_at: Mapped[float | None] = mapped_column(Double)
    receipted_at: Mapped[float | None] = mapped_column(Double)
    last_error: Mapped[str | None] = mapped_column(String(CODE_CHARS))
    receipt: Mapped[bytes | None] = mapped_column(LargeBinary)


class InboxRow(Base):
    """One envelope received and accepted: the exactly-once record and the evidence.

    ``payload`` is the verified header, body and signature, sealed at rest by the vault.
    """

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("sender", "message_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(SequenceNumber, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(NAME_CHARS))
    message_id: Mapped[bytes] = mapped_column(LargeBinary(ID_BYTES), insert_sentinel=True)
    envelope_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    message_type: Mapped[str] = mapped_column(String(TYPE_CHARS))
    case_id: Mapped[bytes | None] = mapped_column(LargeBinary(ID_BYTES), index=True)
    header_timestamp: Mapped[float] = mapped_column(Double)
    received_at: Mapped[float] = mapped_column(Double)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    receipt: Mapped[bytes] = mapped_column(LargeBinary)


class ReplayGuardRow(Base):
    """A (sender, message id) seen, kept until its signed timestamp leaves the accepted window."""

    __tablename__ = "replay_guard"

    sender: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    message_id: Mapped[bytes] = mapped_column(LargeBinary(ID_BYTES), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Double, index=True)


class CaseRow(Base):
    """A case this node is a party to, and its wrapped data key (NULL once shredded)."""

    __tablename__ = "cases"
    __table_args__ = (
        CheckConstraint(_one_of("role", ROLES), name="role"),
        CheckConstraint(_one_of("state", CASE_STATES), name="state"),
        # One relocation per quota slot and home city: two referrals can never both be "2 of 2".
        Index(
            "ix_cases_home_city_quota_year_quota_index",
            "home_city",
            "quota_year",
            "quota_index",
            unique=True,
        ),
    )

    case_id: Mapped[bytes] = mapped_column(LargeBinary(ID_BYTES), primary_key=True)
    role: Mapped[str] = mapped_column(String(STATE_CHARS))
    peer: Mapped[str] = mapped_column(String(NAME_CHARS))
    unit: Mapped[str] = mapped_column(String(NAME_CHARS))
    state: Mapped[str] = mapped_column(String(TYPE_CHARS))
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    closed_at: Mapped[float | None] = mapped_column(Double)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    sealed_identity: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Revision 0003 (the case workflow). NULL on rows written before it.
    home_city: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    receiving_city: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    peer_unit: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    protected_identity: Mapped[bool] = mapped_column(Boolean, server_default=false())
    quota_year: Mapped[int | None] = mapped_column(Integer)
    quota_index: Mapped[int | None] = mapped_column(Integer)
    warning: Mapped[str | None] = mapped_column(String(CODE_CHARS))


class PeerRow(Base):
    """Another member city: where to reach it and its key bundle as last fetched."""

    __tablename__ = "peers"

    city: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(ENDPOINT_CHARS))
    bundle: Mapped[bytes | None] = mapped_column(LargeBinary)
    bundle_sequence: Mapped[int | None] = mapped_column(BigInteger)
    tls_certificates: Mapped[bytes | None] = mapped_column(LargeBinary)
    identity_statements: Mapped[bytes | None] = mapped_column(LargeBinary)
    fingerprint_verified_at: Mapped[float | None] = mapped_column(Double)
    last_seen_at: Mapped[float | None] = mapped_column(Double)


class AgreementRow(Base):
    """One adopted version of the signed agreement."""

    __tablename__ = "agreements"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    adopted_at: Mapped[float] = mapped_column(Double)


class KeyLogRow(Base):
    """One entry of the node's key-history log (the encoded ``protocol.keylog`` entry)."""

    __tablename__ = "key_log"

    index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    appended_at: Mapped[float] = mapped_column(Double)


class CaseMessageRow(Base):
    """One case message this node sent or received: the case's own record of its timeline.

    Written in the transaction that moves the case (with the outbox row of a message we send, the
    inbox row of one we receive). ``body`` is the encoded message sealed under the case key by
    the vault (purpose ``case.message:<direction>:<message id hex>``), so shredding the case
    erases it. The delivery state of a sent message is its outbox row's, found by ``message_id``.
    """

    __tablename__ = "case_messages"
    __table_args__ = (
        UniqueConstraint("direction", "message_id"),
        CheckConstraint(_one_of("direction", DIRECTIONS), name="direction"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(SequenceNumber, primary_key=True, autoincrement=True)
    case_id: Mapped[bytes] = mapped_column(
        LargeBinary(ID_BYTES), ForeignKey("cases.case_id"), index=True
    )
    direction: Mapped[str] = mapped_column(String(STATE_CHARS))
    message_type: Mapped[str] = mapped_column(String(TYPE_CHARS))
    message_id: Mapped[bytes] = mapped_column(LargeBinary(ID_BYTES), insert_sentinel=True)
    at: Mapped[float] = mapped_column(Double)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    # Never loaded; it tells the unit of work to insert a new case before its first messages,
    # so a transaction can create cases and journal them with a single flush.
    case: Mapped[CaseRow] = relationship(lazy="raise")


# --- Revision 0002: the people who use the node, their API tokens, and the audit trail ---------

PURPOSE_CHARS: Final = 120  # why, in a few words (node.audit); never personal data
USER_ROLES: Final = [role.value for role in UserRole]


class UserRow(Base):
    """A user of the node (``node.users``): an account name, never a person's identity number.

    Names are never reused: a revoked user keeps its row, so audit entries stay unambiguous.
    Only a case worker has a unit (a unit of this city in the adopted agreement).
    """

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_one_of("role", USER_ROLES), name="role"),
        CheckConstraint(
            "(role = 'caseworker' AND unit IS NOT NULL) OR (role <> 'caseworker' AND unit IS NULL)",
            name="unit",
        ),
    )

    name: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    role: Mapped[str] = mapped_column(String(STATE_CHARS))
    unit: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double)


class TokenRow(Base):
    """An API bearer token of a user: only its SHA-256 is stored, never the token itself."""

    __tablename__ = "tokens"
    __table_args__ = (
        CheckConstraint("expires_at > created_at", name="expiry"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(SequenceNumber, primary_key=True, autoincrement=True)
    user_name: Mapped[str] = mapped_column(String(NAME_CHARS), ForeignKey("users.name"), index=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES), unique=True)
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double)


class AuditRow(Base):
    """One entry of the hash-chained audit trail (``node.audit``), appended and never changed.

    ``seq`` is assigned by the trail (1, 2, 3...), not by the database, because ``entry_hash``
    covers it; ``previous_hash`` is the entry before's ``entry_hash`` (32 zero bytes for entry 1).
    ``purpose`` is bounded free text such as "handover meeting", never personal data.
    """

    __tablename__ = "audit_log"
    __table_args__ = (CheckConstraint("seq >= 1", name="seq"),)

    seq: Mapped[int] = mapped_column(SequenceNumber, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Double)
    user_name: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    role: Mapped[str | None] = mapped_column(String(STATE_CHARS))
    action: Mapped[str] = mapped_column(String(CODE_CHARS))
    subject: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    case_id: Mapped[bytes | None] = mapped_column(LargeBinary(ID_BYTES), index=True)
    purpose: Mapped[str | None] = mapped_column(String(PURPOSE_CHARS))
    outcome: Mapped[str] = mapped_column(String(CODE_CHARS))
    previous_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))


# --- Revision 0004: the balance between the cities -------------------------------------------


class BalanceStatementRow(Base):
    """The newest balance statement a peer sent for one year (``node.balance``).

    Anonymous counts only (no case id, no person): ``statement`` is the exact encoding of the
    ``protocol.messages.BalanceStatement``, whose per-city counts the report compares; ``sent``
    and ``received`` are its totals. ``message_id`` names the envelope in ``inbox``, whose
    verified header, body and signature are the signed evidence of what the peer stated.
    """

    __tablename__ = "balance_statements"
    __table_args__ = (CheckConstraint("sent >= 0 AND received >= 0", name="counts"),)

    sender: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sent: Mapped[int] = mapped_column(Integer)
    received: Mapped[int] = mapped_column(Integer)
    as_of: Mapped[datetime.date] = mapped_column(Date)
    statement: Mapped[bytes] = mapped_column(LargeBinary)
    message_id: Mapped[bytes] = mapped_column(LargeBinary(ID_BYTES))
    received_at: Mapped[float] = mapped_column(Double)


# --- Revision 0005: documents sent with a referral --------------------------------------------

DOCUMENT_STATES: Final = ["offered", "pending", "verified"]


class CaseDocumentRow(Base):
    """A document of a case (``node.cases.documents``): offered by the home node, or received.

    ``sealed_ref`` is the exact encoding of the document's ``protocol.messages.AttachmentRef``
    (file name, media type, size, digest, the attachment key) sealed under the case key (purpose
    ``case.document:<attachment id hex>``), so shredding the case makes the stream on disk
    unreadable. The rest is routing metadata: ``offered`` (home: the stream waits in
    ``attachments/out/<peer>/``), ``pending`` (receiving: still to fetch and verify, retried at
    ``next_attempt_at``), ``verified`` (receiving: fetched to ``attachments/in/<peer>/`` and
    checked against the reference).
    """

    __tablename__ = "case_documents"
    __table_args__ = (
        CheckConstraint(_one_of("direction", DIRECTIONS), name="direction"),
        CheckConstraint(_one_of("state", DOCUMENT_STATES), name="state"),
        UniqueConstraint("peer", "direction", "attachment_id"),
        Index("ix_case_documents_state_next_attempt_at", "state", "next_attempt_at"),
    )

    case_id: Mapped[bytes] = mapped_column(
        LargeBinary(ID_BYTES), ForeignKey("cases.case_id"), primary_key=True
    )
    attachment_id: Mapped[bytes] = mapped_column(LargeBinary(ID_BYTES), primary_key=True)
    direction: Mapped[str] = mapped_column(String(STATE_CHARS))
    peer: Mapped[str] = mapped_column(String(NAME_CHARS))
    state: Mapped[str] = mapped_column(String(STATE_CHARS))
    sealed_ref: Mapped[bytes | None] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[float] = mapped_column(Double)
    last_error: Mapped[str | None] = mapped_column(String(CODE_CHARS))
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


# --- Revision 0007: key transparency (checkpoints, countersignatures, equivocation proofs) ----


class KeylogCheckpointRow(Base):
    """A peer's signed key-log checkpoint this node verified (``node.checkpoints``).

    One row per distinct ``(city, size, head)``: a city re-signing the same head adds nothing.
    ``signed`` is the exact ``protocol.keylog.SignedCheckpoint`` received; ``source`` is the peer
    that showed it (the city itself, or a witness that relayed its countersignature). Public key
    material only.
    """

    __tablename__ = "keylog_checkpoints"

    city: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES), primary_key=True)
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(String(NAME_CHARS))
    received_at: Mapped[float] = mapped_column(Double)


class KeylogCountersignatureRow(Base):
    """A countersignature of a key-log checkpoint: made by a peer of ours, by us of a peer's, or
    by a peer of a third city's and relayed to us. ``countersignature`` is the exact
    ``protocol.keylog.Countersignature``; ``seen_at`` is the time the witness signed it saw it."""

    __tablename__ = "keylog_countersignatures"

    city: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    witness: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES), primary_key=True)
    countersignature: Mapped[bytes] = mapped_column(LargeBinary)
    seen_at: Mapped[float] = mapped_column(Double)
    received_at: Mapped[float] = mapped_column(Double)


class KeylogEquivocationRow(Base):
    """The proof that ``city`` signed two key-log checkpoints that conflict: the alarm.

    ``proof`` is the exact ``protocol.equivocation.EquivocationProof`` (both signed
    checkpoints), checkable offline by anyone holding the city's identity keys; ``reported_by``
    is the peer whose message completed it. One proof per city and size is enough evidence.
    """

    __tablename__ = "keylog_equivocations"

    city: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    proof: Mapped[bytes] = mapped_column(LargeBinary)
    reported_by: Mapped[str] = mapped_column(String(NAME_CHARS))
    detected_at: Mapped[float] = mapped_column(Double)


# --- Revision 0008: peers' key-history logs (log fetch; restore of a node's own log) ----------


class PeerKeylogRow(Base):
    """The longest key-history log of a city this node fetched and checked (``node.checkpoints``).

    ``log`` is the exact encoded entry array received (``protocol.keylog.decode_log``), kept only
    when a signed checkpoint of ``city`` vouches for exactly ``(size, head)``: every stored
    checkpoint of the city is then compared with it, whatever its size. It is also what a city
    restored from a backup asks its peers for, to take back the entries it lost. Public key
    material only.
    """

    __tablename__ = "peer_keylogs"

    city: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    log: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(String(NAME_CHARS))
    fetched_at: Mapped[float] = mapped_column(Double)
