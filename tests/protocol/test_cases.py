"""The case state machine: every (role, state, event), both ends mirrored, crossings in flight."""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.cases import (
    ALL_EVENTS,
    TERMINAL_STATES,
    TRANSITIONS,
    CaseEvent,
    CaseState,
    Direction,
    EventKind,
    Role,
    allowed_events,
    initial_state,
    is_terminal,
    mermaid,
    next_state,
)
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

H, R = Role.HOME, Role.RECEIVING
S, K = CaseState, EventKind
SENT, RECV = Direction.SENT, Direction.RECEIVED

# The whole table, written out by hand: (role, state, kind, direction, new state).
EXPECTED = [
    (H, S.NEW, K.INQUIRY, SENT, S.AWAITING_REPLY),
    (R, S.NEW, K.INQUIRY, RECV, S.AWAITING_REPLY),
    (R, S.AWAITING_REPLY, K.ACCEPT, SENT, S.ACCEPTED),
    (H, S.AWAITING_REPLY, K.ACCEPT, RECV, S.ACCEPTED),
    (R, S.AWAITING_REPLY, K.DECLINE, SENT, S.DECLINED),
    (H, S.AWAITING_REPLY, K.DECLINE, RECV, S.DECLINED),
    (R, S.AWAITING_REPLY, K.NEED_INFO, SENT, S.INFO_REQUESTED),
    (H, S.AWAITING_REPLY, K.NEED_INFO, RECV, S.INFO_REQUESTED),
    (H, S.AWAITING_REPLY, K.CLOSURE, SENT, S.CLOSED),
    (R, S.AWAITING_REPLY, K.CLOSURE, RECV, S.CLOSED),
    (H, S.INFO_REQUESTED, K.INQUIRY, SENT, S.AWAITING_REPLY),
    (R, S.INFO_REQUESTED, K.INQUIRY, RECV, S.AWAITING_REPLY),
    (R, S.INFO_REQUESTED, K.DECLINE, SENT, S.DECLINED),
    (H, S.INFO_REQUESTED, K.DECLINE, RECV, S.DECLINED),
    (H, S.INFO_REQUESTED, K.CLOSURE, SENT, S.CLOSED),
    (R, S.INFO_REQUESTED, K.CLOSURE, RECV, S.CLOSED),
    (H, S.ACCEPTED, K.REFERRAL, SENT, S.REFERRED),
    (R, S.ACCEPTED, K.REFERRAL, RECV, S.REFERRED),
    (H, S.ACCEPTED, K.CLOSURE, SENT, S.CLOSED),
    (R, S.ACCEPTED, K.CLOSURE, RECV, S.CLOSED),
    (R, S.ACCEPTED, K.CLOSURE, SENT, S.CLOSED),
    (H, S.ACCEPTED, K.CLOSURE, RECV, S.CLOSED),
    (R, S.REFERRED, K.INTAKE, SENT, S.IN_PROGRESS),
    (H, S.REFERRED, K.INTAKE, RECV, S.IN_PROGRESS),
    (H, S.REFERRED, K.CLOSURE, SENT, S.CLOSED),
    (R, S.REFERRED, K.CLOSURE, RECV, S.CLOSED),
    (R, S.REFERRED, K.CLOSURE, SENT, S.CLOSED),
    (H, S.REFERRED, K.CLOSURE, RECV, S.CLOSED),
    (R, S.IN_PROGRESS, K.PROGRESS_REPORT, SENT, S.IN_PROGRESS),
    (H, S.IN_PROGRESS, K.PROGRESS_REPORT, RECV, S.IN_PROGRESS),
    (H, S.IN_PROGRESS, K.CLOSURE, SENT, S.CLOSED),
    (R, S.IN_PROGRESS, K.CLOSURE, RECV, S.CLOSED),
    (R, S.IN_PROGRESS, K.CLOSURE, SENT, S.CLOSED),
    (H, S.IN_PROGRESS, K.CLOSURE, RECV, S.CLOSED),
    # Terminal states absorb an ending that crossed in flight, and nothing else.
    (H, S.CLOSED, K.CLOSURE, RECV, S.CLOSED),
    (R, S.CLOSED, K.CLOSURE, RECV, S.CLOSED),
    (H, S.CLOSED, K.DECLINE, RECV, S.CLOSED),
    (R, S.DECLINED, K.CLOSURE, RECV, S.DECLINED),
]
EXPECTED_TABLE = {
    (role, state, CaseEvent(kind, direction)): new for role, state, kind, direction, new in EXPECTED
}
EVERY_STEP = list(itertools.product(Role, CaseState, ALL_EVENTS))


def test_table_is_exactly_the_expected_list() -> None:
    assert len(EXPECTED_TABLE) == len(EXPECTED)
    assert dict(TRANSITIONS) == EXPECTED_TABLE


def test_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(H, S.CLOSED, CaseEvent.sent(K.INQUIRY))] = S.NEW  # type: ignore[index]


@pytest.mark.parametrize(
    ("role", "state", "event"), EVERY_STEP, ids=lambda v: str(v).replace(" ", "-")
)
def test_every_step_is_either_in_the_table_or_refused(
    role: Role, state: CaseState, event: CaseEvent
) -> None:
    expected = EXPECTED_TABLE.get((role, state, event))
    if expected is not None:
        assert next_state(role, state, event) is expected
        assert event in allowed_events(role, state)
    else:
        with pytest.raises(LocalProtocolError) as caught:
            next_state(role, state, event)
        assert caught.value.code is ErrorCode.INVALID_TRANSITION
        assert caught.value.status == 409
        assert event not in allowed_events(role, state)


def test_every_step_is_mirrored_at_the_other_end() -> None:
    for (role, state, event), new in TRANSITIONS.items():
        if event.direction is Direction.SENT:
            peer = CaseEvent.received(event.kind)
            assert TRANSITIONS[(role.peer, state, peer)] is new


def test_each_message_has_one_sender_role() -> None:
    senders: dict[EventKind, set[Role]] = {}
    for role, _, event in TRANSITIONS:
        if event.direction is Direction.SENT:
            senders.setdefault(event.kind, set()).add(role)
    assert senders == {
        K.INQUIRY: {H},
        K.REFERRAL: {H},
        K.ACCEPT: {R},
        K.DECLINE: {R},
        K.NEED_INFO: {R},
        K.INTAKE: {R},
        K.PROGRESS_REPORT: {R},
        K.CLOSURE: {H, R},
    }


def test_refusal_from_a_peer_becomes_the_peers_fault_with_the_same_code() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        next_state(H, S.AWAITING_REPLY, CaseEvent.received(K.INTAKE))
    remote = caught.value.as_remote()
    assert isinstance(remote, RemoteProtocolError)
    assert remote.code is ErrorCode.INVALID_TRANSITION


def _run(role: Role, events: list[CaseEvent]) -> CaseState:
    state = initial_state(role)
    for event in events:
        state = next_state(role, state, event)
    return state


HAPPY_PATH = [
    (K.INQUIRY, H),
    (K.NEED_INFO, R),
    (K.INQUIRY, H),
    (K.ACCEPT, R),
    (K.REFERRAL, H),
    (K.INTAKE, R),
    (K.PROGRESS_REPORT, R),
    (K.PROGRESS_REPORT, R),
    (K.CLOSURE, H),
]


def _as_seen_by(role: Role, path: list[tuple[EventKind, Role]]) -> list[CaseEvent]:
    return [CaseEvent(kind, SENT if sender is role else RECV) for kind, sender in path]


def test_happy_path_takes_both_ends_through_the_same_states() -> None:
    home, receiving = initial_state(H), initial_state(R)
    visited = []
    for kind, sender in HAPPY_PATH:
        home = next_state(H, home, CaseEvent(kind, SENT if sender is H else RECV))
        receiving = next_state(R, receiving, CaseEvent(kind, SENT if sender is R else RECV))
        assert home is receiving
        visited.append(home)
    assert visited == [
        S.AWAITING_REPLY,
        S.INFO_REQUESTED,
        S.AWAITING_REPLY,
        S.ACCEPTED,
        S.REFERRED,
        S.IN_PROGRESS,
        S.IN_PROGRESS,
        S.IN_PROGRESS,
        S.CLOSED,
    ]
    assert is_terminal(home)


def test_declined_inquiry_ends_the_case_before_any_identity_is_sent() -> None:
    path = [(K.INQUIRY, H), (K.DECLINE, R)]
    assert _run(H, _as_seen_by(H, path)) is S.DECLINED
    assert _run(R, _as_seen_by(R, path)) is S.DECLINED
    with pytest.raises(LocalProtocolError):
        next_state(H, S.DECLINED, CaseEvent.sent(K.REFERRAL))


def test_referral_before_acceptance_is_refused() -> None:
    for state in (S.NEW, S.AWAITING_REPLY, S.INFO_REQUESTED):
        with pytest.raises(LocalProtocolError):
            next_state(H, state, CaseEvent.sent(K.REFERRAL))
        with pytest.raises(LocalProtocolError):
            next_state(R, state, CaseEvent.received(K.REFERRAL))


def test_home_city_may_withdraw_an_inquiry_but_the_receiving_city_declines_instead() -> None:
    assert next_state(H, S.AWAITING_REPLY, CaseEvent.sent(K.CLOSURE)) is S.CLOSED
    with pytest.raises(LocalProtocolError):
        next_state(R, S.AWAITING_REPLY, CaseEvent.sent(K.CLOSURE))


def test_progress_reports_only_after_intake() -> None:
    for state in (S.ACCEPTED, S.REFERRED):
        with pytest.raises(LocalProtocolError):
            next_state(R, state, CaseEvent.sent(K.PROGRESS_REPORT))
    assert next_state(R, S.IN_PROGRESS, CaseEvent.sent(K.PROGRESS_REPORT)) is S.IN_PROGRESS


def test_acceptance_crossing_a_withdrawal_is_refused_and_both_ends_close() -> None:
    home = next_state(H, S.AWAITING_REPLY, CaseEvent.sent(K.CLOSURE))
    receiving = next_state(R, S.AWAITING_REPLY, CaseEvent.sent(K.ACCEPT))
    with pytest.raises(LocalProtocolError):
        next_state(H, home, CaseEvent.received(K.ACCEPT))
    receiving = next_state(R, receiving, CaseEvent.received(K.CLOSURE))
    assert home is receiving is S.CLOSED


def test_closures_crossing_in_flight_are_absorbed() -> None:
    home = next_state(H, S.IN_PROGRESS, CaseEvent.sent(K.CLOSURE))
    receiving = next_state(R, S.IN_PROGRESS, CaseEvent.sent(K.CLOSURE))
    assert next_state(H, home, CaseEvent.received(K.CLOSURE)) is S.CLOSED
    assert next_state(R, receiving, CaseEvent.received(K.CLOSURE)) is S.CLOSED


def test_terminal_states_are_exactly_those_nothing_can_be_sent_from() -> None:
    for state in CaseState:
        can_send = any(
            event.direction is Direction.SENT
            for role in Role
            for event in allowed_events(role, state)
        )
        assert is_terminal(state) is (not can_send)
    assert frozenset({S.DECLINED, S.CLOSED}) == TERMINAL_STATES


def test_every_state_is_reachable_from_the_start() -> None:
    reached, frontier = {S.NEW}, [S.NEW]
    while frontier:
        state = frontier.pop()
        for (_, source, _), new in TRANSITIONS.items():
            if source is state and new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(CaseState)


def test_both_roles_start_new() -> None:
    assert initial_state(H) is initial_state(R) is S.NEW


def test_mermaid_diagram_draws_every_transition_of_the_table() -> None:
    flow = mermaid()
    assert flow.startswith("stateDiagram-v2\n    [*] --> new\n")
    assert "    awaiting_reply --> accepted: accept by receiving\n" in flow
    assert "    in_progress --> closed: closure by either side\n" in flow
    assert "    closed --> [*]\n" in flow
    assert "    declined --> [*]\n" in flow
    for role in Role:
        diagram = mermaid(role)
        edges = {
            tuple(line.strip().split(": ")[0].split(" --> "))
            for line in diagram.splitlines()
            if ": " in line
        }
        expected = {(str(s), str(new)) for (r, s, _), new in TRANSITIONS.items() if r is role}
        assert edges == expected
        labels = sum(line.count(",") + 1 for line in diagram.splitlines() if ": " in line)
        assert labels == sum(1 for (r, _, _) in TRANSITIONS if r is role)
    assert "receive decline (crossed)" in mermaid(H)
    assert "send referral" in mermaid(H)
    assert "send referral" not in mermaid(R)


# --- Properties -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(Role), st.lists(st.sampled_from(ALL_EVENTS), max_size=30))
def test_random_events_never_leave_the_states_and_terminal_states_only_absorb(
    role: Role, events: list[CaseEvent]
) -> None:
    state = initial_state(role)
    for event in events:
        if event not in allowed_events(role, state):
            with pytest.raises(LocalProtocolError, match=r"^invalid_transition: "):
                next_state(role, state, event)
            continue
        new = next_state(role, state, event)
        assert new in CaseState
        if is_terminal(state):
            assert new is state
            assert event.direction is Direction.RECEIVED
        state = new


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=40))
def test_two_nodes_with_crossing_messages_end_in_the_same_state_or_both_ended(
    schedule: list[tuple[bool, int]],
) -> None:
    """Simulate both ends: each step either node sends an allowed message or one is delivered.

    Messages arrive in order per direction (one ordered stream per case), but the two directions
    interleave freely, so messages cross. A message refused by the table is dropped (its sender
    hears invalid_transition); that only happens to a message that crossed the end of the case.
    After everything is delivered the two ends agree, or both ended.
    """
    state = {H: initial_state(H), R: initial_state(R)}
    in_flight: dict[Role, deque[EventKind]] = {H: deque(), R: deque()}  # keyed by recipient

    def deliver(recipient: Role) -> None:
        event = CaseEvent.received(in_flight[recipient].popleft())
        if event in allowed_events(recipient, state[recipient]):
            state[recipient] = next_state(recipient, state[recipient], event)
        else:
            # Only a message that crossed the end of the case is ever refused.
            assert is_terminal(state[recipient])
            with pytest.raises(LocalProtocolError, match=r"^invalid_transition: "):
                next_state(recipient, state[recipient], event)

    for home_acts, choice in schedule:
        actor = H if home_acts else R
        sendable = [e for e in allowed_events(actor, state[actor]) if e.direction is SENT]
        if in_flight[actor] and (choice % 2 or not sendable):
            deliver(actor)
        elif sendable:
            event = sendable[choice % len(sendable)]
            state[actor] = next_state(actor, state[actor], event)
            in_flight[actor.peer].append(event.kind)
    while in_flight[H] or in_flight[R]:
        deliver(H if in_flight[H] else R)
    assert state[H] is state[R] or (is_terminal(state[H]) and is_terminal(state[R]))
