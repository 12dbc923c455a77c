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
  port, never claims, nor serves a new session from a bucket.

With claimed buckets (protocols.buckets), read from each live member's
`machine.buckets.holding` (a holder's buckets count only within its lease:
a frozen member's kernel lets go of them when the lease runs out):

- Bucket safety: at most one live member holds a bucket. Two holders are
  allowed only after a message between them was lost (or cut by a
  partition), and the double hold must end within RESOLUTION_BOUND of the
  last such loss. A freeze does not count as a loss here: leases must make
  it safe on their own.
- Bucket serving: a member serves a new session at once (no claim) only from
  a bucket it holds. Two members may serve one session at once only as two
  holders of its bucket (as above).
- Bucket coverage: in the clean phase, once every member is settled, no
  bucket stays unheld for longer than BUCKET_COVER_BOUND while a healthy,
  undrained member is up and buckets serve some port.
- Drained: a draining member holds no bucket DRAIN_BOUND after the drain.
- Shares of held buckets against weights are printed by `tools.sim shares`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

from protocols.claim_machine import ClaimMachine
from protocols.numbers import IpProtocol
from protocols.session_key import SessionKey
from protocols.wire.claim import Assertion, Claim
from tools.sim.scenario import GIVE_UP_AFTER, LIVENESS_BOUND, Fault

if TYPE_CHECKING:
    from tools.sim.cluster import ClientSession, SimMember, SimulatedCluster

RESOLUTION_BOUND = 6.0
CONFLICT_RECHECK = 0.05
NEVER = float("-inf")
BUCKET_RECHECK = 0.05  # leases run out, and buckets stay unheld, without any step
BUCKET_COVER_BOUND = 3.0
DRAIN_BOUND = 0.1
NOTHING: frozenset[int] = frozenset()


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


@dataclass
class DoubleHold:
    start: float
    members: frozenset[int]


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
        # Buckets. Losses between members on the network (not a freeze's delays).
        self.net_lost_between: dict[tuple[int, int], float] = {}
        # Session -> (member index, generation) of each member that served it from a bucket.
        self.at_once: dict[SessionKey, set[tuple[int, int]]] = {}
        self.holding_of: dict[int, frozenset[int]] = {}  # member index -> buckets it holds
        self.holding_seen: dict[int, tuple[int, int, int, bool]] = {}  # when last read
        self.holders: dict[int, set[int]] = {}  # bucket -> member indexes holding it
        self.double_holds: dict[int, DoubleHold] = {}
        self.bucket_conflicts = 0
        self.unheld_since: dict[int, float] = {}
        self.uncovered_reported: set[int] = set()
        self.cover_since = NEVER  # since when a healthy member has been up without a break
        self.drained_at: dict[int, float] = {}  # member index -> when its drain reached it
        self.next_bucket_check = 0.0
        self.settled_from = self._settled_from()

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
        self.message_delayed(sender, receiver, key)
        self.net_lost_between[sender.index, receiver.index] = self.cluster.now

    def message_delayed(
        self, sender: SimMember, receiver: SimMember, key: SessionKey | None
    ) -> None:
        """A message reaches a frozen member only when it resumes: for claims,
        as good as lost (a member silent past ack_timeout is one of rule 3's
        timeouts), but not a loss that excuses two holders of a bucket."""
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
                and not self._holders_excused(key, (owner, member.index), RESOLUTION_BOUND)
                and not self._flow_of_given_up_owner(key, (owner, member.index))
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

    def served_at_once(self, member: SimMember, session: ClientSession) -> None:
        """The member served a new session from a bucket, with no claim."""
        key = session.key
        machine = member.machine
        assert isinstance(machine, ClaimMachine) and machine.buckets is not None
        buckets = machine.buckets
        bucket = buckets.bucket_of(key)
        now = self.cluster.now
        if bucket is None or bucket not in buckets.holding or now > buckets.lease_until:
            self.violation(
                "bucket serving",
                f"member {member.index} served {key} at once from bucket {bucket}, which it "
                f"does not hold (it holds {len(buckets.holding)} bucket(s), lease until "
                f"{buckets.lease_until:.3f}s)",
            )
        if member.draining or (key.transport, key.cluster_port) not in member.listening:
            reason = "draining" if member.draining else "not listening on the port"
            self.violation("silence", f"member {member.index} served {key} at once while {reason}")
        served = self.at_once.setdefault(key, set())
        if any(
            index != member.index
            and self._alive(index, generation)
            and self._recent_pair_loss(member.index, index)
            for index, generation in served
        ):
            # Two holders of its bucket served it at once, messages between
            # them lost lately (a partition left both holding): as for a
            # session whose claims were lost, its client took one SYN-ACK and
            # which owner the conflict keeps is chance, so its stability is
            # excused. The conflict itself must still end (RESOLUTION_BOUND).
            self.lost_about[key] = now
        served.add((member.index, member.generation))

    def member_started(self, member: SimMember) -> None:
        if member.draining:
            self.drained_at[member.index] = self.cluster.now
        self._read_holding(member)

    def member_crashed(self, member: SimMember) -> None:
        self.drained_at.pop(member.index, None)
        self._read_holding(member)

    def member_frozen(self, member: SimMember) -> None:
        pass

    def member_resumed(self, member: SimMember) -> None:
        pass

    def local_changed(self, member: SimMember) -> None:
        """Its drain (or its ports) reached the member's machine."""
        if member.draining:
            self.drained_at.setdefault(member.index, self.cluster.now)
        else:
            self.drained_at.pop(member.index, None)

    def member_stepped(self, member: SimMember) -> None:
        assert member.machine is not None
        problem = member.machine.bound_violation()
        if problem is not None:
            self.violation("bounds", f"member {member.index}: {problem}")
        self._read_holding(member)

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
        if self.cluster.buckets is not None and now >= self.next_bucket_check:
            self.next_bucket_check = now + BUCKET_RECHECK
            for member in self.cluster.members:
                self._read_holding(member)  # a frozen member's lease runs out
            self._check_double_holds(now)
            self._check_coverage(now)
            self._check_drained(now)

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
                if (
                    key not in self.lost_about
                    and not self._holders_excused(key, owners)
                    and not self._flow_of_given_up_owner(key, owners)
                ):
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

    # ---------------------------------------------------------------- buckets

    def _pair_loss(self, first: int, second: int) -> float:
        """The last network loss between two members in their current lives."""
        members = self.cluster.members
        since = max(members[first].started_at, members[second].started_at)
        lost = max(
            self.net_lost_between.get((first, second), NEVER),
            self.net_lost_between.get((second, first), NEVER),
        )
        return lost if lost >= since else NEVER

    def _recent_pair_loss(self, first: int, second: int, longer: float = 0.0) -> bool:
        """Messages between two members were lost lately: recently enough
        that one may not count the other as live (it waits for nobody it
        has not heard for member_timeout), or that both hold one bucket
        until their next BUCKETS messages cross; `longer` for a conflict
        that began then and is still within its resolution bound."""
        settings = self.cluster.settings
        window = settings.member_timeout + 2 * settings.hello_interval + longer
        return self._pair_loss(first, second) >= self.cluster.now - window

    def _flow_of_given_up_owner(self, key: SessionKey, owners: tuple[int, ...]) -> bool:
        """A UDP (or ICMP) flow whose owners lost messages between each other
        lately: a member that gives a peer up (a partition) forgets the
        peer's flows, so that a dead owner's flows are served again, and may
        then claim one of the flow's datagrams as a new flow before it hears
        the owner again (TCP is not excused: a mid-stream segment is never
        claimed). The conflict must still end (RESOLUTION_BOUND)."""
        return key.transport != IpProtocol.TCP and all(
            self._recent_pair_loss(a, b) for a, b in combinations(owners, 2)
        )

    def _holders_excused(
        self, key: SessionKey, owners: tuple[int, ...], longer: float = 0.0
    ) -> bool:
        """Owners of one session, one of which served it at once from its
        bucket, with messages between each two of them lost lately: two
        holders of the bucket (which the bucket checks bound), or a claimer
        that could not hear the holder (its answer is lost, or follows a
        decision that waited for nobody it had not heard lately)."""
        served = self.at_once.get(key)
        members = self.cluster.members
        if not served or not any((index, members[index].generation) in served for index in owners):
            return False
        return all(self._recent_pair_loss(a, b, longer) for a, b in combinations(owners, 2))

    def _read_holding(self, member: SimMember) -> None:
        """Take note of the buckets a member holds now, if they changed."""
        machine = member.machine
        index = member.index
        buckets = machine.buckets if isinstance(machine, ClaimMachine) else None
        if buckets is None:
            held = NOTHING
            self.holding_seen.pop(index, None)
        else:
            now = self.cluster.now
            valid = now <= buckets.lease_until
            seen = (member.generation, buckets.version, len(buckets.holding), valid)
            if self.holding_seen.get(index) == seen:
                return
            self.holding_seen[index] = seen
            held = frozenset(buckets.holding) if valid else NOTHING
        before = self.holding_of.get(index, NOTHING)
        if held == before:
            return
        self.holding_of[index] = held
        now = self.cluster.now
        for bucket in before - held:
            holders = self.holders[bucket]
            holders.discard(index)
            if not holders:
                del self.holders[bucket]
                self.unheld_since[bucket] = now
        for bucket in held - before:
            holders = self.holders.setdefault(bucket, set())
            holders.add(index)
            self.unheld_since.pop(bucket, None)
            self.uncovered_reported.discard(bucket)
            if len(holders) >= 2:
                self._double_hold(bucket, now)
        if held and index in self.drained_at:
            self._check_drained(now)

    def _double_hold(self, bucket: int, now: float) -> None:
        holders = frozenset(self.holders[bucket])
        episode = self.double_holds.get(bucket)
        if episode is None:
            self.bucket_conflicts += 1
            episode = self.double_holds[bucket] = DoubleHold(now, NOTHING)
        new = holders - episode.members
        episode.members = holders
        unexcused = [
            (a, b)
            for a, b in combinations(sorted(holders), 2)
            if (a in new or b in new) and not self._recent_pair_loss(a, b)
        ]
        if unexcused:
            a, b = unexcused[0]
            self.violation(
                "bucket safety",
                f"members {a} and {b} both hold bucket {bucket}, and no message between "
                "them was lost",
            )

    def _check_double_holds(self, now: float) -> None:
        if not self.double_holds:
            return
        partitioned = self.cluster.partitioned()
        for bucket, episode in list(self.double_holds.items()):
            holders = self.holders.get(bucket, set())
            if len(holders) < 2:
                del self.double_holds[bucket]
                continue
            if partitioned:
                continue
            since = max(
                episode.start,
                self.partition_healed_at,
                *(self._pair_loss(a, b) for a, b in combinations(holders, 2)),
            )
            if now - since > RESOLUTION_BOUND:
                self.violation(
                    "bucket safety",
                    f"members {tuple(sorted(holders))} still all hold bucket {bucket} "
                    f"{now - since:.1f}s after the last loss between them (since "
                    f"{episode.start:.3f}s)",
                )
                del self.double_holds[bucket]

    def _settled_from(self) -> float:
        """When every fault has healed and every member is warm: from then on
        the members' views agree and stay put, so every bucket gets held."""
        scenario = self.cluster.scenario
        settings = self.cluster.settings
        changes = [scenario.heal_time, *(plan.start for plan in scenario.members)]
        for fault in scenario.faults:
            changes.append(fault.start + settings.member_timeout)  # a crash, gone for good
            if fault.end != float("inf"):
                changes.append(fault.end + settings.member_timeout)
        return max(changes) + settings.join_grace + settings.member_timeout

    def _healthy_for_buckets(self, member: SimMember, now: float) -> bool:
        machine = member.machine
        if not isinstance(machine, ClaimMachine) or machine.buckets is None:
            return False
        ports = machine.buckets.ports
        return (
            not member.frozen
            and not member.draining
            and member.weight > 0
            and not machine.is_warming(now)
            and (ports is None or bool(ports))
        )

    def _check_coverage(self, now: float) -> None:
        if now < self.settled_from:
            return
        if not any(self._healthy_for_buckets(member, now) for member in self.cluster.members):
            self.cover_since = NEVER
            return
        if self.cover_since == NEVER:
            self.cover_since = now
        count = self.cluster.buckets.count if self.cluster.buckets is not None else 0
        start = max(self.settled_from, self.cover_since)
        for bucket in range(count):
            if bucket in self.holders or bucket in self.uncovered_reported:
                continue
            since = max(start, self.unheld_since.get(bucket, NEVER))
            if now - since > BUCKET_COVER_BOUND:
                self.uncovered_reported.add(bucket)
                self.violation(
                    "bucket coverage",
                    f"bucket {bucket} held by no member for {now - since:.1f}s, with a "
                    "healthy member up and every fault healed",
                )

    def _check_drained(self, now: float) -> None:
        for index, since in list(self.drained_at.items()):
            if now - since <= DRAIN_BOUND or not self.holding_of.get(index):
                continue
            self.violation(
                "drained",
                f"member {index} still holds {len(self.holding_of[index])} bucket(s) "
                f"{now - since:.2f}s after it began draining",
            )
            del self.drained_at[index]  # once per drain

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
                if fault.kind in ("crash_restart", "freeze"):
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
