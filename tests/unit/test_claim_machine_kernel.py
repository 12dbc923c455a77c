"""The claim machine's hooks for the kernel fast path, stepped by hand:
`adopt` after a restart, the `ActivitySource` asked before a session is
forgotten, and eviction that never resets a connection the kernel carries."""

from __future__ import annotations

from protocols.claim_machine import (
    DROP,
    INJECT,
    QUEUED,
    Activity,
    ClaimMachine,
    ClaimSettings,
    ResetLocalSession,
    SendMessage,
)
from protocols.session_table import Session
from protocols.wire.claim import Assertion
from tests.unit.test_claim_machine import ME, SETTINGS, syn, tcp, tcp_key

ACK = 0x10


class FakeKernel:
    """An ActivitySource: what the kernel says of each session, set by hand."""

    def __init__(self) -> None:
        self.seen: dict[object, Activity] = {}
        self.asked: list[object] = []

    def last_activity(self, session: Session, now: float) -> Activity | None:
        self.asked.append(session.key)
        return self.seen.get(session.key)


def win(machine: ClaimMachine, port: int, now: float) -> None:
    """A SYN this lone member claims, and wins at guard."""
    assert machine.handle_client_packet(syn(tcp_key(port)), b"syn", 60, now) is QUEUED
    machine.handle_timer(now + SETTINGS.guard)
    machine.pop_actions()
    assert machine.owns(tcp_key(port))


def test_an_adopted_session_is_owned_asserted_and_served() -> None:
    machine = ClaimMachine(ME, SETTINGS, 0.0)
    machine.pop_actions()
    key = tcp_key(41000)
    assert machine.adopt(key, 5.0, last_seen=4.0, established=True)
    assert machine.owns(key)
    sent = [action.message for action in machine.pop_actions() if isinstance(action, SendMessage)]
    assert [type(message) for message in sent] == [Assertion]
    assert machine.counters.sessions_adopted == 1
    assert machine.handle_client_packet(tcp(key, ACK), b"data", 60, 5.1) is INJECT
    assert not machine.adopt(key, 5.2, last_seen=5.0, established=True)  # known already


def test_a_carried_session_is_kept_while_the_kernel_sees_its_packets() -> None:
    kernel = FakeKernel()
    machine = ClaimMachine(ME, SETTINGS, 0.0, activity=kernel)
    win(machine, 42000, 1.0)
    key = tcp_key(42000)
    # No packet of it reached the machine since its SYN; the kernel saw one at 9 s.
    kernel.seen[key] = Activity(9.0, established=True)
    machine.handle_timer(1.0 + SETTINGS.handshake_timeout + 0.1)
    assert machine.owns(key)
    assert kernel.asked == [key]
    session = machine.session(key)
    assert session is not None and session.established and session.last_seen == 9.0
    # Then the kernel sees nothing more: the idle timeout forgets it.
    kernel.seen.pop(key)
    machine.handle_timer(9.0 + SETTINGS.tcp_idle_timeout + 0.1)
    assert not machine.owns(key)


def test_without_the_kernel_seeing_a_handshake_the_session_is_forgotten() -> None:
    kernel = FakeKernel()
    machine = ClaimMachine(ME, SETTINGS, 0.0, activity=kernel)
    win(machine, 43000, 1.0)
    machine.handle_timer(1.0 + SETTINGS.handshake_timeout + 0.1)
    assert not machine.owns(tcp_key(43000))


def test_a_full_table_never_evicts_a_session_the_kernel_carries() -> None:
    """Every owned session looks half-open to the machine; the kernel says all
    are established. A new SYN finds no room and is refused, no session is
    reset, and the kernel was asked about each candidate once."""
    kernel = FakeKernel()
    settings = ClaimSettings(max_sessions=16)
    machine = ClaimMachine(ME, settings, 0.0, activity=kernel)
    for port in range(44000, 44016):
        win(machine, port, 1.0)
        kernel.seen[tcp_key(port)] = Activity(1.5, established=True)
    verdict = machine.handle_client_packet(syn(tcp_key(45000)), b"syn", 60, 2.0)
    actions = machine.pop_actions()
    assert verdict is DROP and machine.drops["table_full"] == 1
    assert all(machine.owns(tcp_key(port)) for port in range(44000, 44016))
    assert not [action for action in actions if isinstance(action, ResetLocalSession)]
    assert kernel.asked == [tcp_key(port) for port in range(44000, 44008)]
    # Those the kernel confirmed are established now, and never candidates again.
    established = [
        port
        for port in range(44000, 44016)
        if (session := machine.session(tcp_key(port))) is not None and session.established
    ]
    assert established == list(range(44000, 44008))


def test_a_half_open_session_the_kernel_never_saw_is_evicted_and_reset() -> None:
    kernel = FakeKernel()
    machine = ClaimMachine(ME, ClaimSettings(max_sessions=16), 0.0, activity=kernel)
    for port in range(46000, 46016):
        win(machine, port, 1.0)
    machine.handle_client_packet(syn(tcp_key(47000)), b"syn", 60, 2.0)
    actions = machine.pop_actions()
    assert not machine.owns(tcp_key(46000))
    assert [action.key for action in actions if isinstance(action, ResetLocalSession)] == [
        tcp_key(46000)
    ]
