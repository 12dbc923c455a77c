"""The simulated segment: members, clients and a faulty network, in one event loop.

Each member runs a real `ClaimMachine` (or, for comparison, the original
first-seen rule). Every client packet is flooded to every member with a delay
drawn per receiver, so members see different orders, as on a switched network.
Claim messages are broadcast the same way and may be lost, duplicated, delayed
past the guard window or cut by partitions. The invariant checker
(`tools.sim.invariants`) runs after every step.

Everything is drawn from the scenario's seed; the run also folds every event
into a trace hash, so two runs of one seed can be compared in one line.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
from dataclasses import dataclass, field

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
from protocols.wire.claim import Assertion, Claim, ClaimMessage
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
    owners: dict[int, int] = field(default_factory=dict)  # member index -> sessions won
    tags: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # every event, with replay --trace


class SimulatedCluster:
    def __init__(
        self,
        scenario: Scenario,
        *,
        policy: str = "rendezvous",
        settings: ClaimSettings | None = None,
        trace: bool = False,
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.settings = settings or ClaimSettings()
        self.rng = random.Random(scenario.seed * 7919 + 17)
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

    # ---------------------------------------------------------------- members

    def new_machine(self, member: SimMember) -> MemberMachine:
        member_id = self.rng.getrandbits(64)
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
        )

    def start_member(self, member: SimMember) -> None:
        member.machine = self.new_machine(member)
        member.generation += 1
        member.started_at = self.now
        member.wake_at = float("inf")
        self.checker.member_started(member)
        self.after_member_step(member, [])

    def crash(self, member: SimMember) -> None:
        if member.machine is None:
            return
        member.machine = None
        member.generation += 1
        member.wake_at = float("inf")
        self.checker.member_crashed(member)

    def wake(self, index: int, generation: int) -> None:
        member = self.members[index]
        if member.machine is None or generation != member.generation:
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
        rng = self.rng
        scenario = self.scenario
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
                if key is not None and not self.knows(member, sender):
                    # Only members that know each other wait for each other's
                    # acknowledgements; against a member not heard yet, the
                    # guard is all there is, and this delay may pass it.
                    self.lost(sender, member, key)
            spikes = self.fault_rate("delay_spikes")
            if spikes and rng.random() < spikes:
                delay += rng.uniform(0.005, 0.05)  # well past the guard window
                self.lost(sender, member, key)
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
        session_index, number, record = payload
        verdict = member.machine.handle_client_packet(record, (session_index, number), 60, self.now)
        injected = [(session_index, number)] if verdict is Verdict.INJECT else []
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
            elif fault.kind == "drain":
                member.draining = begin
                if member.machine is not None:
                    member.machine.update_local(self.now, draining=begin)
                    self.after_member_step(member, [])
            elif fault.kind == "service_down":
                if begin:
                    member.listening.discard((6, 80))
                else:
                    member.listening.add((6, 80))
                if member.machine is not None:
                    member.machine.update_local(self.now, listening=frozenset(member.listening))
                    self.after_member_step(member, [])

    # ---------------------------------------------------------------- results

    def result(self) -> RunResult:
        checker = self.checker
        owners: dict[int, int] = {}
        for session in self.sessions:
            if session.answered_by is not None:
                owners[session.answered_by] = owners.get(session.answered_by, 0) + 1
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
            owners=owners,
            tags=list(self.scenario.tags),
            trace=self.trace_lines,
        )


def number_is_first(session: ClientSession, number: int) -> bool:
    """Whether packet `number` is the SYN or first datagram (or a retransmission of it)."""
    return session.answered_at is None and number < session.retransmits


def run_schedule(
    scenario: Scenario,
    *,
    policy: str = "rendezvous",
    settings: ClaimSettings | None = None,
    trace: bool = False,
) -> RunResult:
    return SimulatedCluster(scenario, policy=policy, settings=settings, trace=trace).run()
