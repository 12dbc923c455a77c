"""Scenarios: everything a simulated run does, drawn from one seed.

A scenario is plain data: the members (weight, load, start time), the client
sessions (start time, transport, packets), the network's delays and the
faults. `draw_scenario(seed, ...)` is the only place randomness chooses what
happens; the cluster model draws per-message randomness from its own seeded
generator, so a seed replays exactly.

Every schedule has a fault phase, then a clean phase in which faults have
healed: liveness ("every session is served within a bound") and bucket
coverage ("every bucket is held") are checked in the clean phase.

Faults that concern buckets (protocols.buckets): `freeze` (a member does not
run at all for longer than `member_timeout`, then handles everything queued
at once, as after SIGSTOP and SIGCONT), `syn_burst_join` (a member joins while
many sessions start within a short burst), `long_partition` (longer than any
bucket lease, often longer than `member_timeout`) and `udp_move` (a member
joins or drains, so buckets move, while UDP flows of many datagrams run; half
of these runs last until the moved buckets' UDP transition has ended).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from protocols.claim_machine import ClaimSettings

GIVE_UP_AFTER = 30.0  # a client stops retrying a session this long after it began
LIVENESS_BOUND = 10.0  # once faults heal, a session is served within this
# Sessions start early enough that their liveness deadline (after a UDP
# member's join grace) falls inside the run, so every one of them is checked.
LAST_START_BEFORE_END = LIVENESS_BOUND + ClaimSettings().join_grace + 0.5

# Buckets as the simulator runs them (tools.sim.cluster.bucket_settings):
# a bucket's UDP flows are served at once only this long after it was taken.
UDP_TRANSITION = ClaimSettings().udp_idle_timeout

FAULT_KINDS = (
    "loss",
    "duplication",
    "delay_spikes",
    "slow_member",
    "reordering",
    "partition",
    "one_way_partition",
    "crash_restart",
    "crash",
    "late_join",
    "drain",
    "skew",
    "service_down",
    "client_loss",
    "freeze",
    "syn_burst_join",
    "long_partition",
    "udp_move",
)


@dataclass(frozen=True)
class MemberPlan:
    weight: float
    load: float
    start: float  # 0 for the founding members, later for late joiners


@dataclass(frozen=True)
class SessionPlan:
    start: float
    transport: int  # 6 or 17
    cluster_port: int
    data_packets: int  # after the handshake (TCP) or the first datagram (UDP)
    gap: float  # between data packets
    ends_with_rst: bool


@dataclass(frozen=True)
class Fault:
    kind: str
    start: float
    end: float
    members: tuple[int, ...] = ()  # member indexes the fault applies to
    rate: float = 0.0
    other: tuple[int, ...] = ()  # for partitions: the other side


@dataclass
class Scenario:
    seed: int
    members: list[MemberPlan]
    sessions: list[SessionPlan]
    faults: list[Fault]
    heal_time: float  # every transient fault has ended by now
    end_time: float
    base_loss: float = 0.0  # claim-message loss for the whole run (conflict table)
    ports: tuple[int, ...] = (80, 443, 53)
    # One-way delays on a busy LAN: a few hundred microseconds at most, half
    # the default guard. Delay spikes (a fault) go well past the guard.
    delay_mean: float = 0.0001
    delay_max: float = 0.0007
    client_delay_max: float = 0.001
    tags: list[str] = field(default_factory=list)


def draw_scenario(
    seed: int,
    *,
    faults: tuple[str, ...] = FAULT_KINDS,
    size: str = "normal",
    members: int | None = None,
) -> Scenario:
    rng = random.Random(seed)
    if size == "small":
        member_count = members or rng.randint(1, 4)
        session_count = rng.randint(2, 10)
        heal = rng.uniform(1.0, 4.0)
    else:
        member_count = members or rng.choice([1, 2, 3, 3, 4, 5, 5, 6, 8, 8, 12, 16])
        session_count = rng.randint(20, 70)
        heal = rng.uniform(4.0, 12.0)
    plans = [MemberPlan(1.0, 0.0, 0.0) for _ in range(member_count)]
    chosen = [kind for kind in faults if rng.random() < 0.35]
    drawn = _Drawn([], [], 0.0)
    for kind in chosen:
        drawn.faults.extend(_draw_fault(rng, kind, member_count, heal, plans, drawn, size))
    # Every transient fault has ended by heal time (a freeze may outlast it).
    heal = max([heal, *(fault.end for fault in drawn.faults if fault.end != float("inf"))])
    # Sessions start up to 8 s after healing, or later when a fault needs a longer run.
    end = max(heal + 8.0, drawn.last_start) + LAST_START_BEFORE_END
    sessions = list(drawn.sessions)
    for _ in range(session_count):
        transport = 6 if rng.random() < 0.7 else 17
        port = 53 if transport == 17 else rng.choice([80, 443])
        sessions.append(
            SessionPlan(
                start=rng.uniform(0.05, end - LAST_START_BEFORE_END),
                transport=transport,
                cluster_port=port,
                data_packets=rng.randint(0, 6),
                gap=rng.choice([0.001, 0.02, 0.3, 1.5]),
                ends_with_rst=rng.random() < 0.25,
            )
        )
    sessions.sort(key=lambda plan: plan.start)
    return Scenario(seed, plans, sessions, drawn.faults, heal, end, tags=chosen)


@dataclass
class _Drawn:
    """What the faults drawn so far add to a scenario besides themselves."""

    faults: list[Fault]
    sessions: list[SessionPlan]  # sessions a fault needs (a burst, long UDP flows)
    last_start: float  # sessions start until at least this time


def _draw_fault(
    rng: random.Random,
    kind: str,
    count: int,
    heal: float,
    plans: list[MemberPlan],
    drawn: _Drawn,
    size: str,
) -> list[Fault]:
    settings = ClaimSettings()
    lease = settings.member_timeout / 2  # the bucket lease (tools.sim.cluster.bucket_settings)
    start = rng.uniform(0.0, heal * 0.7)
    end = rng.uniform(start, heal)
    someone = (rng.randrange(count),)
    if kind in ("loss", "duplication", "client_loss"):
        return [Fault(kind, start, end, rate=rng.choice([0.01, 0.05, 0.2]))]
    if kind == "delay_spikes":
        return [Fault(kind, start, end, rate=rng.choice([0.01, 0.05]))]
    if kind == "reordering":
        # Every message up to 3 or 8 ms late, drawn per message and receiver:
        # one sender's messages overtake each other, within the reorder
        # window, so none counts as lost.
        return [Fault(kind, start, end, rate=rng.choice([0.003, 0.008]))]
    if kind == "slow_member":
        # Its traffic is late by 5 to 45 ms each way, far past the 2 ms guard,
        # and that is not counted as a loss: round trips stay within the
        # acknowledgement timeout, so the rule must stay safe on its own.
        return [Fault(kind, start, end, someone, rate=rng.choice([0.005, 0.02, 0.045]))]
    if kind in ("partition", "one_way_partition") and count >= 2:
        members = list(range(count))
        rng.shuffle(members)
        cut = rng.randint(1, count - 1)
        return [Fault(kind, start, end, tuple(members[:cut]), other=tuple(members[cut:]))]
    if kind == "crash_restart":
        return [Fault(kind, start, end, someone)]
    if kind == "crash" and count >= 2:
        return [Fault(kind, start, float("inf"), someone)]
    if kind == "late_join" and count >= 2:
        index = someone[0]
        plans[index] = MemberPlan(plans[index].weight, plans[index].load, start)
        return []
    if kind == "drain" and count >= 2:
        # Drained members come back, or stay drained for the rest of the run.
        back = end if rng.random() < 0.5 else float("inf")
        return [Fault(kind, start, back, someone)]
    if kind == "skew":
        for index in range(count):
            plans[index] = MemberPlan(
                rng.choice([0.5, 1.0, 2.0, 4.0]),
                rng.choice([0.0, 0.0, 0.5, 2.0]),
                plans[index].start,
            )
        return []
    if kind == "service_down" and count >= 2:
        back = end if rng.random() < 0.5 else float("inf")
        return [Fault(kind, start, back, someone)]
    if kind == "freeze":
        # Not run at all (SIGSTOP) for longer than member_timeout, so the
        # others give it up and take its buckets; then (SIGCONT) everything
        # queued meanwhile is handled at once. A quarter of them are shorter:
        # past the lease, within member_timeout.
        if rng.random() < 0.25:
            length = rng.uniform(lease + 0.05, settings.member_timeout - 0.05)
        else:
            length = settings.member_timeout + rng.uniform(0.1, 2.5)
        begin = rng.uniform(0.0, max(0.0, heal - length))
        if count >= 2 and rng.random() < 1 / 3:
            # In the middle of taking buckets: a member joins, and it stops
            # just as it is warm and waits for grants.
            index = someone[0]
            joins = rng.uniform(0.0, heal * 0.5)
            plans[index] = MemberPlan(plans[index].weight, plans[index].load, joins)
            begin = joins + settings.join_grace + rng.uniform(0.0, 0.05)
        return [Fault(kind, begin, begin + length, someone)]
    if kind == "syn_burst_join" and count >= 2:
        # A member joins; around the moment it is warm and wants its buckets,
        # many sessions start within a short burst.
        index = someone[0]
        plans[index] = MemberPlan(plans[index].weight, plans[index].load, start)
        burst = max(0.05, start + rng.uniform(-0.3, settings.join_grace + 0.5))
        length = rng.uniform(0.02, 0.5)
        sessions = rng.randint(10, 30) if size == "small" else rng.randint(60, 200)
        for _ in range(sessions):
            transport = 6 if rng.random() < 0.8 else 17
            drawn.sessions.append(
                SessionPlan(
                    start=burst + rng.uniform(0.0, length),
                    transport=transport,
                    cluster_port=53 if transport == 17 else rng.choice([80, 443]),
                    data_packets=rng.randint(0, 3),
                    gap=rng.choice([0.001, 0.02, 0.3]),
                    ends_with_rst=rng.random() < 0.25,
                )
            )
        return []
    if kind == "long_partition" and count >= 2:
        # Longer than any bucket lease, and mostly longer than member_timeout:
        # each side gives the other up and takes its buckets. A "partition"
        # (or one-way) fault, only longer.
        length = min(heal, rng.uniform(lease + 0.05, settings.member_timeout + 3.0))
        begin = rng.uniform(0.0, heal - length)
        members = list(range(count))
        rng.shuffle(members)
        cut = rng.randint(1, count - 1)
        cut_kind = "partition" if rng.random() < 0.6 else "one_way_partition"
        return [
            Fault(cut_kind, begin, begin + length, tuple(members[:cut]), other=tuple(members[cut:]))
        ]
    if kind == "udp_move":
        # UDP flows of many datagrams run while buckets move: a member joins
        # (it takes buckets once warm) or drains (it lets go of all of them).
        move = rng.uniform(0.5, max(0.6, heal * 0.7))
        for _ in range(rng.randint(4, 15)):
            drawn.sessions.append(
                SessionPlan(
                    start=max(0.05, move + rng.uniform(-2.5, 0.5)),
                    transport=17,
                    cluster_port=53,
                    data_packets=rng.randint(15, 60),
                    gap=rng.choice([0.1, 0.3, 0.6]),
                    ends_with_rst=False,
                )
            )
        if rng.random() < 0.5:
            # Long enough for the moved buckets' UDP transition to end, with
            # flows still running and new ones starting after it (served at
            # once by the new holders).
            transition_end = move + settings.join_grace + UDP_TRANSITION
            drawn.last_start = max(drawn.last_start, transition_end + 4.0)
            for _ in range(rng.randint(5, 15)):
                drawn.sessions.append(
                    SessionPlan(
                        start=transition_end + rng.uniform(0.0, 4.0),
                        transport=17,
                        cluster_port=53,
                        data_packets=rng.randint(0, 10),
                        gap=rng.choice([0.02, 0.3]),
                        ends_with_rst=False,
                    )
                )
        if count < 2:
            return []
        index = someone[0]
        if rng.random() < 0.5:
            plans[index] = MemberPlan(plans[index].weight, plans[index].load, move)
            return []
        back = move + rng.uniform(1.0, 5.0) if rng.random() < 0.5 else float("inf")
        return [Fault("drain", move, back, someone)]
    return []


def loss_scenario(seed: int, members: int, loss: float, sessions: int) -> Scenario:
    """Only random claim-message loss, for the conflict table."""
    rng = random.Random(seed)
    end = 8.0 + sessions * 0.004
    plans = [MemberPlan(1.0, 0.0, 0.0) for _ in range(members)]
    session_plans = sorted(
        (
            SessionPlan(
                start=rng.uniform(2.0, end - 3.0),
                transport=6 if rng.random() < 0.7 else 17,
                cluster_port=80,
                data_packets=1,
                gap=0.01,
                ends_with_rst=False,
            )
            for _ in range(sessions)
        ),
        key=lambda plan: plan.start,
    )
    return Scenario(
        seed, plans, session_plans, [], heal_time=end, end_time=end, base_loss=loss, ports=(80,)
    )


def shares_scenario(seed: int, weights: tuple[float, ...], sessions: int) -> Scenario:
    """No faults; members with the given weights, for the load-awareness check."""
    rng = random.Random(seed)
    end = 4.0 + sessions * 0.002
    plans = [MemberPlan(weight, 0.0, 0.0) for weight in weights]
    session_plans = [
        SessionPlan(
            start=2.0 + index * (end - 3.0) / sessions + rng.uniform(0, 0.0005),
            transport=6,
            cluster_port=80,
            data_packets=0,
            gap=0.01,
            ends_with_rst=False,
        )
        for index in range(sessions)
    ]
    return Scenario(seed, plans, session_plans, [], heal_time=0.0, end_time=end, ports=(80,))


def steady_scenario(
    seed: int, members: int, sessions: int, start: float, length: float, *, udp: float = 0.3
) -> Scenario:
    """No faults; `sessions` new sessions (a share `udp` of them UDP flows)
    start between `start` and `start + length`, once the members are settled:
    for the cost in messages of a new session."""
    rng = random.Random(seed)
    end = start + length + 3.0
    plans = [MemberPlan(1.0, 0.0, 0.0) for _ in range(members)]
    session_plans = []
    for _ in range(sessions):
        transport = 17 if rng.random() < udp else 6
        session_plans.append(
            SessionPlan(
                start=start + rng.uniform(0.0, length),
                transport=transport,
                cluster_port=53 if transport == 17 else 80,
                data_packets=1,
                gap=0.01,
                ends_with_rst=False,
            )
        )
    session_plans.sort(key=lambda plan: plan.start)
    return Scenario(seed, plans, session_plans, [], heal_time=0.0, end_time=end, ports=(80, 53))
