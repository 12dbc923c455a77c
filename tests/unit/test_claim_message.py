"""The claim message: the struct codec against the construct declaration,
clear errors for unknown versions and types, and authentication."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.claim_auth import ClaimAuthenticator, ReplayWindow
from protocols.errors import (
    AuthenticationFailure,
    LocalProtocolError,
    MalformedPacket,
    UnknownMessageType,
    UnsupportedVersion,
)
from protocols.wire.claim import (
    CLAIM_MESSAGE,
    CLAIM_VERSION,
    Acknowledgement,
    BucketState,
    Claim,
    ClaimMessage,
    Hello,
    MessageFlags,
    decode_message,
    encode_message,
)
from protocols.wire.common import parse_with
from tests.fixtures.frames import CLAIM_KEY, SESSION
from tests.unit.frame_strategies import claim_messages


def _bucket_bitmap(buckets: frozenset[int], bucket_count: int) -> bytes:
    """Bucket i as bit i % 8 (low bit first) of byte i // 8, written out here
    independently of protocols.wire.claim.bitmap."""
    data = bytearray((bucket_count + 7) // 8)
    for bucket in buckets:
        data[bucket // 8] |= 1 << (bucket % 8)
    return bytes(data)


def _plain(value: object) -> object:
    """A parsed construct value as plain dicts and lists, without `_io` entries."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if not key.startswith("_")}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _declaration_view(message: ClaimMessage) -> dict[str, object]:
    """What the construct declaration should hold for a message."""
    if isinstance(message, BucketState):
        count = message.bucket_count
        flags = (MessageFlags.DRAINING if message.draining else 0) | (
            MessageFlags.WARMING if message.warming else 0
        )
        ports = sorted(message.ports or ())
        return {
            "type": 5,
            "flags": int(flags),
            "body": {
                "bucket_count": count,
                "weight": message.weight,
                "port_count": 0xFF if message.ports is None else len(ports),
                "ports": [{"transport": transport, "port": port} for transport, port in ports],
                "holding": _bucket_bitmap(message.holding, count),
                "wanting": _bucket_bitmap(message.wanting, count),
                "grant_count": len(message.grants),
                "grants": [
                    {
                        "member_id": grant.member_id,
                        "seen_counter": grant.seen_counter,
                        "buckets": _bucket_bitmap(grant.buckets, count),
                    }
                    for grant in message.grants
                ],
            },
        }
    if isinstance(message, Hello):
        flags = (
            (MessageFlags.DRAINING if message.draining else 0)
            | (MessageFlags.WARMING if message.warming else 0)
            | (MessageFlags.LEAVING if message.leaving else 0)
        )
        return {"type": 3, "flags": int(flags), "body": {"weight": message.weight}}
    if isinstance(message, Acknowledgement):
        body = {"claimer": message.claimer, "claim_counter": message.claim_counter}
        return {"type": 4, "flags": 0, "body": body}
    key = message.session
    return {
        "type": 1 if isinstance(message, Claim) else 2,
        "flags": 0,
        "body": {
            "score": message.score,
            "session": {
                "family": key.family,
                "transport": key.transport,
                "client_port": key.client_port,
                "cluster_port": key.cluster_port,
                "client_address": key.client_address,
                "cluster_address": key.cluster_address,
            },
        },
    }


@given(claim_messages)
def test_the_fast_encoder_writes_what_the_declaration_reads(message: ClaimMessage) -> None:
    parsed = parse_with(CLAIM_MESSAGE, encode_message(message), "claim")
    expected = _declaration_view(message)
    assert parsed.version == CLAIM_VERSION == 3
    assert parsed.message_type == expected["type"]
    assert parsed.flags == expected["flags"]
    assert parsed.member_id == message.member_id and parsed.counter == message.counter
    assert _plain(parsed.body) == expected["body"]
    assert parsed.tag is None


@given(claim_messages)
def test_the_fast_decoder_reads_what_the_declaration_writes(message: ClaimMessage) -> None:
    view = _declaration_view(message)
    raw = CLAIM_MESSAGE.build(
        {
            "version": CLAIM_VERSION,
            "message_type": view["type"],
            "flags": view["flags"],
            "member_id": message.member_id,
            "counter": message.counter,
            "body": view["body"],
            "tag": None,
        }
    )
    decoded, signed_length, tag = decode_message(raw)
    assert decoded == message
    assert signed_length == len(raw) and tag is None


@given(claim_messages, st.binary(min_size=16, max_size=16))
def test_tags_travel_at_the_end(message: ClaimMessage, tag: bytes) -> None:
    raw = encode_message(message, authenticated=True) + tag
    parsed = parse_with(CLAIM_MESSAGE, raw, "claim")
    assert parsed.tag == tag
    assert decode_message(raw) == (message, len(raw) - 16, tag)


def test_an_unknown_version_is_refused_by_name() -> None:
    raw = bytearray(encode_message(Claim(1, 1, SESSION, 1.0)))
    raw[0] = 1  # a member of an older release: no acknowledgements
    with pytest.raises(UnsupportedVersion, match="version 1 is not supported"):
        decode_message(bytes(raw))


def test_an_unknown_type_is_refused_by_name() -> None:
    raw = bytearray(encode_message(Claim(1, 1, SESSION, 1.0)))
    raw[1] = 9
    with pytest.raises(UnknownMessageType, match="type 9 is unknown"):
        decode_message(bytes(raw))


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -1.0])
def test_scores_must_be_finite_and_positive(score: float) -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(Claim(1, 1, SESSION, score))
    raw = bytearray(encode_message(Claim(1, 1, SESSION, 1.0)))
    struct.pack_into("!d", raw, 19, score)
    with pytest.raises(MalformedPacket, match="invalid score"):
        decode_message(bytes(raw))


def test_trailing_bytes_and_unknown_flags_are_refused() -> None:
    raw = encode_message(Hello(1, 1, 1.0))
    with pytest.raises(MalformedPacket, match="trailing"):
        decode_message(raw + b"x")
    flagged = bytearray(raw)
    flagged[2] = 0x80
    with pytest.raises(MalformedPacket, match="unknown flags"):
        decode_message(bytes(flagged))


def test_authenticated_messages_open_once() -> None:
    sender, receiver = ClaimAuthenticator(CLAIM_KEY), ClaimAuthenticator(CLAIM_KEY)
    message = Claim(7, 1, SESSION, 3.5)
    sealed = sender.seal(message)
    assert receiver.open(sealed) == message
    with pytest.raises(AuthenticationFailure, match="replayed"):
        receiver.open(sealed)


def test_a_wrong_key_or_a_missing_tag_is_refused() -> None:
    message = Claim(7, 1, SESSION, 3.5)
    receiver = ClaimAuthenticator(CLAIM_KEY)
    with pytest.raises(AuthenticationFailure, match="wrong tag"):
        receiver.open(ClaimAuthenticator(b"another-key-0123456789").seal(message))
    with pytest.raises(AuthenticationFailure, match="unauthenticated"):
        receiver.open(ClaimAuthenticator(None).seal(message))
    tampered = bytearray(ClaimAuthenticator(CLAIM_KEY).seal(message))
    tampered[-20] ^= 1  # a bit of the session key
    with pytest.raises(AuthenticationFailure):
        receiver.open(bytes(tampered))


def test_without_a_key_tags_are_ignored() -> None:
    message = Hello(9, 4, 2.0)
    assert ClaimAuthenticator(None).open(ClaimAuthenticator(CLAIM_KEY).seal(message)) == message


def test_short_keys_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="at least 16 bytes"):
        ClaimAuthenticator(b"short")


def test_the_replay_window_accepts_reordering_but_not_repeats() -> None:
    window = ReplayWindow()
    assert [window.accept(counter) for counter in (5, 3, 4, 5, 3, 70, 6, 7)] == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,  # 64 or more behind the newest
        True,
    ]


@given(st.lists(st.integers(0, 200), max_size=60))
def test_the_replay_window_never_accepts_a_counter_twice(counters: list[int]) -> None:
    window = ReplayWindow()
    accepted = [counter for counter in counters if window.accept(counter)]
    assert len(accepted) == len(set(accepted))
