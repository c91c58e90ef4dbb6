"""The node's storage: its one database, encryption at rest, and the stores built on them.

* :mod:`~node.storage.database` — :class:`Database` (engine, transactions, Alembic migrations,
  health check) and the error tree's storage branch (:class:`StorageError`).
* :mod:`~node.storage.schema` — the tables; :mod:`~node.storage.migrations` — their history.
* :mod:`~node.storage.vault` — per-case keys wrapped by the node's data key; sealed fields;
  crypto-shredding.
* the stores, each owning its tables: :class:`OutboxStore` (the durable outbox, a
  :class:`node.delivery.OutboxQueue`), :class:`InboxStore` (the inbox and the replay store),
  :class:`CaseStore` (cases and their keys), :class:`PeerStore` (the other cities).

Every store method runs in a transaction of its own unless it is handed the session of one
already open (``Database.transaction``), so that a caller can commit several changes together.
"""

from node.storage.case_store import CaseNotFound, CaseRecord, CaseStore
from node.storage.database import Database, StorageConflict, StorageError, head_revision
from node.storage.inbox_store import (
    Accepted,
    AcceptOutcome,
    Arrival,
    BatchOutcome,
    DuplicateEnvelope,
    InboxStore,
    Refused,
    StoredMessage,
    StoredReceipt,
)
from node.storage.outbox_store import (
    NewEnvelope,
    OutboxEntry,
    OutboxFull,
    OutboxStore,
    PeerOutboxStatus,
)
from node.storage.peer_store import PeerRecord, PeerStore, StaleBundle, UnknownPeer
from node.storage.vault import CaseShredded, CaseVault, VaultError

__all__ = [
    "AcceptOutcome",
    "Accepted",
    "Arrival",
    "BatchOutcome",
    "CaseNotFound",
    "CaseRecord",
    "CaseShredded",
    "CaseStore",
    "CaseVault",
    "Database",
    "DuplicateEnvelope",
    "InboxStore",
    "NewEnvelope",
    "OutboxEntry",
    "OutboxFull",
    "OutboxStore",
    "PeerOutboxStatus",
    "PeerRecord",
    "PeerStore",
    "Refused",
    "StaleBundle",
    "StorageConflict",
    "StorageError",
    "StoredMessage",
    "StoredReceipt",
    "UnknownPeer",
    "VaultError",
    "head_revision",
]
