"""The claim protocol's messages: IP protocol 150 packets sent to the cluster address.

Every message starts with a version byte (this is version 3) and a type byte,
then flags, the sender's member id and the sender's message counter, which
increases by one with every message a member sends. Then a body by type:

- CLAIM: "I want this session, with this score".
- ASSERTION: "I own this session, with this score". Sent on winning, and in
  answer to any claim for a session the sender owns.
- HELLO: "I am alive, with this effective weight", plus draining, warming
  and leaving flags.
- ACKNOWLEDGEMENT: "I have handled member M's claim numbered N". Sent in
  answer to every claim; the claimer decides once every live member has
  acknowledged its claim (the others only count it in the sender's counter).
- BUCKETS: the sender's whole bucket state (protocols.buckets): the weight it
  ranks by, the ports its service listens on, the buckets it holds and those
  it wants, and the buckets it grants to each member that wants them. Sent
  with every hello and whenever it changes; each one replaces the last.

When a key is configured the AUTHENTICATED flag is set and a 16-byte tag
(truncated HMAC-SHA256 of everything before it) ends the message.

`CLAIM_MESSAGE` is the specification. Claim messages are not per-packet, but
every new session costs each member a claim or an acknowledgement to send
and every other member's to read (N + 2 sent, (N + 2)(N - 1) read, for N
members), and construct costs tens of microseconds a message, so
`encode_message` and `decode_message` use `struct` at fixed offsets; tests
check them against the declaration.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from construct import (
    Array,
    Bytes,
    Check,
    Float64b,
    If,
    Int8ub,
    Int16ub,
    Int64ub,
    Struct,
    Switch,
    Terminated,
    this,
)

from protocols.errors import (
    LocalProtocolError,
    MalformedPacket,
    UnknownMessageType,
    UnsupportedVersion,
)
from protocols.session_key import SessionKey

CLAIM_VERSION = 3  # 2: acknowledgements; 3: buckets (a version-2 member never grants them)
TAG_LENGTH = 16


class MessageType(IntEnum):
    CLAIM = 1
    ASSERTION = 2
    HELLO = 3
    ACKNOWLEDGEMENT = 4
    BUCKETS = 5


_KNOWN_TYPES = frozenset(MessageType)


class MessageFlags(IntFlag):
    AUTHENTICATED = 0x01
    DRAINING = 0x02  # hello, buckets: the sender serves what it has but claims nothing new
    WARMING = 0x04  # hello, buckets: the sender joined recently and is still learning sessions
    LEAVING = 0x08  # hello: the sender is shutting down; its sessions die with it


KNOWN_FLAGS = int(
    MessageFlags.AUTHENTICATED | MessageFlags.DRAINING | MessageFlags.WARMING | MessageFlags.LEAVING
)

SESSION_KEY = Struct(
    "family" / Int8ub,
    Check(lambda ctx: ctx.family in (4, 6)),
    "transport" / Int8ub,
    "client_port" / Int16ub,
    "cluster_port" / Int16ub,
    "client_address" / Bytes(lambda ctx: 4 if ctx.family == 4 else 16),
    "cluster_address" / Bytes(lambda ctx: 4 if ctx.family == 4 else 16),
)

SESSION_BODY = Struct("score" / Float64b, "session" / SESSION_KEY)
HELLO_BODY = Struct("weight" / Float64b)
ACKNOWLEDGEMENT_BODY = Struct("claimer" / Int64ub, "claim_counter" / Int64ub)
ALL_PORTS = 0xFF  # a port count that means "every port" (the service is not checked)
MAX_PORTS = 32  # more listening ports than this are announced as every port
MAX_BUCKETS = 4096
PORT = Struct("transport" / Int8ub, "port" / Int16ub)
GRANT = Struct(
    "member_id" / Int64ub,
    "seen_counter" / Int64ub,  # the last BUCKETS message of that member's the sender had read
    "buckets" / Bytes(lambda ctx: (ctx._.bucket_count + 7) // 8),
)
BUCKETS_BODY = Struct(
    "bucket_count" / Int16ub,
    Check(lambda ctx: 1 <= ctx.bucket_count <= MAX_BUCKETS),
    "weight" / Float64b,
    "port_count" / Int8ub,
    "ports" / Array(lambda ctx: 0 if ctx.port_count == ALL_PORTS else ctx.port_count, PORT),
    # Bucket i is bit i % 8 (low bit first) of byte i // 8.
    "holding" / Bytes(lambda ctx: (ctx.bucket_count + 7) // 8),
    "wanting" / Bytes(lambda ctx: (ctx.bucket_count + 7) // 8),
    "grant_count" / Int8ub,
    "grants" / Array(this.grant_count, GRANT),
)

CLAIM_MESSAGE = Struct(
    "version" / Int8ub,
    Check(this.version == CLAIM_VERSION),
    "message_type" / Int8ub,
    "flags" / Int8ub,
    Check(lambda ctx: ctx.flags & ~KNOWN_FLAGS == 0),
    "member_id" / Int64ub,
    "counter" / Int64ub,
    "body"
    / Switch(
        this.message_type,
        {
            MessageType.CLAIM: SESSION_BODY,
            MessageType.ASSERTION: SESSION_BODY,
            MessageType.HELLO: HELLO_BODY,
            MessageType.ACKNOWLEDGEMENT: ACKNOWLEDGEMENT_BODY,
            MessageType.BUCKETS: BUCKETS_BODY,
        },
    ),
    Check(lambda ctx: ctx.message_type in _KNOWN_TYPES),
    "tag" / If(lambda ctx: ctx.flags & MessageFlags.AUTHENTICATED, Bytes(TAG_LENGTH)),
    Terminated,
)


@dataclass(frozen=True, slots=True)
class Claim:
    """A member asks for a session, bidding `score`."""

    member_id: int
    counter: int
    session: SessionKey
    score: float

    def build(self) -> bytes:
        return encode_message(self)


@dataclass(frozen=True, slots=True)
class Assertion:
    """A member states that it owns a session, which it won with `score`."""

    member_id: int
    counter: int
    session: SessionKey
    score: float

    def build(self) -> bytes:
        return encode_message(self)


@dataclass(frozen=True, slots=True)
class Hello:
    """A member is alive; `weight` is its effective weight (weight and load)."""

    member_id: int
    counter: int
    weight: float
    draining: bool = False
    warming: bool = False
    leaving: bool = False

    def build(self) -> bytes:
        return encode_message(self)


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """A member has handled `claimer`'s claim numbered `claim_counter` (and so
    sent everything it had to say about that session before this)."""

    member_id: int
    counter: int
    claimer: int
    claim_counter: int

    def build(self) -> bytes:
        return encode_message(self)


@dataclass(frozen=True, slots=True)
class Grant:
    """The sender lets `member_id` take `buckets`, having read that member's
    BUCKETS messages up to `seen_counter`."""

    member_id: int
    seen_counter: int
    buckets: frozenset[int]


@dataclass(frozen=True, slots=True)
class BucketState:
    """A member's whole bucket state (see protocols.buckets); the latest replaces the rest.

    `ports` is the (transport, port) pairs its service listens on, or None for
    every port.
    """

    member_id: int
    counter: int
    bucket_count: int
    weight: float
    ports: frozenset[tuple[int, int]] | None
    holding: frozenset[int]
    wanting: frozenset[int]
    grants: tuple[Grant, ...] = ()
    draining: bool = False
    warming: bool = False

    def build(self) -> bytes:
        return encode_message(self)


ClaimMessage = Claim | Assertion | Hello | Acknowledgement | BucketState


@dataclass(frozen=True, slots=True)
class SignedClaimMessage:
    """A message as it travels when a key is set: the message and its tag."""

    message: ClaimMessage
    tag: bytes

    def build(self) -> bytes:
        return encode_message(self.message, authenticated=True) + self.tag


_HEADER = struct.Struct("!BBBQQ")
_SESSION_FIXED = struct.Struct("!dBBHH")
_HELLO = struct.Struct("!d")
_ACKNOWLEDGEMENT = struct.Struct("!QQ")
_BUCKETS_FIXED = struct.Struct("!HdB")
_PORT = struct.Struct("!BH")
_GRANT_FIXED = struct.Struct("!QQ")
HEADER_LENGTH = _HEADER.size
_MAX_U64 = 2**64 - 1


def _check_number(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise LocalProtocolError(f"{name} must be a finite number >= 0, not {value}")


def encode_message(message: ClaimMessage, *, authenticated: bool = False) -> bytes:
    """The message's bytes up to (not including) the tag.

    With `authenticated`, the AUTHENTICATED flag is set and the caller appends
    the tag (see protocols.claim_auth).
    """
    if not 0 <= message.member_id <= _MAX_U64 or not 0 <= message.counter <= _MAX_U64:
        raise LocalProtocolError("member_id and counter must fit in 64 bits")
    flags = MessageFlags.AUTHENTICATED if authenticated else MessageFlags(0)
    if isinstance(message, Hello):
        _check_number("weight", message.weight)
        if message.draining:
            flags |= MessageFlags.DRAINING
        if message.warming:
            flags |= MessageFlags.WARMING
        if message.leaving:
            flags |= MessageFlags.LEAVING
        header = _HEADER.pack(
            CLAIM_VERSION, MessageType.HELLO, flags, message.member_id, message.counter
        )
        return header + _HELLO.pack(message.weight)
    if isinstance(message, BucketState):
        return _encode_buckets(message, flags)
    if isinstance(message, Acknowledgement):
        if not 0 <= message.claimer <= _MAX_U64 or not 0 <= message.claim_counter <= _MAX_U64:
            raise LocalProtocolError("claimer and claim_counter must fit in 64 bits")
        header = _HEADER.pack(
            CLAIM_VERSION, MessageType.ACKNOWLEDGEMENT, flags, message.member_id, message.counter
        )
        return header + _ACKNOWLEDGEMENT.pack(message.claimer, message.claim_counter)
    _check_number("score", message.score)
    key = message.session
    size = len(key.client_address)
    if size not in (4, 16) or len(key.cluster_address) != size:
        raise LocalProtocolError("session addresses must both be IPv4 or both IPv6")
    if not (0 <= key.transport <= 255 and 0 <= key.client_port <= 0xFFFF):
        raise LocalProtocolError(f"session key out of range: {key!r}")
    if not 0 <= key.cluster_port <= 0xFFFF:
        raise LocalProtocolError(f"session key out of range: {key!r}")
    message_type = MessageType.CLAIM if isinstance(message, Claim) else MessageType.ASSERTION
    return (
        _HEADER.pack(CLAIM_VERSION, message_type, flags, message.member_id, message.counter)
        + _SESSION_FIXED.pack(
            message.score,
            4 if size == 4 else 6,
            key.transport,
            key.client_port,
            key.cluster_port,
        )
        + key.client_address
        + key.cluster_address
    )


def bitmap(buckets: frozenset[int], bucket_count: int) -> bytes:
    """Bucket numbers as a bitmap: bucket i is bit i % 8 of byte i // 8."""
    value = 0
    for bucket in buckets:
        if not 0 <= bucket < bucket_count:
            raise LocalProtocolError(f"bucket {bucket} is not below {bucket_count}")
        value |= 1 << bucket
    return value.to_bytes((bucket_count + 7) // 8, "little")


def from_bitmap(data: bytes, bucket_count: int) -> frozenset[int]:
    value = int.from_bytes(data, "little")
    if value >> bucket_count:
        raise MalformedPacket(f"a bucket bitmap names buckets past {bucket_count}")
    buckets = []
    while value:
        low = value & -value
        buckets.append(low.bit_length() - 1)
        value ^= low
    return frozenset(buckets)


def _encode_buckets(message: BucketState, flags: MessageFlags) -> bytes:
    count = message.bucket_count
    if not 1 <= count <= MAX_BUCKETS:
        raise LocalProtocolError(f"bucket_count must be 1 to {MAX_BUCKETS}, not {count}")
    _check_number("weight", message.weight)
    if message.draining:
        flags |= MessageFlags.DRAINING
    if message.warming:
        flags |= MessageFlags.WARMING
    ports = message.ports
    if ports is not None and len(ports) > MAX_PORTS:
        raise LocalProtocolError(f"at most {MAX_PORTS} ports, or None for every port")
    if len(message.grants) > 0xFE:
        raise LocalProtocolError("too many grants in one message")
    parts = [
        _HEADER.pack(CLAIM_VERSION, MessageType.BUCKETS, flags, message.member_id, message.counter),
        _BUCKETS_FIXED.pack(count, message.weight, ALL_PORTS if ports is None else len(ports)),
    ]
    for transport, port in sorted(ports or ()):
        if not (0 <= transport <= 255 and 0 <= port <= 0xFFFF):
            raise LocalProtocolError(f"port out of range: {transport}/{port}")
        parts.append(_PORT.pack(transport, port))
    parts.append(bitmap(message.holding, count))
    parts.append(bitmap(message.wanting, count))
    parts.append(bytes((len(message.grants),)))
    for grant in message.grants:
        if not 0 <= grant.member_id <= _MAX_U64 or not 0 <= grant.seen_counter <= _MAX_U64:
            raise LocalProtocolError("grant member_id and seen_counter must fit in 64 bits")
        parts.append(_GRANT_FIXED.pack(grant.member_id, grant.seen_counter))
        parts.append(bitmap(grant.buckets, count))
    return b"".join(parts)


def _decode_buckets(
    data: bytes, offset: int, flags: int, member_id: int, counter: int
) -> tuple[BucketState, int]:
    if len(data) < offset + _BUCKETS_FIXED.size:
        raise MalformedPacket("buckets message is truncated")
    count, weight, port_count = _BUCKETS_FIXED.unpack_from(data, offset)
    offset += _BUCKETS_FIXED.size
    if not 1 <= count <= MAX_BUCKETS:
        raise MalformedPacket(f"buckets message has a bucket count of {count}")
    if not math.isfinite(weight) or weight < 0:
        raise MalformedPacket(f"buckets message carries an invalid weight {weight}")
    ports: frozenset[tuple[int, int]] | None = None
    if port_count != ALL_PORTS:
        if len(data) < offset + port_count * _PORT.size:
            raise MalformedPacket("buckets message is truncated")
        ports = frozenset(
            _PORT.unpack_from(data, offset + index * _PORT.size) for index in range(port_count)
        )
        offset += port_count * _PORT.size
    size = (count + 7) // 8
    if len(data) < offset + 2 * size + 1:
        raise MalformedPacket("buckets message is truncated")
    holding = from_bitmap(data[offset : offset + size], count)
    wanting = from_bitmap(data[offset + size : offset + 2 * size], count)
    offset += 2 * size
    grant_count = data[offset]
    offset += 1
    grants = []
    for _ in range(grant_count):
        if len(data) < offset + _GRANT_FIXED.size + size:
            raise MalformedPacket("buckets message is truncated")
        granted_to, seen_counter = _GRANT_FIXED.unpack_from(data, offset)
        offset += _GRANT_FIXED.size
        granted = from_bitmap(data[offset : offset + size], count)
        grants.append(Grant(granted_to, seen_counter, granted))
        offset += size
    state = BucketState(
        member_id,
        counter,
        count,
        weight,
        ports,
        holding,
        wanting,
        tuple(grants),
        draining=bool(flags & MessageFlags.DRAINING),
        warming=bool(flags & MessageFlags.WARMING),
    )
    return state, offset


def decode_message(data: bytes) -> tuple[ClaimMessage, int, bytes | None]:
    """Decode one message.

    Returns the message, the length of the part a tag covers, and the tag
    (None when the message is not authenticated). Raises UnsupportedVersion,
    UnknownMessageType or MalformedPacket.
    """
    if len(data) < 2:
        raise MalformedPacket(f"claim message of {len(data)} bytes is too short")
    if data[0] != CLAIM_VERSION:
        raise UnsupportedVersion(
            f"claim message version {data[0]} is not supported (this member speaks "
            f"version {CLAIM_VERSION}); upgrade every member to the same release"
        )
    if data[1] not in _KNOWN_TYPES:
        raise UnknownMessageType(
            f"claim message type {data[1]} is unknown in version {CLAIM_VERSION}"
        )
    if len(data) < HEADER_LENGTH:
        raise MalformedPacket(f"claim message of {len(data)} bytes is too short")
    _, message_type, flags, member_id, counter = _HEADER.unpack_from(data)
    if flags & ~KNOWN_FLAGS:
        raise MalformedPacket(f"claim message has unknown flags {flags:#04x}")
    offset = HEADER_LENGTH
    message: ClaimMessage
    if message_type == MessageType.HELLO:
        if len(data) < offset + _HELLO.size:
            raise MalformedPacket("hello message is truncated")
        (weight,) = _HELLO.unpack_from(data, offset)
        if not math.isfinite(weight) or weight < 0:
            raise MalformedPacket(f"hello carries an invalid weight {weight}")
        offset += _HELLO.size
        message = Hello(
            member_id,
            counter,
            weight,
            draining=bool(flags & MessageFlags.DRAINING),
            warming=bool(flags & MessageFlags.WARMING),
            leaving=bool(flags & MessageFlags.LEAVING),
        )
    elif message_type == MessageType.ACKNOWLEDGEMENT:
        if len(data) < offset + _ACKNOWLEDGEMENT.size:
            raise MalformedPacket("acknowledgement message is truncated")
        claimer, claim_counter = _ACKNOWLEDGEMENT.unpack_from(data, offset)
        offset += _ACKNOWLEDGEMENT.size
        message = Acknowledgement(member_id, counter, claimer, claim_counter)
    elif message_type == MessageType.BUCKETS:
        message, offset = _decode_buckets(data, offset, flags, member_id, counter)
    else:
        if len(data) < offset + _SESSION_FIXED.size:
            raise MalformedPacket("claim message is truncated")
        score, family, transport, client_port, cluster_port = _SESSION_FIXED.unpack_from(
            data, offset
        )
        if family not in (4, 6):
            raise MalformedPacket(f"claim message has unknown address family {family}")
        if not math.isfinite(score) or score < 0:
            raise MalformedPacket(f"claim message carries an invalid score {score}")
        offset += _SESSION_FIXED.size
        size = 4 if family == 4 else 16
        if len(data) < offset + 2 * size:
            raise MalformedPacket("claim message is truncated")
        key = SessionKey(
            transport,
            bytes(data[offset : offset + size]),
            client_port,
            bytes(data[offset + size : offset + 2 * size]),
            cluster_port,
        )
        offset += 2 * size
        kind = Claim if message_type == MessageType.CLAIM else Assertion
        message = kind(member_id, counter, key, score)
    signed_length = offset
    tag = None
    if flags & MessageFlags.AUTHENTICATED:
        if len(data) < offset + TAG_LENGTH:
            raise MalformedPacket("claim message tag is truncated")
        tag = bytes(data[offset : offset + TAG_LENGTH])
        offset += TAG_LENGTH
    if len(data) != offset:
        raise MalformedPacket(f"claim message has {len(data) - offset} trailing bytes")
    return message, signed_length, tag


def parse_claim_message(data: bytes) -> ClaimMessage | SignedClaimMessage:
    """Decode a message without checking its tag (protocols.claim_auth checks tags)."""
    message, _, tag = decode_message(data)
    return message if tag is None else SignedClaimMessage(message, tag)
