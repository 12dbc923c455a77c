"""The claim machine, stepped by hand: time is a number we pass in, and every
timer value is asserted exactly (in the manner of aioquic's connection tests)."""

from collections.abc import Callable, Iterable
from dataclasses import replace

import pytest

from protocols.claim_machine import (
    Action,
    ClaimMachine,
    ClaimSettings,
    InjectPackets,
    ResetLocalSession,
    SendMessage,
    SettingsError,
    Verdict,
)
from protocols.classifier import Classified, FragmentKey, FrameKind
from protocols.numbers import IpProtocol, TcpFlags
from protocols.rendezvous import rendezvous_score, session_digest_input
from protocols.session_key import SessionKey
from protocols.session_table import CLOSING, FOREIGN, OWNED, PENDING, Session
from protocols.wire.claim import Acknowledgement, Assertion, Claim, ClaimMessage, Hello

TCP, UDP = IpProtocol.TCP, IpProtocol.UDP
FIN, SYN, RST, ACK = TcpFlags.FIN, TcpFlags.SYN, TcpFlags.RST, TcpFlags.ACK
CLIENT = bytes([198, 51, 100, 7])
CLUSTER = bytes([192, 0, 2, 10])
ME = 1
PEER = 2
RIVAL = 7
# The timings these tests were written around (hellos once a second); the
# defaults are faster, and each test below states its times from SETTINGS.
SETTINGS = ClaimSettings(hello_interval=1.0, member_timeout=3.5)
GUARD = SETTINGS.guard

# ----------------------------------------------------------------- helpers


def tcp_key(client_port: int = 40000, cluster_port: int = 80) -> SessionKey:
    return SessionKey(TCP, CLIENT, client_port, CLUSTER, cluster_port)


def udp_key(client_port: int = 40000, cluster_port: int = 53) -> SessionKey:
    return SessionKey(UDP, CLIENT, client_port, CLUSTER, cluster_port)


def tcp(key: SessionKey, flags: int, sequence: int = 1001) -> Classified:
    return Classified(FrameKind.TCP, key, flags, 14, 54, sequence)


def syn(key: SessionKey, sequence: int = 1000) -> Classified:
    return tcp(key, SYN, sequence)


def udp(key: SessionKey) -> Classified:
    return Classified(FrameKind.UDP, key, 0, 14, 42, 0)


def score(key: SessionKey, member_id: int, weight: float = 1.0) -> float:
    return rendezvous_score(session_digest_input(key), member_id, weight)


def bid(key: SessionKey, member_id: int) -> tuple[float, int]:
    return (score(key, member_id), member_id)


def key_where(
    wanted: Callable[[SessionKey], bool], make: Callable[[int], SessionKey] = tcp_key
) -> SessionKey:
    """The first key (by client port) for which `wanted` holds."""
    for client_port in range(40000, 42000):
        key = make(client_port)
        if wanted(key):
            return key
    raise AssertionError("no key in the searched range has the wanted ranking")


def ranked_first(member_id: int, *others: int) -> Callable[[SessionKey], bool]:
    return lambda key: all(bid(key, member_id) > bid(key, other) for other in others)


def hello(member_id: int, counter: int, *, weight: float = 1.0, warming: bool = False) -> Hello:
    return Hello(member_id, counter, weight, draining=False, warming=warming, leaving=False)


def new_machine(
    member_id: int = ME,
    now: float = 0.0,
    settings: ClaimSettings = SETTINGS,
    *,
    listening: frozenset[tuple[int, int]] | None = None,
) -> ClaimMachine:
    """A machine whose startup hello has already been taken away."""
    machine = ClaimMachine(member_id, settings, now, listening=listening)
    startup = machine.pop_actions()
    assert [type(message) for message in messages(startup)] == [Hello]
    return machine


def messages(actions: Iterable[Action]) -> list[ClaimMessage]:
    return [action.message for action in actions if isinstance(action, SendMessage)]


def claims(actions: Iterable[Action]) -> list[Claim]:
    return [message for message in messages(actions) if isinstance(message, Claim)]


def assertions(actions: Iterable[Action]) -> list[Assertion]:
    return [message for message in messages(actions) if isinstance(message, Assertion)]


def acknowledgements(actions: Iterable[Action]) -> list[Acknowledgement]:
    return [message for message in messages(actions) if isinstance(message, Acknowledgement)]


def hellos(actions: Iterable[Action]) -> list[Hello]:
    return [message for message in messages(actions) if isinstance(message, Hello)]


def injected(actions: Iterable[Action]) -> list[InjectPackets]:
    return [action for action in actions if isinstance(action, InjectPackets)]


def run_until(machine: ClaimMachine, until: float) -> list[tuple[float, Action]]:
    """Wake the machine at each deadline it asks for up to `until`; its actions, timed."""
    log: list[tuple[float, Action]] = []
    for _ in range(100_000):
        at = machine.next_wakeup()
        if at > until:
            return log
        machine.handle_timer(at)
        log.extend((at, action) for action in machine.pop_actions())
    raise AssertionError("the machine keeps asking to be woken at the same time")


def untimed(log: list[tuple[float, Action]]) -> list[Action]:
    return [action for _, action in log]


def assertion_times(log: list[tuple[float, Action]], key: SessionKey) -> list[float]:
    return [
        at
        for at, action in log
        if isinstance(action, SendMessage)
        and isinstance(action.message, Assertion)
        and action.message.session == key
    ]


def deliver(actions: Iterable[Action], to: ClaimMachine, now: float) -> None:
    for message in messages(actions):
        to.handle_message(message, now)


def session_of(machine: ClaimMachine, key: SessionKey) -> Session:
    session = machine.session(key)
    assert session is not None
    return session


def win_alone(machine: ClaimMachine, key: SessionKey, now: float, sequence: int = 1000) -> float:
    """A member that hears no rival claims `key` at `now` and wins it; returns when
    it won: after guard (at once once settled: no member met or gone for a
    join grace), or after ack_timeout if it knows peers (which never
    acknowledge here)."""
    run_until(machine, now)  # catch up with whatever fell due before
    machine.pop_actions()
    packet = syn(key, sequence) if key.transport == TCP else udp(key)
    assert machine.handle_client_packet(packet, "first", 60, now) is Verdict.QUEUED
    assert len(claims(machine.pop_actions())) == 1
    settings = machine.settings
    if machine.peers(now):
        won_at = now + settings.ack_timeout
    else:
        won_at = now if machine.is_settled(now) else now + settings.guard
    assert machine.next_wakeup() == won_at
    machine.handle_timer(won_at)
    machine.pop_actions()
    assert machine.owns(key)
    return won_at


# ------------------------------------------------- 1. a lone member's claim


def test_lone_member_claims_at_once_and_wins_after_guard() -> None:
    machine = new_machine(now=0.0)
    key = tcp_key()
    my_score = score(key, ME)
    now = 0.25

    assert machine.handle_client_packet(syn(key), "syn", 60, now) is Verdict.QUEUED
    assert machine.pop_actions() == [SendMessage(Claim(ME, 2, key, my_score))]
    assert session_of(machine, key).state is PENDING
    assert not machine.owns(key)
    assert machine.next_wakeup() == now + GUARD

    # A retransmitted SYN while the claim is open waits in the queue too.
    assert (
        machine.handle_client_packet(syn(key), "syn again", 60, now + GUARD / 4) is Verdict.QUEUED
    )
    machine.handle_timer(now + GUARD / 2)  # nothing is due yet
    assert machine.pop_actions() == []

    won_at = now + GUARD
    machine.handle_timer(won_at)
    assert machine.pop_actions() == [
        InjectPackets(key, ("syn", "syn again")),
        SendMessage(Assertion(ME, 3, key, my_score)),
    ]
    assert machine.owns(key)
    assert session_of(machine, key).state is OWNED
    assert machine.counters.claims_won == 1
    assert machine.counters.packets_injected == 2

    assert machine.handle_client_packet(tcp(key, ACK), "ack", 54, won_at) is Verdict.INJECT
    assert machine.handle_client_packet(tcp(key, ACK), "data", 554, won_at) is Verdict.INJECT
    assert machine.counters.packets_injected == 4

    counter = 4
    for offset in SETTINGS.assertion_repeats:
        assert machine.next_wakeup() == won_at + offset
        machine.handle_timer(won_at + offset)
        assert machine.pop_actions() == [SendMessage(Assertion(ME, counter, key, my_score))]
        counter += 1
    # The repeats are over: the next thing due is the hello tick.
    assert machine.next_wakeup() == 0.0 + SETTINGS.hello_interval
    assert machine.bound_violation() is None


# ---------------------------------------- 2. what may start a session


@pytest.mark.parametrize(
    "flags",
    [ACK, FIN, RST, FIN | ACK, RST | ACK, SYN | ACK, ACK | 0x08],
    ids=["ack", "fin", "rst", "fin-ack", "rst-ack", "syn-ack", "psh-ack"],
)
def test_midstream_packet_of_unknown_session_is_dropped_unclaimed(flags: int) -> None:
    machine = new_machine()
    key = tcp_key()

    assert machine.handle_client_packet(tcp(key, flags), "mid", 54, 0.1) is Verdict.DROP
    assert machine.drops["unknown_midstream"] == 1
    assert machine.session(key) is None
    assert machine.pop_actions() == []
    assert claims(untimed(run_until(machine, 1.5))) == []
    assert machine.counters.sessions_started == 0


def test_syn_and_unseen_udp_flow_do_start_sessions() -> None:
    machine = new_machine()
    tcp_session, udp_flow = tcp_key(), udp_key()

    assert machine.handle_client_packet(syn(tcp_session), "syn", 60, 0.1) is Verdict.QUEUED
    # A new member claims no UDP flow until 1.5 hello intervals have passed.
    assert machine.handle_client_packet(udp(udp_flow), "dgram", 60, 1.6) is Verdict.QUEUED
    assert [claim.session for claim in claims(machine.pop_actions())] == [tcp_session, udp_flow]
    assert machine.drops["unknown_midstream"] == 0


# ----------------------------------------------------------- 3. ranking


def test_backup_claimer_waits_one_claim_step_then_claims() -> None:
    machine = new_machine()
    key = key_where(ranked_first(PEER, ME))
    machine.handle_message(hello(PEER, 1), 0.1)
    machine.pop_actions()

    assert machine.handle_client_packet(syn(key), "syn", 60, 0.2) is Verdict.QUEUED
    assert machine.pop_actions() == []
    assert machine.next_wakeup() == 0.2 + SETTINGS.claim_step

    machine.handle_timer(0.2 + SETTINGS.claim_step)
    assert claims(machine.pop_actions()) == [Claim(ME, 3, key, score(key, ME))]
    # PEER never acknowledges (it is dead: that is why we claim): the whole ack_timeout.
    assert machine.next_wakeup() == 0.2 + SETTINGS.claim_step + SETTINGS.ack_timeout


def test_two_higher_peers_delay_the_claim_two_steps() -> None:
    machine = new_machine()
    key = key_where(lambda key: bid(key, PEER) > bid(key, ME) and bid(key, RIVAL) > bid(key, ME))
    machine.handle_message(hello(PEER, 1), 0.1)
    machine.handle_message(hello(RIVAL, 1), 0.1)
    machine.pop_actions()

    machine.handle_client_packet(syn(key), "syn", 60, 0.2)
    assert machine.next_wakeup() == 0.2 + 2 * SETTINGS.claim_step


def test_claim_delay_is_capped_at_max_claim_delay() -> None:
    higher = (2, 3, 4, 5)
    machine = new_machine()
    key = key_where(lambda key: all(bid(key, peer) > bid(key, ME) for peer in higher))
    for peer in higher:
        machine.handle_message(hello(peer, 1), 0.1)
    machine.pop_actions()

    machine.handle_client_packet(syn(key), "syn", 60, 0.2)
    assert machine.next_wakeup() == 0.2 + SETTINGS.max_claim_delay


def test_backup_claimer_stays_silent_when_the_first_ranked_claims() -> None:
    machine = new_machine()
    key = key_where(ranked_first(PEER, ME))
    machine.handle_message(hello(PEER, 1), 0.1)
    machine.pop_actions()
    machine.handle_client_packet(syn(key), "syn", 60, 0.2)
    assert machine.handle_client_packet(syn(key), "syn again", 60, 0.201) is Verdict.QUEUED

    machine.handle_message(Claim(PEER, 2, key, score(key, PEER)), 0.202)

    # Only the acknowledgement the claim asks for.
    (acknowledgement,) = messages(machine.pop_actions())
    assert acknowledgement == Acknowledgement(ME, acknowledgement.counter, PEER, 2)
    session = session_of(machine, key)
    assert session.state is FOREIGN
    assert session.owner == PEER
    assert machine.drops["lost_claim"] == 2
    assert machine.statistics()["queued_packets"] == 0
    log = untimed(run_until(machine, 0.5))
    assert claims(log) == []
    assert injected(log) == []
    assert not machine.owns(key)
    assert machine.handle_client_packet(tcp(key, ACK), "ack", 54, 0.3) is Verdict.DROP
    assert machine.drops["foreign"] == 1


# ------------------------------------------------ 4. order independence


def test_two_claimers_hearing_each_other_agree_on_the_winner() -> None:
    key = tcp_key()
    winner, loser = (ME, PEER) if bid(key, ME) > bid(key, PEER) else (PEER, ME)
    a, b = new_machine(ME), new_machine(PEER)
    # Each hears its own claim first and the other's second: opposite orders.
    a.handle_client_packet(syn(key), "syn", 60, 0.1)
    b.handle_client_packet(syn(key), "syn", 60, 0.1)
    a_claims, b_claims = a.pop_actions(), b.pop_actions()
    deliver(b_claims, a, 0.101)
    deliver(a_claims, b, 0.101)

    a.handle_timer(0.1 + GUARD)
    b.handle_timer(0.1 + GUARD)

    machines = {ME: a, PEER: b}
    assert machines[winner].owns(key)
    assert not machines[loser].owns(key)
    assert session_of(machines[loser], key).owner == winner
    assert injected(machines[winner].pop_actions()) == [InjectPackets(key, ("syn",))]
    assert injected(machines[loser].pop_actions()) == []
    assert machines[loser].counters.claims_lost == 1


@pytest.mark.parametrize("reverse", [False, True], ids=["low-first", "high-first"])
@pytest.mark.parametrize("place", [0, 1, 2], ids=["my-bid-lowest", "my-bid-middle", "my-bid-best"])
def test_claim_order_does_not_change_the_outcome(reverse: bool, place: int) -> None:
    """Three bids for one session; whatever order the rival claims arrive in,
    the highest (score, member id) wins, and only it."""
    key = tcp_key()
    members = sorted([ME, PEER, RIVAL], key=lambda member: bid(key, member))
    me = members[place]
    rivals = [Claim(member, 1, key, score(key, member)) for member in members if member != me]
    if reverse:
        rivals.reverse()
    machine = new_machine(me)
    machine.handle_client_packet(syn(key), "syn", 60, 0.1)
    machine.pop_actions()
    for step, rival in enumerate(rivals, start=1):
        machine.handle_message(rival, 0.1 + step * 0.001)

    machine.handle_timer(0.1 + GUARD)

    assert machine.owns(key) == (place == 2)
    assert session_of(machine, key).owner == members[2]


@pytest.mark.parametrize("reverse", [False, True])
def test_bystander_keeps_the_best_claim_whatever_the_order(reverse: bool) -> None:
    key = tcp_key()
    rivals = [Claim(member, 1, key, score(key, member)) for member in (PEER, RIVAL)]
    best = max((PEER, RIVAL), key=lambda member: bid(key, member))
    machine = new_machine(ME)
    for rival in reversed(rivals) if reverse else rivals:
        machine.handle_message(rival, 0.1)
    assert session_of(machine, key).owner == best


@pytest.mark.parametrize("rival_id", [2, 9], ids=["rival-lower-id", "rival-higher-id"])
def test_equal_scores_are_broken_by_member_id(rival_id: int) -> None:
    me = 3
    key = tcp_key()
    machine = new_machine(me)
    machine.handle_client_packet(syn(key), "syn", 60, 0.1)
    machine.pop_actions()
    tied = session_of(machine, key).my_score
    assert tied == score(key, me)

    machine.handle_message(Claim(rival_id, 1, key, tied), 0.101)
    machine.handle_timer(0.1 + GUARD)

    assert machine.owns(key) == (me > rival_id)
    assert session_of(machine, key).owner == max(me, rival_id)


@pytest.mark.parametrize("reverse", [False, True])
def test_bystander_breaks_equal_scores_by_member_id(reverse: bool) -> None:
    key = tcp_key()
    tied = [Claim(4, 1, key, 0.5), Claim(9, 1, key, 0.5)]
    machine = new_machine(ME)
    for claim in reversed(tied) if reverse else tied:
        machine.handle_message(claim, 0.1)
    assert session_of(machine, key).owner == 9


# ------------------------------------------- 5. an assertion beats a claim


@pytest.mark.parametrize("factor", [0.5, 2.0], ids=["lower-score", "higher-score"])
def test_pending_claimer_yields_to_any_assertion(factor: float) -> None:
    machine = new_machine()
    key = tcp_key()
    machine.handle_client_packet(syn(key), "syn", 60, 0.1)
    assert len(claims(machine.pop_actions())) == 1
    asserted = score(key, ME) * factor

    machine.handle_message(Assertion(RIVAL, 1, key, asserted), 0.102)
    assert machine.pop_actions() == []
    machine.handle_timer(0.1 + GUARD)

    assert machine.pop_actions() == []
    assert not machine.owns(key)
    session = session_of(machine, key)
    assert session.state is FOREIGN
    assert (session.owner, session.best_score) == (RIVAL, asserted)
    assert machine.counters.claims_lost == 1
    assert machine.counters.claims_won == 0
    assert machine.drops["lost_claim"] == 1


def test_backup_claimer_yields_to_an_assertion_before_its_turn() -> None:
    machine = new_machine()
    key = key_where(ranked_first(PEER, ME))
    machine.handle_message(hello(PEER, 1), 0.1)
    machine.pop_actions()
    machine.handle_client_packet(syn(key), "syn", 60, 0.2)

    machine.handle_message(Assertion(PEER, 2, key, score(key, ME) / 2), 0.201)

    log = untimed(run_until(machine, 0.5))
    assert claims(log) == [] and injected(log) == []
    assert not machine.owns(key)
    assert machine.drops["lost_claim"] == 1


# ------------------------------------------------------------ 6. conflict


@pytest.mark.parametrize(("sequence", "reset_at"), [(1000, 1001), (0xFFFFFFFF, 0)])
def test_owner_yields_to_a_higher_assertion_and_resets_locally(
    sequence: int, reset_at: int
) -> None:
    machine = new_machine()
    key = tcp_key()
    won_at = win_alone(machine, key, 0.1, sequence)
    run_until(machine, won_at + 0.1)  # the repeats are done
    higher = score(key, ME) + 1.0

    machine.handle_message(Assertion(RIVAL, 1, key, higher), 0.3)

    assert machine.pop_actions() == [ResetLocalSession(key, reset_at)]
    assert not machine.owns(key)
    session = session_of(machine, key)
    assert session.state is FOREIGN
    assert (session.owner, session.best_score) == (RIVAL, higher)
    assert machine.counters.conflicts == 1
    assert machine.counters.conflicts_yielded == 1
    assert machine.handle_client_packet(tcp(key, ACK), "ack", 54, 0.31) is Verdict.DROP
    assert assertion_times(run_until(machine, 5.0), key) == []


def test_udp_owner_yields_without_a_local_reset() -> None:
    machine = new_machine()
    flow = udp_key()
    win_alone(machine, flow, 2.0)

    machine.handle_message(Assertion(RIVAL, 1, flow, score(flow, ME) + 1.0), 2.1)

    assert machine.pop_actions() == []
    assert not machine.owns(flow)
    assert machine.counters.conflicts_yielded == 1
    assert machine.handle_client_packet(udp(flow), "dgram", 60, 2.2) is Verdict.DROP


def test_owner_yields_during_its_assertion_repeats_and_stops_repeating() -> None:
    machine = new_machine()
    key = tcp_key()
    won_at = win_alone(machine, key, 0.1)

    machine.handle_message(Assertion(RIVAL, 1, key, score(key, ME) + 1.0), won_at + 0.001)

    assert machine.pop_actions() == [ResetLocalSession(key, 1001)]
    assert assertion_times(run_until(machine, 1.5), key) == []


def test_owner_keeps_the_session_against_a_lower_assertion_and_answers() -> None:
    machine = new_machine()
    key = tcp_key()
    won_at = win_alone(machine, key, 0.1)
    run_until(machine, won_at + 0.1)
    my_score = score(key, ME)

    machine.handle_message(Assertion(RIVAL, 1, key, my_score / 2), 0.3)

    actions = machine.pop_actions()
    assert [type(action) for action in actions] == [SendMessage]
    assert assertions(actions) == [Assertion(ME, assertions(actions)[0].counter, key, my_score)]
    assert machine.owns(key)
    assert machine.counters.conflicts == 1
    assert machine.counters.conflicts_yielded == 0
    assert machine.handle_client_packet(tcp(key, ACK), "ack", 54, 0.31) is Verdict.INJECT


def test_equal_score_conflict_is_won_by_the_higher_member_id() -> None:
    machine = new_machine(5)
    key = tcp_key()
    won_at = win_alone(machine, key, 0.1)
    run_until(machine, won_at + 0.1)
    tied = score(key, 5)

    machine.handle_message(Assertion(4, 1, key, tied), 0.3)
    assert machine.owns(key)
    machine.handle_message(Assertion(6, 1, key, tied), 0.4)
    assert not machine.owns(key)
    assert machine.pop_actions()[-1] == ResetLocalSession(key, 1001)


# ----------------------------------------------- 7. answering a claim


def test_owner_answers_claims_at_most_once_per_guard() -> None:
    machine = new_machine()
    key = tcp_key()
    won_at = win_alone(machine, key, 0.1)
    run_until(machine, won_at + 0.1)
    my_score = score(key, ME)
    rival = score(key, RIVAL)
    first = 1.0
    machine.handle_timer(first)  # the hello tick, out of the way
    machine.pop_actions()

    machine.handle_message(Claim(RIVAL, 1, key, rival), first)
    answer = assertions(machine.pop_actions())
    assert answer == [Assertion(ME, answer[0].counter, key, my_score)]

    machine.handle_message(Claim(RIVAL, 2, key, rival), first + GUARD / 2)
    machine.handle_message(Claim(PEER, 1, key, rival), first + GUARD * 0.99)
    sent = messages(machine.pop_actions())
    assert [(type(message), getattr(message, "claimer", None)) for message in sent] == [
        (Acknowledgement, RIVAL),
        (Acknowledgement, PEER),
    ]

    machine.handle_message(Claim(RIVAL, 3, key, rival), first + GUARD)
    assert len(assertions(machine.pop_actions())) == 1
    assert machine.owns(key)
    assert machine.counters.conflicts == 0


# -------------------------------------------- 8. draining, not listening


def test_draining_member_announces_it_at_once_and_claims_nothing() -> None:
    machine = new_machine()
    machine.update_local(0.3, draining=True)

    sent = machine.pop_actions()
    assert len(sent) == 1
    (announcement,) = hellos(sent)
    assert announcement.member_id == ME
    assert announcement.draining
    assert not announcement.leaving
    assert machine.draining

    key = tcp_key()
    assert machine.handle_client_packet(syn(key), "syn", 60, 0.4) is Verdict.DROP
    assert machine.drops["not_claimed"] == 1
    assert machine.pop_actions() == []
    assert claims(untimed(run_until(machine, 3.0))) == []
    assert not machine.owns(key)


def test_a_declined_flow_knocking_again_is_still_one_session() -> None:
    """A draining member reconsiders an unclaimed flow whenever it comes back, but
    counts it as one session started, however often it knocks."""
    machine = new_machine()
    machine.update_local(0.0, draining=True)
    key = udp_key()
    for index in range(5):
        now = 0.1 + index * 2 * SETTINGS.reclaim_after
        assert machine.handle_client_packet(udp(key), "query", 60, now) is Verdict.DROP
    assert machine.drops["not_claimed"] == 5
    assert machine.counters.sessions_started == 1


@pytest.mark.parametrize("change", ["drain", "service_down"])
def test_a_backup_that_may_no_longer_claim_when_its_turn_comes_stays_silent(
    change: str,
) -> None:
    """Ranked second, it waits its turn; it starts draining (or its service stops)
    meanwhile: no claim goes out, and the queued packet is dropped."""
    machine = new_machine(listening=frozenset({(6, 80)}))
    machine.handle_message(hello(PEER, 1), 0.05)
    run_until(machine, 0.1)
    key = key_where(ranked_first(PEER, ME))
    assert machine.handle_client_packet(syn(key), "syn", 60, 0.1) is Verdict.QUEUED
    assert claims(machine.pop_actions()) == []  # not its turn yet
    if change == "drain":
        machine.update_local(0.101, draining=True)
    else:
        machine.update_local(0.101, listening=frozenset())
    machine.pop_actions()

    assert claims(untimed(run_until(machine, 0.5))) == []
    assert not machine.owns(key)
    assert machine.drops["not_claimed"] == 1


def test_draining_unchanged_sends_no_extra_hello() -> None:
    machine = new_machine()
    machine.update_local(0.3, draining=False)
    assert machine.pop_actions() == []


def test_port_not_listening_is_never_claimed() -> None:
    machine = new_machine(listening=frozenset({(TCP, 443)}))
    closed, open_ = tcp_key(cluster_port=80), tcp_key(cluster_port=443)

    assert machine.handle_client_packet(syn(closed), "syn", 60, 0.1) is Verdict.DROP
    assert machine.drops["not_claimed"] == 1
    assert machine.pop_actions() == []
    assert machine.handle_client_packet(syn(open_), "syn", 60, 0.1) is Verdict.QUEUED
    assert [claim.session for claim in claims(machine.pop_actions())] == [open_]
    assert claims(untimed(run_until(machine, 1.5))) == []
    assert not machine.owns(closed)
    assert machine.owns(open_)


# ------------------------------------------------------- 9. late join


@pytest.mark.parametrize("peer_warming", [False, True], ids=["settled-peer", "warming-peer"])
def test_new_member_leaves_unseen_udp_flows_to_settled_peers(peer_warming: bool) -> None:
    machine = new_machine(now=0.0)
    flow = key_where(ranked_first(ME, PEER), udp_key)
    connection = key_where(ranked_first(ME, PEER))
    machine.handle_message(hello(PEER, 1, warming=peer_warming), 0.1)
    machine.pop_actions()
    now = 2.0  # past 1.5 hello intervals, still inside join_grace
    assert machine.is_warming(now)

    verdict = machine.handle_client_packet(udp(flow), "dgram", 60, now)
    sent = claims(machine.pop_actions())
    if peer_warming:
        # A cold start: nobody settled knows the flows, so the newcomer claims.
        assert verdict is Verdict.QUEUED
        assert [claim.session for claim in sent] == [flow]
    else:
        assert verdict is Verdict.DROP
        assert sent == []
        assert machine.drops["not_claimed"] == 1

    assert machine.handle_client_packet(syn(connection), "syn", 60, now) is Verdict.QUEUED
    (claim,) = claims(machine.pop_actions())
    assert (claim.member_id, claim.session, claim.score) == (ME, connection, score(connection, ME))


def test_new_member_claims_udp_flows_after_join_grace() -> None:
    machine = new_machine(now=0.0)
    flow = key_where(ranked_first(ME, PEER), udp_key)
    machine.handle_message(hello(PEER, 1), 0.1)
    machine.handle_message(hello(PEER, 2), 2.0)
    machine.pop_actions()
    now = SETTINGS.join_grace
    assert not machine.is_warming(now)

    assert machine.handle_client_packet(udp(flow), "dgram", 60, now) is Verdict.QUEUED
    assert [claim.session for claim in claims(machine.pop_actions())] == [flow]


# ---------------------------------- 10. messages ahead of the client packet


@pytest.mark.parametrize("kind", [Claim, Assertion])
def test_message_before_the_client_packet_is_remembered(kind: type[Claim | Assertion]) -> None:
    machine = new_machine()
    key = tcp_key()
    machine.handle_message(kind(RIVAL, 1, key, score(key, RIVAL)), 0.1)
    acknowledged = [(RIVAL, 1)] if kind is Claim else []
    actions = machine.pop_actions()
    assert [(message.claimer, message.claim_counter) for message in acknowledgements(actions)] == (
        acknowledged
    )
    assert len(actions) == len(acknowledged)
    assert session_of(machine, key).owner == RIVAL

    assert machine.handle_client_packet(syn(key), "syn", 60, 0.101) is Verdict.DROP
    assert machine.drops["foreign"] == 1
    assert machine.pop_actions() == []
    log = untimed(run_until(machine, 0.3))
    assert claims(log) == [] and injected(log) == []
    assert not machine.owns(key)
    assert machine.counters.claims_sent == 0


# ------------------------------------------------------------ 11. bounds


def test_session_queue_drops_its_oldest_packet_when_full() -> None:
    machine = new_machine(settings=replace(SETTINGS, max_queued_per_session=2))
    key = tcp_key()
    for index, now in enumerate((0.1, 0.101, 0.102)):
        verdict = machine.handle_client_packet(syn(key), f"p{index}", 60, now)
        assert verdict is Verdict.QUEUED
    assert machine.drops["queue_full"] == 1
    assert len(session_of(machine, key).queue) == 2
    assert machine.bound_violation() is None

    machine.handle_timer(0.1 + GUARD)
    assert injected(machine.pop_actions()) == [InjectPackets(key, ("p1", "p2"))]


def test_syn_flood_never_grows_the_table_past_max_sessions() -> None:
    machine = new_machine(settings=replace(SETTINGS, max_sessions=3))
    keys = [tcp_key(client_port=port) for port in range(50000, 50010)]
    for index, key in enumerate(keys):
        now = 0.1 + index * 0.0001
        assert machine.handle_client_packet(syn(key), key, 60, now) is Verdict.QUEUED
        assert machine.statistics()["sessions"] == min(index + 1, 3)
        assert machine.bound_violation() is None
    assert [machine.session(key) is not None for key in keys] == [False] * 7 + [True] * 3
    assert machine.drops["table_full"] == 7

    log = untimed(run_until(machine, 0.5))
    assert injected(log) == [InjectPackets(key, (key,)) for key in keys[7:]]
    assert machine.bound_violation() is None


def test_a_full_table_evicts_a_half_open_session_of_ours_from_the_kernel_too() -> None:
    """Won, but the client never acknowledged: evicted first, and the local kernel
    is told to forget its half-open connection (else it lingers unreachable)."""
    machine = new_machine(settings=replace(SETTINGS, max_sessions=1))
    half_open = tcp_key(client_port=50000)
    win_alone(machine, half_open, 0.1, sequence=5000)
    newcomer = tcp_key(client_port=50001)

    assert machine.handle_client_packet(syn(newcomer), "syn", 60, 0.2) is Verdict.QUEUED

    assert machine.session(half_open) is None
    assert ResetLocalSession(half_open, 5001) in machine.pop_actions()
    assert machine.drops["table_full"] == 0  # its packets were all injected already


def test_stale_timers_stay_bounded_when_a_departing_peer_takes_its_sessions() -> None:
    """Removing sessions leaves their timers behind in the heap; the table drops
    them once they outnumber its bound, not only when it schedules new ones."""
    machine = new_machine()
    machine.handle_message(hello(RIVAL, 1), 0.1)
    for port in range(3000):
        key = tcp_key(client_port=10000 + port)
        machine.handle_message(Claim(RIVAL, 2 + port, key, score(key, RIVAL)), 0.2)
    assert machine.statistics()["foreign"] == 3000

    farewell = Hello(RIVAL, 3002, 1.0, draining=False, warming=False, leaving=True)
    machine.handle_message(farewell, 0.3)

    assert machine.statistics()["sessions"] == 0
    assert machine.bound_violation() is None


def test_total_queue_bound_holds_across_sessions() -> None:
    machine = new_machine(settings=replace(SETTINGS, max_queued_packets=3))
    first, second, third = (tcp_key(client_port=port) for port in (50000, 50001, 50002))
    machine.handle_client_packet(syn(first), "a0", 60, 0.1)
    machine.handle_client_packet(syn(first), "a1", 60, 0.1)
    machine.handle_client_packet(syn(second), "b0", 60, 0.1)
    assert machine.statistics()["queued_packets"] == 3

    assert machine.handle_client_packet(syn(third), "c0", 60, 0.1) is Verdict.QUEUED

    assert machine.statistics()["queued_packets"] == 3
    assert machine.drops["queue_full"] == 1
    assert machine.bound_violation() is None
    machine.handle_timer(0.1 + GUARD)
    assert injected(machine.pop_actions()) == [
        InjectPackets(first, ("a1",)),
        InjectPackets(second, ("b0",)),
        InjectPackets(third, ("c0",)),
    ]


# ---------------------------------------------------------- 12. timeouts


def test_owned_udp_flow_expires_after_idle_timeout_from_its_last_packet() -> None:
    machine = new_machine()
    flow = udp_key()
    start = 2.0
    win_alone(machine, flow, start)
    idle = SETTINGS.udp_idle_timeout

    run_until(machine, start + idle - 0.001)
    assert machine.owns(flow)
    active = start + idle / 2
    assert machine.handle_client_packet(udp(flow), "dgram", 60, active) is Verdict.INJECT

    run_until(machine, start + idle)  # the first deadline passes: pushed back
    assert machine.owns(flow)
    run_until(machine, active + idle - 0.001)
    assert machine.owns(flow)
    run_until(machine, active + idle)
    assert machine.session(flow) is None


def test_owned_udp_flow_expires_exactly_at_idle_timeout_when_silent() -> None:
    machine = new_machine()
    flow = udp_key()
    win_alone(machine, flow, 2.0)
    run_until(machine, 2.0 + SETTINGS.udp_idle_timeout - 0.001)
    assert machine.owns(flow)
    run_until(machine, 2.0 + SETTINGS.udp_idle_timeout)
    assert machine.session(flow) is None
    assert machine.statistics()["sessions"] == 0


def test_client_fin_closes_the_session_after_fin_timeout() -> None:
    machine = new_machine()
    key = tcp_key()
    won_at = win_alone(machine, key, 0.1)
    machine.handle_client_packet(tcp(key, ACK), "ack", 54, won_at)
    run_until(machine, 1.0)
    fin_at = 1.5

    assert machine.handle_client_packet(tcp(key, FIN | ACK), "fin", 54, fin_at) is Verdict.INJECT
    assert session_of(machine, key).state is CLOSING
    assert machine.statistics()["closing"] == 1
    assert machine.owns(key)

    run_until(machine, fin_at + SETTINGS.fin_timeout - 0.001)
    assert machine.session(key) is not None
    run_until(machine, fin_at + SETTINGS.fin_timeout)
    assert machine.session(key) is None


def test_client_rst_closes_an_owned_session_which_lingers_for_fin_timeout() -> None:
    """The local kernel judges the RST; a forged one (out of window) must not make
    the member forget a live connection, so the session lingers while traffic goes on."""
    machine = new_machine()
    key = tcp_key()
    won_at = win_alone(machine, key, 0.1)
    machine.handle_client_packet(tcp(key, ACK), "ack", 54, won_at)

    assert machine.handle_client_packet(tcp(key, RST), "rst", 54, 0.2) is Verdict.INJECT
    assert session_of(machine, key).state is CLOSING
    assert machine.handle_client_packet(tcp(key, ACK), "more", 54, 5.0) is Verdict.INJECT
    run_until(machine, 5.0 + SETTINGS.fin_timeout - 0.01)
    assert machine.session(key) is not None
    run_until(machine, 5.0 + SETTINGS.fin_timeout + 1.0)
    assert machine.session(key) is None


def test_fragments_of_a_first_datagram_wait_with_it() -> None:
    machine = new_machine(now=0.0)
    run_until(machine, SETTINGS.join_grace + 0.1)  # past warm-up: UDP flows may be claimed
    key = udp_key()
    fragment = FragmentKey(UDP, CLIENT, CLUSTER, 0x5150)
    first = Classified(FrameKind.UDP, key, 0, 14, 42, 0, None, fragment)
    later = Classified(FrameKind.FRAGMENT, None, 0, 14, 34, 0, None, fragment)
    now = SETTINGS.join_grace + 0.2
    assert machine.handle_client_packet(first, "first", 1514, now) is Verdict.QUEUED
    assert machine.handle_client_packet(later, "later", 600, now + 0.0001) is Verdict.QUEUED
    machine.pop_actions()
    machine.handle_timer(now + GUARD)
    assert injected(machine.pop_actions()) == [InjectPackets(key, ("first", "later"))]


def test_client_rst_aborts_a_pending_claim() -> None:
    machine = new_machine()
    key = tcp_key()
    machine.handle_client_packet(syn(key), "syn", 60, 0.1)
    machine.pop_actions()

    assert machine.handle_client_packet(tcp(key, RST), "rst", 54, 0.101) is Verdict.DROP
    assert machine.session(key) is None
    assert machine.drops["aborted"] == 2  # the queued SYN and the RST itself
    assert untimed(run_until(machine, 0.5)) == []


# ----------------------------------------------------- 13. loss detection


def reassertion_setup() -> tuple[ClaimMachine, SessionKey, SessionKey]:
    """Won `before` alone; learned PEER from its first hello (counter 1) at 0.5;
    claimed `since` at 0.55 and won it at 0.65 (PEER never acknowledges)."""
    machine = new_machine(now=0.0)
    before = key_where(ranked_first(ME, PEER))
    since = key_where(lambda key: key != before and ranked_first(ME, PEER)(key))
    win_alone(machine, before, 0.1)
    run_until(machine, 0.4)

    machine.handle_message(hello(PEER, 1), 0.5)
    # The newcomer gets our hello now, and an assertion of each running
    # session at the wakeup the machine asks for at the same instant.
    answer = machine.pop_actions()
    assert [type(message) for message in messages(answer)] == [Hello]
    assert machine.next_wakeup() == 0.5
    assert assertion_times(run_until(machine, 0.5), before) == [0.5]

    assert win_alone(machine, since, 0.55) == 0.55 + SETTINGS.ack_timeout
    run_until(machine, 0.69)  # its assertion repeats are done
    return machine, before, since


def test_counter_gap_reasserts_sessions_won_since_on_the_resync_schedule() -> None:
    machine, before, since = reassertion_setup()
    gap_at = 0.7

    machine.handle_message(hello(PEER, 4), gap_at)  # 2 and 3 never arrive
    assert machine.pop_actions() == []
    check_at = gap_at + SETTINGS.reorder_window
    assert machine.next_wakeup() == check_at

    log = run_until(machine, 6.0)
    assert assertion_times(log, since) == [check_at + offset for offset in SETTINGS.resync_repeats]
    assert assertion_times(log, before) == []


def test_a_second_loss_late_in_a_resync_plan_starts_a_whole_new_plan() -> None:
    """Messages from RIVAL go missing when the session's plan (from PEER's gap) has
    one assertion left: the session gets every assertion of a new plan."""
    machine, before, since = reassertion_setup()
    machine.handle_message(hello(RIVAL, 1), 0.65)
    run_until(machine, 0.7)
    late = key_where(lambda key: key not in (before, since) and ranked_first(ME, PEER, RIVAL)(key))
    win_alone(machine, late, 0.75)
    machine.handle_message(hello(PEER, 4), 0.8)  # PEER's 2 and 3 lost
    run_until(machine, 4.0)
    machine.handle_message(hello(RIVAL, 5), 4.0)  # RIVAL's 2 to 4 lost
    check_at = 4.0 + SETTINGS.reorder_window

    log = run_until(machine, 10.0)
    first_plan_end = 0.8 + SETTINGS.reorder_window + SETTINGS.resync_repeats[-1]
    assert first_plan_end > check_at  # one assertion of the first plan was left
    # `since` (won at 0.65, when RIVAL was last heard in order) is on the new
    # plan too, one resync spacing ahead of `late`.
    spacing = 1 / SETTINGS.resync_rate
    assert [time for time in assertion_times(log, late) if time >= check_at] == pytest.approx(
        [check_at + spacing + offset for offset in SETTINGS.resync_repeats]
    )


def test_counter_gap_filled_within_reorder_window_reasserts_nothing() -> None:
    machine, before, since = reassertion_setup()
    gap_at = 0.7

    machine.handle_message(hello(PEER, 4), gap_at)
    machine.handle_message(hello(PEER, 3), gap_at + 0.004)
    machine.handle_message(hello(PEER, 2), gap_at + 0.006)
    assert machine.pop_actions() == []

    log = run_until(machine, 6.0)
    assert assertion_times(log, since) == []
    assert assertion_times(log, before) == []


def test_counter_gap_half_filled_is_still_a_loss() -> None:
    machine, _, since = reassertion_setup()
    machine.handle_message(hello(PEER, 4), 0.7)
    machine.handle_message(hello(PEER, 2), 0.705)

    log = run_until(machine, 6.0)
    check_at = 0.7 + SETTINGS.reorder_window
    assert assertion_times(log, since) == [check_at + offset for offset in SETTINGS.resync_repeats]


def test_peer_back_after_being_forgotten_hears_sessions_won_meanwhile() -> None:
    """A healed partition: the peer was given up on, then speaks again."""
    machine = new_machine(now=0.0)
    early = key_where(ranked_first(ME, PEER))
    meanwhile = key_where(lambda key: key != early and ranked_first(ME, PEER)(key))
    win_alone(machine, early, 0.1)
    machine.handle_message(hello(PEER, 1), 0.5)  # last heard at 0.5
    run_until(machine, 5.0)
    assert machine.statistics()["members"] == 0  # forgotten at the tick at 5.0
    win_alone(machine, meanwhile, 5.5)
    run_until(machine, 5.9)

    machine.handle_message(hello(PEER, 40), 6.0)

    log = [(6.0, action) for action in machine.pop_actions()] + run_until(machine, 12.0)
    assert assertion_times(log, meanwhile) == [6.0 + offset for offset in SETTINGS.resync_repeats]
    # The peer forgot our sessions when it gave up on us: it hears the older one once.
    assert len(assertion_times(log, early)) == 1


def test_a_peer_first_heard_mid_life_hears_recent_sessions_until_one_gets_through() -> None:
    """Its first hello has counter 40: it ran cut off from us (a partition at its start)
    and may own sessions we won meanwhile. Sessions won within its possible lifetime
    (it is warming, so at most join_grace old) get the resync schedule; older ones, once."""
    machine = new_machine(now=0.0)
    old = key_where(ranked_first(ME, PEER))
    recent = key_where(lambda key: key != old and ranked_first(ME, PEER)(key))
    win_alone(machine, old, 0.1)
    meet_at = 0.1 + SETTINGS.join_grace + SETTINGS.hello_interval + 0.5
    win_alone(machine, recent, meet_at - 1.0)
    run_until(machine, meet_at - 0.5)

    machine.handle_message(hello(PEER, 40, warming=True), meet_at)

    log = [(meet_at, action) for action in machine.pop_actions()]
    log += run_until(machine, meet_at + 6.0)
    times = assertion_times(log, recent)
    assert len(times) == len(SETTINGS.resync_repeats)
    assert times[-1] - times[0] == pytest.approx(
        SETTINGS.resync_repeats[-1] - SETTINGS.resync_repeats[0]
    )
    assert len(assertion_times(log, old)) == 1


# ------------------------------------------------- 14. a silent peer is gone


def test_silent_peer_is_forgotten_at_the_next_hello_tick_with_its_sessions() -> None:
    machine = new_machine(now=0.0)
    flow = udp_key()
    machine.handle_message(hello(PEER, 1), 0.5)
    machine.handle_message(Assertion(PEER, 2, flow, score(flow, PEER)), 0.6)
    machine.pop_actions()
    assert machine.handle_client_packet(udp(flow), "dgram", 60, 0.7) is Verdict.DROP
    assert machine.drops["foreign"] == 1

    # Heard last at 0.6: alive at the tick at 4.0 (3.4 s), gone at the tick at 5.0.
    run_until(machine, 4.0)
    assert machine.statistics()["members"] == 1
    assert session_of(machine, flow).owner == PEER
    assert machine.peers(4.5) == []  # no longer alive, but forgotten only at a tick
    assert machine.statistics()["members"] == 1
    assert machine.next_wakeup() == 5.0

    run_until(machine, 5.0)
    assert machine.statistics()["members"] == 0
    assert machine.session(flow) is None

    assert machine.handle_client_packet(udp(flow), "dgram", 60, 5.1) is Verdict.QUEUED
    assert [claim.session for claim in claims(machine.pop_actions())] == [flow]


def test_peer_heard_again_in_time_is_not_forgotten() -> None:
    machine = new_machine(now=0.0)
    flow = udp_key()
    machine.handle_message(hello(PEER, 1), 0.5)
    machine.handle_message(Assertion(PEER, 2, flow, score(flow, PEER)), 0.6)
    machine.handle_message(hello(PEER, 3), 3.0)
    run_until(machine, 5.0)
    assert machine.statistics()["members"] == 1
    assert session_of(machine, flow).owner == PEER


# ------------------------------------------------------------- 15. leaving


def test_leaving_member_says_so_and_peers_forget_it_at_once() -> None:
    a, b = ClaimMachine(ME, SETTINGS, 0.0), new_machine(PEER)
    deliver(a.pop_actions(), b, 0.01)
    assert b.statistics()["members"] == 1
    b.pop_actions()
    key = tcp_key()
    a.handle_client_packet(syn(key), "syn", 60, 0.1)
    deliver(a.pop_actions(), b, 0.1)
    assert [ack.claimer for ack in acknowledgements(b.pop_actions())] == [ME]
    a.handle_timer(0.1 + GUARD)
    deliver(a.pop_actions(), b, 0.1 + GUARD)
    assert session_of(b, key).owner == ME

    a.leave(0.2)

    sent = a.pop_actions()
    assert len(sent) == 1
    (goodbye,) = hellos(sent)
    assert goodbye.leaving
    assert goodbye.draining
    assert goodbye.weight == 0.0
    deliver(sent, b, 0.2)
    assert b.statistics()["members"] == 0
    assert b.peers(0.2) == []
    assert b.session(key) is None
    assert b.pop_actions() == []


# --------------------------------------------------------- 16. settings


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"guard": -0.001}, "guard"),
        ({"guard": 0.0}, "guard"),
        ({"claim_step": float("nan")}, "claim_step"),
        ({"assertion_repeats": (0.002, -1.0)}, "assertion_repeats"),
        ({"member_timeout": 1.0, "hello_interval": 1.0}, "member_timeout"),
        ({"member_timeout": 0.2}, "member_timeout"),
        ({"max_sessions": 0}, "max_sessions"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(
    changes: dict[str, object], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        ClaimSettings(**changes)  # type: ignore[arg-type]


def test_default_settings_are_accepted() -> None:
    ClaimSettings()  # raises SettingsError if the defaults contradict each other


# ---------------------------------------- 17. a settled claimer needs no guard


def _exchange(machines: list[ClaimMachine], now: float) -> None:
    """Deliver every message each machine sends to the others, until quiet."""
    for _ in range(20):
        sent = [
            (machine, action.message)
            for machine in machines
            for action in machine.pop_actions()
            if isinstance(action, SendMessage)
        ]
        if not sent:
            return
        for sender, message in sent:
            for machine in machines:
                if machine is not sender:
                    machine.handle_message(message, now)


@pytest.mark.parametrize("settled", [True, False])
def test_a_settled_claimer_decides_on_the_last_acknowledgement_with_no_guard(
    settled: bool,
) -> None:
    """Every live member acknowledged: once no member was met or lost for a
    join grace, the claim is decided then, not `guard` after it was sent; a
    member that met a peer lately still waits the guard."""
    start = 0.0 if settled else 10.0
    me = ClaimMachine(ME, SETTINGS, 0.0)
    peer = ClaimMachine(PEER, SETTINGS, start)
    now = start + 0.01
    _exchange([me, peer], now)  # they meet at `start`
    until = start + SETTINGS.join_grace + 0.1 if settled else start + 0.2
    while now < until:  # both run, and hear each other's hellos
        now = min(until, now + 0.05)
        for machine in (me, peer):
            machine.handle_timer(now)
        _exchange([me, peer], now)
    assert me.is_settled(now) is settled
    key = tcp_key(41000)
    assert me.handle_client_packet(syn(key), "first", 60, now) is Verdict.QUEUED
    _exchange([me, peer], now)  # the claim, and the peer's acknowledgement
    expected = now if settled else now + SETTINGS.guard
    assert me.next_wakeup() == pytest.approx(expected)
    me.handle_timer(expected)
    assert me.owns(key)
