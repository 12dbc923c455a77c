"""Regressions of the bucket rule: each test here failed on the first version
of protocols/buckets.py (found by an independent review), and pins the fix:
the lease below member_timeout and renewed only by hellos, a double hold
counted as a conflict, grants listed for wanters lowest id first (so a 13th
member gets its buckets), messages within one frame at the most buckets, and
a leaving member that lets go before its goodbye."""

from dataclasses import replace

from protocols.bucket_hash import bucket_of
from protocols.buckets import MAX_BUCKET_COUNT, MAX_MESSAGE, BucketSettings
from protocols.claim_machine import ClaimSettings
from protocols.wire.claim import TAG_LENGTH, BucketState, encode_message
from tests.unit.test_buckets import (
    BUCKETS,
    CLIENT,
    SETTINGS,
    Segment,
    key_in,
    last_hello,
    ranked_first,
    settled,
    syn,
)


def _freeze_member_1_between_hellos(segment: Segment, after_hello: float) -> frozenset[int]:
    segment.run(last_hello(segment, 1) + after_hello)
    frozen = segment.holding(1)
    segment.arrive(1, syn(key_in(min(frozen))))  # a frame; the shell then runs the timers
    segment.timer(1)  # runs its timers, sends nothing (no longer renews the lease)
    segment.freeze(1)
    return frozen


# Fixed bug 1 (it was so): BucketSettings.lease (1.5) was not below
# ClaimSettings.member_timeout (1.5).
def test_1a_default_lease_is_below_member_timeout() -> None:
    assert BucketSettings().lease < ClaimSettings().member_timeout


def test_1b_with_default_lease_a_frozen_holder_and_a_peer_hold_one_bucket() -> None:
    segment = settled(1, 2, 3)  # BucketSettings(count=64, seed=7): lease 1.5
    _freeze_member_1_between_hellos(segment, 0.25)
    segment.advance(2.0)  # the watch raises: "buckets with two holders"


# Fixed bug 2 (it was so): a silent holder's buckets reopen a lease after its last *message*,
# but its lease runs a lease after its last *timer run*.
def test_2_no_peer_wins_a_session_its_holder_still_serves_within_its_lease() -> None:
    segment = settled(1, 2, 3, buckets=replace(BUCKETS, lease=SETTINGS.member_timeout / 2))
    frozen = _freeze_member_1_between_hellos(segment, 0.29)
    lease_until = segment.buckets(1).lease_until
    for step in range(1, 80):
        segment.advance(0.01)
        for bucket in sorted(frozen)[:3]:
            segment.arrive(2, syn(key_in(bucket, nth=step)))
            segment.arrive(3, syn(key_in(bucket, nth=step)))
    wins = [
        (round(at, 3), member, inject.key.client_port)
        for at, member, inject in segment.injected
        if member in (2, 3)
        and at <= lease_until
        and bucket_of(CLIENT, inject.key.client_port, 64, 7) in frozen
    ]
    assert wins == [], f"member 1 serves its buckets until {lease_until:.3f}: {wins[:3]}"


# Fixed bug 3 (it was so): BucketCounters.conflicts never counts anything.
def test_3_a_healed_partition_counts_its_double_holds_as_conflicts() -> None:
    segment = Segment()
    segment.add(1)
    segment.add(2)
    segment.run(4.0)
    segment.partition({1}, {2})
    segment.advance(2.5)
    assert len(segment.double_holds()) == 64
    segment.heal()
    segment.advance(3.0)
    assert not segment.double_holds()
    assert sum(segment.buckets(m).counters.conflicts for m in (1, 2)) > 0


# Fixed bug 4 (it was so): grant rotation starves a newcomer once its peers' standing grants
# fill more than one message's room.
def test_4_a_thirteenth_member_takes_its_buckets() -> None:
    count = 1024  # the default; room for 7 grants a message
    members = range(1, 13)
    segment = settled(*members, buckets=replace(BUCKETS, count=count))
    segment.add(13)
    segment.advance(SETTINGS.join_grace + 5.0)
    weights = dict.fromkeys(range(1, 14), 1.0)
    assert segment.holding(13) == ranked_first(weights, count)[13]


# Fixed bug 5 (it was so): with 4096 buckets a BUCKETS message exceeds MAX_MESSAGE (and a frame).
def test_5_bucket_messages_fit_max_message_at_the_most_buckets() -> None:
    segment = settled(1, 2, 3, buckets=replace(BUCKETS, count=MAX_BUCKET_COUNT))
    segment.add(4)
    segment.advance(SETTINGS.join_grace + 1.0)
    largest = max(
        len(encode_message(message)) + TAG_LENGTH
        for _, _, message in segment.sent
        if isinstance(message, BucketState)
    )
    assert largest <= MAX_MESSAGE


# Fixed (it was so): leave() says goodbye while the buckets are still held.
def test_6_a_leaving_member_lets_go_of_its_buckets_before_its_goodbye() -> None:
    segment = settled(1, 2, 3)
    machine = segment.members[3]
    machine.leave(segment.now)
    assert not machine.buckets.holding  # type: ignore[union-attr]
