"""Scenarios: everything a simulated run does, drawn from one seed.

A scenario is plain data: the members (weight, load, start time), the client
sessions (start time, transport, packets), the network's delays and the
faults. `draw_scenario(seed, ...)` is the only place randomness chooses what
happens; the cluster model draws per-message randomness from its own seeded
generator, so a seed replays exactly.

Every schedule has a fault phase, then a clean phase in which faults have
healed: liveness ("every session is served within a bound") is checked in
the clean phase.
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
    end = heal + 8.0 + LAST_START_BEFORE_END  # sessions start up to 8 s after healing
    plans = [MemberPlan(1.0, 0.0, 0.0) for _ in range(member_count)]
    chosen = [kind for kind in faults if rng.random() < 0.35]
    fault_list: list[Fault] = []
    for kind in chosen:
        fault_list.extend(_draw_fault(rng, kind, member_count, heal, plans))
    sessions = []
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
    return Scenario(seed, plans, sessions, fault_list, heal, end, tags=chosen)


def _draw_fault(
    rng: random.Random, kind: str, count: int, heal: float, plans: list[MemberPlan]
) -> list[Fault]:
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
