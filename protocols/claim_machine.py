"""The claim machine of one member: who serves each new session.

Pure and synchronous, in the manner of aioquic's connection: feed it client
packets (`handle_client_packet`), claim messages (`handle_message`) and timer
expiries (`handle_timer`), each with the current time `now`; then carry out the
actions it returns (`pop_actions`) and wake it again at `next_wakeup()`.

The rule it implements is stated once, in docs/claim-rule.md; comments here
cite its numbered rules ("rule 3"). The machine composes the concerns that
live in their own modules:

- `protocols.session_lifecycle`: a session's phases and the table of their
  transitions;
- `protocols.session_table`: the bounded table of sessions and their timers;
- `protocols.peers`: the other members, their counters, losses and which
  acknowledgements may be trusted;
- `protocols.packet_queue`: bounded queues of packets waiting for a claim,
  and fragments;
- `protocols.reassertion`: when owned sessions are asserted again;
- `protocols.rendezvous`: the scores bids are ranked by.

What stays here is what does not fit a table: bid order, when a claim is
decided (through a `DecisionRule`, a public hook), and what to send when.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from enum import Enum, IntEnum, auto
from typing import NamedTuple, Protocol

from protocols.buckets import (
    ANSWER_SCORE,
    BUCKET_SCORE,
    MINE,
    OTHER,
    Buckets,
    BucketSettings,
    Candidate,
)
from protocols.classifier import Classified, FrameKind
from protocols.numbers import IpProtocol, TcpFlags
from protocols.packet_queue import FragmentTable, PacketQueues
from protocols.peers import Peer, PeerTable
from protocols.reassertion import Reassertion
from protocols.reassertion import advance as advance_repeat
from protocols.rendezvous import effective_weight, rendezvous_score, session_digest_input
from protocols.session_key import SessionKey
from protocols.session_lifecycle import Event, Phase
from protocols.session_table import (
    CLOSING,
    FOREIGN,
    NO_MEMBER,
    OWNED,
    PENDING,
    HeardClaim,
    Session,
    SessionTable,
    TableListener,
)
from protocols.wire.claim import (
    Acknowledgement,
    Assertion,
    BucketState,
    Claim,
    ClaimMessage,
    Hello,
)

# Plain ints for the per-packet path, from protocols.numbers.
TCP = int(IpProtocol.TCP)
FIN, SYN, RST, ACK = (
    int(flag) for flag in (TcpFlags.FIN, TcpFlags.SYN, TcpFlags.RST, TcpFlags.ACK)
)
_CONNECTION_FLAGS = FIN | SYN | RST
_KIND_TCP = FrameKind.TCP
_KIND_ICMP_ERROR = FrameKind.ICMP_ERROR


class Unchanged(Enum):
    """For `update_local`: None is a meaningful `listening`, so "not given" is this."""

    UNCHANGED = auto()


UNCHANGED = Unchanged.UNCHANGED


class Verdict(IntEnum):
    """What to do with one client packet right now."""

    DROP = 0
    INJECT = 1  # write it into the local TUN device
    QUEUED = 2  # the machine keeps it until the claim is decided


DROP = Verdict.DROP
INJECT = Verdict.INJECT
QUEUED = Verdict.QUEUED


@dataclass(frozen=True, slots=True)
class SendMessage:
    message: ClaimMessage


@dataclass(frozen=True, slots=True)
class InjectPackets:
    """Write these queued packets, in order, into the local TUN device."""

    key: SessionKey
    packets: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class ResetLocalSession:
    """Make the local kernel forget a half-open connection: another member won it,
    or the full table evicted it.

    The shell injects a RST from the client with this sequence number.
    """

    key: SessionKey
    sequence: int


Action = SendMessage | InjectPackets | ResetLocalSession


class SettingsError(ValueError):
    """A claim setting out of range; the message names it."""


@dataclass(frozen=True)
class ClaimSettings:
    """Timings and bounds of the claim protocol. Times are in seconds."""

    # A claimer decides once every live member acknowledged its claim (one
    # round trip) and `guard` has passed, or at the latest after
    # `ack_timeout`. Delays past `guard` are safe between members that know
    # each other (the acknowledgements cover them); `guard` is what protects
    # against a claim from a member not heard yet (a join, a healed partition).
    guard: float = 0.002
    ack_timeout: float = 0.1
    claim_step: float = 0.002  # extra delay per rank for backup claimers
    max_claim_delay: float = 0.006  # backups ranked further down all claim at this delay
    # Re-assert once after winning, for a claim that crossed the assertion.
    # More repeats barely lower conflicts (tools.sim measures it) and cost
    # every member a message per session.
    assertion_repeats: tuple[float, ...] = (0.001,)
    # After messages from a peer went missing, re-assert the sessions won
    # meanwhile at these offsets, so that one likely gets through (nothing
    # acknowledges an assertion: the whole plan is always sent).
    resync_repeats: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0)
    reorder_window: float = 0.01  # a counter gap not filled by then is a loss
    reclaim_after: float = 0.5  # a claim never confirmed may be retried after this
    hello_interval: float = 0.3  # with every hello goes the BUCKETS message
    member_timeout: float = 1.5  # a member not heard for this long is gone (its lease: half)
    join_grace: float = 2.5  # a new member claims no unseen UDP flows for this long
    handshake_timeout: float = 10.0  # a TCP session whose client never acknowledged
    tcp_idle_timeout: float = 3600.0
    udp_idle_timeout: float = 30.0
    fin_timeout: float = 10.0  # after the client's FIN, counted from its last packet
    max_sessions: int = 65536
    max_queued_per_session: int = 8
    max_queued_packets: int = 4096
    max_queued_bytes: int = 16 * 1024 * 1024
    max_members: int = 64
    max_fragments: int = 1024
    fragment_timeout: float = 5.0
    resync_rate: float = 20000.0  # assertions per second when re-asserting many sessions

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            values = value if isinstance(value, tuple) else (value,)
            for item in values:
                if not isinstance(item, int | float) or not math.isfinite(item) or item < 0:
                    raise SettingsError(f"{field.name} must be a number >= 0, not {value!r}")
        if self.guard <= 0 or self.hello_interval <= 0 or self.resync_rate <= 0:
            raise SettingsError("guard, hello_interval and resync_rate must be above 0")
        if self.ack_timeout < self.guard:
            raise SettingsError(
                f"ack_timeout ({self.ack_timeout}) must be at least guard ({self.guard})"
            )
        if self.member_timeout <= self.hello_interval:
            raise SettingsError(
                f"member_timeout ({self.member_timeout}) must exceed "
                f"hello_interval ({self.hello_interval})"
            )
        for name in ("max_sessions", "max_queued_per_session", "max_queued_packets", "max_members"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1")


# While this member waits for grants, it looks at its buckets again this often.
BUCKET_RECHECK = 0.02


def bucket_weight(weight: float, load: float) -> float:
    """The weight buckets are ranked by: the configured weight, lowered by
    load in quarter steps, so that buckets move only when the load does."""
    return weight * max(1, round(4 / (1.0 + max(0.0, load)))) / 4


# Re-assertion with repeats is bounded: after a long partition, only this many
# of the most recent sessions get repeats; the rest are asserted once.
MAX_REPEATED_RESYNC = 4096


class DecisionRule(Protocol):
    """When a claim of this member's may be decided (rule 3), given whether
    every live member it waits for has acknowledged it; None: not yet (it is
    decided at `ack_timeout` at the latest). The simulator plugs in older
    rules through this hook to show that its checker catches them."""

    def decision_time(
        self, claimed_at: float, acknowledged_by_all: bool, now: float, settings: ClaimSettings
    ) -> float | None: ...


class Activity(NamedTuple):
    last_seen: float
    established: bool  # the client has sent more than its SYN


class ActivitySource(Protocol):
    """Where a session's packets pass when they pass outside the machine: the
    shell's kernel fast path. Asked only when a session's idle or handshake
    timer is due, so the machine forgets no session that is still busy."""

    def last_activity(self, session: Session, now: float) -> Activity | None: ...


class AcknowledgedRule:
    """Rule 3: once every live member acknowledged the claim, decide it at
    `guard` after it was sent (or now, if later)."""

    def decision_time(
        self, claimed_at: float, acknowledged_by_all: bool, now: float, settings: ClaimSettings
    ) -> float | None:
        return max(claimed_at + settings.guard, now) if acknowledged_by_all else None


ACKNOWLEDGED = AcknowledgedRule()


@dataclass(slots=True)
class Counters:
    """Monotonic counters, for status and metrics."""

    sessions_started: int = 0
    claims_sent: int = 0
    claims_received: int = 0
    claims_won: int = 0
    claims_lost: int = 0
    assertions_sent: int = 0
    assertions_received: int = 0
    acknowledgements_sent: int = 0
    acknowledgements_received: int = 0  # for this member's claims
    decided_on_timeout: int = 0  # claims some live member never acknowledged in ack_timeout
    conflicts: int = 0  # another member asserted a session this member owned
    conflicts_yielded: int = 0  # ... and this member gave it up
    hellos_sent: int = 0
    hellos_received: int = 0
    packets_injected: int = 0
    sessions_adopted: int = 0  # re-learned from the kernel after a restart
    served_at_once: int = 0  # new sessions of a held bucket: no claim round
    bucket_messages_sent: int = 0
    bucket_messages_received: int = 0
    bucket_count_mismatches: int = 0  # a peer cuts the session space otherwise: it is ignored

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


DROP_REASONS = (
    "foreign",  # another member serves the session (the normal case)
    "not_claimed",  # this member may not claim it: draining, port not listening, warming up
    "unknown_midstream",  # no session, and not a packet that may start one
    "lost_claim",  # queued while claiming, then another member won
    "queue_full",  # the session's or the total queue bound was reached (oldest dropped)
    "table_full",  # no room for a new session
    "unknown_fragment",  # a later fragment whose first fragment was never seen
    "aborted",  # the client reset a session still being claimed
)


def _reuses_port(session: Session, record: Classified) -> bool:
    """A SYN with a new sequence number after the session closed: the client
    opens a new connection from the same port."""
    return session.state is CLOSING and record.sequence != session.syn_sequence


def _hear_bid(
    session: Session, member_id: int, score: float, now: float, *, asserted: bool = False
) -> None:
    """Record the best claim (or an assertion) heard for a session this member does not serve."""
    session.best_member, session.best_score = member_id, score
    session.best_heard_at = now
    if asserted:
        session.best_asserted = True


class MemberMachine(Protocol):
    """What a driver (the data plane, the simulator) asks of one member's
    claim protocol. `ClaimMachine` is the real one; the simulator's
    comparison policies implement the same interface."""

    member_id: int

    def handle_client_packet(
        self, record: Classified, packet: object, size: int, now: float
    ) -> Verdict: ...

    def handle_message(self, message: ClaimMessage, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def update_local(
        self,
        now: float,
        *,
        draining: bool | None = None,
        listening: frozenset[tuple[int, int]] | Unchanged | None = UNCHANGED,
    ) -> None: ...

    def pop_actions(self) -> list[Action]: ...

    def next_wakeup(self) -> float: ...

    def knows(self, member_id: int, now: float) -> bool: ...

    def owns(self, key: SessionKey) -> bool: ...

    def bound_violation(self) -> str | None: ...


class ClaimMachine:
    """The claim protocol and session table of one member."""

    def __init__(
        self,
        member_id: int,
        settings: ClaimSettings,
        now: float,
        *,
        weight: float = 1.0,
        load: float = 0.0,
        draining: bool = False,
        listening: frozenset[tuple[int, int]] | None = None,
        decision_rule: DecisionRule = ACKNOWLEDGED,
        table_listener: TableListener | None = None,
        activity: ActivitySource | None = None,
        buckets: BucketSettings | None = None,
    ) -> None:
        self.member_id = member_id
        self.settings = settings
        self.counters = Counters()
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self._decision_rule = decision_rule
        self._activity = activity
        self._table = SessionTable(settings.max_sessions, table_listener)
        self._peers = PeerTable(
            member_timeout=settings.member_timeout,
            reorder_window=settings.reorder_window,
            max_members=settings.max_members,
        )
        self._queues = PacketQueues(
            max_per_session=settings.max_queued_per_session,
            max_packets=settings.max_queued_packets,
            max_bytes=settings.max_queued_bytes,
            drops=self.drops,
            session=self._table.get,
        )
        self._fragments = FragmentTable(
            max_fragments=settings.max_fragments, timeout=settings.fragment_timeout
        )
        self._actions: list[Action] = []
        self._counter = 0
        self._started = now
        self._view_changed_at = now  # a member met, met again, or gone
        self._weight = weight
        self._load = load
        self._draining = draining
        self._leaving = False
        self._listening = listening
        self._announced_weight = effective_weight(weight, load)
        # This member's claims still waiting for acknowledgements, by counter.
        self._awaiting: OrderedDict[int, SessionKey] = OrderedDict()
        self._reassertion = Reassertion(self._table, resync_rate=settings.resync_rate, now=now)
        # Claimed buckets (protocols.buckets): None without them (the
        # simulator's older rules, or buckets = 0 in the configuration).
        if (
            buckets is not None
            and buckets.lease + settings.hello_interval >= settings.member_timeout
        ):
            raise SettingsError(
                f"the bucket lease ({buckets.lease}) plus hello_interval "
                f"({settings.hello_interval}) must stay below member_timeout "
                f"({settings.member_timeout}): a member that stops must lose its buckets "
                "before its peers take them"
            )
        self._buckets = None if buckets is None else Buckets(member_id, buckets, now)
        self._buckets_dirty = True
        self._next_bucket_check: float | None = None
        self._next_hello_at = now
        self._send_hello(now)

    # ------------------------------------------------------------------ inputs

    def handle_client_packet(
        self, record: Classified, packet: object, size: int, now: float
    ) -> Verdict:
        """A client packet to the cluster address: inject, drop, or keep it."""
        key = record.key
        if key is None:
            return self._fragment(record, packet, size, now)
        if record.fragment is not None:
            self._fragments.remember(record.fragment, key, now)
        session = self._table.get(key)
        if session is not None and session.mine:
            if record.kind is _KIND_TCP and (
                record.tcp_flags & _CONNECTION_FLAGS or not session.established
            ):
                return self._owned_tcp_control(session, record, packet, size, now)
            session.last_seen = now
            self.counters.packets_injected += 1
            return INJECT
        if record.kind is _KIND_ICMP_ERROR:
            # Errors only ever follow a session to its owner.
            self.drops["foreign"] += 1
            return DROP
        if session is None:
            return self._new_session(key, record, packet, size, now)
        session.last_seen = now
        if session.state is PENDING:
            if record.kind is _KIND_TCP and record.tcp_flags & RST:
                self._remove(session)  # its queue is dropped as "aborted"
                self.drops["aborted"] += 1
                return DROP
            return self._enqueue(session, packet, size)
        return self._foreign_packet(session, record, packet, size, now)

    def handle_message(self, message: ClaimMessage, now: float) -> None:
        """A claim, assertion, acknowledgement or hello from another member
        (already authenticated). A claim is acknowledged at once (rule 3)."""
        if message.member_id == self.member_id:
            return  # our own, looped back: never a rival
        if self._buckets is not None and self._buckets.lapsed(now):
            self._buckets_dirty = True  # frozen for a lease: answer for no bucket
        peer = self._peers.get(message.member_id)
        if peer is not None and self._peers.heard(peer, message.counter, now):
            self._messages_lost(peer, now)
        if isinstance(message, Hello):
            self._hello(message, now)
        elif isinstance(message, Claim):
            self.counters.claims_received += 1
            self._claim(message, now)
            # After anything the claim made us send (an assertion): the
            # claimer reads this acknowledgement only after those.
            self.counters.acknowledgements_sent += 1
            self._send(
                Acknowledgement(
                    self.member_id, self._next_counter(), message.member_id, message.counter
                )
            )
        elif isinstance(message, Assertion):
            self.counters.assertions_received += 1
            self._assertion(message, now)
        elif isinstance(message, BucketState):
            self._bucket_state(message, peer)
        elif message.claimer == self.member_id and peer is not None:
            self.counters.acknowledgements_received += 1
            self._peers.park_acknowledgement(peer, message.counter, message.claim_counter, now)
        if peer is not None:
            for claim_counter in self._peers.trusted_acknowledgements(peer):
                self._acknowledged(peer.member_id, claim_counter, now)
        self._settle_buckets(now)

    def handle_timer(self, now: float, *, sessions: bool = True) -> None:
        """Run everything that is due at `now`.

        With `sessions=False`, session timers (claims, decisions, repeats,
        expiry) wait for a later call: the shell passes it while frames are
        still queued, since a decision must see every claim that arrived
        before it. Hellos and loss checks always run, so a busy member is
        never mistaken for a dead one.
        """
        buckets = self._buckets
        if buckets is not None and buckets.lapsed(now):
            self._buckets_dirty = True  # it sent no hello for a lease: all let go
        if now >= self._next_hello_at:
            self._expire_peers(now)
            self._send_hello(now)
            self._recheck_claims(now)  # nobody waits for a member now gone
        for peer in self._peers.due_losses(now):
            self._messages_lost(peer, now)
        # Sessions last: the checks above may have made some due right now.
        while sessions and (session := self._table.pop_due(now)) is not None:
            self._session_timer(session, now)
        self._fragments.expire(now)
        self._settle_buckets(now)

    def update_local(
        self,
        now: float,
        *,
        weight: float | None = None,
        load: float | None = None,
        draining: bool | None = None,
        listening: frozenset[tuple[int, int]] | Unchanged | None = UNCHANGED,
    ) -> None:
        """Local facts: configured weight, load, draining, listening ports.

        `listening` is a set of (transport, port) pairs the local service
        listens on, or None for "everything". Facts not given stay as they are.
        """
        if weight is not None:
            self._weight = weight
        if load is not None:
            self._load = load
        if listening is not UNCHANGED:
            self._listening = listening
        self._buckets_dirty = True
        if draining is not None and draining != self._draining:
            self._draining = draining
            self._send_hello(now)  # peers stop ranking us at once
        self._settle_buckets(now)

    def adopt(self, key: SessionKey, now: float, *, last_seen: float, established: bool) -> bool:
        """Re-learn a session this member's kernel still serves (its daemon
        restarted): it is owned again, and asserted to peers at once. False
        when the table has no room. Call it before any client packet."""
        if self._table.get(key) is not None or (self._table.is_full and not self._evict_one()):
            return False
        session = Session(key, Phase.OWNED, now)
        session.last_seen = min(last_seen, now)
        session.established = established or key.transport != TCP
        session.my_score = rendezvous_score(
            session_digest_input(key), self.member_id, self._announced_weight
        )
        session.best_member, session.best_score = self.member_id, session.my_score
        session.best_asserted = True
        session.won_at = now
        self._table.add(session)
        self.counters.sessions_adopted += 1
        self._send_assertion(session)
        self._reassertion.start(session, now, self.settings.assertion_repeats)
        self._schedule_expiry(session)
        return True

    def note_activity(self, key: SessionKey, last_seen: float, *, established: bool) -> None:
        """The kernel passed a packet of this session at `last_seen` (the fast
        path carries its packets past this machine); `established`: the client
        has sent more than its SYN."""
        session = self._table.get(key)
        if session is None:
            return
        session.last_seen = max(session.last_seen, last_seen)
        if established and not session.established:
            self._table.mark_established(session)

    def leave(self, now: float) -> None:
        """Say goodbye: peers forget this member and its sessions at once."""
        self._leaving = True
        self._draining = True
        if self._buckets is not None:
            # Let go before the goodbye: the shell clears the kernel's elements
            # before it sends anything, so no peer takes a bucket still served here.
            self._buckets.let_go()
        self._send_hello(now)

    # ----------------------------------------------------------------- outputs

    def pop_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    @property
    def has_actions(self) -> bool:
        return bool(self._actions)

    def next_wakeup(self) -> float:
        candidates = [self._next_hello_at]
        deadline = self._table.next_deadline()
        if deadline is not None:
            candidates.append(deadline)
        loss_check = self._peers.next_deadline()
        if loss_check is not None:
            candidates.append(loss_check)
        fragment_expiry = self._fragments.next_deadline()
        if fragment_expiry is not None:
            candidates.append(fragment_expiry)
        if self._buckets is not None:
            bucket_deadline = self._buckets.next_deadline()
            if bucket_deadline is not None:
                candidates.append(bucket_deadline)
            if self._next_bucket_check is not None:
                candidates.append(self._next_bucket_check)
        return min(candidates)

    # ------------------------------------------------------------ observation

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def announced_weight(self) -> float:
        """The weight peers rank this member by: configured weight, lowered by load."""
        return self._announced_weight

    @property
    def listening(self) -> frozenset[tuple[int, int]] | None:
        """(transport, port) pairs the local service accepts; None: not checked."""
        return self._listening

    def is_warming(self, now: float) -> bool:
        return now < self._started + self.settings.join_grace

    def session(self, key: SessionKey) -> Session | None:
        return self._table.get(key)

    def owns(self, key: SessionKey) -> bool:
        """Whether this member serves the session now (injects its packets)."""
        session = self._table.get(key)
        return session is not None and session.mine

    def sessions(self) -> list[Session]:
        return list(self._table)

    def peers(self, now: float) -> list[Peer]:
        return self._peers.live(now)

    def knows(self, member_id: int, now: float) -> bool:
        """Whether `member_id` is a live peer: its acknowledgements are awaited."""
        peer = self._peers.get(member_id)
        return peer is not None and self._peers.alive(peer, now)

    def statistics(self) -> dict[str, object]:
        counts = self._table.counts
        return {
            "sessions": len(self._table),
            "owned": counts[OWNED],
            "foreign": counts[FOREIGN],
            "pending": counts[PENDING],
            "closing": counts[CLOSING],
            "queued_packets": self._queues.packets,
            "queued_bytes": self._queues.bytes,
            "fragments": len(self._fragments),
            "members": len(self._peers),
            "timer_entries": self._table.timer_entries,
            "counters": self.counters.as_dict(),
            "drops": dict(self.drops),
            "buckets": None if self._buckets is None else self._buckets.statistics(),
        }

    # -------------------------------------------------------- client packets

    def _new_session(
        self,
        key: SessionKey,
        record: Classified,
        packet: object,
        size: int,
        now: float,
        *,
        counted: bool = True,
    ) -> Verdict:
        is_tcp = record.kind is _KIND_TCP
        if is_tcp and record.tcp_flags & (SYN | ACK | RST) != SYN:
            self.drops["unknown_midstream"] += 1
            return DROP
        if record.kind not in (FrameKind.TCP, FrameKind.UDP, FrameKind.ICMP_ECHO):
            self.drops["unknown_midstream"] += 1
            return DROP
        buckets = self._buckets
        if buckets is not None:
            if buckets.lapsed(now):
                self._buckets_dirty = True
            in_bucket = buckets.verdict(key)
            if in_bucket is OTHER:
                # Another member holds its bucket (its kernel served it), or
                # was granted it: not ours to claim.
                self.drops["foreign"] += 1
                return DROP
            if in_bucket is MINE:
                return self._serve_at_once(key, record, now, counted=counted)
        if self._table.is_full and not self._evict_one():
            self.drops["table_full"] += 1
            return DROP
        self.counters.sessions_started += counted
        if not self._may_claim(key, now):
            session = Session(key, Phase.FOREIGN, now)
            session.syn_sequence = record.sequence
            self._table.add(session)
            self._schedule_expiry(session)
            self.drops["not_claimed"] += 1
            return DROP
        session = Session(key, Phase.WAITING, now)
        session.syn_sequence = record.sequence
        self._table.add(session)
        digest_input = session_digest_input(key)
        session.my_score = rendezvous_score(digest_input, self.member_id, self._announced_weight)
        delay = self._claim_delay(session, digest_input, now)
        verdict = self._enqueue(session, packet, size)
        if delay == 0:
            self._send_claim(session, now)
        else:
            session.claim_at = now + delay
            self._table.schedule(session, session.claim_at)
        return verdict

    def _serve_at_once(
        self, key: SessionKey, record: Classified, now: float, *, counted: bool
    ) -> Verdict:
        """A new session of a bucket this member holds: it is ours with no
        claim round (every live member granted the bucket), so its first
        packet goes to the local kernel now. Nothing is sent."""
        session = self._own_at_once(key, now, sequence=record.sequence)
        if session is None:
            self.drops["table_full"] += 1
            return DROP
        self.counters.sessions_started += counted
        self.counters.served_at_once += 1
        self.counters.packets_injected += 1
        return INJECT

    def _own_at_once(self, key: SessionKey, now: float, *, sequence: int = 0) -> Session | None:
        """A session of a held bucket, owned with no claim round; None when the
        table has no room."""
        if self._table.is_full and not self._evict_one():
            return None
        session = Session(key, Phase.CLAIMING, now)
        session.syn_sequence = sequence
        session.my_score = BUCKET_SCORE
        self._table.add(session)
        session.best_member, session.best_score = self.member_id, BUCKET_SCORE
        session.best_asserted = True
        session.won_at = now
        self._table.move(session, Event.WIN)
        if key.transport != TCP:
            self._table.mark_established(session)
        self._schedule_expiry(session)
        return session

    def _may_claim(self, key: SessionKey, now: float) -> bool:
        if self._draining or self._announced_weight <= 0:
            return False
        if key.transport in (1, 58):
            return self._may_claim_flows(now)
        if self._listening is not None and (key.transport, key.cluster_port) not in self._listening:
            return False
        return key.transport == TCP or self._may_claim_flows(now)

    def _may_claim_flows(self, now: float) -> bool:
        """A new member claims no unseen UDP flow until it has learned the live ones.

        Owners re-assert their sessions to a member they hear for the first
        time, so after `join_grace` it knows them. A member that hears no
        settled peer (a cold start of the whole cluster) waits only long
        enough to hear hellos.
        """
        if not self.is_warming(now):
            return True
        if now < self._started + 1.5 * self.settings.hello_interval:
            return False
        return not any(self._peers.alive(peer, now) and not peer.warming for peer in self._peers)

    def _claim_delay(self, session: Session, digest_input: bytes, now: float) -> float:
        step, limit = self.settings.claim_step, self.settings.max_claim_delay
        mine = (session.my_score, self.member_id)
        udp_like = session.key.transport != TCP
        rank = 0
        for peer in self._peers:
            if peer.draining or peer.weight <= 0 or not self._peers.alive(peer, now):
                continue
            if udp_like and peer.warming:
                continue
            score = rendezvous_score(digest_input, peer.member_id, peer.weight)
            if (score, peer.member_id) > mine:
                rank += 1
                if rank * step >= limit:
                    return limit
        return rank * step

    def _enqueue(self, session: Session, packet: object, size: int) -> Verdict:
        """Keep a packet until the claim is decided; the oldest go first when full."""
        return QUEUED if self._queues.add(session, packet, size) else DROP

    def _owned_tcp_control(
        self, session: Session, record: Classified, packet: object, size: int, now: float
    ) -> Verdict:
        """A TCP packet of an owned session that changes its state."""
        flags = record.tcp_flags
        session.last_seen = now
        if flags & (SYN | ACK | RST) == SYN and _reuses_port(session, record):
            return self._start_again(session, record, packet, size, now, same_session=False)
        self.counters.packets_injected += 1
        if flags & RST:
            # The local kernel judges the RST (an off-path one, out of window,
            # is ignored); the session lingers for fin_timeout either way, so
            # a forged RST cannot make the cluster forget a live connection.
            self._close(session, now)
            return INJECT
        if flags & SYN and not flags & ACK:
            return INJECT  # a retransmitted SYN: the local kernel answers it again
        if flags & ACK and not session.established:
            self._table.mark_established(session)
        if flags & FIN:
            self._close(session, now)
        return INJECT

    def _foreign_packet(
        self, session: Session, record: Classified, packet: object, size: int, now: float
    ) -> Verdict:
        if record.kind is _KIND_TCP:
            flags = record.tcp_flags
            if flags & (RST | FIN):
                self._close(session, now)
            elif flags & SYN and not flags & ACK:
                if _reuses_port(session, record):
                    return self._start_again(session, record, packet, size, now, same_session=False)
                if self._unconfirmed(session, now):
                    # Nobody confirmed this session and the client is still
                    # knocking: whoever claimed it is gone or lost its claim.
                    return self._start_again(session, record, packet, size, now, same_session=True)
            elif flags & ACK and not session.established:
                self._table.mark_established(session)
        elif self._unconfirmed(session, now):
            return self._start_again(session, record, packet, size, now, same_session=True)
        self.drops["foreign" if session.best_member != NO_MEMBER else "not_claimed"] += 1
        return DROP

    def _start_again(
        self,
        session: Session,
        record: Classified,
        packet: object,
        size: int,
        now: float,
        *,
        same_session: bool,
    ) -> Verdict:
        """Forget `session` and decide afresh: a new connection on a reused port,
        or (`same_session`) the same one again, since no claim for it held.

        A rival's claim heard lately for this key was acknowledged: a claim of
        ours now would follow that acknowledgement, which rule 3 forbids, so
        this member stays silent, as if the claim had come before the packet.
        """
        rival = session.rival_claim
        self._remove(session)
        if rival is not None and now - rival.at < self.settings.reclaim_after:
            self.counters.sessions_started += not same_session
            self._learn_session(session.key, rival.member_id, rival.score, False, now)
            self.drops["foreign"] += 1
            return DROP
        return self._new_session(session.key, record, packet, size, now, counted=not same_session)

    def _close(self, session: Session, now: float) -> None:
        """The client ends the session (FIN or RST): keep it for fin_timeout."""
        if session.state is not CLOSING:
            self._table.move(session, Event.CLIENT_CLOSE)
            self._table.mark_established(session)  # no longer worth claiming again
            self._table.schedule(session, now + self.settings.fin_timeout)

    def _unconfirmed(self, session: Session, now: float) -> bool:
        """No owner asserted this session, and the last claim is old news."""
        return (
            not session.best_asserted
            and now - session.best_heard_at >= self.settings.reclaim_after
            and not session.established
        )

    def _fragment(self, record: Classified, packet: object, size: int, now: float) -> Verdict:
        key = self._fragments.session_of(record.fragment)
        if key is None:
            self.drops["unknown_fragment"] += 1
            return DROP
        session = self._table.get(key)
        if session is not None and session.state is PENDING:
            # The rest of a first datagram: it waits with the first fragment.
            return self._enqueue(session, packet, size)
        if session is None or not session.mine:
            self.drops["foreign"] += 1
            return DROP
        session.last_seen = now
        self.counters.packets_injected += 1
        return INJECT

    # ------------------------------------------------------------- messages

    def _hello(self, hello: Hello, now: float) -> None:
        self.counters.hellos_received += 1
        peer = self._peers.get(hello.member_id)
        if hello.leaving:
            if peer is not None:
                self._forget_peer(peer)
                self._recheck_claims(now)
            return
        if peer is None:
            if self._peers.is_full:
                self._forget_peer(self._peers.oldest())
            peer, last_heard = self._peers.meet(hello.member_id, hello.counter, now)
            self._view_changed_at = now
            peer.known_from_counter = self._counter + 1
            if last_heard is not None:
                # A member we had given up on (a partition): everything it
                # sent since is lost, as in a counter gap.
                peer.gap_since = last_heard
                self._messages_lost(peer, now)
            elif hello.counter > 1:
                # We never heard its first messages: it ran cut off from us (a
                # partition at its start), so it may have won sessions we won.
                # A warming member is at most join_grace old.
                settings = self.settings
                born = now - settings.join_grace - settings.hello_interval
                self._reassertion.resync(
                    since=born if hello.warming else None,
                    plan=settings.resync_repeats,
                    now=now,
                    limit=MAX_REPEATED_RESYNC,
                )
            # A newcomer learns the running sessions from their owners.
            self._reassertion.resync(since=None, plan=(0.0,), now=now)
            self._send_hello(now, scheduled=False)  # let the newcomer rank us at once
        peer.weight = hello.weight
        peer.draining = hello.draining
        peer.warming = hello.warming

    def _claim(self, claim: Claim, now: float) -> None:
        session = self._table.get(claim.session)
        bid = (claim.score, claim.member_id)
        if session is None:
            if self._buckets is not None and self._buckets.verdict(claim.session) is MINE:
                # Its bucket is ours: our kernel serves its next SYN without
                # asking, so the claimer must yield. We may have served its
                # first (the kernel tells Python nothing), or the bucket's
                # previous holder did just before it moved, and then that
                # holder keeps it: our answer beats any claim but not a
                # session served at once, and makes us no owner.
                self.counters.assertions_sent += 1
                self._send(
                    Assertion(self.member_id, self._next_counter(), claim.session, ANSWER_SCORE)
                )
                return
            # The claim outran the client's packet (or we never see that
            # packet): remember it, so that we never claim this session.
            self._learn_session(claim.session, claim.member_id, claim.score, False, now)
            return
        if session.state is not PENDING:
            # Most likely a new connection on a reused port (see _start_again).
            session.rival_claim = HeardClaim(claim.member_id, claim.score, now)
        if session.mine:
            self._answer(session, now)
            return
        if session.state is PENDING:
            if bid > (session.best_score, session.best_member):
                _hear_bid(session, claim.member_id, claim.score, now)
            if session.phase is Phase.WAITING:
                # Someone claimed before our turn: stay silent.
                self._lose(session, now)
            return
        if not session.best_asserted and bid > (session.best_score, session.best_member):
            _hear_bid(session, claim.member_id, claim.score, now)

    def _assertion(self, assertion: Assertion, now: float) -> None:
        session = self._table.get(assertion.session)
        if assertion.score == ANSWER_SCORE:
            self._holder_answered(session, now)
            return
        bid = (assertion.score, assertion.member_id)
        if session is None:
            self._learn_session(assertion.session, assertion.member_id, assertion.score, True, now)
            return
        if session.mine:
            self.counters.conflicts += 1
            if bid > (session.my_score, self.member_id):
                self.counters.conflicts_yielded += 1
                self._reset_local(session)
                self._table.move(session, Event.YIELD)
                _hear_bid(session, assertion.member_id, assertion.score, now, asserted=True)
                session.next_assertion_at = None
                self._schedule_expiry(session)
                self._table.note_asserted(session)
            else:
                self._answer(session, now)
            return
        if session.state is PENDING:
            _hear_bid(session, assertion.member_id, assertion.score, now, asserted=True)
            self._lose(session, now)
            self._table.note_asserted(session)
            return
        # A bystander keeps the best asserted owner: after a conflict it is
        # the one that stays.
        if not session.best_asserted or bid > (session.best_score, session.best_member):
            _hear_bid(session, assertion.member_id, assertion.score, now, asserted=True)
            self._table.note_asserted(session)

    def _holder_answered(self, session: Session | None, now: float) -> None:
        """A bucket's holder answered a claim for a session it has no record
        of: the claim loses, and nobody is its owner as far as anyone knows.
        The claimer and every member that heard only claims forget it, so
        that the client's next SYN is served by whoever holds the bucket then
        (a record kept would drop it as foreign). A member that owns it, or
        heard its owner assert it, keeps it (the owner answers with its own
        assertion, which every claim and this answer lose to)."""
        if session is None:
            return
        if session.mine:
            self._answer(session, now)  # ours: the answer loses to our assertion
            return
        if session.best_asserted:
            return  # its owner asserted it, and that stands
        if session.state is PENDING:
            self._lose(session, now)
        self._remove(session)

    def _learn_session(
        self, key: SessionKey, owner: int, score: float, asserted: bool, now: float
    ) -> None:
        if self._table.is_full and not self._evict_one():
            return
        session = Session(key, Phase.FOREIGN, now)
        session.best_member, session.best_score = owner, score
        session.best_asserted = asserted
        if asserted:
            # Only a session that already runs is asserted; its client may
            # never send another start packet, so it counts as established.
            session.established = True
        self._table.add(session)
        self._schedule_expiry(session)

    def _answer(self, session: Session, now: float) -> None:
        """Tell a rival that this member owns the session (at most once per guard)."""
        if now - session.answered_at >= self.settings.guard:
            session.answered_at = now
            self._send_assertion(session)

    # --------------------------------------------------------------- timers

    def _session_timer(self, session: Session, now: float) -> None:
        state = session.state
        if state is PENDING:
            if now >= self._expiry(session):
                # Undecided past its expiry (this member did not run for that
                # long): forget it as its expiry would, rather than win a
                # session its client gave up on and inject its stale packets.
                self._remove(session)
                return
            if (
                session.phase is Phase.WAITING
                and session.claim_at is not None
                and now >= session.claim_at
            ):
                if self._may_claim(session.key, now):
                    self._send_claim(session, now)
                else:
                    self._decline(session)
            elif session.decide_at is not None and now >= session.decide_at:
                self._decision_due(session, now)
            else:
                self._reschedule_pending(session)
            return
        if (
            session.mine
            and session.next_assertion_at is not None
            and now >= session.next_assertion_at
        ):
            self._send_assertion(session)
            advance_repeat(session)
        expires = self._expiry(session)
        if now >= expires and self._activity is not None:
            # Its packets may have passed outside this machine (the kernel
            # fast path): ask before forgetting it.
            seen = self._activity.last_activity(session, now)
            if seen is not None:
                self.note_activity(session.key, seen.last_seen, established=seen.established)
                expires = self._expiry(session)
        if now >= expires:
            self._remove(session)
            return
        if session.mine and session.next_assertion_at is not None:
            expires = min(expires, session.next_assertion_at)
        self._table.schedule(session, expires)

    def _reschedule_pending(self, session: Session) -> None:
        at = session.decide_at if session.phase is Phase.CLAIMING else session.claim_at
        if at is not None:
            self._table.schedule(session, at)

    def _expiry(self, session: Session) -> float:
        settings = self.settings
        if session.state is CLOSING:
            return session.last_seen + settings.fin_timeout
        if session.key.transport != TCP:
            return session.last_seen + settings.udp_idle_timeout
        if not session.established:
            return session.last_seen + settings.handshake_timeout
        return session.last_seen + settings.tcp_idle_timeout

    def _schedule_expiry(self, session: Session) -> None:
        self._table.schedule(session, self._expiry(session))

    def _send_claim(self, session: Session, now: float) -> None:
        self._table.move(session, Event.TURN)
        session.claim_at = None
        session.claimed_at = now
        session.decide_at = now + self.settings.ack_timeout
        self._table.schedule(session, session.decide_at)
        self.counters.claims_sent += 1
        session.claim_counter = counter = self._next_counter()
        session.acknowledged_by = None
        self._awaiting[counter] = session.key
        self._send(Claim(self.member_id, counter, session.key, session.my_score))
        self._check_acknowledged(session, now)  # at guard when there is nobody to ask

    def _acknowledged(self, member_id: int, claim_counter: int, now: float) -> None:
        key = self._awaiting.get(claim_counter)
        session = None if key is None else self._table.get(key)
        if session is not None and session.state is PENDING:
            assert session.claim_counter == claim_counter  # _lose and _remove forget the others
            if session.acknowledged_by is None:
                session.acknowledged_by = {member_id}
            else:
                session.acknowledged_by.add(member_id)
            self._check_acknowledged(session, now)

    def _unacknowledged(self, session: Session, now: float) -> bool:
        """Some live member that knew us when we claimed has not acknowledged."""
        acknowledged_by = session.acknowledged_by or ()
        return any(
            peer.known_from_counter <= session.claim_counter
            and peer.member_id not in acknowledged_by
            and self._peers.alive(peer, now)
            for peer in self._peers
        )

    def _check_acknowledged(self, session: Session, now: float) -> None:
        """Ask the decision rule whether the claim may be decided sooner than
        `ack_timeout`. Decisions run on a timer: the shell runs timers only
        with the TAP drained, so the decision sees every claim at hand."""
        acknowledged = not self._unacknowledged(session, now)
        if acknowledged and self._decision_rule is ACKNOWLEDGED and self.is_settled(now):
            # Rule 3, settled: every member that may claim is known, and each
            # one's acknowledgement follows any claim it made; no guard to wait.
            self._decide_earlier(session, now)
            return
        due = self._decision_rule.decision_time(
            session.claimed_at, acknowledged, now, self.settings
        )
        if due is not None:
            self._decide_earlier(session, due)

    def is_settled(self, now: float) -> bool:
        """No member joined, came back or went for a join grace, and this
        member is past its own: a claim from a member not heard yet (what the
        guard is for) is then unlikely enough to be left to rule 5."""
        return now >= max(self._started, self._view_changed_at) + self.settings.join_grace

    def _decide_earlier(self, session: Session, due: float) -> None:
        """Move the claim's decision to `due`, if that is sooner."""
        if session.decide_at is not None and due < session.decide_at:
            session.decide_at = due
            self._table.schedule(session, due)

    def _recheck_claims(self, now: float) -> None:
        """A member is gone: claims waiting only for it may be decided."""
        for key in list(self._awaiting.values()):
            session = self._table.get(key)
            if session is not None and session.state is PENDING:
                self._check_acknowledged(session, now)

    def _decision_due(self, session: Session, now: float) -> None:
        """The claim's decision time has come: `guard` after it was sent once
        every live member acknowledged it, or else `ack_timeout` (counted as
        decided on timeout).

        A member that died a moment ago counts as live until member_timeout,
        so claims pay the whole ack_timeout until then (skipping a silent member
        instead would let two members that each lost track of the other both
        win at once).
        """
        if self._unacknowledged(session, now):
            self.counters.decided_on_timeout += 1
        self._decide(session, now)

    def _decide(self, session: Session, now: float) -> None:
        self._awaiting.pop(session.claim_counter, None)
        session.acknowledged_by = None
        rival = (session.best_score, session.best_member)
        if session.best_member != NO_MEMBER and rival > (session.my_score, self.member_id):
            self._lose(session, now)
            return
        self.counters.claims_won += 1
        session.best_member, session.best_score = self.member_id, session.my_score
        session.best_asserted = True
        session.decide_at = None
        session.won_at = now
        self._table.move(session, Event.WIN)
        if session.key.transport != TCP:
            self._table.mark_established(session)
        packets = self._queues.take(session)
        if packets:
            self.counters.packets_injected += len(packets)
            self._actions.append(InjectPackets(session.key, packets))
        self._send_assertion(session)
        self._reassertion.start(session, now, self.settings.assertion_repeats)
        self._schedule_expiry(session)

    def _decline(self, session: Session) -> None:
        """This member began draining, or its service stopped listening, before
        its turn to claim: it stays silent, as if it had never been a candidate."""
        self._queues.discard(session, "not_claimed")
        session.claim_at = None
        self._table.move(session, Event.DECLINE)
        self._schedule_expiry(session)

    def _lose(self, session: Session, now: float) -> None:
        if session.phase is Phase.CLAIMING:
            self.counters.claims_lost += 1
            self._awaiting.pop(session.claim_counter, None)
            session.acknowledged_by = None
        self._queues.discard(session, "lost_claim")
        session.claim_at = session.decide_at = None
        self._table.move(session, Event.LOSE)
        self._schedule_expiry(session)

    def _send_assertion(self, session: Session) -> None:
        self.counters.assertions_sent += 1
        self._send(Assertion(self.member_id, self._next_counter(), session.key, session.my_score))

    # ----------------------------------------------------------------- peers

    def _expire_peers(self, now: float) -> None:
        for peer in self._peers.expired(now):
            self._forget_peer(peer)

    def _forget_peer(self, peer: Peer) -> None:
        """A member is gone, and so are its sessions: its kernel state died with it.

        Forgetting them lets a UDP flow of a dead owner be claimed afresh;
        mid-stream TCP packets of its sessions stay unclaimable.
        """
        self._peers.forget(peer)
        self._view_changed_at = max(self._view_changed_at, peer.last_heard)
        if self._buckets is not None:
            self._buckets.forget(peer.member_id)
            self._buckets_dirty = True
        for session in self._table:
            if not session.mine and session.best_member == peer.member_id:
                if session.state is PENDING:
                    # Its claim no longer competes with ours.
                    session.best_member, session.best_score = NO_MEMBER, -1.0
                else:
                    self._remove(session)

    def _send_hello(self, now: float, *, scheduled: bool = True) -> None:
        if scheduled:
            self._announced_weight = effective_weight(self._weight, self._load)
            self._next_hello_at = now + self.settings.hello_interval
        self.counters.hellos_sent += 1
        self._send(
            Hello(
                self.member_id,
                self._next_counter(),
                0.0 if self._leaving else self._announced_weight,
                draining=self._draining,
                warming=self.is_warming(now),
                leaving=self._leaving,
            )
        )
        if self._buckets is not None and not self._leaving:
            # Peers hear us now: the lease runs from here (never from a timer
            # run that sent nothing, or a peer could open our buckets while
            # our kernel still serves them).
            if not self._buckets.lapsed(now):
                self._buckets.renew(now)
            self._buckets_dirty = True  # a warming member may be warm now
            self._send_buckets(now)

    # --------------------------------------------------------------- buckets

    @property
    def buckets(self) -> Buckets | None:
        return self._buckets

    def _bucket_state(self, state: BucketState, peer: Peer | None) -> None:
        self.counters.bucket_messages_received += 1
        if self._buckets is None or peer is None:
            return  # not met yet (its hello comes first): its next one counts
        if state.bucket_count != self._buckets.count:
            self.counters.bucket_count_mismatches += 1
            return
        self._buckets.heard(state)
        self._buckets_dirty = True

    def _bucket_candidate(self, now: float) -> Candidate | None:
        """This member as the bucket rule ranks it; None while it may own none."""
        if self._draining or self._leaving or self.is_warming(now) or self._weight <= 0:
            return None
        return Candidate(self.member_id, bucket_weight(self._weight, self._load), self._listening)

    def _settle_buckets(self, now: float) -> None:
        buckets = self._buckets
        if buckets is None:
            return
        check = self._next_bucket_check
        if not (self._buckets_dirty or buckets.due(now) or (check is not None and now >= check)):
            return
        self._buckets_dirty = False
        live = self._peers.live(now)
        lease = buckets.settings.lease
        speaking = {peer.member_id for peer in live if now - peer.last_heard <= lease}
        conflicted_before = buckets.conflicted
        changed = buckets.settle(
            now,
            self._bucket_candidate(now),
            [peer.member_id for peer in live],
            lambda state: self._trusted_state(state, now),
            lambda: self._unsettled_buckets(now),
            speaking,
        )
        # Waiting for grants: look again soon (a new peer's messages count
        # only after reorder_window; claims in the bucket get decided). And
        # when a peer that holds buckets may fall silent for a lease.
        waiting = any(buckets.wanting.values())
        checks = [now + BUCKET_RECHECK] if waiting else []
        checks.extend(
            peer.last_heard + lease + BUCKET_RECHECK
            for peer in live
            if peer.member_id in speaking and buckets.holds_anything(peer.member_id)
        )
        self._next_bucket_check = min(checks) if checks else None
        if buckets.just_taken:
            self._win_in_taken_buckets(set(buckets.just_taken), now)
        if changed:
            self._send_buckets(now)
        newly = buckets.conflicted - conflicted_before
        if newly:
            # Another member held these buckets too (lost messages): assert
            # what we served of them, so that the lower bid yields (rule 5).
            for session in self._table:
                if session.mine and buckets.bucket_of(session.key) in newly:
                    self._send_assertion(session)

    def _win_in_taken_buckets(self, taken: set[int], now: float) -> None:
        """Our claims in buckets just taken, with no rival heard, are won now,
        with the bucket score: the bucket is ours, so a late rival claim is
        answered with an assertion that no claim beats (as for a session
        first seen in a held bucket)."""
        buckets = self._buckets
        assert buckets is not None
        for session in list(self._table):
            if (
                session.state is PENDING
                and session.best_member == NO_MEMBER
                and buckets.bucket_of(session.key) in taken
            ):
                if session.phase is Phase.WAITING:
                    session.claim_at = None
                    self._table.move(session, Event.TURN)  # decided without a claim sent
                session.my_score = BUCKET_SCORE
                self._decide(session, now)

    def _send_buckets(self, now: float) -> None:
        assert self._buckets is not None
        self.counters.bucket_messages_sent += 1
        state = self._buckets.state(
            self._next_counter(),
            self._bucket_candidate(now),
            draining=self._draining,
            warming=self.is_warming(now),
        )
        self._send(state)

    def _trusted_state(self, state: BucketState, now: float) -> bool:
        """A peer's BUCKETS message counts for a take once every earlier
        message of its sender has arrived (as for acknowledgements, rule 3)."""
        peer = self._peers.get(state.member_id)
        return (
            peer is not None
            and not peer.missing
            and state.counter > peer.trust_after
            and now >= peer.heard_since + self.settings.reorder_window
        )

    def _unsettled_buckets(self, now: float) -> set[int]:
        """Buckets with a claim a rival may still win: one of ours that heard a
        rival's bid, or a rival's heard lately and not yet asserted. Not to be
        taken yet, since that rival may win the session.

        A claim of ours that heard no rival does not hold a bucket back (else
        a SYN flood in a bucket being taken keeps it open): no rival can have
        claimed the session before granting the bucket, since its claim would
        have come before the grant, and none claims it after (the bucket is
        another's to it). The take wins such claims (`_win_in_taken_buckets`)."""
        buckets = self._buckets
        assert buckets is not None
        recent = self.settings.ack_timeout + self.settings.reclaim_after
        blocked: set[int] = set()
        for session in self._table:
            state = session.state
            if (state is PENDING and session.best_member != NO_MEMBER) or (
                state is FOREIGN
                and not session.best_asserted
                and session.best_member != NO_MEMBER
                and now - session.best_heard_at < recent
            ):
                bucket = buckets.bucket_of(session.key)
                if bucket is not None:
                    blocked.add(bucket)
        return blocked

    def _messages_lost(self, peer: Peer, now: float) -> None:
        """Some of `peer`'s messages are lost: perhaps a claim for a session we
        won meanwhile. Re-assert those sessions, so that one assertion likely
        gets through; if the peer owns one too, the lower bid yields.
        """
        self._reassertion.resync(
            since=peer.gap_since - self.settings.guard,
            plan=self.settings.resync_repeats,
            now=now,
        )

    # ----------------------------------------------------------------- table

    def _evict_one(self) -> bool:
        """Make room: forget the oldest session that never got established, or
        else the oldest session another member serves.

        Forgetting a foreign session costs nothing: its packets are dropped as
        unknown instead of as foreign. A half-open session of this member's
        goes from its kernel too (a SYN flood evicts these first). Established
        sessions this member serves are never evicted; a flood of completed
        handshakes to this member fills the table until they idle out (see the
        README's known limits).
        """
        victim = self._table.oldest_unestablished() or self._table.oldest_foreign()
        if self._activity is not None:
            victim = self._confirmed_victim(victim)
        if victim is None:
            return False
        if victim.mine:
            self._reset_local(victim)
        self._queues.discard(victim, "table_full")
        self._remove(victim)
        return True

    def _confirmed_victim(self, victim: Session | None) -> Session | None:
        """With an activity source, a session of this member's may only look
        half-open (its handshake passed outside the machine): ask before
        evicting it, a few at most, then take a foreign session or none."""
        assert self._activity is not None
        for _ in range(8):
            if victim is None or not victim.mine or victim.established:
                return victim
            seen = self._activity.last_activity(victim, victim.last_seen)
            if seen is None or not seen.established:
                return victim  # really half-open: a flood's SYN, say
            self._table.mark_established(victim)
            victim = self._table.oldest_unestablished() or self._table.oldest_foreign()
        if victim is not None and victim.mine and not victim.established:
            return self._table.oldest_foreign()
        return victim

    def _reset_local(self, session: Session) -> None:
        """Have the kernel forget its half-open connection for a TCP session."""
        if session.key.transport == TCP:
            self._actions.append(
                ResetLocalSession(session.key, (session.syn_sequence + 1) & 0xFFFFFFFF)
            )

    def _remove(self, session: Session) -> None:
        if session.phase is Phase.CLAIMING:
            self._awaiting.pop(session.claim_counter, None)
        if session.queue:
            self._queues.discard(session, "aborted")
        self._table.remove(session)

    def _send(self, message: ClaimMessage) -> None:
        self._actions.append(SendMessage(message))

    def _next_counter(self) -> int:
        self._counter += 1
        return self._counter

    def bound_violation(self) -> str | None:
        """The first table bound that does not hold, or None (checked by the simulator)."""
        settings = self.settings
        table = self._table
        if len(table) > settings.max_sessions:
            return f"sessions: {len(table)} > {settings.max_sessions}"
        queues = self._queues.bound_violation()
        if queues is not None:
            return queues
        if len(self._peers) > settings.max_members:
            return f"members: {len(self._peers)} > {settings.max_members}"
        if len(self._awaiting) > settings.max_sessions:
            return f"claims awaiting acknowledgement: {len(self._awaiting)}"
        if len(self._fragments) > settings.max_fragments:
            return f"fragments: {len(self._fragments)} > {settings.max_fragments}"
        if table.timer_entries > table.timer_limit:
            return f"timer entries: {table.timer_entries} for {len(table)} sessions"
        return None
