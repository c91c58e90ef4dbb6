"""One city node, opened: what operator commands use and what ``citynode serve`` runs over.

Owns the wiring of the node's parts (no part reaches for another through a global):

* :class:`Node` — everything opened for one data directory: the keystore (unlocked by the
  operator secret), the database (migrated to the current schema), the stores, the node's own
  keys and key-history log, and the current :class:`~node.trust.TrustState`. Operator commands
  use it without listening on any port.
* ``node.serving.serve`` — the running node: the federation listener (mutual TLS, pinned peers), the
  API listener (``/healthz``, ``/metrics`` and the case API under ``/api/v1``, bearer tokens),
  one sender loop per peer, and a heartbeat that fetches each peer's key package every few
  seconds — which keeps the peers' keys fresh and tells a peer that comes back that we are here
  (its sender loop then retries at once); and the key-log checkpoint exchange with every peer
  (``node.checkpoints``: ``POST /federation/v1/checkpoints`` and its gossip loop).

Nothing is served before an agreement has been adopted: without one the node has no peers.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from node.attachment_store import AttachmentStore
from node.case_ledger import CaseLedger
from node.cases.documents import DocumentLedger, DocumentRecords
from node.cases.journal import CaseJournal
from node.cases.rules import CaseRules
from node.config import NodeConfig
from node.errors import NodeError
from node.federation.tls import (
    pin_of_certificate_pem,
)
from node.key_history import KeyHistory, RestorePending
from node.key_replacement import IdentityRevoked, own_chain
from node.keystore import Keystore
from node.metrics import NodeMetrics
from node.outgoing import Outgoing
from node.own_keys import (
    OwnKeys,
    announced_tls_pins,
    announced_windows,
    current_and_next,
    decryption_keys,
    ensure_next_key,
    load_own_keys,
    own_bundle,
    own_revocations,
    own_successions,
    signing_identities,
)
from node.peer_package import encode_package, read_package
from node.rotation import (
    bundle_tls_pins,
    destroy_expired,
    pending_announcements,
    retirable_tls_pins,
    retire_tls_pins,
    rotate_encryption,
    start_tls_rotation,
)
from node.secrets_source import OperatorSecret
from node.storage.case_store import CaseStore
from node.storage.database import Database
from node.storage.inbox_store import InboxStore
from node.storage.outbox_store import OutboxStore
from node.storage.peer_store import PeerStore
from node.storage.schema import AgreementRow
from node.storage.vault import CaseVault
from node.tls_material import TlsMaterial
from node.trust import TrustState
from protocol.agreement import VerifiedAgreement, verify_chain
from protocol.errors import ErrorCode, ProtocolError, RemoteProtocolError
from protocol.key_bundle import VerifiedKeyBundle, check_bundle_update, verify_bundle
from protocol.keylog import EntryKind
from protocol.keys import VerifyKey, identity_key, public_bytes
from protocol.sealing import DecryptionKey, envelope_hash, verify_receipt
from protocol.succession import (
    apply_revocation,
    sign_revocation,
    sign_succession,
    verify_succession_chain,
)

logger = logging.getLogger(__name__)

IDENTITY_SWITCH_S: Final = 30
"""Seconds between an identity succession and the first signature by the new key."""


class NoAgreement(NodeError):
    """The node has not adopted an agreement yet: it has no peers to talk to."""

    code = "no_agreement"


@dataclass
class Node:
    """Everything opened for one node's data directory (no listener yet).

    Build with :meth:`open`; close with :meth:`close`.
    """

    config: NodeConfig
    keystore: Keystore
    db: Database
    metrics: NodeMetrics
    clock: Callable[[], float]
    own: OwnKeys
    tls: TlsMaterial
    cases: CaseStore
    inbox: InboxStore
    outbox: OutboxStore
    peers: PeerStore
    history: KeyHistory
    journal: CaseJournal
    attachments: AttachmentStore
    vault: CaseVault
    ledger: CaseLedger = field(init=False)
    documents: DocumentRecords = field(init=False)
    _trust: TrustState | None = None
    _bundle: bytes | None = None
    _decryption: Mapping[bytes, DecryptionKey] = field(default_factory=dict)
    on_keys_changed: Callable[[], None] | None = None
    wake_sender: Callable[[str], None] = field(default=lambda peer: None)  # serve sets it
    _bundle_epoch: int | None = None
    _signed_bundle: bytes = b""
    _sequence: int = 0
    _log_size: int = 0
    _identities: tuple[tuple[int, Ed25519PrivateKey], ...] = ()
    _revoked: Mapping[bytes, int] = field(default_factory=dict)  # own public key -> refused from
    _chain: tuple[VerifyKey, ...] = ()  # our identity keys as the peers trust them
    tls_next: TlsMaterial | None = None  # a TLS rotation's new pair, until the switch
    _tls_pins: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        rules = CaseRules(
            city=self.config.city, agreement=lambda: self.trust().agreement, today=self.today
        )
        self.documents = DocumentRecords(self.db, self.vault, self.clock)
        self.ledger = DocumentLedger(
            city=self.config.city,
            cases=self.cases,
            journal=self.journal,
            rules=rules,
            documents=self.documents,
        )

    @classmethod
    async def open(
        cls,
        config: NodeConfig,
        secret: OperatorSecret,
        *,
        clock: Callable[[], float] = time.time,
        recovering: bool = False,
    ) -> Node:
        """Unlock the keystore, migrate the database and load the node's state.

        A node restored from a backup opens only to recover (``recovering``, ``keys recover``),
        and then its key-history log is frozen (``node.key_recovery``).

        Raises:
            RestorePending: the node was restored from a backup and ``keys recover`` has not run.
            KeystoreError: no keystore, wrong secret, unsafe permissions, corrupt key files.
            StorageError: the database cannot be reached or migrated.
        """
        from node.backup import read_restore_marker  # noqa: PLC0415 (backup opens nodes)

        if not recovering and read_restore_marker(config.data_dir) is not None:
            raise RestorePending(
                "this node was restored from a backup: run `citynode keys recover` (runbook 8) "
                "before anything else"
            )
        keystore = Keystore.open(config.data_dir, secret, clock=clock)
        db = await Database.connect(config.database.url)
        try:
            await db.migrate()
        except BaseException:
            await db.close()
            raise
        vault = CaseVault(keystore.load_data_key())
        cases = CaseStore(db, vault, clock)
        limits = config.limits
        node = cls(
            config=config,
            keystore=keystore,
            db=db,
            metrics=NodeMetrics(),
            clock=clock,
            own=load_own_keys(keystore),
            tls=keystore.load_tls(),
            cases=cases,
            inbox=InboxStore(db, vault, clock, limits=limits),
            outbox=OutboxStore(db, clock, limits=limits),
            peers=PeerStore(db),
            history=KeyHistory(db, limits.protocol, frozen=recovering),
            journal=CaseJournal(db, vault, limits.protocol),
            attachments=AttachmentStore(config.data_dir / "attachments"),
            vault=vault,
        )
        await node.reload_keys()
        await node.reload_trust()
        return node

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()

    # --- own keys ---------------------------------------------------------------------------

    async def reload_keys(self) -> None:
        """Make sure a next encryption key exists, log new windows, rebuild the bundle and maps."""
        now = int(self.clock())
        log = await self.history.load()
        announced = announced_windows(log)
        frozen = self.history.frozen  # restored, before keys recover: change nothing
        if not frozen and ensure_next_key(self.keystore, self.config.keys, now, announced):
            self.own = load_own_keys(self.keystore)
        if log.size and not frozen:  # initialised: every key's window is logged once
            changes = pending_announcements(self.own, self.config.keys, announced)
            if changes:
                log = await self.history.append(changes, now)
                announced = announced_windows(log)
        self._decryption = decryption_keys(self.keystore, self.own.encryption)
        self.tls, self.tls_next = self.keystore.load_tls(), self.keystore.load_next_tls()
        self._tls_pins = announced_tls_pins(log)
        bundle = own_bundle(
            self.own,
            city=self.config.city,
            schedule=self.config.keys,
            tls_pins=bundle_tls_pins(self._tls_pins, self.tls, self.tls_next),
            key_log=log.head_record(),
            now=now,
            limits=self.config.limits.protocol,
            announced=announced,
            previous_sequence=self._sequence,
        )
        self._sequence = verify_bundle(bundle, None, now, self.config.limits.protocol).sequence
        pair = current_and_next(self.own.encryption, self.config.keys, now, announced)
        self._bundle_epoch = pair[0].epoch if pair else None
        self._signed_bundle = bundle
        self._log_size = log.size
        successions = own_successions(log)
        self._identities = signing_identities(self.keystore, successions)
        self._chain = own_chain(
            self._identities, successions, own_revocations(log), self.config.limits.protocol
        )
        self._note_revocation(
            {k.public_key: k.revoked_since for k in self._chain if k.revoked_since is not None}
        )
        certificates: tuple[bytes, ...] = (self.tls.certificate_pem,)
        if self.tls_next is not None:
            certificates += (self.tls_next.certificate_pem,)
        self._bundle = encode_package(bundle, certificates, successions, own_revocations(log))
        if self.on_keys_changed is not None:
            self.on_keys_changed()

    async def rotate_encryption(self) -> None:
        """Make the next encryption key current now, announce a new next key (``keys rotate``)."""
        now = int(self.clock())
        announced = announced_windows(await self.history.load())
        changes = rotate_encryption(self.keystore, self.own, self.config.keys, announced, now)
        await self.history.append(changes, now)
        self.own = load_own_keys(self.keystore)
        await self.reload_keys()

    async def rotate_tls(self) -> bytes:
        """Add a new TLS certificate beside the one in use and announce its pin
        (``keys rotate --kind tls``); the running node switches to it once every peer accepts it.

        Returns:
            The new pin.

        Raises:
            TlsRotationPending: a rotation is under way already.
        """
        now = int(self.clock())
        material, changes = start_tls_rotation(self.keystore, self.config.city, now)
        await self.history.append(changes, now)
        await self.reload_keys()
        return material.pin()

    async def switch_tls(self) -> TlsMaterial:
        """Make the rotation's new TLS pair the one in use (its pin stays announced)."""
        self.keystore.promote_next_tls()
        await self.reload_keys()
        logger.info("keys [%s] switched to the new TLS certificate", self.config.city)
        return self.tls

    def retirable_tls_pins(self) -> tuple[bytes, ...]:
        """Announced TLS pins of certificates this node no longer holds."""
        return retirable_tls_pins(self._tls_pins, self.tls, self.tls_next)

    async def retire_tls(self, pins: tuple[bytes, ...]) -> None:
        """Stop announcing TLS pins (logged ``TLS_PIN_RETIRED``); peers then refuse them."""
        await self.history.append(retire_tls_pins(pins), int(self.clock()))
        await self.reload_keys()
        logger.info("keys [%s] %d old TLS pin(s) retired", self.config.city, len(pins))

    def _note_revocation(self, revoked: Mapping[bytes, int]) -> None:
        """Take our revoked keys in; raise the operator alert when the key in use becomes one."""
        was = self.identity_revoked_since()
        self._revoked = revoked
        since = self.identity_revoked_since()
        if since is not None and was is None:
            logger.error(
                "keys [%s] ALERT identity key revoked since %d: this node signs nothing "
                "(no messages, receipts or key pushes) until keys replace and the agreement "
                "change (runbook 4c)",
                self.config.city,
                since,
            )

    def own_verify_keys(self) -> tuple[VerifyKey, ...]:
        """Our identity keys as the peers trust them (windows, revocations), oldest first."""
        return self._chain

    def identity_revoked_since(self) -> int | None:
        """From when the identity key in use is revoked (``keys revoke``), or ``None``."""
        if not self._revoked:
            return None
        latest = self._identities[-1][1] if self._identities else self.own.identity
        return self._revoked.get(public_bytes(latest))

    def identity_at(self, at: int) -> Ed25519PrivateKey:
        """The identity key that signs what this node dates ``at`` (envelopes, receipts).

        Raises:
            IdentityRevoked: that key is revoked for ``at`` (``keys revoke``, no ``keys replace``
                yet): nothing is signed.
        """
        signing = [key for valid_from, key in self._identities if valid_from <= at]
        key = signing[-1] if signing else self.own.identity
        if self._revoked:
            since = self._revoked.get(public_bytes(key))
            if since is not None and at >= since:
                raise IdentityRevoked(
                    f"the identity key is revoked since {since}: nothing is signed until "
                    "keys replace and the agreement change"
                )
        return key

    async def rotate_identity(self, *, switch_after_s: int = IDENTITY_SWITCH_S) -> int:
        """Succeed the identity key by a new one (``keys rotate --kind identity``).

        The succession, signed by the old and the new key, is logged and served in the package
        at once (the bundle is signed by the new key); envelopes and receipts dated before
        ``now + switch_after_s`` are still signed by the old key, so peers have that long to
        follow the chain before the first signature by the new key reaches them.

        Returns:
            The succession's ``effective_from``.
        """
        now = int(self.clock())
        effective_from = now + switch_after_s
        created = self.keystore.generate_identity()
        statement = sign_succession(
            self.own.identity,
            self.keystore.load_identity(created.key_id),
            city=self.config.city,
            effective_from=effective_from,
        )
        await self.history.append([(EntryKind.SUCCESSION, statement)], now)
        self.own = load_own_keys(self.keystore)
        await self.reload_keys()
        logger.info("keys [%s] identity key succeeded from %d", self.config.city, effective_from)
        return effective_from

    async def revoke_identity(self, compromised_since: int) -> bytes:
        """Declare this node's current identity key compromised since a time (``keys revoke``).

        The revocation, signed by the key itself, is logged and served in the package; peers
        refuse what that key signed at or after ``compromised_since`` (and any succession made
        by it from then on). The node gets a new key only through an agreement change.

        Returns:
            The signed revocation.
        """
        statement = sign_revocation(
            self.own.identity,
            city=self.config.city,
            revoked_key=self.own.identity_stored.public_key,
            compromised_since=compromised_since,
        )
        await self.history.append([(EntryKind.REVOCATION, statement)], int(self.clock()))
        await self.reload_keys()
        logger.warning(
            "keys [%s] identity key revoked from %d", self.config.city, compromised_since
        )
        return statement

    async def rotation_tick(self) -> None:
        """The scheduled rotation: destroy keys past their grace, create and announce the next.

        A key change made meanwhile by another process (``citynode keys rotate`` next to a
        running node) shows as a longer key-history log: the keystore is indexed again first.
        """
        now = int(self.clock())
        log = await self.history.load()
        if log.size != self._log_size:
            self.keystore.rescan()
            self.own = load_own_keys(self.keystore)
            await self.reload_keys()
            log = await self.history.load()
        announced = announced_windows(log)
        destroyed = destroy_expired(self.keystore, self.own, self.config.keys, announced, now)
        if destroyed:
            await self.history.append(destroyed, now)
            self.own = load_own_keys(self.keystore)
        pair = current_and_next(self.own.encryption, self.config.keys, now, announced)
        if destroyed or pair is None or pair[0].epoch != self._bundle_epoch:
            await self.reload_keys()  # the schedule moved on to the next key: announce its next

    def package(self) -> bytes:
        """This node's public package (signed bundle + TLS certificate), as peers fetch it."""
        assert self._bundle is not None  # built by open()
        return self._bundle

    def signed_bundle(self) -> bytes:
        """This node's signed key bundle alone (what a ``KeyUpdate`` carries)."""
        return self._signed_bundle

    def decryption(self) -> Mapping[bytes, DecryptionKey]:
        """Our encryption private keys still held, by key id."""
        return self._decryption

    # --- trust ------------------------------------------------------------------------------

    def trust(self) -> TrustState:
        """The current trust snapshot.

        Raises:
            NoAgreement: no agreement adopted yet.
        """
        if self._trust is None:
            raise NoAgreement("no agreement adopted yet: adopt one before serving")
        return self._trust

    def has_agreement(self) -> bool:
        """Whether an agreement has been adopted."""
        return self._trust is not None

    async def reload_trust(self) -> None:
        """Rebuild the trust snapshot from the stored agreement versions and peer packages."""
        agreement = await self._load_agreement()
        if agreement is None:
            self._trust = None
            return
        bundles: dict[str, VerifiedKeyBundle] = {}
        certificates: dict[str, tuple[bytes, ...]] = {}
        chains: dict[str, tuple[VerifyKey, ...]] = {}
        limits = self.config.limits.protocol
        for record in await self.peers.all():
            member = next((m for m in agreement.document.members if m.city == record.city), None)
            if member is None or record.bundle is None:
                continue
            try:
                chain = verify_succession_chain(
                    identity_key(member.identity_key), record.identity_successions, limits=limits
                )
                bundles[record.city] = verify_bundle(
                    record.bundle, chain[-1].public_key, int(self.clock()), limits
                )
                for revocation in record.identity_revocations:
                    chain = apply_revocation(chain, revocation)
            except ProtocolError as e:
                logger.warning(
                    "keys [%s] stored bundle no longer verifies: %s", record.city, e.code
                )
                continue
            chains[record.city] = chain
            certificates[record.city] = tuple(record.tls_certificates)
        self._trust = TrustState.build(self.config.city, agreement, bundles, certificates, chains)

    async def notice_adoption(self) -> bool:
        """Take up an agreement version adopted next to the running node (``agreement adopt``).

        Returns:
            True when a newer version than the one in use was adopted (the trust snapshot is
            rebuilt: new member keys and pins, keys replaced by the other members).
        """
        async with self.db.reading() as s:
            latest = await s.scalar(select(func.max(AgreementRow.version)))
        if latest is None or (self._trust is not None and latest <= self._trust.agreement.version):
            return False
        await self.reload_trust()
        logger.info("node [%s] agreement version %d taken into use", self.config.city, latest)
        return True

    async def _load_agreement(self) -> VerifiedAgreement | None:
        async with self.db.reading() as s:
            rows = (await s.execute(AgreementRow.__table__.select())).all()
        if not rows:
            return None
        signed = [row.signed for row in sorted(rows, key=lambda r: r.version)]
        return verify_chain(signed[0], signed[1:], self.today(), limits=self.config.limits.protocol)

    def today(self) -> datetime.date:
        """The current date (UTC), for the agreement's calendar rules."""
        return datetime.datetime.fromtimestamp(self.clock(), tz=datetime.UTC).date()

    async def accept_package(self, city: str, data: bytes) -> bool:
        """Store a peer's package fetched from it, if it verifies against the member's key.

        Returns:
            True when it changed what we hold (the trust snapshot is rebuilt).
        """
        trust = self.trust()
        member = trust.agreement.member(city)
        package = read_package(
            data,
            expected_identity=member.identity_key,
            now=int(self.clock()),
            limits=self.config.limits.protocol,
        )
        peer = trust.peers[city]
        if (
            peer.bundle is not None
            and peer.bundle.signed_bytes == package.bundle.signed_bytes
            and peer.identity == package.identity_chain
        ):
            return False
        await self.peers.upsert_peer(city, member.endpoint)
        await self.peers.store_bundle(
            city,
            package.bundle.signed_bytes,
            package.bundle.sequence,
            package.certificates,
            successions=package.successions,
            revocations=package.revocations,
        )
        await self.reload_trust()
        logger.info("keys [%s] new key package stored (sequence %d)", city, package.bundle.sequence)
        return True

    async def accept_bundle(self, city: str, data: bytes) -> bool | None:
        """Store a peer's bundle pushed to us (``KeyUpdate``), if it verifies and is newer.

        Returns:
            True when stored, False when it is what we hold or older, ``None`` when it pins a TLS
            certificate we do not have yet or is signed by a new identity key (fetch the peer's
            package instead: it carries the certificates and the succession statements).

        Raises:
            RemoteProtocolError: it does not verify, or it would roll the peer's keys back.
        """
        peer = self.trust().peer(city)
        try:
            bundle = verify_bundle(
                data, peer.identity[-1].public_key, int(self.clock()), self.config.limits.protocol
            )
        except RemoteProtocolError as e:
            if e.code == ErrorCode.UNKNOWN_KEY:  # signed by a successor we have not followed yet
                return None
            raise
        if peer.bundle is not None:
            if peer.bundle.signed_bytes == bundle.signed_bytes:
                return False
            if bundle.sequence < peer.bundle.sequence:  # a late push: a fetch brought a newer one
                return False
            check_bundle_update(peer.bundle, bundle)
        pinned = {pin_of_certificate_pem(pem): pem for pem in peer.certificates}
        if not set(bundle.tls_pins) <= set(pinned):
            return None
        certificates = tuple(pinned[pin] for pin in bundle.tls_pins)
        await self.peers.store_bundle(city, bundle.signed_bytes, bundle.sequence, certificates)
        await self.reload_trust()
        logger.info("keys [%s] pushed key bundle stored (sequence %d)", city, bundle.sequence)
        return True

    async def record_initial_keys(self) -> None:
        """Append the node's first keys to its key-history log (``citynode init``)."""
        changes = [(EntryKind.IDENTITY_KEY, self.own.identity_stored.public_key)]
        changes += pending_announcements(self.own, self.config.keys, {})
        changes.append((EntryKind.TLS_PIN, self.tls.pin()))
        await self.history.append(changes, int(self.clock()))
        await self.reload_keys()

    # --- sending ----------------------------------------------------------------------------

    def outgoing(self, notify: Callable[[str], None]) -> Outgoing:
        """The sender of protocol messages, waking ``notify(peer)`` after each commit."""
        return Outgoing(
            city=self.config.city,
            identity=self.identity_at,
            trust=self.trust,
            db=self.db,
            outbox=self.outbox,
            ledger=self.ledger,
            notify=notify,
            clock=self.clock,
            limits=self.config.limits.protocol,
        )

    def receipt_checker(self) -> Callable[[str, object, bytes], bool]:
        """Checks that a receipt is signed by the peer and names the envelope we sent."""

        def check(peer: str, sent: object, receipt: bytes) -> bool:
            keys = self.trust().sender_keys(peer)
            envelope = getattr(sent, "envelope", None)
            if keys is None or not isinstance(envelope, bytes):
                return False
            try:
                verified = verify_receipt(
                    receipt, signer=peer, verify_keys=keys, limits=self.config.limits.protocol
                )
            except ProtocolError:
                return False
            return verified.envelope_hash == envelope_hash(envelope)

        return check


# --- serving ---------------------------------------------------------------------------------
