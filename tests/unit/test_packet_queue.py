"""The bounded packet queues and the fragment table on their own."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.classifier import FragmentKey
from protocols.numbers import IpProtocol
from protocols.packet_queue import FragmentTable, PacketQueues
from protocols.session_key import SessionKey
from protocols.session_lifecycle import Phase
from protocols.session_table import QueuedPacket, Session

CLIENT = bytes([198, 51, 100, 7])
CLUSTER = bytes([192, 0, 2, 10])
REASONS = ("queue_full", "lost_claim", "table_full", "aborted")


def tcp_key(client_port: int = 40000) -> SessionKey:
    return SessionKey(IpProtocol.TCP, CLIENT, client_port, CLUSTER, 80)


class Setup:
    """Queues over a dict of sessions, as the claim machine's table is."""

    def __init__(
        self, *, max_per_session: int = 3, max_packets: int = 5, max_bytes: int = 1000
    ) -> None:
        self.sessions: dict[SessionKey, Session] = {}
        self.drops = dict.fromkeys(REASONS, 0)
        self.queues = PacketQueues(
            max_per_session=max_per_session,
            max_packets=max_packets,
            max_bytes=max_bytes,
            drops=self.drops,
            session=self.sessions.get,
        )

    def session(self, client_port: int) -> Session:
        key = tcp_key(client_port)
        session = self.sessions[key] = Session(key, Phase.WAITING, 0.0)
        return session


def queued(session: Session) -> list[object]:
    return [entry.packet for entry in session.queue]


# -------------------------------------------------------------- bounds


def test_a_queue_keeps_its_packets_in_order() -> None:
    setup = Setup()
    session = setup.session(1)
    assert setup.queues.add(session, "a1", 100)
    assert setup.queues.add(session, "a2", 150)
    assert queued(session) == ["a1", "a2"]
    assert session.queued_bytes == 250
    assert setup.queues.packets == 2
    assert setup.queues.bytes == 250
    assert setup.drops["queue_full"] == 0
    assert setup.queues.bound_violation() is None


def test_the_bound_per_session_drops_that_sessions_oldest() -> None:
    setup = Setup(max_per_session=3, max_packets=10)
    a = setup.session(1)
    b = setup.session(2)
    setup.queues.add(b, "b1", 10)
    for index in range(1, 5):
        assert setup.queues.add(a, f"a{index}", 10 * index)
    assert queued(a) == ["a2", "a3", "a4"]
    assert a.queued_bytes == 20 + 30 + 40
    assert queued(b) == ["b1"]  # older, but within its own bound: kept
    assert setup.queues.packets == 4
    assert setup.queues.bytes == 10 + 90
    assert setup.drops["queue_full"] == 1
    assert setup.queues.bound_violation() is None


def test_the_total_packet_bound_drops_the_oldest_queued_packet() -> None:
    setup = Setup(max_per_session=3, max_packets=5)
    a, b, c = setup.session(1), setup.session(2), setup.session(3)
    setup.queues.add(a, "a1", 10)
    setup.queues.add(a, "a2", 10)
    setup.queues.add(b, "b1", 10)
    setup.queues.add(b, "b2", 10)
    setup.queues.add(c, "c1", 10)
    assert setup.drops["queue_full"] == 0
    assert setup.queues.add(c, "c2", 20)
    assert queued(a) == ["a2"]
    assert setup.queues.add(c, "c3", 30)
    assert queued(a) == []
    assert a.queued_bytes == 0
    assert queued(b) == ["b1", "b2"]
    assert queued(c) == ["c1", "c2", "c3"]
    assert setup.queues.packets == 5
    assert setup.queues.bytes == 10 + 10 + 10 + 20 + 30
    assert setup.drops["queue_full"] == 2
    assert setup.queues.add(a, "a3", 10)  # b's queue is now the oldest
    assert queued(b) == ["b2"]
    assert queued(a) == ["a3"]
    assert setup.drops["queue_full"] == 3
    assert setup.queues.bound_violation() is None


def test_the_oldest_queue_gives_up_its_packets_first() -> None:
    """When one session's queue began first it loses its front packet, even if
    a packet of a later queue is older than that session's next one: the
    order is that of the queues' beginnings (the `_holders` order)."""
    setup = Setup(max_per_session=4, max_packets=3)
    a, b, c = setup.session(1), setup.session(2), setup.session(3)
    setup.queues.add(a, "a1", 10)
    setup.queues.add(b, "b1", 10)
    setup.queues.add(a, "a2", 10)
    setup.queues.add(c, "c1", 10)
    assert queued(a) == ["a2"]
    setup.queues.add(c, "c2", 10)
    assert queued(a) == []
    assert queued(b) == ["b1"]
    assert queued(c) == ["c1", "c2"]
    assert setup.drops["queue_full"] == 2


def test_the_byte_bound_drops_the_oldest_until_the_packet_fits() -> None:
    setup = Setup(max_per_session=3, max_packets=10, max_bytes=1000)
    a, b = setup.session(1), setup.session(2)
    setup.queues.add(a, "a1", 400)
    setup.queues.add(a, "a2", 400)
    assert setup.queues.add(b, "b1", 300)  # 1100 > 1000: a1 goes
    assert queued(a) == ["a2"]
    assert setup.queues.bytes == 700
    assert setup.drops["queue_full"] == 1
    assert setup.queues.add(b, "b2", 300)  # exactly 1000: fits
    assert setup.queues.bytes == 1000
    assert setup.drops["queue_full"] == 1
    assert setup.queues.add(b, "b3", 1)  # a2 goes
    assert queued(a) == []
    assert queued(b) == ["b1", "b2", "b3"]
    assert setup.queues.bytes == 601
    assert setup.queues.packets == 3
    assert setup.drops["queue_full"] == 2
    assert setup.queues.bound_violation() is None


def test_a_packet_of_exactly_max_bytes_takes_the_whole_room() -> None:
    setup = Setup(max_per_session=3, max_packets=10, max_bytes=1000)
    a, b = setup.session(1), setup.session(2)
    setup.queues.add(a, "a1", 1)
    setup.queues.add(b, "b1", 1)
    assert setup.queues.add(b, "big", 1000)
    assert queued(a) == []
    assert queued(b) == ["big"]
    assert setup.queues.bytes == 1000
    assert setup.queues.packets == 1
    assert setup.drops["queue_full"] == 2


def test_a_packet_larger_than_max_bytes_is_refused_and_counted() -> None:
    setup = Setup(max_bytes=1000)
    a, b = setup.session(1), setup.session(2)
    setup.queues.add(a, "a1", 500)
    assert setup.queues.add(b, "huge", 1001) is False
    assert queued(a) == ["a1"]  # nothing was dropped to make room for it
    assert queued(b) == []
    assert b.queued_bytes == 0
    assert setup.queues.packets == 1
    assert setup.queues.bytes == 500
    assert setup.drops["queue_full"] == 1
    assert setup.queues.bound_violation() is None
    # The refused session holds no place in the order: a's queue is still the
    # oldest when the next packet needs room.
    setup.queues.add(b, "b1", 600)
    assert queued(a) == []
    assert queued(b) == ["b1"]


# ------------------------------------------------------- take, discard


def test_take_returns_the_packets_in_order_and_empties_the_bookkeeping() -> None:
    setup = Setup(max_per_session=3, max_packets=4)
    a, b = setup.session(1), setup.session(2)
    setup.queues.add(a, "a1", 10)
    setup.queues.add(b, "b1", 20)
    setup.queues.add(a, "a2", 30)
    assert setup.queues.take(a) == ("a1", "a2")
    assert queued(a) == []
    assert a.queued_bytes == 0
    assert setup.queues.packets == 1
    assert setup.queues.bytes == 20
    assert setup.queues.take(a) == ()
    assert setup.queues.bound_violation() is None
    # Its queue begins again behind b's: b's packet is the oldest now.
    setup.queues.add(a, "a3", 10)
    setup.queues.add(a, "a4", 10)
    setup.queues.add(a, "a5", 10)
    setup.queues.add(b, "b2", 10)
    assert queued(b) == ["b2"]
    assert queued(a) == ["a3", "a4", "a5"]
    assert setup.drops["queue_full"] == 1


def test_a_taken_session_may_leave_the_table() -> None:
    setup = Setup()
    a = setup.session(1)
    setup.queues.add(a, "a1", 10)
    setup.queues.take(a)
    del setup.sessions[a.key]
    assert setup.queues.bound_violation() is None
    b = setup.session(2)
    for index in range(6):
        assert setup.queues.add(b, f"b{index}", 10)
    assert setup.queues.bound_violation() is None


def test_discard_counts_the_packets_under_its_reason() -> None:
    setup = Setup()
    a, b = setup.session(1), setup.session(2)
    setup.queues.add(a, "a1", 10)
    setup.queues.add(a, "a2", 10)
    setup.queues.add(b, "b1", 10)
    setup.queues.discard(a, "lost_claim")
    assert setup.drops == {"queue_full": 0, "lost_claim": 2, "table_full": 0, "aborted": 0}
    assert queued(a) == []
    assert a.queued_bytes == 0
    assert setup.queues.packets == 1
    assert setup.queues.bytes == 10
    setup.queues.discard(a, "aborted")  # nothing left to count
    setup.queues.discard(b, "table_full")
    assert setup.drops == {"queue_full": 0, "lost_claim": 2, "table_full": 1, "aborted": 0}
    assert setup.queues.packets == 0
    assert setup.queues.bytes == 0
    assert setup.queues.bound_violation() is None


def test_bound_violation_names_what_went_wrong() -> None:
    setup = Setup()
    a = setup.session(1)
    setup.queues.add(a, "a1", 10)
    del setup.sessions[a.key]  # removed without its queue taken
    assert setup.queues.bound_violation() == f"queue bookkeeping lost {a.key}"
    setup.sessions[a.key] = a
    assert setup.queues.bound_violation() is None
    setup.queues.packets = 6
    assert setup.queues.bound_violation() == "queued packets: 6 > 5"
    setup.queues.packets = 1
    setup.queues.bytes = 1001
    assert setup.queues.bound_violation() == "queued bytes: 1001 > 1000"
    setup.queues.bytes = 10
    a.queue.extend([QueuedPacket("a2", 0), QueuedPacket("a3", 0), QueuedPacket("a4", 0)])
    assert setup.queues.bound_violation() == f"queue of {a.key}: 4 packets"


# ----------------------------------------------- random sequences of operations

SESSIONS = 4
MAX_PER_SESSION, MAX_PACKETS, MAX_BYTES = 3, 6, 1000

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.integers(0, SESSIONS - 1),
            st.integers(0, MAX_BYTES + 200),
        ),
        st.tuples(st.just("take"), st.integers(0, SESSIONS - 1), st.just(0)),
        st.tuples(st.just("discard"), st.integers(0, SESSIONS - 1), st.just(0)),
        st.tuples(st.just("replace"), st.integers(0, SESSIONS - 1), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_bounds_and_bookkeeping_hold_throughout(ops: list[tuple[str, int, int]]) -> None:
    setup = Setup(max_per_session=MAX_PER_SESSION, max_packets=MAX_PACKETS, max_bytes=MAX_BYTES)
    sessions = [setup.session(port) for port in range(SESSIONS)]
    # What each session was given since its queue was last emptied by us.
    given_since: list[list[tuple[str, int]]] = [[] for _ in sessions]
    accepted = refused = taken = discarded = 0
    for serial, (op, index, size) in enumerate(ops):
        session = sessions[index]
        if op == "add":
            packet = f"p{serial}"
            if setup.queues.add(session, packet, size):
                accepted += 1
                given_since[index].append((packet, size))
                assert queued(session)[-1] == packet
            else:
                assert size > MAX_BYTES
                refused += 1
        elif op == "take":
            packets = setup.queues.take(session)
            handed_in = [packet for packet, _ in given_since[index]]
            assert list(packets) == handed_in[len(handed_in) - len(packets) :]
            taken += len(packets)
            given_since[index] = []
        elif op == "discard":
            discarded += len(session.queue)
            setup.queues.discard(session, "lost_claim")
            given_since[index] = []
        else:  # the session is forgotten and a new one takes its key
            discarded += len(session.queue)
            setup.queues.discard(session, "table_full")
            session = sessions[index] = setup.session(index)
            given_since[index] = []

        assert setup.queues.bound_violation() is None
        for held, given_packets in zip(sessions, given_since, strict=True):
            assert len(held.queue) <= MAX_PER_SESSION
            # Drops come from the front: what is left is the newest given.
            left = given_packets[len(given_packets) - len(held.queue) :]
            assert [(entry.packet, entry.size) for entry in held.queue] == left
            assert held.queued_bytes == sum(entry.size for entry in held.queue)
        assert setup.queues.packets == sum(len(held.queue) for held in sessions)
        assert setup.queues.bytes == sum(held.queued_bytes for held in sessions)
        assert setup.queues.packets <= MAX_PACKETS
        assert setup.queues.bytes <= MAX_BYTES
        # Every packet handed in is queued, taken, or counted as a drop.
        assert setup.drops["queue_full"] == refused + accepted - taken - discarded - (
            setup.queues.packets
        )
        assert setup.drops["lost_claim"] + setup.drops["table_full"] == discarded


# ------------------------------------------------------------ fragments


def fragment(identification: int) -> FragmentKey:
    return FragmentKey(IpProtocol.UDP, CLIENT, CLUSTER, identification)


def test_a_remembered_fragment_names_its_session() -> None:
    table = FragmentTable(max_fragments=4, timeout=5.0)
    assert len(table) == 0
    assert table.next_deadline() is None
    table.remember(fragment(1), tcp_key(1), 1.0)
    table.remember(fragment(2), tcp_key(2), 1.5)
    assert len(table) == 2
    assert table.session_of(fragment(1)) == tcp_key(1)
    assert table.session_of(fragment(2)) == tcp_key(2)
    assert table.session_of(fragment(3)) is None
    assert table.session_of(None) is None
    assert table.next_deadline() == 6.0


def test_fragments_expire_after_the_timeout_oldest_first() -> None:
    table = FragmentTable(max_fragments=4, timeout=5.0)
    table.remember(fragment(1), tcp_key(1), 1.0)
    table.remember(fragment(2), tcp_key(2), 2.0)
    table.expire(5.875)
    assert len(table) == 2
    table.expire(6.0)  # fragment 1 expires at 6.0 exactly
    assert table.session_of(fragment(1)) is None
    assert table.session_of(fragment(2)) == tcp_key(2)
    assert table.next_deadline() == 7.0
    table.expire(7.0)
    assert len(table) == 0
    assert table.next_deadline() is None
    table.expire(8.0)  # an empty table expires quietly
    assert len(table) == 0


def test_remembering_a_fragment_again_renews_it() -> None:
    table = FragmentTable(max_fragments=4, timeout=5.0)
    table.remember(fragment(1), tcp_key(1), 1.0)
    table.remember(fragment(2), tcp_key(2), 2.0)
    table.remember(fragment(1), tcp_key(3), 3.0)
    assert len(table) == 2
    assert table.session_of(fragment(1)) == tcp_key(3)
    assert table.next_deadline() == 7.0
    table.expire(7.0)
    assert table.session_of(fragment(2)) is None
    assert table.session_of(fragment(1)) == tcp_key(3)
    assert table.next_deadline() == 8.0


def test_the_fragment_bound_drops_the_oldest() -> None:
    table = FragmentTable(max_fragments=3, timeout=5.0)
    for identification in range(1, 4):
        table.remember(fragment(identification), tcp_key(identification), float(identification))
    assert len(table) == 3
    table.remember(fragment(4), tcp_key(4), 4.0)
    assert len(table) == 3
    assert table.session_of(fragment(1)) is None
    assert [table.session_of(fragment(i)) for i in (2, 3, 4)] == [tcp_key(i) for i in (2, 3, 4)]
    assert table.next_deadline() == 7.0
    # Renewed, fragment 2 is no longer the oldest: 3 goes next.
    table.remember(fragment(2), tcp_key(2), 5.0)
    table.remember(fragment(5), tcp_key(5), 5.0)
    assert len(table) == 3
    assert table.session_of(fragment(3)) is None
    assert table.session_of(fragment(2)) == tcp_key(2)
    assert table.next_deadline() == 9.0
