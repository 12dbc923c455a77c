"""Claimed buckets: which member serves new sessions at once, with no claim round.

The session space is cut into `count` buckets by client address and port
(protocols.bucket_hash, the kernel's jhash). Every member ranks the members
for every bucket by the same weighted rendezvous rule it ranks sessions by,
from the weights they announce, so every member computes the same owner for a
bucket from the same view. A bucket's owner does not serve it on that
computation alone: views differ for a moment after a join, a weight change or
a failure, and two members serving one bucket's SYNs would both answer them.
It *holds* the bucket only after every live member has granted it:

1. A member *wants* a bucket its view says it owns, and announces that in
   its BUCKETS message (sent with every hello and whenever its state changes;
   each message replaces the sender's last one).
2. A member grants a bucket to a member that wants it unless it holds the
   bucket itself, wants it with a higher bid, or has granted it to another
   member that still wants or holds it. A grant names the last BUCKETS
   message of the wanter's it has read; once given, it stands (and the
   granter serves nothing of that bucket) until the wanter neither wants nor
   holds the bucket, or is gone.
3. A member holds a bucket once every live member's latest message grants it
   after reading the message that first wanted it, counting a message only
   when every earlier message of its sender has arrived (rule 3 of
   docs/claim-rule.md), and when no claim of a session in that bucket is
   still being decided in its table.
4. A holder releases a bucket as soon as its view names another owner (a
   join, a weight change, its own drain), and at once if it learns that
   another member holds it too (after a partition): the lower bid releases.
5. A holder's buckets are a lease: renewed with every hello it sends, and
   lost, all at once, when the member finds it has sent none for `lease` (it
   was frozen, or too busy to run its timers). The shell gives the kernel's
   elements the same lease, so a member whose daemon died or froze stops
   serving new sessions of its buckets within `lease` of the last message its
   peers heard, before they give up on it (`lease` < `member_timeout`).

A bucket nobody holds or has been granted is *open*: its new sessions are
claimed one by one by the per-session rule, as before buckets. TCP sessions
never move when their bucket does: only a SYN starts one, so the old holder
goes on serving the ones it has. A UDP flow has no SYN, so a newly held
bucket stays open for its UDP flows for `udp_transition` (the UDP idle
timeout): the old holder asserts the flows it serves when they are claimed,
and only flows that start after that are served at once.

Pure and synchronous: the claim machine owns one and feeds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

from protocols.bucket_hash import bucket_of
from protocols.rendezvous import rendezvous_score
from protocols.session_key import SessionKey
from protocols.wire.claim import (
    ALL_PORTS,
    HEADER_LENGTH,
    MAX_PORTS,
    TAG_LENGTH,
    BucketState,
    Grant,
)

# The score of a session served at once from a held bucket: it wins any
# per-session conflict, since the holder's kernel serves it without asking.
BUCKET_SCORE = 1e300
# The score of a holder's answer to a claim for a session it has no record
# of, in a bucket it holds: it beats any claim (the claimer yields, and the
# client's next SYN is served at once here), but not a session served at
# once, which the bucket's previous holder may have served just before the
# bucket moved. The answer makes the holder no owner.
ANSWER_SCORE = 1e299
# A BUCKETS message stays within one Ethernet frame with its IP header and tag.
MAX_MESSAGE = 1400
# The most buckets whose message still has room for a grant (two bitmaps, the
# ports, and one grant's bitmap within MAX_MESSAGE).
MAX_BUCKET_COUNT = 2048
_BUCKET_TRANSPORTS = (6, 17)
_NOBODY = -1


class BucketVerdict(IntEnum):
    OPEN = 0  # the per-session claims decide (the TAP path)
    MINE = 1  # this member serves it at once (its kernel, or an instant win)
    OTHER = 2  # another member holds it or has been granted it: drop


OPEN, MINE, OTHER = BucketVerdict.OPEN, BucketVerdict.MINE, BucketVerdict.OTHER


@dataclass(frozen=True)
class BucketSettings:
    count: int = 1024
    seed: int = 0
    lease: float = 0.75  # below the claim settings' member_timeout (half of it)
    udp_transition: float = 30.0  # the UDP idle timeout


@dataclass(frozen=True, slots=True)
class Candidate:
    """A member as the bucket rule sees it: one that may own buckets."""

    member_id: int
    weight: float
    ports: frozenset[tuple[int, int]] | None


@dataclass(slots=True)
class BucketCounters:
    taken: int = 0
    released: int = 0
    grants_given: int = 0
    conflicts: int = 0  # another member held a bucket this member held
    lapses: int = 0  # this member found its lease run out (frozen) and let go of all

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def bucket_input(bucket: int) -> bytes:
    return b"bucket" + bucket.to_bytes(2, "big")


class Buckets:
    """One member's bucket state (see the module docstring)."""

    def __init__(self, member_id: int, settings: BucketSettings, now: float) -> None:
        if not 1 <= settings.count <= MAX_BUCKET_COUNT:
            raise ValueError(f"bucket count must be 1 to {MAX_BUCKET_COUNT}, not {settings.count}")
        if settings.lease <= 0 or not math.isfinite(settings.lease):
            raise ValueError("bucket lease must be a number above 0")
        self.member_id = member_id
        self.settings = settings
        self.count = settings.count
        self.counters = BucketCounters()
        self.holding: dict[int, float] = {}  # bucket -> when it was taken
        # bucket -> counter of the message that first wanted it (0: not sent yet)
        self.wanting: dict[int, int] = {}
        self.granted_to: dict[int, int] = {}  # bucket -> member it is granted to
        self.states: dict[int, BucketState] = {}  # the latest message of each live peer
        self.lease_until = now + settings.lease
        self.ports: frozenset[tuple[int, int]] | None = None  # the bucket ports; None: every port
        self.version = 0  # bumped whenever a verdict may have changed (the shell mirrors them)
        self.conflicted: set[int] = set()  # buckets another member held too, at the last settle
        self.just_taken: list[int] = []  # the buckets the last settle took
        self._unit_scores: dict[int, list[float]] = {}
        self._owners: list[int] = [_NOBODY] * self.count
        self._view: tuple[Candidate, ...] = ()
        self._tcp = bytearray(self.count)
        self._udp = bytearray(self.count)
        self._next_udp_change: float | None = None

    # ----------------------------------------------------------- inputs

    def heard(self, state: BucketState) -> None:
        """A peer's BUCKETS message (the caller checked its bucket count)."""
        last = self.states.get(state.member_id)
        if last is None or state.counter > last.counter:
            self.states[state.member_id] = state

    def forget(self, member_id: int) -> None:
        """A peer is gone: its state, and the grants it had."""
        self.states.pop(member_id, None)
        for bucket in [bucket for bucket, to in self.granted_to.items() if to == member_id]:
            del self.granted_to[bucket]

    def lapsed(self, now: float) -> bool:
        """Whether the lease ran out (the member did not run for `lease`):
        then every bucket is let go at once."""
        if now <= self.lease_until:
            return False
        if self.holding:
            self.counters.lapses += 1
            self.counters.released += len(self.holding)
            self.holding.clear()
        # Nothing read before the freeze counts: grants to us may have been
        # given up since (we were given up on), and holders may have changed.
        self.states.clear()
        for bucket in self.wanting:
            self.wanting[bucket] = 0  # wanted afresh, granted afresh
        self._open_mine()
        self.lease_until = now + self.settings.lease
        self.version += 1
        return True

    def _open_mine(self) -> None:
        """No bucket is ours any more: the verdicts say so at once (before the
        next `settle`, a queued SYN may be asked about)."""
        for table in (self._tcp, self._udp):
            for bucket, verdict in enumerate(table):
                if verdict == MINE:
                    table[bucket] = OPEN

    def renew(self, now: float) -> None:
        """The member sends a hello: its lease goes on (call after `lapsed` said no)."""
        self.lease_until = now + self.settings.lease

    def let_go(self) -> None:
        """Release every bucket at once (the member leaves)."""
        self.counters.released += len(self.holding)
        self.holding.clear()
        self.wanting.clear()
        self._open_mine()
        self.version += 1

    def settle(
        self,
        now: float,
        me: Candidate | None,
        live: Iterable[int],
        trusted: Callable[[BucketState], bool],
        unsettled: Callable[[], set[int]],
        speaking: set[int] | None = None,
    ) -> bool:
        """Apply rules 1 to 4 to the current view. `me` is this member as a
        candidate (None: draining, warming or weightless); `live` the live
        peers; `trusted` says whether a peer's message may count for a take;
        `unsettled` lists buckets with a claim a rival may still win;
        `speaking` the live peers heard within a lease (None: all of them).
        True if this member's own state changed (send a BUCKETS message).

        A bucket held by (or granted to) a peer not heard for a lease is open
        again before that peer is declared gone: if it died or froze, its
        lease ran out and its kernel serves that bucket no more, and its new
        sessions are claimed one by one (waiting `ack_timeout` for the silent
        peer, as any claim does) instead of being dropped until
        `member_timeout`. Its buckets are taken only once it is gone."""
        live_ids = set(live)
        for member_id in [member_id for member_id in self.states if member_id not in live_ids]:
            self.forget(member_id)
        states = self.states
        view = self._candidates(me, states)
        if view != self._view:
            self._view = view
            self._rank(view)
        owners = self._owners
        me_id = self.member_id
        changed = False
        # Rule 4: a member that finds a peer holding a bucket it holds
        # releases it (counted), whatever the bids, and so does a holder whose
        # view ranks another member first. The peer may not hear us (a one-way
        # partition): if we held on, both kernels would serve its new
        # sessions. Once the two hear each other, the ranked member takes it
        # again with grants. Both sides assert what they served of it
        # (`conflicted`), so that each session two members served ends with
        # one of them, as in rule 5.
        conflicted: set[int] = set()
        for state in states.values():
            for bucket in state.holding & self.holding.keys():
                conflicted.add(bucket)
                self._release(bucket)
                changed = True
        self.counters.conflicts += len(conflicted - self.conflicted)
        self.conflicted = conflicted
        for bucket in list(self.holding):
            if owners[bucket] != me_id:
                self._release(bucket)
                changed = True
        # Rule 1: want what is ours and not yet held (nor granted away).
        for bucket in [bucket for bucket in self.wanting if owners[bucket] != me_id]:
            del self.wanting[bucket]
            changed = True
        for bucket, owner in enumerate(owners):
            if (
                owner == me_id
                and bucket not in self.holding
                and bucket not in self.wanting
                and bucket not in self.granted_to
            ):
                self.wanting[bucket] = 0
                changed = True
        # Rule 2: grants stand until their member neither wants nor holds the bucket.
        for bucket, to in list(self.granted_to.items()):
            wanter = states.get(to)
            if wanter is None or (bucket not in wanter.wanting and bucket not in wanter.holding):
                del self.granted_to[bucket]
                changed = True
        held_by_peers: dict[int, int] = {}
        for peer_id, state in states.items():
            for bucket in state.holding:
                held_by_peers[bucket] = peer_id
        for peer_id, state in sorted(states.items()):
            for bucket in state.wanting:
                if bucket >= self.count or bucket in self.holding:
                    continue
                if self.granted_to.get(bucket, peer_id) != peer_id:
                    continue
                if held_by_peers.get(bucket, peer_id) != peer_id:
                    continue  # a third member still holds it: it must release first
                if bucket in self.wanting and self._my_bid(bucket, me) > self._bid(
                    bucket, peer_id, state.weight
                ):
                    continue
                if bucket not in self.granted_to:
                    self.granted_to[bucket] = peer_id
                    self.counters.grants_given += 1
                    changed = True
                self.wanting.pop(bucket, None)
        # Rule 3: take what every live member granted.
        ready = [
            bucket
            for bucket, since in self.wanting.items()
            if since and self._granted_by_all(bucket, since, live_ids, trusted)
        ]
        self.just_taken = []
        if ready:
            blocked = unsettled()
            for bucket in ready:
                if bucket not in blocked:
                    del self.wanting[bucket]
                    self.holding[bucket] = now
                    self.counters.taken += 1
                    self.just_taken.append(bucket)
                    changed = True
        ports = self._bucket_ports(view)
        if ports != self.ports:
            self.ports = ports
            self.version += 1
        if speaking is not None:
            held_by_peers = {
                bucket: peer_id for bucket, peer_id in held_by_peers.items() if peer_id in speaking
            }
        self._refresh_verdicts(now, held_by_peers, speaking)
        return changed

    def _granted_by_all(
        self, bucket: int, since: int, live: set[int], trusted: Callable[[BucketState], bool]
    ) -> bool:
        me = self.member_id
        for peer_id in live:
            state = self.states.get(peer_id)
            if state is None or not trusted(state):
                return False
            if not any(
                grant.member_id == me and grant.seen_counter >= since and bucket in grant.buckets
                for grant in state.grants
            ):
                return False
        return True

    def _release(self, bucket: int) -> None:
        del self.holding[bucket]
        self.counters.released += 1

    # --------------------------------------------------------- ranking

    def _candidates(
        self, me: Candidate | None, states: dict[int, BucketState]
    ) -> tuple[Candidate, ...]:
        view = [] if me is None else [me]
        for peer_id, state in states.items():
            if not state.draining and not state.warming and state.weight > 0:
                view.append(Candidate(peer_id, state.weight, state.ports))
        return tuple(sorted(view, key=lambda candidate: candidate.member_id))

    def _unit(self, member_id: int) -> list[float]:
        units = self._unit_scores.get(member_id)
        if units is None:
            if len(self._unit_scores) > 256:
                self._unit_scores.clear()
            units = [
                rendezvous_score(bucket_input(bucket), member_id, 1.0)
                for bucket in range(self.count)
            ]
            self._unit_scores[member_id] = units
        return units

    def _rank(self, view: tuple[Candidate, ...]) -> None:
        best = [(-1.0, _NOBODY)] * self.count
        for candidate in view:
            units = self._unit(candidate.member_id)
            weight, member_id = candidate.weight, candidate.member_id
            for bucket in range(self.count):
                bid = (units[bucket] * weight, member_id)
                best[bucket] = max(best[bucket], bid)
        self._owners = [member_id for _, member_id in best]

    def _bid(self, bucket: int, member_id: int, weight: float) -> tuple[float, int]:
        return (self._unit(member_id)[bucket] * weight, member_id)

    def _my_bid(self, bucket: int, me: Candidate | None) -> tuple[float, int]:
        return self._bid(bucket, self.member_id, 0.0 if me is None else me.weight)

    def holds_anything(self, member_id: int) -> bool:
        """Whether a peer holds or was granted any bucket, as far as we know."""
        state = self.states.get(member_id)
        return bool(state is not None and state.holding) or member_id in self.granted_to.values()

    def owner(self, bucket: int) -> int:
        """The member this view ranks first for `bucket` (-1: none can own it)."""
        return self._owners[bucket]

    @staticmethod
    def _bucket_ports(view: tuple[Candidate, ...]) -> frozenset[tuple[int, int]] | None:
        """The ports every candidate serves: only those are served by bucket
        (a port one member does not listen on is claimed session by session)."""
        ports: frozenset[tuple[int, int]] | None = None
        for candidate in view:
            if candidate.ports is not None:
                ports = candidate.ports if ports is None else ports & candidate.ports
        if ports is not None:
            ports = frozenset(pair for pair in ports if pair[0] in _BUCKET_TRANSPORTS)
        return ports

    # --------------------------------------------------------- verdicts

    def _refresh_verdicts(
        self, now: float, held_by_peers: dict[int, int], speaking: set[int] | None
    ) -> None:
        tcp, udp = bytearray(self.count), bytearray(self.count)
        transition_end = self.settings.udp_transition
        next_change: float | None = None
        for bucket in range(self.count):
            if bucket in self.holding:
                tcp[bucket] = MINE
                opens_at = self.holding[bucket] + transition_end
                if now >= opens_at:
                    udp[bucket] = MINE
                else:
                    next_change = opens_at if next_change is None else min(next_change, opens_at)
            elif bucket in held_by_peers or (
                bucket in self.granted_to
                and (speaking is None or self.granted_to[bucket] in speaking)
            ):
                tcp[bucket] = udp[bucket] = OTHER
        self._next_udp_change = next_change
        if tcp != self._tcp or udp != self._udp:
            self._tcp, self._udp = tcp, udp
            self.version += 1

    def next_deadline(self) -> float | None:
        """When a UDP transition ends, or the lease wants renewing."""
        renew = self.lease_until - self.settings.lease / 2 if self.holding else None
        deadlines = [at for at in (self._next_udp_change, renew) if at is not None]
        return min(deadlines) if deadlines else None

    def due(self, now: float) -> bool:
        return self._next_udp_change is not None and now >= self._next_udp_change

    def verdict(self, key: SessionKey) -> BucketVerdict:
        """What the buckets say of a session's first packet."""
        transport = key.transport
        if transport not in _BUCKET_TRANSPORTS or len(key.client_address) != 4:
            return OPEN
        if self.ports is not None and (transport, key.cluster_port) not in self.ports:
            return OPEN
        bucket = bucket_of(key.client_address, key.client_port, self.count, self.settings.seed)
        table = self._tcp if transport == 6 else self._udp
        return BucketVerdict(table[bucket])

    def bucket_of(self, key: SessionKey) -> int | None:
        if len(key.client_address) != 4:
            return None
        return bucket_of(key.client_address, key.client_port, self.count, self.settings.seed)

    def verdicts(self) -> tuple[bytes, bytes]:
        """Every bucket's verdict for TCP and for UDP, for the kernel's maps."""
        return bytes(self._tcp), bytes(self._udp)

    # --------------------------------------------------------- messages

    def state(
        self, counter: int, me: Candidate | None, *, draining: bool, warming: bool
    ) -> BucketState:
        """This member's BUCKETS message, numbered `counter`."""
        for bucket, since in self.wanting.items():
            if not since:
                self.wanting[bucket] = counter
        ports = None if me is None else me.ports
        if ports is not None and len(ports) > MAX_PORTS:
            # The rest are claimed session by session: no other member ranks us for them.
            ports = frozenset(sorted(ports, key=lambda pair: (pair[1], pair[0]))[:MAX_PORTS])
        size = (self.count + 7) // 8
        fixed = HEADER_LENGTH + 11 + 3 * len(ports or ()) + 2 * size + 1 + TAG_LENGTH
        room = max(1, (MAX_MESSAGE - fixed) // (16 + size))
        # Grants are listed for buckets still wanted: a holder needs none (the
        # grant stands all the same, and this member serves nothing of it).
        by_member: dict[int, set[int]] = {}
        for bucket, to in self.granted_to.items():
            wanter = self.states.get(to)
            if wanter is not None and bucket in wanter.wanting:
                by_member.setdefault(to, set()).add(bucket)
        # More wanters than one message has room for: every member grants to
        # the same ones first (the lowest ids), so they take theirs and make
        # room for the next, instead of each waiting for all at once.
        members = sorted(by_member)[:room]
        grants = tuple(
            Grant(member_id, self.states[member_id].counter, frozenset(by_member[member_id]))
            for member_id in members
            if member_id in self.states
        )
        return BucketState(
            self.member_id,
            counter,
            self.count,
            0.0 if me is None else me.weight,
            ports,
            frozenset(self.holding),
            frozenset(self.wanting),
            grants,
            draining=draining,
            warming=warming,
        )

    def statistics(self) -> dict[str, object]:
        return {
            "count": self.count,
            "held": len(self.holding),
            "wanted": len(self.wanting),
            "granted": len(self.granted_to),
            "ports": "all" if self.ports is None else len(self.ports),
            "counters": self.counters.as_dict(),
        }


__all__ = [
    "ALL_PORTS",
    "ANSWER_SCORE",
    "BUCKET_SCORE",
    "MINE",
    "OPEN",
    "OTHER",
    "BucketSettings",
    "BucketVerdict",
    "Buckets",
    "Candidate",
]
