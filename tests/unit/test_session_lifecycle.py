"""The session lifecycle table on its own, and the session table that moves
sessions by it: counts, `state`, `mine` and the eviction order follow the phase."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest

from protocols.errors import LocalProtocolError
from protocols.numbers import IpProtocol
from protocols.session_key import SessionKey
from protocols.session_lifecycle import (
    CLOSING_PHASES,
    SERVED_HERE,
    TRANSITIONS,
    UNDECIDED,
    Event,
    Phase,
    next_phase,
)
from protocols.session_table import (
    CLOSING,
    FOREIGN,
    OWNED,
    PENDING,
    STATE_OF_PHASE,
    Session,
    SessionState,
    SessionTable,
)

CLIENT = bytes([198, 51, 100, 7])
CLUSTER = bytes([192, 0, 2, 10])

# The lifecycle, written out again by hand: the table must say exactly this.
EXPECTED: dict[tuple[Phase, Event], Phase] = {
    (Phase.WAITING, Event.TURN): Phase.CLAIMING,
    (Phase.WAITING, Event.DECLINE): Phase.FOREIGN,
    (Phase.WAITING, Event.LOSE): Phase.FOREIGN,
    (Phase.CLAIMING, Event.WIN): Phase.OWNED,
    (Phase.CLAIMING, Event.LOSE): Phase.FOREIGN,
    (Phase.OWNED, Event.CLIENT_CLOSE): Phase.OWNED_CLOSING,
    (Phase.OWNED, Event.YIELD): Phase.FOREIGN,
    (Phase.FOREIGN, Event.CLIENT_CLOSE): Phase.FOREIGN_CLOSING,
    (Phase.OWNED_CLOSING, Event.YIELD): Phase.FOREIGN_CLOSING,
}
NOT_ALLOWED = [pair for pair in itertools.product(Phase, Event) if pair not in EXPECTED]


def key(client_port: int = 40000) -> SessionKey:
    return SessionKey(IpProtocol.TCP, CLIENT, client_port, CLUSTER, 80)


def pair_id(pair: tuple[Phase, Event]) -> str:
    phase, event = pair
    return f"{phase.name}-{event.name}"


LISTED_IDS = [pair_id(pair) for pair in EXPECTED]


def expected_counts(table: SessionTable) -> dict[SessionState, int]:
    found = Counter(session.state for session in table)
    return {state: found[state] for state in SessionState}


def assert_in_step(table: SessionTable, session: Session, phase: Phase) -> None:
    assert session.phase is phase
    assert session.state is STATE_OF_PHASE[phase]
    assert session.mine is (phase in SERVED_HERE)
    assert table.counts == expected_counts(table)


# ------------------------------------------------------------ the table


@pytest.mark.parametrize(("pair", "after"), list(EXPECTED.items()), ids=LISTED_IDS)
def test_every_listed_transition(pair: tuple[Phase, Event], after: Phase) -> None:
    phase, event = pair
    assert next_phase(phase, event) is after


def test_the_table_lists_exactly_the_expected_transitions() -> None:
    listed = {
        (phase, event): after
        for phase, events in TRANSITIONS.items()
        for event, after in events.items()
    }
    assert listed == EXPECTED


@pytest.mark.parametrize("pair", NOT_ALLOWED, ids=pair_id)
def test_an_event_not_in_the_table_is_a_local_protocol_error(pair: tuple[Phase, Event]) -> None:
    phase, event = pair
    message = f"no transition from {phase.value} on {event.value}"
    with pytest.raises(LocalProtocolError, match=f"^{re.escape(message)}$") as raised:
        next_phase(phase, event)
    # Raised `from None`: the KeyError of the lookup is not shown as its cause.
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_every_pair_is_either_allowed_or_refused() -> None:
    assert len(EXPECTED) + len(NOT_ALLOWED) == len(Phase) * len(Event)
    assert len(NOT_ALLOWED) == 6 * 6 - 9


def test_every_phase_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(Phase)
    for events in TRANSITIONS.values():
        assert all(isinstance(after, Phase) for after in events.values())


def test_no_transition_leads_out_of_foreign_closing() -> None:
    assert TRANSITIONS[Phase.FOREIGN_CLOSING] == {}
    for event in Event:
        with pytest.raises(LocalProtocolError):
            next_phase(Phase.FOREIGN_CLOSING, event)


def test_foreign_closing_is_reachable_and_every_phase_leads_there() -> None:
    """From every phase some sequence of events reaches FOREIGN_CLOSING, the
    one phase without a way out."""
    for start in Phase:
        seen = {start}
        frontier = [start]
        while frontier:
            phase = frontier.pop()
            for after in TRANSITIONS[phase].values():
                if after not in seen:
                    seen.add(after)
                    frontier.append(after)
        assert Phase.FOREIGN_CLOSING in seen, start


def test_only_win_enters_owned_from_an_undecided_phase() -> None:
    entering = [
        (phase, event)
        for phase in UNDECIDED
        for event, after in TRANSITIONS[phase].items()
        if after in SERVED_HERE
    ]
    assert entering == [(Phase.CLAIMING, Event.WIN)]
    # And nothing else enters a phase served here from one that is not.
    for phase, events in TRANSITIONS.items():
        for event, after in events.items():
            if after in SERVED_HERE and phase not in SERVED_HERE:
                assert (phase, event) == (Phase.CLAIMING, Event.WIN)


def test_a_served_session_leaves_service_only_by_yielding() -> None:
    for phase in SERVED_HERE:
        for event, after in TRANSITIONS[phase].items():
            if after not in SERVED_HERE:
                assert event is Event.YIELD


def test_a_closing_session_stays_closing() -> None:
    for phase in CLOSING_PHASES:
        assert all(after in CLOSING_PHASES for after in TRANSITIONS[phase].values())


def test_the_phase_sets() -> None:
    assert {Phase.OWNED, Phase.OWNED_CLOSING} == SERVED_HERE
    assert {Phase.WAITING, Phase.CLAIMING} == UNDECIDED
    assert {Phase.OWNED_CLOSING, Phase.FOREIGN_CLOSING} == CLOSING_PHASES


def test_the_state_of_each_phase() -> None:
    assert STATE_OF_PHASE == {
        Phase.WAITING: PENDING,
        Phase.CLAIMING: PENDING,
        Phase.OWNED: OWNED,
        Phase.FOREIGN: FOREIGN,
        Phase.OWNED_CLOSING: CLOSING,
        Phase.FOREIGN_CLOSING: CLOSING,
    }


# ---------------------------------------------------- the session table


@pytest.mark.parametrize("phase", list(Phase), ids=lambda phase: phase.name)
def test_a_new_session_follows_its_phase(phase: Phase) -> None:
    table = SessionTable(max_sessions=4)
    session = Session(key(), phase, 1.0)
    table.add(session)
    assert_in_step(table, session, phase)
    assert table.counts[STATE_OF_PHASE[phase]] == 1
    assert sum(table.counts.values()) == 1


@pytest.mark.parametrize(("pair", "after"), list(EXPECTED.items()), ids=LISTED_IDS)
def test_move_keeps_state_mine_and_counts_in_step(pair: tuple[Phase, Event], after: Phase) -> None:
    phase, event = pair
    table = SessionTable(max_sessions=8)
    # Company in every phase, so that a miscount of any state shows.
    for port, other in enumerate(Phase, start=50000):
        table.add(Session(key(port), other, 0.5))
    session = Session(key(), phase, 1.0)
    table.add(session)
    before = dict(table.counts)
    table.move(session, event)
    assert_in_step(table, session, after)
    changed = dict(before)
    changed[STATE_OF_PHASE[phase]] -= 1
    changed[STATE_OF_PHASE[after]] += 1
    assert table.counts == changed
    assert sum(table.counts.values()) == len(table) == 7


@pytest.mark.parametrize("pair", NOT_ALLOWED, ids=pair_id)
def test_a_refused_move_changes_nothing(pair: tuple[Phase, Event]) -> None:
    phase, event = pair
    table = SessionTable(max_sessions=4)
    session = Session(key(), phase, 1.0)
    table.add(session)
    before = dict(table.counts)
    with pytest.raises(LocalProtocolError):
        table.move(session, event)
    assert_in_step(table, session, phase)
    assert table.counts == before


def test_a_whole_life_moves_the_counts() -> None:
    table = SessionTable(max_sessions=4)
    session = Session(key(), Phase.WAITING, 1.0)
    table.add(session)
    steps = [
        (Event.TURN, Phase.CLAIMING, PENDING),
        (Event.WIN, Phase.OWNED, OWNED),
        (Event.CLIENT_CLOSE, Phase.OWNED_CLOSING, CLOSING),
        (Event.YIELD, Phase.FOREIGN_CLOSING, CLOSING),
    ]
    for event, phase, state in steps:
        table.move(session, event)
        assert_in_step(table, session, phase)
        assert table.counts == {kind: 1 if kind is state else 0 for kind in SessionState}
    table.remove(session)
    assert table.counts == dict.fromkeys(SessionState, 0)


def test_removing_a_moved_session_takes_it_from_its_new_count() -> None:
    table = SessionTable(max_sessions=4)
    won = Session(key(1), Phase.CLAIMING, 1.0)
    lost = Session(key(2), Phase.CLAIMING, 1.0)
    table.add(won)
    table.add(lost)
    table.move(won, Event.WIN)
    table.move(lost, Event.LOSE)
    table.remove(won)
    assert table.counts == {PENDING: 0, OWNED: 0, FOREIGN: 1, CLOSING: 0}
    table.remove(lost)
    assert table.counts == dict.fromkeys(SessionState, 0)


# ----------------------------------------------------- eviction order


def won(table: SessionTable, client_port: int) -> Session:
    session = Session(key(client_port), Phase.WAITING, 1.0)
    table.add(session)
    table.move(session, Event.TURN)
    table.move(session, Event.WIN)
    return session


def test_sessions_served_here_or_undecided_are_no_eviction_candidates() -> None:
    table = SessionTable(max_sessions=8)
    won(table, 1)
    table.add(Session(key(2), Phase.WAITING, 1.0))
    table.add(Session(key(3), Phase.CLAIMING, 1.0))
    closing = won(table, 4)
    table.move(closing, Event.CLIENT_CLOSE)
    assert table.oldest_foreign() is None


def test_a_session_yielded_becomes_the_eviction_candidate() -> None:
    table = SessionTable(max_sessions=4)
    session = won(table, 1)
    table.add(Session(key(2), Phase.WAITING, 1.0))
    assert table.oldest_foreign() is None
    table.move(session, Event.YIELD)
    assert session.phase is Phase.FOREIGN
    assert not session.mine
    assert table.oldest_foreign() is session


def test_a_closing_session_yielded_becomes_the_eviction_candidate() -> None:
    table = SessionTable(max_sessions=4)
    session = won(table, 1)
    table.move(session, Event.CLIENT_CLOSE)
    assert table.oldest_foreign() is None
    table.move(session, Event.YIELD)
    assert table.oldest_foreign() is session


def test_a_yielded_session_is_next_after_the_sessions_foreign_before_it() -> None:
    table = SessionTable(max_sessions=8)
    first = Session(key(1), Phase.FOREIGN, 1.0)
    table.add(first)
    served = won(table, 2)
    table.move(served, Event.YIELD)
    later = Session(key(3), Phase.FOREIGN, 2.0)
    table.add(later)
    assert table.oldest_foreign() is first
    table.remove(first)
    assert table.oldest_foreign() is served
    table.remove(served)
    assert table.oldest_foreign() is later


def test_eviction_order_is_when_a_session_became_foreign() -> None:
    table = SessionTable(max_sessions=8)
    waiting = Session(key(1), Phase.WAITING, 1.0)  # added first, foreign last
    table.add(waiting)
    foreign = Session(key(2), Phase.FOREIGN, 1.0)
    table.add(foreign)
    table.move(waiting, Event.LOSE)
    assert table.oldest_foreign() is foreign
    table.remove(foreign)
    assert table.oldest_foreign() is waiting


def test_a_foreign_session_closing_keeps_its_place_in_the_eviction_order() -> None:
    table = SessionTable(max_sessions=8)
    first = Session(key(1), Phase.FOREIGN, 1.0)
    second = Session(key(2), Phase.FOREIGN, 1.0)
    table.add(first)
    table.add(second)
    table.move(first, Event.CLIENT_CLOSE)
    assert first.state is CLOSING
    assert table.oldest_foreign() is first
    table.remove(first)
    assert table.oldest_foreign() is second
    table.remove(second)
    assert table.oldest_foreign() is None


def test_note_ownership_reads_mine_and_state() -> None:
    """Called on its own, `note_ownership` takes a session served here out of
    the eviction order and puts one served elsewhere back, at the end."""
    table = SessionTable(max_sessions=4)
    session = Session(key(1), Phase.FOREIGN, 1.0)
    table.add(session)
    assert table.oldest_foreign() is session
    session.mine = True
    table.note_ownership(session)
    assert table.oldest_foreign() is None
    other = Session(key(2), Phase.FOREIGN, 2.0)
    table.add(other)
    session.mine = False
    table.note_ownership(session)
    assert table.oldest_foreign() is other
    table.remove(other)
    assert table.oldest_foreign() is session
