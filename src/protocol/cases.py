"""The case state machine: one table for both ends of a case.

Rules of this module:

* Rule 1: everything that decides whether a case may take a step lives here, in the table
  :data:`TRANSITIONS`. A ``(role, state, event)`` that is not in the table is refused with
  ``invalid_transition``: :class:`~protocol.errors.LocalProtocolError` when our own case worker
  tried it, which the node turns into the peer's fault with ``.as_remote()`` when the event is a
  message a peer sent.
* Rule 2: both nodes run the same table, mirrored. A node is the **home** city (hemkommun) or the
  **receiving** city (mottagande kommun) of a case. Every message of the flow has one sender role;
  the sender takes the event ``(kind, sent)``, the other node ``(kind, received)``, and both move
  to the *same* state. States name the case, not one side's view of it, so two nodes that have
  processed the same messages in the same order are always in the same state.
* Rule 3: the flow (MISSION.md): the home city sends an anonymous inquiry; the receiving city
  accepts, declines or asks for more information (answered by a new, updated inquiry); after
  acceptance the home city sends the referral (the identity); the receiving city confirms intake
  and then sends progress reports. The home city may withdraw before acceptance (a closure, reason
  ``aborted``); after acceptance either side may close. A declined inquiry ends the case at that
  receiving city: a new attempt is a new case.
* Rule 4: ``declined`` and ``closed`` are terminal: nothing can be sent from them. They absorb only
  a *received* message that would itself have ended the case — a closure, or a decline after a
  withdrawal — because the two ends can cross in flight; the state does not change. Anything else
  arriving after the end (an acceptance crossing a withdrawal, a report crossing a closure) is
  refused, which tells its sender that the case has ended.
* Rule 5: the machine orders messages; it does not read them. Which closure reasons fit which
  state, quotas and eligibility are checked by the message and agreement code.

The table is written once, in :data:`_FLOW` (each message with its sender) and :data:`_CROSSED`
(what terminal states absorb), and expanded into :data:`TRANSITIONS` for both roles. The
:func:`mermaid` diagram is drawn from the same table, so the docs cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from protocol.errors import ErrorCode, LocalProtocolError


class Role(StrEnum):
    """Which end of a case a node is."""

    HOME = "home"
    RECEIVING = "receiving"

    @property
    def peer(self) -> Role:
        """The other end."""
        return Role.RECEIVING if self is Role.HOME else Role.HOME


class CaseState(StrEnum):
    """The state of a case, the same at both ends once they have seen the same messages."""

    NEW = "new"
    AWAITING_REPLY = "awaiting_reply"
    INFO_REQUESTED = "info_requested"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    REFERRED = "referred"
    IN_PROGRESS = "in_progress"
    CLOSED = "closed"


class EventKind(StrEnum):
    """The message of the case flow an event is about. A reply is one of three kinds."""

    INQUIRY = "inquiry"
    ACCEPT = "accept"
    DECLINE = "decline"
    NEED_INFO = "need_info"
    REFERRAL = "referral"
    INTAKE = "intake"
    PROGRESS_REPORT = "progress_report"
    CLOSURE = "closure"


class Direction(StrEnum):
    """Whether this node sent the message or received it."""

    SENT = "sent"
    RECEIVED = "received"


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """A message of the flow as one node sees it.

    Attributes:
        kind: which message.
        direction: sent by this node, or received from the peer.
    """

    kind: EventKind
    direction: Direction

    @classmethod
    def sent(cls, kind: EventKind) -> CaseEvent:
        """This node sends ``kind``."""
        return cls(kind, Direction.SENT)

    @classmethod
    def received(cls, kind: EventKind) -> CaseEvent:
        """This node receives ``kind`` from the peer."""
        return cls(kind, Direction.RECEIVED)

    def __str__(self) -> str:
        return f"{self.direction} {self.kind}"


ALL_EVENTS: Final = tuple(
    CaseEvent(kind, direction) for kind in EventKind for direction in Direction
)
TERMINAL_STATES: Final = frozenset({CaseState.DECLINED, CaseState.CLOSED})

_S = CaseState
_K = EventKind
_HOME = Role.HOME
_RECV = Role.RECEIVING

# The flow: (state, message, sent by, new state). The sender takes (message, sent), its peer
# (message, received); both reach the new state.
_FLOW: Final[tuple[tuple[CaseState, EventKind, Role, CaseState], ...]] = (
    (_S.NEW, _K.INQUIRY, _HOME, _S.AWAITING_REPLY),
    (_S.AWAITING_REPLY, _K.ACCEPT, _RECV, _S.ACCEPTED),
    (_S.AWAITING_REPLY, _K.DECLINE, _RECV, _S.DECLINED),
    (_S.AWAITING_REPLY, _K.NEED_INFO, _RECV, _S.INFO_REQUESTED),
    (_S.AWAITING_REPLY, _K.CLOSURE, _HOME, _S.CLOSED),  # withdrawn before a reply
    (_S.INFO_REQUESTED, _K.INQUIRY, _HOME, _S.AWAITING_REPLY),  # the updated profile
    (_S.INFO_REQUESTED, _K.DECLINE, _RECV, _S.DECLINED),  # declined without waiting
    (_S.INFO_REQUESTED, _K.CLOSURE, _HOME, _S.CLOSED),  # withdrawn instead of answering
    (_S.ACCEPTED, _K.REFERRAL, _HOME, _S.REFERRED),
    (_S.ACCEPTED, _K.CLOSURE, _HOME, _S.CLOSED),
    (_S.ACCEPTED, _K.CLOSURE, _RECV, _S.CLOSED),
    (_S.REFERRED, _K.INTAKE, _RECV, _S.IN_PROGRESS),
    (_S.REFERRED, _K.CLOSURE, _HOME, _S.CLOSED),
    (_S.REFERRED, _K.CLOSURE, _RECV, _S.CLOSED),  # e.g. the person never arrived
    (_S.IN_PROGRESS, _K.PROGRESS_REPORT, _RECV, _S.IN_PROGRESS),
    (_S.IN_PROGRESS, _K.CLOSURE, _HOME, _S.CLOSED),
    (_S.IN_PROGRESS, _K.CLOSURE, _RECV, _S.CLOSED),
)

# What a terminal state absorbs when the two ends crossed in flight: (state, message, sent by).
# Only the receiver takes these, and its state does not change.
_CROSSED: Final[tuple[tuple[CaseState, EventKind, Role], ...]] = (
    (_S.CLOSED, _K.CLOSURE, _HOME),  # both sides closed at once
    (_S.CLOSED, _K.CLOSURE, _RECV),
    (_S.CLOSED, _K.DECLINE, _RECV),  # the home city withdrew while the receiving city declined
    (_S.DECLINED, _K.CLOSURE, _HOME),  # the same crossing, seen from the receiving city
)

TransitionKey = tuple[Role, CaseState, CaseEvent]


def _expand() -> dict[TransitionKey, CaseState]:
    table: dict[TransitionKey, CaseState] = {}

    def add(key: TransitionKey, new: CaseState) -> None:
        if key in table:
            raise ValueError("the case flow table names one transition twice")
        table[key] = new

    for state, kind, sender, new in _FLOW:
        add((sender, state, CaseEvent.sent(kind)), new)
        add((sender.peer, state, CaseEvent.received(kind)), new)
    for state, kind, sender in _CROSSED:
        add((sender.peer, state, CaseEvent.received(kind)), state)
    return table


TRANSITIONS: Final[Mapping[TransitionKey, CaseState]] = MappingProxyType(_expand())
"""``(role, state, event) → new state``; every pair not here is ``invalid_transition``."""


def initial_state(role: Role) -> CaseState:
    """Return the state a case starts in at a node of ``role``: ``new``, no message yet.

    The home node creates the case when its case worker opens an inquiry; the receiving node when
    the inquiry arrives. Both start from ``new``.
    """
    del role  # the same for both roles; kept so callers state which end they are
    return CaseState.NEW


def is_terminal(state: CaseState) -> bool:
    """Return whether ``state`` ends the case: nothing can be sent from it by either role."""
    return state in TERMINAL_STATES


def next_state(role: Role, state: CaseState, event: CaseEvent) -> CaseState:
    """Return the state after ``event``.

    Args:
        role: which end of the case this node is.
        state: the case's current state at this node.
        event: the message sent or received.

    Returns:
        The new state.

    Raises:
        LocalProtocolError: ``invalid_transition`` when the table has no such step. For an event
            received from a peer, the caller raises ``.as_remote()`` of it.
    """
    try:
        return TRANSITIONS[(role, state, event)]
    except KeyError:
        raise LocalProtocolError(
            ErrorCode.INVALID_TRANSITION,
            f"a {role} node cannot take '{event}' in state {state}",
        ) from None


def allowed_events(role: Role, state: CaseState) -> tuple[CaseEvent, ...]:
    """Return the events a node of ``role`` may take in ``state``, in the table's order.

    Args:
        role: which end of the case.
        state: the current state.

    Returns:
        The events with a transition (what a UI offers is the ``sent`` ones).
    """
    return tuple(event for (r, s, event) in TRANSITIONS if r is role and s is state)


def _label_flow(kind: EventKind, senders: list[Role]) -> str:
    who = "either side" if len(senders) == len(Role) else senders[0].value
    return f"{kind} by {who}"


def _flow_edges() -> dict[tuple[CaseState, CaseState], list[str]]:
    grouped: dict[tuple[CaseState, CaseState, EventKind], list[Role]] = {}
    for state, kind, sender, new in _FLOW:
        grouped.setdefault((state, new, kind), []).append(sender)
    for state, kind, sender in _CROSSED:
        grouped.setdefault((state, state, kind), []).append(sender)
    edges: dict[tuple[CaseState, CaseState], list[str]] = {}
    for (state, new, kind), senders in grouped.items():
        crossed = " (crossed)" if state in TERMINAL_STATES else ""
        edges.setdefault((state, new), []).append(_label_flow(kind, senders) + crossed)
    return edges


def _role_edges(role: Role) -> dict[tuple[CaseState, CaseState], list[str]]:
    edges: dict[tuple[CaseState, CaseState], list[str]] = {}
    for (r, state, event), new in TRANSITIONS.items():
        if r is role:
            verb = "send" if event.direction is Direction.SENT else "receive"
            crossed = " (crossed)" if state in TERMINAL_STATES else ""
            edges.setdefault((state, new), []).append(f"{verb} {event.kind}{crossed}")
    return edges


def mermaid(role: Role | None = None) -> str:
    """Render the table as a Mermaid ``stateDiagram-v2``.

    Args:
        role: draw what one end sends and receives, or ``None`` for the flow with each message's
            sender.

    Returns:
        The diagram source, one statement per line, ending with a newline.
    """
    edges = _flow_edges() if role is None else _role_edges(role)
    lines = ["stateDiagram-v2", f"    [*] --> {CaseState.NEW}"]
    for (state, new), labels in edges.items():
        lines.append(f"    {state} --> {new}: {', '.join(labels)}")
    lines.extend(f"    {state} --> [*]" for state in CaseState if state in TERMINAL_STATES)
    return "\n".join(lines) + "\n"
