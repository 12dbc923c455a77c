"""The bucket rule (protocols.buckets) through real claim machines.

A small in-memory segment runs N `ClaimMachine` members with buckets. Every
message a member sends goes, encoded and decoded again, to every other member
after `LATENCY`; time is a number the segment advances from one deadline or
delivery to the next. It can drop messages between chosen members, freeze a
member (it is not called at all, and what reaches it waits, as in its socket
buffer) and add or remove members. Checks registered with `watch` run after
every delivery, timer run and client packet.

A member *serves* a bucket while it holds it and its lease has not run out:
that is what its kernel does (the shell gives the kernel's elements the same
lease), also while its daemon is frozen. "Never two holders" is checked on
that.
"""

from __future__ import annotations

import heapq
import itertools
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import cache

import pytest

from protocols.bucket_hash import bucket_of
from protocols.buckets import (
    ANSWER_SCORE,
    MINE,
    OPEN,
    OTHER,
    Buckets,
    BucketSettings,
    bucket_input,
)
from protocols.claim_machine import (
    Action,
    ClaimMachine,
    ClaimSettings,
    InjectPackets,
    SendMessage,
    Verdict,
)
from protocols.classifier import Classified, FrameKind
from protocols.errors import MalformedPacket
from protocols.numbers import IpProtocol, TcpFlags
from protocols.rendezvous import rendezvous_score
from protocols.session_key import SessionKey
from protocols.wire.claim import (
    HEADER_LENGTH,
    Assertion,
    BucketState,
    Claim,
    ClaimMessage,
    Grant,
    Hello,
    decode_message,
    encode_message,
)

TCP, UDP = int(IpProtocol.TCP), int(IpProtocol.UDP)
SYN = int(TcpFlags.SYN)
CLIENT = bytes([198, 51, 100, 7])
CLUSTER = bytes([192, 0, 2, 10])
SETTINGS = ClaimSettings()
BUCKETS = BucketSettings(count=64, seed=7)
LATENCY = 0.0003  # one way, member to member
SETTLED = 4.0  # past join_grace (2.5 s) and the first hellos that follow it

# ------------------------------------------------------------ the segment


class Segment:
    def __init__(self, buckets: BucketSettings = BUCKETS, settings: ClaimSettings = SETTINGS):
        self.now = 0.0
        self.settings = settings
        self.bucket_settings = buckets
        self.members: dict[int, ClaimMachine] = {}
        self.blocked: set[tuple[int, int]] = set()  # (sender, receiver): dropped
        self.frozen: set[int] = set()
        self.inbox: dict[int, list[bytes]] = {}  # what reached a frozen member
        self.sent: list[tuple[float, int, ClaimMessage]] = []
        self.injected: list[tuple[float, int, InjectPackets]] = []
        self.deliveries = 0
        self._flight: list[tuple[float, int, int, bytes]] = []
        self._sequence = 0
        self._checks: list[Callable[[], None]] = []

    # --- members

    def add(
        self,
        member_id: int,
        *,
        weight: float = 1.0,
        listening: frozenset[tuple[int, int]] | None = None,
        buckets: BucketSettings | None = None,
    ) -> ClaimMachine:
        machine = ClaimMachine(
            member_id,
            self.settings,
            self.now,
            weight=weight,
            listening=listening,
            buckets=buckets or self.bucket_settings,
        )
        self.members[member_id] = machine
        self._collect(member_id)
        return machine

    def remove(self, member_id: int, *, goodbye: bool = True) -> None:
        """The member stops: after a goodbye (a clean stop), or silently (a crash)."""
        if goodbye:
            self.members[member_id].leave(self.now)
            self._collect(member_id)
        del self.members[member_id]
        self.frozen.discard(member_id)
        self.inbox.pop(member_id, None)

    def drain(self, member_id: int, draining: bool = True) -> None:
        self.members[member_id].update_local(self.now, draining=draining)
        self._collect(member_id)
        self._check()

    def buckets(self, member_id: int) -> Buckets:
        buckets = self.members[member_id].buckets
        assert buckets is not None
        return buckets

    # --- faults

    def partition(self, side: Iterable[int], other_side: Iterable[int]) -> None:
        side, other_side = set(side), set(other_side)
        self.blocked |= {(a, b) for a in side for b in other_side}
        self.blocked |= {(b, a) for a in side for b in other_side}

    def heal(self) -> None:
        self.blocked.clear()

    def freeze(self, member_id: int) -> None:
        self.frozen.add(member_id)

    def thaw(self, member_id: int) -> None:
        """The member runs again: first the frames that waited for it (the
        shell drains its TAP before it runs timers)."""
        self.frozen.discard(member_id)
        for raw in self.inbox.pop(member_id, []):
            self._handle(member_id, raw)

    # --- time

    def watch(self, check: Callable[[], None]) -> None:
        self._checks.append(check)

    def run(self, until: float) -> None:
        for _ in range(1_000_000):
            timers = [
                (machine.next_wakeup(), member_id)
                for member_id, machine in self.members.items()
                if member_id not in self.frozen
            ]
            wake = min(timers)[0] if timers else math.inf
            arrival = self._flight[0][0] if self._flight else math.inf
            at = min(wake, arrival)
            if at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if arrival <= wake:
                _, _, to, raw = heapq.heappop(self._flight)
                self._deliver(to, raw)
                continue
            for due, member_id in timers:
                if due <= self.now:
                    self.timer(member_id)
        raise AssertionError("the segment keeps waking at the same time")

    def advance(self, duration: float) -> None:
        self.run(self.now + duration)

    def timer(self, member_id: int) -> None:
        """Run a member's timers now (the shell also does after every batch of frames)."""
        self.members[member_id].handle_timer(self.now)
        self._collect(member_id)
        self._check()

    # --- client packets

    def arrive(self, member_id: int, record: Classified) -> tuple[Verdict, list[Action]]:
        """A client packet reaches one member: its verdict and the actions it caused."""
        verdict = self.members[member_id].handle_client_packet(record, record, 60, self.now)
        actions = self._collect(member_id)
        self._check()
        return verdict, actions

    def arrive_everywhere(self, record: Classified) -> dict[int, tuple[Verdict, list[Action]]]:
        """The client's frame is flooded to every member (the cluster MAC)."""
        return {
            member_id: self.arrive(member_id, record)
            for member_id in self.members
            if member_id not in self.frozen
        }

    # --- what members hold

    def holding(self, member_id: int) -> frozenset[int]:
        return frozenset(self.buckets(member_id).holding)

    def serving(self, member_id: int) -> frozenset[int]:
        """The buckets the member's kernel serves: held, within the lease."""
        buckets = self.buckets(member_id)
        return frozenset(buckets.holding) if self.now <= buckets.lease_until else frozenset()

    def double_holds(self) -> dict[int, list[int]]:
        holders: dict[int, list[int]] = {}
        for member_id in self.members:
            for bucket in self.serving(member_id):
                holders.setdefault(bucket, []).append(member_id)
        return {bucket: who for bucket, who in holders.items() if len(who) > 1}

    def messages_about(self, key: SessionKey) -> list[tuple[int, ClaimMessage]]:
        return [
            (sender, message)
            for _, sender, message in self.sent
            if isinstance(message, Claim | Assertion) and message.session == key
        ]

    # --- inside

    def _collect(self, sender: int) -> list[Action]:
        actions = self.members[sender].pop_actions()
        for action in actions:
            if isinstance(action, InjectPackets):
                self.injected.append((self.now, sender, action))
            if not isinstance(action, SendMessage):
                continue
            raw = encode_message(action.message)
            self.sent.append((self.now, sender, action.message))
            for to in self.members:
                if to != sender and (sender, to) not in self.blocked:
                    self._sequence += 1
                    heapq.heappush(self._flight, (self.now + LATENCY, self._sequence, to, raw))
        return actions

    def _deliver(self, to: int, raw: bytes) -> None:
        if to not in self.members:
            return
        if to in self.frozen:
            self.inbox.setdefault(to, []).append(raw)
            return
        self._handle(to, raw)

    def _handle(self, to: int, raw: bytes) -> None:
        message, signed_length, tag = decode_message(raw)
        assert signed_length == len(raw) and tag is None
        self.members[to].handle_message(message, self.now)
        self.deliveries += 1
        self._collect(to)
        self._check()

    def _check(self) -> None:
        for check in self._checks:
            check()


def settled(
    *member_ids: int,
    buckets: BucketSettings = BUCKETS,
    weights: dict[int, float] | None = None,
) -> Segment:
    """Members started together, run past their join grace, checked for two
    holders from then on."""
    segment = Segment(buckets)
    for member_id in member_ids:
        segment.add(member_id, weight=(weights or {}).get(member_id, 1.0))
    segment.watch(lambda: no_two_holders(segment))
    segment.run(SETTLED)
    return segment


def last_hello(segment: Segment, member_id: int) -> float:
    return max(
        at for at, sender, message in segment.sent if sender == member_id and type(message) is Hello
    )


def no_two_holders(segment: Segment) -> None:
    doubled = segment.double_holds()
    assert not doubled, f"at {segment.now:.4f} buckets with two holders: {doubled}"


def assert_split(segment: Segment, member_ids: Iterable[int], count: int = 64) -> None:
    """The members' held buckets are disjoint and cover every bucket."""
    held = [segment.holding(member_id) for member_id in member_ids]
    assert sum(len(buckets) for buckets in held) == count
    assert frozenset().union(*held) == frozenset(range(count))


def ranked_first(weights: dict[int, float], count: int = 64) -> dict[int, frozenset[int]]:
    """Which buckets each member ranks first for, by weighted rendezvous hashing."""
    first: dict[int, set[int]] = {member_id: set() for member_id in weights}
    for bucket in range(count):
        bids = [
            (rendezvous_score(bucket_input(bucket), member_id, weight), member_id)
            for member_id, weight in weights.items()
        ]
        first[max(bids)[1]].add(bucket)
    return {member_id: frozenset(buckets) for member_id, buckets in first.items()}


# ------------------------------------------------------ packets and keys


@cache
def _client_ports(count: int, seed: int) -> dict[int, tuple[int, ...]]:
    ports: dict[int, list[int]] = {}
    for port in range(10000, 60000):
        ports.setdefault(bucket_of(CLIENT, port, count, seed), []).append(port)
    return {bucket: tuple(found) for bucket, found in ports.items()}


def key_in(
    bucket: int,
    transport: int = TCP,
    cluster_port: int = 80,
    nth: int = 0,
    buckets: BucketSettings = BUCKETS,
) -> SessionKey:
    """The `nth` session key from CLIENT whose client port falls in `bucket`."""
    port = _client_ports(buckets.count, buckets.seed)[bucket][nth]
    return SessionKey(transport, CLIENT, port, CLUSTER, cluster_port)


def syn(key: SessionKey, sequence: int = 1000) -> Classified:
    return Classified(FrameKind.TCP, key, SYN, 14, 54, sequence)


def datagram(key: SessionKey) -> Classified:
    return Classified(FrameKind.UDP, key, 0, 14, 42, 0)


def sent(actions: Iterable[Action]) -> list[ClaimMessage]:
    return [action.message for action in actions if isinstance(action, SendMessage)]


# ------------------------------------------------- the kernel's buckets


@pytest.mark.parametrize(
    ("client_port", "bucket"),
    [(20000, 135), (20001, 89), (20002, 769), (20003, 1012), (20004, 298)],
)
def test_bucket_of_matches_the_kernels_jhash(client_port: int, bucket: int) -> None:
    # Read from the kernel: nft `jhash ip saddr . th sport mod 1024 seed 0x1234`.
    assert bucket_of(bytes([127, 0, 0, 1]), client_port, 1024, 0x1234) == bucket


# ------------------------------------------------------- taking buckets


def test_after_the_join_grace_the_buckets_are_split_among_the_members() -> None:
    segment = Segment()
    for member_id in (1, 2, 3):
        segment.add(member_id)
    segment.watch(lambda: no_two_holders(segment))
    segment.run(SETTINGS.join_grace - 0.01)
    # A warming member wants nothing: every bucket is still open.
    assert all(not segment.holding(member_id) for member_id in (1, 2, 3))
    assert segment.buckets(1).verdict(key_in(0)) is OPEN

    segment.run(SETTLED)

    assert_split(segment, (1, 2, 3))
    expected = ranked_first({1: 1.0, 2: 1.0, 3: 1.0})
    for member_id in (1, 2, 3):
        assert segment.holding(member_id) == expected[member_id]
        assert segment.buckets(member_id).counters.taken == len(expected[member_id])
        assert not segment.buckets(member_id).wanting


def test_shares_follow_the_weights() -> None:
    count = 1024
    segment = settled(1, 2, buckets=replace(BUCKETS, count=count), weights={2: 3.0})

    assert_split(segment, (1, 2), count)
    share = len(segment.holding(1)) / count
    assert 0.2 < share < 0.3  # weight 1 of 1 + 3
    assert segment.holding(1) == ranked_first({1: 1.0, 2: 3.0}, count)[1]


def test_a_new_syn_in_a_held_bucket_is_served_at_once_with_no_message() -> None:
    segment = settled(1, 2, 3)
    for holder in (1, 2, 3):
        bucket = min(segment.holding(holder))
        key = key_in(bucket)

        verdicts = segment.arrive_everywhere(syn(key))

        assert verdicts[holder] == (Verdict.INJECT, [])
        assert segment.members[holder].owns(key)
        for other in {1, 2, 3} - {holder}:
            assert verdicts[other] == (Verdict.DROP, [])
            assert segment.buckets(other).verdict(key) is OTHER
            session = segment.members[other].session(key)
            assert session is None or not session.mine
        segment.advance(0.5)
        assert segment.messages_about(key) == []  # nobody claims or asserts it
    for member_id in (1, 2, 3):
        counters = segment.members[member_id].counters
        assert counters.served_at_once == 1
        assert counters.claims_sent == 0
        assert segment.members[member_id].drops["foreign"] == 2


def test_a_claim_in_a_held_bucket_is_answered_with_a_score_no_claim_beats_and_loses() -> None:
    segment = settled(1, 2, 3)
    holder = 1
    key = key_in(min(segment.holding(holder)))
    # A member that started a moment ago has heard nobody's buckets yet: for
    # it the bucket is open, so the client's SYN makes it claim.
    newcomer = segment.add(4)
    verdict, actions = segment.arrive(4, syn(key))
    assert verdict is Verdict.QUEUED
    assert [type(message) for message in sent(actions)] == [Claim]

    segment.advance(0.05)

    answers = [
        (sender, message)
        for sender, message in segment.messages_about(key)
        if isinstance(message, Assertion)
    ]
    assert answers == [(holder, Assertion(holder, answers[0][1].counter, key, ANSWER_SCORE))]
    # The answer makes the holder no owner: it never saw the SYN (in the
    # kernel it may have served it, with no record in Python either way).
    assert segment.members[holder].session(key) is None
    assert newcomer.counters.claims_lost == 1
    assert not newcomer.owns(key)
    # The claimer forgets it (a record would drop the next SYN as foreign if
    # the bucket came to it), as does the bystander that heard only the claim.
    assert newcomer.session(key) is None
    assert segment.members[3 if holder != 3 else 2].session(key) is None
    assert not [entry for entry in segment.injected if entry[1] == 4]
    # The SYN's retransmission reaches the holder, which serves it at once.
    assert segment.arrive(holder, syn(key)) == (Verdict.INJECT, [])


def test_a_newcomer_takes_only_granted_buckets_and_never_shares_one() -> None:
    segment = settled(1, 2)
    before = {member_id: segment.holding(member_id) for member_id in (1, 2)}
    joined_at = segment.now
    taken_at: dict[int, float] = {}

    def only_granted_buckets_are_taken() -> None:
        if 3 not in segment.members:
            return
        for bucket in segment.holding(3) - taken_at.keys():
            # The moment the newcomer first holds it: every other member has
            # let go of it and granted it to the newcomer, in the latest
            # message the newcomer has of it.
            for other in (1, 2):
                assert bucket not in segment.holding(other)
                assert segment.buckets(other).granted_to.get(bucket) == 3
                latest = segment.buckets(3).states[other]
                assert bucket not in latest.holding
                assert any(
                    grant.member_id == 3 and bucket in grant.buckets for grant in latest.grants
                )
            taken_at[bucket] = segment.now

    segment.watch(only_granted_buckets_are_taken)
    segment.add(3)
    segment.run(joined_at + SETTINGS.join_grace + 1.5)

    newcomers = ranked_first({1: 1.0, 2: 1.0, 3: 1.0})[3]
    assert segment.holding(3) == newcomers == frozenset(taken_at)
    assert min(taken_at.values()) >= joined_at + SETTINGS.join_grace
    for member_id in (1, 2):
        assert segment.holding(member_id) == before[member_id] - newcomers
        assert segment.buckets(member_id).counters.released == len(before[member_id] & newcomers)
    assert_split(segment, (1, 2, 3))
    assert segment.deliveries > 100  # the check ran after each of them


def test_a_draining_member_releases_every_bucket_and_the_others_take_them() -> None:
    segment = settled(1, 2, 3)
    drained = segment.holding(1)
    assert drained

    segment.drain(1)
    segment.advance(1.0)

    assert segment.holding(1) == frozenset()
    assert segment.buckets(1).counters.released == len(drained)
    assert_split(segment, (2, 3))
    expected = ranked_first({2: 1.0, 3: 1.0})
    assert segment.holding(2) == expected[2] and segment.holding(3) == expected[3]
    key = key_in(min(drained))
    assert segment.arrive(1, syn(key))[0] is Verdict.DROP  # the drained member serves none
    holder = 2 if min(drained) in expected[2] else 3
    assert segment.arrive(holder, syn(key)) == (Verdict.INJECT, [])

    segment.drain(1, draining=False)
    segment.advance(1.0)
    assert segment.holding(1) == drained  # back: it ranks first for them again
    assert_split(segment, (1, 2, 3))


def test_a_port_one_member_does_not_listen_on_is_not_a_bucket_port() -> None:
    segment = Segment()
    segment.add(1, listening=frozenset({(TCP, 80)}))
    segment.add(2)
    segment.add(3)
    segment.watch(lambda: no_two_holders(segment))
    segment.run(SETTLED)
    assert_split(segment, (1, 2, 3))
    bucket = min(segment.holding(2))
    web, other_port, dns = key_in(bucket), key_in(bucket, cluster_port=443), key_in(bucket, UDP, 53)

    for member_id in (1, 2, 3):
        buckets = segment.buckets(member_id)
        assert buckets.ports == frozenset({(TCP, 80)})
        assert buckets.verdict(other_port) is OPEN
        assert buckets.verdict(dns) is OPEN
    assert segment.buckets(2).verdict(web) is MINE

    verdicts = segment.arrive_everywhere(syn(other_port))
    assert verdicts[1][0] is Verdict.DROP  # it does not listen on 443: it never claims
    assert segment.members[1].drops["not_claimed"] == 1
    assert verdicts[2][0] is Verdict.QUEUED and verdicts[3][0] is Verdict.QUEUED
    segment.advance(0.2)
    claimers = {sender for sender, message in segment.messages_about(other_port)}
    assert claimers and claimers <= {2, 3}
    assert [member_id for member_id in (1, 2, 3) if segment.members[member_id].owns(other_port)]
    assert all(member.counters.served_at_once == 0 for member in segment.members.values())
    assert segment.arrive(2, syn(web)) == (Verdict.INJECT, [])


# --------------------------------------------------------------- faults


@pytest.mark.parametrize("frozen_for", [1.0, 2.5], ids=["shorter-than-timeout", "declared-gone"])
def test_a_frozen_member_lets_go_and_the_others_wait_until_it_is_gone(frozen_for: float) -> None:
    # The lease the daemon configures (appliance.config: member_timeout / 2).
    lease = SETTINGS.member_timeout / 2
    segment = settled(1, 2, 3, buckets=replace(BUCKETS, lease=lease))
    frozen = segment.holding(1)
    # Most of a hello interval after its last hello, a frame arrives and the
    # shell runs the timers after it (renewing the lease, sending nothing);
    # then the daemon stops being scheduled.
    segment.run(last_hello(segment, 1) + 0.8 * SETTINGS.hello_interval)
    segment.arrive(1, syn(key_in(min(frozen))))
    segment.timer(1)
    frozen_at = segment.now
    last_heard = max(at for at, sender, _ in segment.sent if sender == 1) + LATENCY
    segment.freeze(1)
    took_over: dict[int, float] = {}

    def taken_only_from_a_member_gone() -> None:
        for member_id in (2, 3):
            for bucket in (segment.holding(member_id) & frozen) - took_over.keys():
                assert not segment.members[member_id].knows(1, segment.now)
                took_over[bucket] = segment.now

    segment.watch(taken_only_from_a_member_gone)
    segment.run(frozen_at + frozen_for)
    assert segment.holding(1) == frozen  # it has not run: it does not know yet

    segment.thaw(1)  # its first call

    assert segment.holding(1) == frozenset()
    assert segment.buckets(1).counters.lapses == 1
    assert segment.buckets(1).counters.released == len(frozen)
    if frozen_for < SETTINGS.member_timeout:
        assert took_over == {}
    else:
        assert set(took_over) == frozen
        assert min(took_over.values()) >= last_heard + SETTINGS.member_timeout
    segment.advance(2.0)
    assert segment.holding(1) == frozen  # it ranks first for them again
    assert_split(segment, (1, 2, 3))


def test_a_member_that_leaves_has_its_buckets_taken_at_once() -> None:
    segment = settled(1, 2, 3)
    left = segment.holding(3)
    segment.remove(3)
    segment.advance(0.05)  # far less than member_timeout
    assert_split(segment, (1, 2))
    assert segment.holding(1) | segment.holding(2) >= left


def test_a_crashed_member_has_its_buckets_taken_after_member_timeout() -> None:
    segment = settled(1, 2, 3)
    crashed = segment.holding(3)
    crashed_at = segment.now
    segment.remove(3, goodbye=False)
    segment.advance(SETTINGS.member_timeout - 0.2)
    assert not (segment.holding(1) | segment.holding(2)) & crashed
    segment.run(crashed_at + SETTINGS.member_timeout + 0.5)
    assert_split(segment, (1, 2))


def test_after_a_partition_heals_no_bucket_keeps_two_holders() -> None:
    segment = Segment()
    for member_id in (1, 2):
        segment.add(member_id)
    segment.run(SETTLED)
    assert_split(segment, (1, 2))
    before = {member_id: segment.holding(member_id) for member_id in (1, 2)}

    segment.partition({1}, {2})
    segment.advance(SETTINGS.member_timeout + 1.0)
    # Each side gave the other up and took every bucket.
    assert segment.holding(1) == segment.holding(2) == frozenset(range(64))
    assert len(segment.double_holds()) == 64

    segment.heal()
    healed_at = segment.now
    while segment.double_holds():
        assert segment.now < healed_at + 3.0, segment.double_holds()
        segment.advance(0.01)

    segment.watch(lambda: no_two_holders(segment))
    segment.advance(2.0)
    for member_id in (1, 2):
        assert segment.holding(member_id) == before[member_id]
        assert segment.members[member_id].knows(3 - member_id, segment.now)


def test_in_a_one_way_partition_the_holder_that_hears_the_other_lets_go() -> None:
    # Member 2 hears nobody: it gives member 1 up and takes every bucket.
    # Member 1 hears member 2 hold its buckets; if it kept them on its higher
    # bids, both kernels would serve their new sessions, since member 2 never
    # hears that member 1 holds them too.
    segment = Segment()
    for member_id in (1, 2):
        segment.add(member_id)
    segment.run(SETTLED)
    ones = segment.holding(1)
    assert ones
    segment.blocked.add((1, 2))
    segment.advance(SETTINGS.member_timeout + 1.0)
    assert segment.holding(2) == frozenset(range(64))
    assert not segment.holding(1)
    key = key_in(min(ones))
    served = {
        member_id: verdict
        for member_id, (verdict, _) in segment.arrive_everywhere(syn(key)).items()
    }
    assert served == {1: Verdict.DROP, 2: Verdict.INJECT}

    # Healed: the ranked member takes its buckets again, with grants.
    segment.heal()
    segment.watch(lambda: no_two_holders(segment))
    segment.advance(3.0)
    assert segment.holding(1) == ones
    assert_split(segment, (1, 2))


# ------------------------------------------------------------------ UDP


def test_a_udp_flow_in_a_fresh_bucket_is_claimed_until_the_transition_ends() -> None:
    segment = settled(1, 2)
    bucket = min(segment.holding(1))
    taken_at = segment.buckets(1).holding[bucket]
    first_flow = key_in(bucket, UDP, 53)
    assert segment.buckets(1).verdict(key_in(bucket)) is MINE  # TCP: at once
    assert segment.buckets(1).verdict(first_flow) is OPEN  # UDP: claimed, for now

    verdicts = segment.arrive_everywhere(datagram(first_flow))
    assert verdicts[1][0] is Verdict.QUEUED
    assert verdicts[2] == (Verdict.DROP, [])
    segment.advance(0.2)
    assert [(sender, type(message)) for sender, message in segment.messages_about(first_flow)][
        :1
    ] == [(1, Claim)]
    assert segment.members[1].owns(first_flow)
    assert segment.members[1].counters.claims_won == 1
    assert [entry[2].key for entry in segment.injected if entry[1] == 1] == [first_flow]

    transition = BUCKETS.udp_transition
    segment.run(taken_at + transition - 0.01)
    assert segment.buckets(1).verdict(key_in(bucket, UDP, 53, nth=1)) is OPEN
    segment.run(taken_at + transition + 0.01)
    later_flow = key_in(bucket, UDP, 53, nth=1)
    assert segment.buckets(1).verdict(later_flow) is MINE

    verdicts = segment.arrive_everywhere(datagram(later_flow))
    assert verdicts[1] == (Verdict.INJECT, [])
    assert verdicts[2] == (Verdict.DROP, [])
    segment.advance(0.2)
    assert segment.messages_about(later_flow) == []
    assert segment.members[1].counters.served_at_once == 1


def test_a_udp_flow_stays_with_its_old_holder_when_its_bucket_moves() -> None:
    segment = settled(1, 2)
    moving = ranked_first({1: 1.0, 2: 1.0, 3: 1.0})[3] & segment.holding(1)
    bucket = min(moving)
    flow = key_in(bucket, UDP, 53)
    segment.arrive_everywhere(datagram(flow))
    segment.advance(0.2)
    assert segment.members[1].owns(flow)

    segment.add(3)
    segment.advance(SETTINGS.join_grace + 1.5)
    assert bucket in segment.holding(3)
    verdicts = segment.arrive_everywhere(datagram(flow))

    assert verdicts[1] == (Verdict.INJECT, [])  # the old holder goes on serving it
    assert verdicts[2][0] is Verdict.DROP
    # The newcomer heard the flow from its owner when it joined: not its to claim.
    assert verdicts[3][0] is Verdict.DROP
    session = segment.members[3].session(flow)
    assert session is not None and session.owner == 1
    # A flow it never heard of, in the bucket it now holds, it still claims.
    new_flow = key_in(bucket, UDP, 53, nth=1)
    verdicts = segment.arrive_everywhere(datagram(new_flow))
    assert verdicts[3][0] is Verdict.QUEUED
    assert verdicts[1] == (Verdict.DROP, []) and verdicts[2] == (Verdict.DROP, [])
    segment.advance(0.2)
    # Only its owner ever spoke of the old flow (its claim, then assertions).
    assert {sender for sender, _ in segment.messages_about(flow)} == {1}
    assert [(sender, type(message)) for sender, message in segment.messages_about(new_flow)][
        :1
    ] == [(3, Claim)]
    assert segment.members[3].owns(new_flow)
    assert segment.members[1].owns(flow)


# ------------------------------------------------------------ bad input


def test_a_bucket_state_with_another_bucket_count_is_ignored_and_counted() -> None:
    segment = settled(1, 2)
    machine = segment.members[1]
    known = segment.buckets(1).states[2]
    peer = machine.peers(segment.now)[0]
    odd = BucketState(
        2,
        peer.last_counter + 1,
        32,
        1.0,
        None,
        frozenset(range(32)),
        frozenset(),
        (Grant(1, 5, frozenset(range(32))),),
    )
    machine.handle_message(decode_message(encode_message(odd))[0], segment.now)

    assert machine.counters.bucket_count_mismatches == 1
    assert segment.buckets(1).states[2] is known
    assert sent(machine.pop_actions()) == []
    assert segment.holding(1) | segment.holding(2) == frozenset(range(64))


def test_a_member_with_another_bucket_count_is_never_ranked() -> None:
    segment = settled(1, 2)
    before = {member_id: segment.holding(member_id) for member_id in (1, 2)}
    segment.add(3, buckets=replace(BUCKETS, count=32))
    segment.advance(SETTINGS.join_grace + 1.0)

    for member_id in (1, 2):
        assert segment.members[member_id].counters.bucket_count_mismatches > 0
        assert 3 not in segment.buckets(member_id).states
        assert segment.holding(member_id) == before[member_id]
    assert segment.members[3].counters.bucket_count_mismatches > 0
    assert segment.holding(3) == frozenset()  # nobody grants it anything


_BUCKETS_MESSAGE = BucketState(
    7,
    9,
    12,
    1.5,
    frozenset({(TCP, 80)}),
    frozenset({0, 11}),
    frozenset({5}),
    (Grant(8, 3, frozenset({1, 2})),),
)


def _buckets_bytes(**changes: object) -> bytes:
    return encode_message(replace(_BUCKETS_MESSAGE, **changes))  # type: ignore[arg-type]


# Offsets in _buckets_bytes(): the header, count (2), weight (8), port count (1),
# one port (3), holding (2), wanting (2), grant count (1), a grant (16 + 2).
_COUNT_AT = HEADER_LENGTH
_WEIGHT_AT = _COUNT_AT + 2
_HOLDING_AT = _WEIGHT_AT + 8 + 1 + 3
_WANTING_AT = _HOLDING_AT + 2
_GRANT_BUCKETS_AT = _WANTING_AT + 2 + 1 + 16


def test_the_bucket_message_bytes_are_where_the_tests_expect() -> None:
    raw = _buckets_bytes()
    assert len(raw) == _GRANT_BUCKETS_AT + 2
    assert raw[_COUNT_AT : _COUNT_AT + 2] == bytes([0, 12])
    assert raw[_HOLDING_AT : _HOLDING_AT + 2] == bytes([0x01, 0x08])
    assert raw[_WANTING_AT : _WANTING_AT + 2] == bytes([0x20, 0x00])
    assert raw[_GRANT_BUCKETS_AT:] == bytes([0x06, 0x00])
    assert decode_message(raw)[0] == _BUCKETS_MESSAGE


@pytest.mark.parametrize("length", range(len(_buckets_bytes())))
def test_a_truncated_bucket_message_is_malformed(length: int) -> None:
    with pytest.raises(MalformedPacket):
        decode_message(_buckets_bytes()[:length])


@pytest.mark.parametrize(
    "at",
    [_HOLDING_AT + 1, _WANTING_AT + 1, _GRANT_BUCKETS_AT + 1],
    ids=["holding", "wanting", "grant"],
)
@pytest.mark.parametrize("bit", [4, 7])
def test_bitmap_bits_past_the_bucket_count_are_malformed(at: int, bit: int) -> None:
    raw = bytearray(_buckets_bytes())
    raw[at] |= 1 << bit  # bucket 12 or 15 of 12
    with pytest.raises(MalformedPacket, match="past 12"):
        decode_message(bytes(raw))


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, -1.0, -1e-300])
def test_a_bad_weight_in_a_bucket_message_is_malformed(weight: float) -> None:
    raw = bytearray(_buckets_bytes())
    struct.pack_into("!d", raw, _WEIGHT_AT, weight)
    with pytest.raises(MalformedPacket, match="invalid weight"):
        decode_message(bytes(raw))


@pytest.mark.parametrize("count", [0, 4097, 0xFFFF])
def test_a_bucket_count_out_of_range_is_malformed(count: int) -> None:
    raw = bytearray(_buckets_bytes())
    struct.pack_into("!H", raw, _COUNT_AT, count)
    with pytest.raises(MalformedPacket, match="bucket count"):
        decode_message(bytes(raw))


def test_trailing_bytes_after_a_bucket_message_are_malformed() -> None:
    with pytest.raises(MalformedPacket, match="trailing"):
        decode_message(_buckets_bytes() + b"\0")


def test_a_syn_flood_in_a_moving_bucket_does_not_keep_it_from_being_taken() -> None:
    # A new SYN in the bucket every 0.2 ms, while a claim round takes 0.6 ms:
    # the newcomer always has a claim of its own pending in it. Only a rival's
    # claim could take a session from it, so its own claims must not hold the
    # bucket back (else a flood during a join keeps the bucket open, and every
    # flooded SYN goes through Python, for as long as the flood lasts).
    segment = settled(1, 2)
    segment.add(3)
    flooded = min(ranked_first({1: 1.0, 2: 1.0, 3: 1.0})[3])
    ports = _client_ports(BUCKETS.count, BUCKETS.seed)[flooded]
    joined_at = segment.now
    for nth in itertools.count():
        if segment.now > joined_at + SETTINGS.join_grace + 1.5:
            break
        key = SessionKey(TCP, CLIENT, ports[nth % len(ports)], CLUSTER, 80 + nth // len(ports))
        segment.arrive_everywhere(syn(key))
        segment.advance(0.0002)
    assert flooded in segment.holding(3)
    assert_split(segment, (1, 2, 3))
