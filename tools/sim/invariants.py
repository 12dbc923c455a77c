"""The invariants, checked after every step of a simulated run.

- Safety: at most one member owns (injects) a session. Two owners are allowed
  only for a session whose claim messages were lost (or cut by a partition),
  and the conflict must end within RESOLUTION_BOUND of the last such loss.
- Liveness: once faults have healed, every session whose client is still
  trying is served within LIVENESS_BOUND, while a healthy member is up.
- Stability: once a client has talked to its server, no other member injects
  packets of that session, unless the owner died or claims were lost.
- Bounds: every table stays within its configured bound.
- Late joiners: a member never claims a session that was already running
  when it started (for UDP: unless the owner died or messages to it were lost).
- Silence: a member that drains, or whose service does not listen on the
  port, never claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocols.session_key import SessionKey
from protocols.wire.claim import Assertion, Claim
from tools.sim.scenario import GIVE_UP_AFTER, LIVENESS_BOUND, Fault

if TYPE_CHECKING:
    from tools.sim.cluster import ClientSession, SimMember, SimulatedCluster

RESOLUTION_BOUND = 6.0
CONFLICT_RECHECK = 0.05
NEVER = float("-inf")


@dataclass(frozen=True)
class Violation:
    invariant: str
    time: float
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] at {self.time:.6f}s: {self.detail}"


@dataclass
class Conflict:
    start: float
    members: tuple[int, ...]


class InvariantChecker:
    def __init__(self, cluster: SimulatedCluster) -> None:
        self.cluster = cluster
        self.violations: list[Violation] = []
        self.lost_about: dict[SessionKey, float] = {}  # last loss of a message about it
        self.lost_to: dict[int, float] = {}  # last loss of any message to a member
        self.lost_between: dict[tuple[int, int], float] = {}  # (sender, receiver) -> last loss
        self.to_check: list[SessionKey] = []
        self.conflicts: dict[SessionKey, Conflict] = {}
        self.conflicted: set[SessionKey] = set()
        self.conflict_sessions = 0
        self.conflict_time = 0.0
        self.broken: set[SessionKey] = set()
        self.claims_sent = 0
        # Session -> (member index, member generation, time) of its established owner.
        self.established: dict[SessionKey, tuple[int, int, float]] = {}
        self.partition_healed_at = NEVER
        self.next_conflict_check = 0.0

    @property
    def broken_sessions(self) -> int:
        return len(self.broken)

    def violation(self, invariant: str, detail: str) -> None:
        self.violations.append(Violation(invariant, self.cluster.now, detail))

    # ------------------------------------------------------------------ hooks

    def message_sent(self, sender: SimMember, message: Claim | Assertion) -> None:
        key = message.session
        if isinstance(message, Assertion):
            self.to_check.append(key)
            return
        self.claims_sent += 1
        if sender.draining or (key.transport, key.cluster_port) not in sender.listening:
            reason = "draining" if sender.draining else "not listening on the port"
            self.violation("silence", f"member {sender.index} claimed {key} while {reason}")
        established = self.established.get(key)
        if established is None or established[2] >= sender.started_at:
            return
        owner_alive = self._alive(established[0], established[1])
        if key.transport == 6:
            self.violation(
                "late joiner",
                f"member {sender.index} (started {sender.started_at:.3f}s) claimed the running "
                f"TCP session {key}",
            )
        elif (
            owner_alive
            and key not in self.lost_about
            and self.lost_to.get(sender.index, NEVER) < sender.started_at
            and self.lost_between.get((sender.index, established[0]), NEVER) < sender.started_at
        ):
            # The joiner heard every message, and the owner heard the joiner's
            # hellos, so the owner's re-assertion should have taught it the flow.
            self.violation(
                "late joiner",
                f"member {sender.index} (started {sender.started_at:.3f}s) claimed the running "
                f"flow {key} with its owner alive and no message lost",
            )

    def message_lost(self, sender: SimMember, receiver: SimMember, key: SessionKey | None) -> None:
        now = self.cluster.now
        self.lost_to[receiver.index] = now
        self.lost_between[sender.index, receiver.index] = now
        if key is not None:
            self.lost_about[key] = now

    def injected(self, member: SimMember, session: ClientSession, number: int) -> None:
        key = session.key
        self.to_check.append(key)
        established = self.established.get(key)
        if established is not None:
            owner, generation, _ = established
            if (
                owner != member.index
                and self._alive(owner, generation)
                and key not in self.lost_about
            ):
                self.violation(
                    "stability",
                    f"{key} was established on member {owner}, member {member.index} injected",
                )
        elif (
            session.answered_by == member.index
            and number >= session.retransmits
            and session.answered_at is not None
        ):
            self.established[key] = (member.index, member.generation, self.cluster.now)

    def reset_local(self, member: SimMember, key: SessionKey) -> None:
        self.to_check.append(key)
        session = self.cluster.by_key.get(key)
        if session is not None and session.answered_by == member.index:
            # The client took this member's SYN-ACK: its connection breaks.
            self.broken.add(key)

    def member_started(self, member: SimMember) -> None:
        pass

    def member_crashed(self, member: SimMember) -> None:
        pass

    def member_stepped(self, member: SimMember) -> None:
        assert member.machine is not None
        problem = member.machine.bound_violation()
        if problem is not None:
            self.violation("bounds", f"member {member.index}: {problem}")

    def answered(self, session: ClientSession, member_index: int) -> None:
        pass

    def fault_changed(self, fault: Fault, begin: bool) -> None:
        if not begin and fault.kind in ("partition", "one_way_partition"):
            self.partition_healed_at = self.cluster.now

    # ------------------------------------------------------------ every step

    def after_step(self, now: float) -> None:
        if self.to_check:
            for key in self.to_check:
                self._check_owners(key, now)
            self.to_check.clear()
        # Ongoing conflicts end without a message (a member crashes, a session
        # expires): look at them again every CONFLICT_RECHECK of simulated time.
        if self.conflicts and now >= self.next_conflict_check:
            self.next_conflict_check = now + CONFLICT_RECHECK
            self._check_conflicts(now)

    def _owners(self, key: SessionKey) -> tuple[int, ...]:
        return tuple(
            member.index
            for member in self.cluster.members
            if member.machine is not None and member.machine.owns(key)
        )

    def _check_owners(self, key: SessionKey, now: float) -> None:
        owners = self._owners(key)
        conflict = self.conflicts.get(key)
        if len(owners) >= 2:
            if conflict is None:
                if key not in self.lost_about:
                    self.violation(
                        "safety", f"members {owners} all own {key}, and no claim was lost"
                    )
                self.conflicts[key] = Conflict(now, owners)
                if key not in self.conflicted:
                    self.conflicted.add(key)
                    self.conflict_sessions += 1
        elif conflict is not None:
            self.conflict_time += now - conflict.start
            del self.conflicts[key]

    def _check_conflicts(self, now: float) -> None:
        partitioned = self.cluster.partitioned()
        for key, conflict in list(self.conflicts.items()):
            owners = self._owners(key)
            if len(owners) < 2:
                self.conflict_time += now - conflict.start
                del self.conflicts[key]
                continue
            if partitioned:
                continue
            since = max(
                conflict.start,
                self.lost_about.get(key, NEVER),
                self.partition_healed_at,
                *(self.lost_to.get(index, NEVER) for index in owners),
            )
            if now - since > RESOLUTION_BOUND:
                self.violation(
                    "safety",
                    f"members {owners} still all own {key} {now - since:.1f}s after the "
                    f"last loss (conflict began at {conflict.start:.3f}s)",
                )
                self.conflict_time += now - conflict.start
                del self.conflicts[key]

    def _alive(self, index: int, generation: int) -> bool:
        member = self.cluster.members[index]
        return member.machine is not None and member.generation == generation

    # ------------------------------------------------------------------ end

    def finish(self, end: float) -> None:
        for conflict in self.conflicts.values():
            self.conflict_time += end - conflict.start
        self.conflicts.clear()
        self._check_liveness(end)

    def _check_liveness(self, end: float) -> None:
        cluster = self.cluster
        scenario = cluster.scenario
        settings = cluster.settings
        for session in cluster.sessions:
            window_start = max(session.start, scenario.heal_time)
            available = self._first_healthy(session, window_start, settings.join_grace)
            if available is None:
                continue
            deadline = max(window_start, available) + LIVENESS_BOUND
            if deadline > min(session.start + GIVE_UP_AFTER, end):
                continue
            if session.answered_at is None or session.answered_at > deadline:
                when = "never" if session.answered_at is None else f"at {session.answered_at:.3f}s"
                self.violations.append(
                    Violation(
                        "liveness",
                        deadline,
                        f"{session.key} (started {session.start:.3f}s) served {when}, "
                        f"though member(s) were healthy from {available:.3f}s",
                    )
                )

    def _first_healthy(
        self, session: ClientSession, window_start: float, join_grace: float
    ) -> float | None:
        """When the first member healthy for this session was up for good, or None."""
        scenario = self.cluster.scenario
        best: float | None = None
        for index, plan in enumerate(scenario.members):
            if plan.weight <= 0:
                continue
            up_from = plan.start
            healthy = True
            for fault in scenario.faults:
                if index not in fault.members:
                    continue
                if fault.kind == "crash_restart":
                    up_from = max(up_from, fault.end)
                elif fault.kind == "crash":
                    healthy = False
                elif fault.kind == "drain" or (
                    fault.kind == "service_down"
                    and (
                        session.key.transport,
                        session.key.cluster_port,
                    )
                    == (6, 80)
                ):
                    if fault.end == float("inf"):
                        healthy = False
                    up_from = max(up_from, fault.end)
            if not healthy:
                continue
            if session.transport != 6:
                up_from += join_grace
            if best is None or up_from < best:
                best = up_from
        return best
