"""The simulated segment: members, clients and a faulty network, in one event loop.

Each member runs a real `ClaimMachine`: by default with claimed buckets
(protocols.buckets), or, for comparison, claiming every session on its own
("per-session"), with the rule before acknowledgements ("fixed-guard"), or
the original first-seen rule. Every client packet is flooded to every member
with a delay drawn per receiver, so members see different orders, as on a
switched network. Claim messages are broadcast the same way and may be lost,
duplicated, delayed past the guard window or cut by partitions. A frozen
member (SIGSTOP) runs nothing; what reaches it waits, and is handled at once
when it resumes. The invariant checker (`tools.sim.invariants`) runs after
every step.

Everything is drawn from the scenario's seed; the run also folds every event
into a trace hash, so two runs of one seed can be compared in one line.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
from dataclasses import dataclass, field

from protocols.bucket_hash import cluster_seed
from protocols.buckets import Buckets, BucketSettings
from protocols.claim_machine import (
    ACKNOWLEDGED,
    ClaimMachine,
    ClaimSettings,
    InjectPackets,
    MemberMachine,
    ResetLocalSession,
    SendMessage,
    Verdict,
)
from protocols.classifier import Classified, FrameKind
from protocols.numbers import TcpFlags
from protocols.session_key import SessionKey
from protocols.wire.claim import Acknowledgement, Assertion, Claim, ClaimMessage
from tools.sim.first_seen import FirstSeenMachine
from tools.sim.fixed_guard import FIXED_GUARD
from tools.sim.invariants import InvariantChecker, Violation
from tools.sim.scenario import GIVE_UP_AFTER, Scenario

# Event kinds, ordered only for readability of traces.
MEMBER_START = 0
CLIENT = 1
DELIVER_PACKET = 2
DELIVER_MESSAGE = 3
WAKE = 4
FAULT_BEGIN = 5
FAULT_END = 6
ANSWER = 7
LOCAL_UPDATE = 8  # draining or listening ports change (an operator, a service)

# The project's rule (claimed buckets, then claims for open buckets), and
# the rules it is compared with.
POLICIES = ("rendezvous", "per-session", "first-seen", "fixed-guard")
DEFAULT_POLICY = "rendezvous"
BUCKET_COUNT = 64

# What a client does next.
SEND_FIRST = 0
RETRANSMIT = 1
SEND_ACK = 2
SEND_DATA = 3
SEND_LAST = 4

TCP_SYN, TCP_ACK, TCP_RST = int(TcpFlags.SYN), int(TcpFlags.ACK), int(TcpFlags.RST)
TCP_DATA = int(TcpFlags.PSH | TcpFlags.ACK)
TCP_FIN = int(TcpFlags.FIN | TcpFlags.ACK)
CLUSTER_ADDRESS = bytes([192, 0, 2, 10])
RETRANSMIT_GAPS = (1.0, 2.0, 4.0)  # then 4 s until the client gives up
REPLY_DELAY = 0.0003  # from a member's kernel back to the client


def bucket_settings(seed: int, settings: ClaimSettings) -> BucketSettings:
    """The buckets of one run: every member cuts the session space alike,
    with a jhash seed fixed by the run's seed."""
    return BucketSettings(
        count=BUCKET_COUNT,
        seed=cluster_seed(CLUSTER_ADDRESS, (seed & (2**64 - 1)).to_bytes(8, "big")),
        lease=settings.member_timeout / 2,
        udp_transition=settings.udp_idle_timeout,
    )


@dataclass
class SimMember:
    index: int
    weight: float
    load: float
    listening: set[tuple[int, int]]
    machine: MemberMachine | None = None
    generation: int = 0
    wake_at: float = float("inf")
    started_at: float = 0.0
    draining: bool = False
    # Frozen (SIGSTOP): it runs nothing; what reaches it waits in `backlog`
    # as (event kind, payload) until it resumes.
    frozen: bool = False
    backlog: list[tuple[int, object]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.machine is not None


@dataclass
class ClientSession:
    index: int
    key: SessionKey
    transport: int
    start: float
    data_packets: int
    gap: float
    ends_with_rst: bool
    sent: int = 0  # packet numbers handed out so far
    retransmits: int = 0
    answered_at: float | None = None
    answered_by: int | None = None
    done: bool = False


@dataclass
class RunResult:
    seed: int
    policy: str
    violations: list[Violation]
    trace_hash: str
    events: int
    sessions: int
    served: int
    conflicts: int
    conflict_time: float
    broken: int
    claims_sent: int
    messages_lost: int
    served_at_once: int = 0  # first packets served from a held bucket, with no claim
    bucket_conflicts: int = 0  # times two members held one bucket at once
    messages_sent: int = 0  # claim messages sent (within the counting window)
    messages_handled: int = 0  # ... and handled by a member
    messages_by_kind: dict[str, int] = field(default_factory=dict)  # sent, by message type
    owners: dict[int, int] = field(default_factory=dict)  # member index -> sessions won
    held: dict[int, int] = field(default_factory=dict)  # member index -> buckets held at the end
    tags: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # every event, with replay --trace


class SimulatedCluster:
    def __init__(
        self,
        scenario: Scenario,
        *,
        policy: str = DEFAULT_POLICY,
        settings: ClaimSettings | None = None,
        trace: bool = False,
        count_messages: tuple[float, float] = (0.0, float("inf")),
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from: {', '.join(POLICIES)}")
        self.scenario = scenario
        self.policy = policy
        self.settings = settings or ClaimSettings()
        self.buckets = (
            bucket_settings(scenario.seed, self.settings) if policy == "rendezvous" else None
        )
        self.rng = random.Random(scenario.seed * 7919 + 17)
        # Member ids come from their own generator, so that runs of one seed
        # that differ in their traffic (tools.sim messages) have the same members.
        self.id_rng = random.Random(scenario.seed * 104729 + 7)
        self.index_of: dict[int, int] = {}  # member id -> member index
        # (claimer id, claim counter) -> (session, when the claim left): for
        # acknowledgements that come back after the claimer's ack_timeout.
        self.claims_out: dict[tuple[int, int], tuple[SessionKey, float]] = {}
        self.events: list[tuple[float, int, int, int, int, object]] = []
        self.serial = 0
        self.now = 0.0
        self.hash = hashlib.sha256()
        self.event_count = 0
        self.trace = trace
        self.trace_lines: list[str] = []
        all_ports = {(6, port) for port in scenario.ports} | {(17, port) for port in scenario.ports}
        self.members = [
            SimMember(index, plan.weight, plan.load, set(all_ports))
            for index, plan in enumerate(scenario.members)
        ]
        self.sessions: list[ClientSession] = []
        self.by_key: dict[SessionKey, ClientSession] = {}
        for index, plan in enumerate(scenario.sessions):
            client = bytes([198, 51, 100 + index // 250, 1 + index % 250])
            key = SessionKey(
                plan.transport, client, 20000 + index, CLUSTER_ADDRESS, plan.cluster_port
            )
            session = ClientSession(
                index,
                key,
                plan.transport,
                plan.start,
                plan.data_packets,
                plan.gap,
                plan.ends_with_rst,
            )
            self.sessions.append(session)
            self.by_key[key] = session
        self.active_faults: dict[int, bool] = {}
        self.rates: dict[str, float] = {}
        self.slow: dict[int, float] = {}  # member index: extra delay of its traffic
        self.messages_lost = 0
        self.count_from, self.count_until = count_messages
        self.messages_sent = 0
        self.messages_handled = 0
        self.messages_by_kind: dict[str, int] = {}
        self.served_at_once = 0
        self.checker = InvariantChecker(self)

    # ------------------------------------------------------------ event loop

    def push(self, at: float, kind: int, a: int = 0, b: int = 0, payload: object = None) -> None:
        self.serial += 1
        heapq.heappush(self.events, (at, self.serial, kind, a, b, payload))

    def run(self) -> RunResult:
        scenario = self.scenario
        for index, plan in enumerate(scenario.members):
            self.push(plan.start, MEMBER_START, index)
        for session in self.sessions:
            self.push(session.start, CLIENT, session.index, SEND_FIRST)
        for index, fault in enumerate(scenario.faults):
            self.push(fault.start, FAULT_BEGIN, index)
            if fault.end != float("inf"):
                self.push(fault.end, FAULT_END, index)
        end = scenario.end_time
        events = self.events
        while events and events[0][0] <= end:
            at, _, kind, a, b, payload = heapq.heappop(events)
            self.now = at
            self.event_count += 1
            self.hash.update(struct.pack("!dBII", at, kind, a, b))
            if self.trace:
                self.trace_lines.append(f"{at:.6f} {kind} {a} {b} {payload!r}")
            self.dispatch(kind, a, b, payload)
            self.checker.after_step(at)
        self.now = end
        self.checker.finish(end)
        return self.result()

    def dispatch(self, kind: int, a: int, b: int, payload: object) -> None:
        if kind == DELIVER_PACKET:
            self.deliver_packet(a, b, payload)  # type: ignore[arg-type]
        elif kind == DELIVER_MESSAGE:
            self.deliver_message(a, b, payload)  # type: ignore[arg-type]
        elif kind == WAKE:
            self.wake(a, b)
        elif kind == CLIENT:
            self.client_step(self.sessions[a], b)
        elif kind == ANSWER:
            self.answer(self.sessions[a], b)
        elif kind == MEMBER_START:
            self.start_member(self.members[a])
        elif kind == FAULT_BEGIN:
            self.fault(a, begin=True)
        elif kind == FAULT_END:
            self.fault(a, begin=False)
        elif kind == LOCAL_UPDATE:
            self.local_update(self.members[a], payload)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- members

    def new_machine(self, member: SimMember) -> MemberMachine:
        member_id = self.id_rng.getrandbits(64)
        self.index_of[member_id] = member.index
        listening = frozenset(member.listening)
        if self.policy == "first-seen":
            return FirstSeenMachine(member_id, self.now, listening=listening)
        return ClaimMachine(
            member_id,
            self.settings,
            self.now,
            weight=member.weight,
            load=member.load,
            draining=member.draining,
            listening=listening,
            decision_rule=FIXED_GUARD if self.policy == "fixed-guard" else ACKNOWLEDGED,
            buckets=self.buckets,
        )

    def start_member(self, member: SimMember) -> None:
        self.drop_backlog(member)
        member.machine = self.new_machine(member)
        member.generation += 1
        member.started_at = self.now
        member.wake_at = float("inf")
        self.checker.member_started(member)
        self.after_member_step(member, [])

    def crash(self, member: SimMember) -> None:
        self.drop_backlog(member)  # kill -9 ends a stopped process too
        if member.machine is None:
            return
        member.machine = None
        member.generation += 1
        member.wake_at = float("inf")
        self.checker.member_crashed(member)

    def freeze(self, member: SimMember) -> None:
        """SIGSTOP: no timers, no deliveries, until `resume`."""
        if member.machine is None or member.frozen:
            return
        member.frozen = True
        self.checker.member_frozen(member)

    def resume(self, member: SimMember) -> None:
        """SIGCONT: everything that reached the member meanwhile (its full TAP
        queue, its control socket) is handled at once, in arrival order, then
        its overdue timers run."""
        if not member.frozen:
            return
        member.frozen = False
        backlog, member.backlog = member.backlog, []
        for kind, payload in backlog:
            self.push(self.now, kind, member.index, member.generation, payload)
        member.wake_at = self.now
        self.push(self.now, WAKE, member.index, member.generation)
        self.checker.member_resumed(member)

    def drop_backlog(self, member: SimMember) -> None:
        """The process is gone with what it had not read; an operator's
        drain or a service's ports still hold for the next start."""
        backlog, member.backlog = member.backlog, []
        member.frozen = False
        for kind, payload in backlog:
            if kind == LOCAL_UPDATE:
                self.apply_local_facts(member, payload)  # type: ignore[arg-type]

    def wake(self, index: int, generation: int) -> None:
        member = self.members[index]
        if member.machine is None or generation != member.generation or member.frozen:
            return
        if self.now < member.wake_at:
            return  # a later wake-up replaced this one
        member.wake_at = float("inf")
        member.machine.handle_timer(self.now)
        self.after_member_step(member, [])

    def after_member_step(self, member: SimMember, injected: list[tuple[int, int]]) -> None:
        machine = member.machine
        assert machine is not None
        for action in machine.pop_actions():
            if isinstance(action, SendMessage):
                self.broadcast(member, action.message)
            elif isinstance(action, InjectPackets):
                for packet in action.packets:
                    injected.append(packet)  # type: ignore[arg-type]
            elif isinstance(action, ResetLocalSession):
                self.checker.reset_local(member, action.key)
        for session_index, number in injected:
            self.injected(member, self.sessions[session_index], number)
        self.checker.member_stepped(member)
        wake = machine.next_wakeup()
        if wake < member.wake_at:
            member.wake_at = wake
            self.push(max(wake, self.now), WAKE, member.index, member.generation)

    def injected(self, member: SimMember, session: ClientSession, number: int) -> None:
        self.checker.injected(member, session, number)
        if number_is_first(session, number) and session.answered_at is None:
            self.push(self.now + REPLY_DELAY, ANSWER, session.index, member.index)

    # ---------------------------------------------------------------- network

    def broadcast(self, sender: SimMember, message: ClaimMessage) -> None:
        key = message.session if isinstance(message, Claim | Assertion) else None
        if isinstance(message, Claim | Assertion):
            self.checker.message_sent(sender, message)
        # The claim an acknowledgement answers, and when that claim is decided
        # on its timeout whatever answers are still on their way.
        answered: tuple[SessionKey, float] | None = None
        if isinstance(message, Claim):
            self.claims_out[message.member_id, message.counter] = (message.session, self.now)
            answered = (message.session, self.now + self.settings.ack_timeout)
        elif isinstance(message, Acknowledgement):
            claim = self.claims_out.get((message.claimer, message.claim_counter))
            if claim is not None:
                answered = (claim[0], claim[1] + self.settings.ack_timeout)
        if self.count_from <= self.now < self.count_until:
            self.messages_sent += 1
            name = type(message).__name__
            self.messages_by_kind[name] = self.messages_by_kind.get(name, 0) + 1
        rng = self.rng
        scenario = self.scenario
        late_faults = bool(
            self.slow or self.fault_rate("reordering") or self.fault_rate("delay_spikes")
        )
        for member in self.members:
            if member is sender or member.machine is None:
                continue
            if self.blocked(sender.index, member.index) or rng.random() < self.loss_rate():
                self.lost(sender, member, key)
                continue
            delay = min(scenario.delay_max, rng.expovariate(1.0 / scenario.delay_mean)) + 0.00002
            extra = self.slowness(sender.index) + self.slowness(member.index) if self.slow else 0.0
            reordering = self.fault_rate("reordering")
            if reordering:
                extra += rng.uniform(0.0, reordering)
            if extra:
                delay += extra
                if key is not None and not (
                    self.knows(member, sender) and self.knows(sender, member)
                ):
                    # Only members that know each other wait for each other's
                    # acknowledgements; against a member not heard yet, the
                    # guard is all there is, and this delay may pass it. (A
                    # joiner that has not heard a bucket's holder yet claims
                    # one of its sessions waiting only for the members it
                    # knows; the holder's answer is this late.)
                    self.lost(sender, member, key)
            spikes = self.fault_rate("delay_spikes")
            if spikes and rng.random() < spikes:
                delay += rng.uniform(0.005, 0.05)  # well past the guard window
                self.lost(sender, member, key)
            if late_faults and answered is not None and self.now + delay >= answered[1]:
                # A claim, or its acknowledgement, arrives after the claimer
                # decided on ack_timeout, made late by a fault (a slow member
                # whose messages are also reordered): a timeout of rule 3, as
                # good as lost. (Timeouts shorter than the network's own
                # delays are not excused: the checker must catch them.)
                self.checker.message_delayed(sender, member, answered[0])
            self.push(self.now + delay, DELIVER_MESSAGE, member.index, member.generation, message)
            duplication = self.fault_rate("duplication")
            if duplication and rng.random() < duplication:
                self.push(
                    self.now + delay + rng.uniform(0, 0.01),
                    DELIVER_MESSAGE,
                    member.index,
                    member.generation,
                    message,
                )

    def lost(self, sender: SimMember, receiver: SimMember, key: SessionKey | None) -> None:
        self.messages_lost += 1
        self.checker.message_lost(sender, receiver, key)

    def loss_rate(self) -> float:
        return self.scenario.base_loss + self.fault_rate("loss")

    def fault_rate(self, kind: str) -> float:
        return self.rates.get(kind, 0.0)

    def refresh_rates(self) -> None:
        self.rates = {}
        self.slow = {}
        for index in self.active_faults:
            fault = self.scenario.faults[index]
            self.rates[fault.kind] = max(self.rates.get(fault.kind, 0.0), fault.rate)
            if fault.kind == "slow_member":
                for member in fault.members:
                    self.slow[member] = max(self.slow.get(member, 0.0), fault.rate)

    def knows(self, receiver: SimMember, sender: SimMember) -> bool:
        assert receiver.machine is not None and sender.machine is not None
        return receiver.machine.knows(sender.machine.member_id, self.now)

    def slowness(self, index: int) -> float:
        """A slow member (a starved CPU) reads and writes everything this much
        late. Not a loss: the rule must stay safe without counting it as one."""
        return self.slow.get(index, 0.0)

    def blocked(self, sender: int, receiver: int) -> bool:
        for index in self.active_faults:
            fault = self.scenario.faults[index]
            if fault.kind == "partition":
                if (sender in fault.members) != (receiver in fault.members):
                    return True
            elif (
                fault.kind == "one_way_partition"
                and sender in fault.members
                and receiver in fault.other
            ):
                return True
        return False

    def partitioned(self) -> bool:
        return any(
            self.scenario.faults[index].kind in ("partition", "one_way_partition")
            for index in self.active_faults
        )

    def deliver_message(self, index: int, generation: int, message: ClaimMessage) -> None:
        member = self.members[index]
        if member.machine is None or member.generation != generation:
            return
        if member.frozen:
            member.backlog.append((DELIVER_MESSAGE, message))
            # Late by the rest of the freeze: far past any window, so it
            # counts as lost for the claims it carries (as a delay spike does).
            sender = self.index_of.get(message.member_id)
            if sender is not None:
                key = message.session if isinstance(message, Claim | Assertion) else None
                self.checker.message_delayed(self.members[sender], member, key)
            return
        if self.count_from <= self.now < self.count_until:
            self.messages_handled += 1
        member.machine.handle_message(message, self.now)
        self.after_member_step(member, [])

    # ---------------------------------------------------------------- clients

    def client_step(self, session: ClientSession, step: int) -> None:
        if session.done:
            return
        if step in (SEND_FIRST, RETRANSMIT):
            if session.answered_at is not None:
                return
            if self.now - session.start > GIVE_UP_AFTER:
                session.done = True
                return
            self.flood(session, TCP_SYN if session.transport == 6 else 0)
            gap = RETRANSMIT_GAPS[min(session.retransmits, len(RETRANSMIT_GAPS) - 1)]
            session.retransmits += 1
            self.push(self.now + gap, CLIENT, session.index, RETRANSMIT)
        elif step == SEND_ACK:
            self.flood(session, TCP_ACK)
            self.push(self.now + session.gap, CLIENT, session.index, SEND_DATA)
        elif step == SEND_DATA:
            if session.data_packets > 0:
                session.data_packets -= 1
                self.flood(session, TCP_DATA if session.transport == 6 else 0)
                self.push(self.now + session.gap, CLIENT, session.index, SEND_DATA)
            elif session.transport == 6:
                self.flood(session, TCP_RST if session.ends_with_rst else TCP_FIN)
                session.done = True
            else:
                session.done = True

    def answer(self, session: ClientSession, member_index: int) -> None:
        if session.answered_at is not None:
            return  # a second answer: the client keeps the first
        session.answered_at = self.now
        session.answered_by = member_index
        self.checker.answered(session, member_index)
        step = SEND_ACK if session.transport == 6 else SEND_DATA
        self.push(self.now + 0.0001, CLIENT, session.index, step)

    def flood(self, session: ClientSession, flags: int) -> None:
        number = session.sent
        session.sent += 1
        kind = FrameKind.TCP if session.transport == 6 else FrameKind.UDP
        sequence = 1000 + number  # retransmitted SYNs keep the ISN in reality; close enough
        if session.transport == 6 and flags == TCP_SYN:
            sequence = 1000
        record = Classified(kind, session.key, flags, 14, 54, sequence)
        loss = self.fault_rate("client_loss")
        rng = self.rng
        for member in self.members:
            if member.machine is None:
                continue
            if loss and rng.random() < loss:
                continue
            delay = rng.uniform(0.00005, self.scenario.client_delay_max)
            if self.slow:
                delay += self.slowness(member.index)
            self.push(
                self.now + delay,
                DELIVER_PACKET,
                member.index,
                member.generation,
                (session.index, number, record),
            )

    def deliver_packet(
        self, index: int, generation: int, payload: tuple[int, int, Classified]
    ) -> None:
        member = self.members[index]
        if member.machine is None or member.generation != generation:
            return  # sent to a machine that crashed since
        if member.frozen:
            member.backlog.append((DELIVER_PACKET, payload))
            return
        session_index, number, record = payload
        machine = member.machine
        before = served_at_once(machine)
        verdict = machine.handle_client_packet(record, (session_index, number), 60, self.now)
        injected = [(session_index, number)] if verdict is Verdict.INJECT else []
        if injected and served_at_once(machine) > before:
            self.served_at_once += 1
            self.checker.served_at_once(member, self.sessions[session_index])
        self.after_member_step(member, injected)

    # ----------------------------------------------------------------- faults

    def fault(self, index: int, *, begin: bool) -> None:
        fault = self.scenario.faults[index]
        if begin:
            self.active_faults[index] = True
        else:
            self.active_faults.pop(index, None)
        self.refresh_rates()
        self.checker.fault_changed(fault, begin)
        for member_index in fault.members:
            member = self.members[member_index]
            if fault.kind in ("crash", "crash_restart"):
                if begin:
                    self.crash(member)
                else:
                    self.start_member(member)
            elif fault.kind == "freeze":
                if begin:
                    self.freeze(member)
                else:
                    self.resume(member)
            elif fault.kind == "drain":
                self.local_update(member, ("draining", begin))
            elif fault.kind == "service_down":
                self.local_update(member, ("port 80", not begin))

    def local_update(self, member: SimMember, facts: tuple[str, bool]) -> None:
        """The operator drains (or undrains) the member, or its service stops
        (or starts again) listening on TCP port 80. A frozen member reads it
        when it resumes, in order with what else reached it; a member started
        meanwhile reads it now."""
        if member.frozen:
            member.backlog.append((LOCAL_UPDATE, facts))
            return
        self.apply_local_facts(member, facts)
        machine = member.machine
        if machine is None:
            return
        if facts[0] == "draining":
            machine.update_local(self.now, draining=member.draining)
        else:
            machine.update_local(self.now, listening=frozenset(member.listening))
        self.checker.local_changed(member)
        self.after_member_step(member, [])

    def apply_local_facts(self, member: SimMember, facts: tuple[str, bool]) -> None:
        what, value = facts
        if what == "draining":
            member.draining = value
        elif value:
            member.listening.add((6, 80))
        else:
            member.listening.discard((6, 80))

    # ---------------------------------------------------------------- results

    def result(self) -> RunResult:
        checker = self.checker
        owners: dict[int, int] = {}
        for session in self.sessions:
            if session.answered_by is not None:
                owners[session.answered_by] = owners.get(session.answered_by, 0) + 1
        held = {
            member.index: len(buckets.holding)
            for member in self.members
            if (buckets := machine_buckets(member.machine)) is not None
        }
        return RunResult(
            seed=self.scenario.seed,
            policy=self.policy,
            violations=checker.violations,
            trace_hash=self.hash.hexdigest()[:16],
            events=self.event_count,
            sessions=len(self.sessions),
            served=sum(session.answered_at is not None for session in self.sessions),
            conflicts=checker.conflict_sessions,
            conflict_time=checker.conflict_time,
            broken=checker.broken_sessions,
            claims_sent=checker.claims_sent,
            messages_lost=self.messages_lost,
            served_at_once=self.served_at_once,
            bucket_conflicts=checker.bucket_conflicts,
            messages_sent=self.messages_sent,
            messages_handled=self.messages_handled,
            messages_by_kind=dict(self.messages_by_kind),
            owners=owners,
            held=held,
            tags=list(self.scenario.tags),
            trace=self.trace_lines,
        )


def machine_buckets(machine: MemberMachine | None) -> Buckets | None:
    """A member's buckets, if its policy has them."""
    return machine.buckets if isinstance(machine, ClaimMachine) else None


def served_at_once(machine: MemberMachine) -> int:
    """How many new sessions the member served from a held bucket so far."""
    return machine.counters.served_at_once if isinstance(machine, ClaimMachine) else 0


def number_is_first(session: ClientSession, number: int) -> bool:
    """Whether packet `number` is the SYN or first datagram (or a retransmission of it)."""
    return session.answered_at is None and number < session.retransmits


def run_schedule(
    scenario: Scenario,
    *,
    policy: str = DEFAULT_POLICY,
    settings: ClaimSettings | None = None,
    trace: bool = False,
    count_messages: tuple[float, float] = (0.0, float("inf")),
) -> RunResult:
    return SimulatedCluster(
        scenario, policy=policy, settings=settings, trace=trace, count_messages=count_messages
    ).run()
