"""Golden bytes: every wire format as fixed bytes paired with the value they carry.

In the manner of smoltcp's wire tests (`src/wire/udp.rs`: `PACKET_BYTES` and
`packet_repr()`). The round-trip tests prove that parse and build agree with
each other; these pin the format itself between releases. Every constant below
was checked field by field against its RFC layout (or, for the claim protocol,
against the layout in `protocols/wire/claim.py`'s docstring) and is written out
with one line per header field. Checksums and tags are the real ones, written
as literals: nothing here computes the bytes under test.

For each format: parsing the golden bytes gives exactly the expected value, and
building the expected value gives exactly the golden bytes. Whole frames also go
through `parse_stack`/`build_stack` and the fast classifier.

Addresses come from the documentation ranges: the cluster is 192.0.2.10 (and
2001:db8::10), a member is 192.0.2.21, the client is 198.51.100.7 (and
2001:db8:1::7), a router is 203.0.113.1.
"""

from __future__ import annotations

import hashlib
import hmac
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from appliance.dataplane.frames import FrameBuilder
from protocols.claim_auth import ClaimAuthenticator
from protocols.classifier import Classified, Classifier, FragmentKey, FrameKind
from protocols.errors import AuthenticationFailure
from protocols.numbers import TcpFlags
from protocols.session_key import SessionKey
from protocols.wire.arp import ArpPacket
from protocols.wire.claim import (
    CLAIM_MESSAGE,
    Acknowledgement,
    Assertion,
    BucketState,
    Claim,
    ClaimMessage,
    Grant,
    Hello,
    SignedClaimMessage,
    decode_message,
    parse_claim_message,
)
from protocols.wire.common import (
    BROADCAST_MAC,
    ZERO_MAC,
    MacAddress,
    build_with,
    parse_with,
)
from protocols.wire.ethernet import EthernetFrame, VlanTag
from protocols.wire.icmpv4 import Icmpv4Echo, Icmpv4Error, Icmpv4Message, parse_icmpv4
from protocols.wire.icmpv6 import (
    Icmpv6Message,
    Icmpv6Other,
    NdpOption,
    NeighborAdvertisement,
    NeighborSolicitation,
    parse_icmpv6,
)
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.ipv6 import Ipv6ExtensionHeader, Ipv6Packet
from protocols.wire.stack import Layer, build_stack, parse_stack
from protocols.wire.tcp import TcpOption, TcpSegment, build_tcp_options, parse_tcp_options
from protocols.wire.udp import UdpDatagram

CLUSTER_IP = IPv4Address("192.0.2.10")
MEMBER_IP = IPv4Address("192.0.2.21")
CLIENT_IP = IPv4Address("198.51.100.7")
ROUTER_IP = IPv4Address("203.0.113.1")
MDNS_GROUP = IPv4Address("224.0.0.251")
CLUSTER_IP6 = IPv6Address("2001:db8::10")
CLIENT_IP6 = IPv6Address("2001:db8:1::7")
MEMBER_LINK_LOCAL = IPv6Address("fe80::ff:fe00:21")  # EUI-64 of MEMBER_MAC
SOLICITED_NODE = IPv6Address("ff02::1:ff00:10")  # of CLUSTER_IP6 (RFC 4291)
ALL_MLDV2_ROUTERS = IPv6Address("ff02::16")

CLUSTER_MAC = MacAddress("02:5a:8c:13:7e:01")
MEMBER_MAC = MacAddress("02:00:00:00:00:21")
CLIENT_MAC = MacAddress("02:00:00:00:00:c1")
ROUTER_MAC = MacAddress("02:00:00:00:00:fe")

MEMBER_A = 0x0123456789ABCDEF
MEMBER_B = 0xFEDCBA9876543210  # the top bit set: member ids are unsigned
CLAIM_KEY = b"golden-bytes-test-key-0123456789"
TAG_LENGTH = 16

TCP_SESSION = SessionKey(6, CLIENT_IP.packed, 51234, CLUSTER_IP.packed, 80)
UDP6_SESSION = SessionKey(17, CLIENT_IP6.packed, 40001, CLUSTER_IP6.packed, 53)


# --- The claim protocol -------------------------------------------------------
#
# version (1) | type (1) | flags (1) | member id (8) | counter (8) | body | tag (16)?
# Flags: 0x01 authenticated, 0x02 draining, 0x04 warming, 0x08 leaving.
# Numbers are big-endian; scores and weights are IEEE 754 binary64. A tag is
# HMAC-SHA256(key, every byte before the tag), cut to its first 16 bytes.

CLAIM = Claim(MEMBER_A, 42, TCP_SESSION, 3.25)
CLAIM_BYTES = bytes.fromhex(
    "03"  # version 3
    "01"  # type: CLAIM
    "00"  # flags: none
    "01 23 45 67 89 ab cd ef"  # member id
    "00 00 00 00 00 00 00 2a"  # counter: 42
    "40 0a 00 00 00 00 00 00"  # score: 3.25
    "04"  # session family: IPv4
    "06"  # session transport: TCP
    "c8 22"  # client port: 51234
    "00 50"  # cluster port: 80
    "c6 33 64 07"  # client address: 198.51.100.7
    "c0 00 02 0a"  # cluster address: 192.0.2.10
)
SIGNED_CLAIM_TAG = bytes.fromhex("c5 a3 6f d2 aa 60 6c 96 f8 be d8 44 d1 a6 a8 68")
SIGNED_CLAIM_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "01"  # type: CLAIM
        "01"  # flags: AUTHENTICATED
        "01 23 45 67 89 ab cd ef"  # member id
        "00 00 00 00 00 00 00 2a"  # counter: 42
        "40 0a 00 00 00 00 00 00"  # score: 3.25
        "04"  # session family: IPv4
        "06"  # session transport: TCP
        "c8 22"  # client port: 51234
        "00 50"  # cluster port: 80
        "c6 33 64 07"  # client address: 198.51.100.7
        "c0 00 02 0a"  # cluster address: 192.0.2.10
    )
    + SIGNED_CLAIM_TAG  # tag over the 41 bytes above
)

ASSERTION = Assertion(MEMBER_B, 7, UDP6_SESSION, 0.75)
ASSERTION_BYTES = bytes.fromhex(
    "03"  # version 3
    "02"  # type: ASSERTION
    "00"  # flags: none
    "fe dc ba 98 76 54 32 10"  # member id
    "00 00 00 00 00 00 00 07"  # counter: 7
    "3f e8 00 00 00 00 00 00"  # score: 0.75
    "06"  # session family: IPv6
    "11"  # session transport: UDP
    "9c 41"  # client port: 40001
    "00 35"  # cluster port: 53
    "20 01 0d b8 00 01 00 00 00 00 00 00 00 00 00 07"  # client address: 2001:db8:1::7
    "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 10"  # cluster address: 2001:db8::10
)
SIGNED_ASSERTION_TAG = bytes.fromhex("5b a8 5f 02 6e ca 42 9d a0 8c 96 a2 71 6c 43 36")
SIGNED_ASSERTION_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "02"  # type: ASSERTION
        "01"  # flags: AUTHENTICATED
        "fe dc ba 98 76 54 32 10"  # member id
        "00 00 00 00 00 00 00 07"  # counter: 7
        "3f e8 00 00 00 00 00 00"  # score: 0.75
        "06"  # session family: IPv6
        "11"  # session transport: UDP
        "9c 41"  # client port: 40001
        "00 35"  # cluster port: 53
        "20 01 0d b8 00 01 00 00 00 00 00 00 00 00 00 07"  # client address: 2001:db8:1::7
        "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 10"  # cluster address: 2001:db8::10
    )
    + SIGNED_ASSERTION_TAG  # tag over the 65 bytes above
)

HELLO = Hello(MEMBER_A, 43, 1.5)
HELLO_BYTES = bytes.fromhex(
    "03"  # version 3
    "03"  # type: HELLO
    "00"  # flags: none
    "01 23 45 67 89 ab cd ef"  # member id
    "00 00 00 00 00 00 00 2b"  # counter: 43
    "3f f8 00 00 00 00 00 00"  # weight: 1.5
)
SIGNED_HELLO_TAG = bytes.fromhex("e2 75 58 f1 fe 85 d8 55 bf c5 87 c6 7e 69 9a 10")
SIGNED_HELLO_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "03"  # type: HELLO
        "01"  # flags: AUTHENTICATED
        "01 23 45 67 89 ab cd ef"  # member id
        "00 00 00 00 00 00 00 2b"  # counter: 43
        "3f f8 00 00 00 00 00 00"  # weight: 1.5
    )
    + SIGNED_HELLO_TAG  # tag over the 27 bytes above
)

DRAINING_HELLO = Hello(MEMBER_A, 44, 1.5, draining=True)
DRAINING_HELLO_BYTES = bytes.fromhex(
    "03"  # version 3
    "03"  # type: HELLO
    "02"  # flags: DRAINING
    "01 23 45 67 89 ab cd ef"  # member id
    "00 00 00 00 00 00 00 2c"  # counter: 44
    "3f f8 00 00 00 00 00 00"  # weight: 1.5
)
SIGNED_DRAINING_HELLO_TAG = bytes.fromhex("e0 82 d0 67 2a a7 15 ee b6 44 b6 a5 bc 58 98 b5")
SIGNED_DRAINING_HELLO_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "03"  # type: HELLO
        "03"  # flags: AUTHENTICATED | DRAINING
        "01 23 45 67 89 ab cd ef"  # member id
        "00 00 00 00 00 00 00 2c"  # counter: 44
        "3f f8 00 00 00 00 00 00"  # weight: 1.5
    )
    + SIGNED_DRAINING_HELLO_TAG  # tag over the 27 bytes above
)

WARMING_HELLO = Hello(MEMBER_A, 45, 1.5, warming=True)
WARMING_HELLO_BYTES = bytes.fromhex(
    "03"  # version 3
    "03"  # type: HELLO
    "04"  # flags: WARMING
    "01 23 45 67 89 ab cd ef"  # member id
    "00 00 00 00 00 00 00 2d"  # counter: 45
    "3f f8 00 00 00 00 00 00"  # weight: 1.5
)
SIGNED_WARMING_HELLO_TAG = bytes.fromhex("73 82 d1 9f 9a 01 9e 8f 5f 1c b3 c1 1c 9e 8a 46")
SIGNED_WARMING_HELLO_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "03"  # type: HELLO
        "05"  # flags: AUTHENTICATED | WARMING
        "01 23 45 67 89 ab cd ef"  # member id
        "00 00 00 00 00 00 00 2d"  # counter: 45
        "3f f8 00 00 00 00 00 00"  # weight: 1.5
    )
    + SIGNED_WARMING_HELLO_TAG  # tag over the 27 bytes above
)

LEAVING_HELLO = Hello(MEMBER_A, 46, 0.0, leaving=True)
LEAVING_HELLO_BYTES = bytes.fromhex(
    "03"  # version 3
    "03"  # type: HELLO
    "08"  # flags: LEAVING
    "01 23 45 67 89 ab cd ef"  # member id
    "00 00 00 00 00 00 00 2e"  # counter: 46
    "00 00 00 00 00 00 00 00"  # weight: 0.0
)
SIGNED_LEAVING_HELLO_TAG = bytes.fromhex("e7 5a e7 e9 21 54 a3 e1 82 70 d7 36 1d 35 20 ec")
SIGNED_LEAVING_HELLO_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "03"  # type: HELLO
        "09"  # flags: AUTHENTICATED | LEAVING
        "01 23 45 67 89 ab cd ef"  # member id
        "00 00 00 00 00 00 00 2e"  # counter: 46
        "00 00 00 00 00 00 00 00"  # weight: 0.0
    )
    + SIGNED_LEAVING_HELLO_TAG  # tag over the 27 bytes above
)

# Member B acknowledges member A's claim numbered 42 (CLAIM above).
ACKNOWLEDGEMENT = Acknowledgement(MEMBER_B, 8, MEMBER_A, 42)
ACKNOWLEDGEMENT_BYTES = bytes.fromhex(
    "03"  # version 3
    "04"  # type: ACKNOWLEDGEMENT
    "00"  # flags: none
    "fe dc ba 98 76 54 32 10"  # member id
    "00 00 00 00 00 00 00 08"  # counter: 8
    "01 23 45 67 89 ab cd ef"  # claimer
    "00 00 00 00 00 00 00 2a"  # claim counter: 42
)
SIGNED_ACKNOWLEDGEMENT_TAG = bytes.fromhex("32 5f 9f bd 9c 20 6a 5e 5a 2b e4 90 2b db 99 03")
SIGNED_ACKNOWLEDGEMENT_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "04"  # type: ACKNOWLEDGEMENT
        "01"  # flags: AUTHENTICATED
        "fe dc ba 98 76 54 32 10"  # member id
        "00 00 00 00 00 00 00 08"  # counter: 8
        "01 23 45 67 89 ab cd ef"  # claimer
        "00 00 00 00 00 00 00 2a"  # claim counter: 42
    )
    + SIGNED_ACKNOWLEDGEMENT_TAG  # tag over the 35 bytes above
)

# Member A's bucket state in a cluster cut into 12 buckets: it ranks with
# weight 0.75, its service listens on TCP 80 and UDP 53, it holds buckets 0, 3
# and 9, wants bucket 11, and grants buckets 1 and 10 to member B, having read
# B's BUCKETS messages up to number 5. A bitmap has (12 + 7) // 8 = 2 bytes;
# bucket i is bit i % 8 (low bit first) of byte i // 8.
BUCKETS = BucketState(
    MEMBER_A,
    47,
    12,
    0.75,
    frozenset({(6, 80), (17, 53)}),
    frozenset({0, 3, 9}),
    frozenset({11}),
    (Grant(MEMBER_B, 5, frozenset({1, 10})),),
)
BUCKETS_BYTES = bytes.fromhex(
    "03"  # version 3
    "05"  # type: BUCKETS
    "00"  # flags: none
    "01 23 45 67 89 ab cd ef"  # member id
    "00 00 00 00 00 00 00 2f"  # counter: 47
    "00 0c"  # bucket count: 12
    "3f e8 00 00 00 00 00 00"  # weight: 0.75
    "02"  # port count: 2 (0xff would mean every port)
    "06 00 50"  # port: TCP 80
    "11 00 35"  # port: UDP 53
    "09 02"  # holding: buckets 0, 3 (0x09) and 9 (0x02 in the second byte)
    "00 08"  # wanting: bucket 11 (0x08 in the second byte)
    "01"  # grant count: 1
    "fe dc ba 98 76 54 32 10"  # grant: to member B
    "00 00 00 00 00 00 00 05"  # grant: B's messages read up to 5
    "02 04"  # grant: buckets 1 (0x02) and 10 (0x04 in the second byte)
)
SIGNED_BUCKETS_TAG = bytes.fromhex("6f 5b 04 b2 2d c0 e5 95 a8 65 92 84 e5 b2 1d 29")
SIGNED_BUCKETS_BYTES = (
    bytes.fromhex(
        "03"  # version 3
        "05"  # type: BUCKETS
        "01"  # flags: AUTHENTICATED
        "01 23 45 67 89 ab cd ef"  # member id
        "00 00 00 00 00 00 00 2f"  # counter: 47
        "00 0c"  # bucket count: 12
        "3f e8 00 00 00 00 00 00"  # weight: 0.75
        "02"  # port count: 2
        "06 00 50"  # port: TCP 80
        "11 00 35"  # port: UDP 53
        "09 02"  # holding: buckets 0, 3 and 9
        "00 08"  # wanting: bucket 11
        "01"  # grant count: 1
        "fe dc ba 98 76 54 32 10"  # grant: to member B
        "00 00 00 00 00 00 00 05"  # grant: B's messages read up to 5
        "02 04"  # grant: buckets 1 and 10
    )
    + SIGNED_BUCKETS_TAG  # tag over the 59 bytes above
)

UNTAGGED_CASES = [
    pytest.param(CLAIM_BYTES, CLAIM, id="claim"),
    pytest.param(ASSERTION_BYTES, ASSERTION, id="assertion"),
    pytest.param(HELLO_BYTES, HELLO, id="hello"),
    pytest.param(DRAINING_HELLO_BYTES, DRAINING_HELLO, id="hello-draining"),
    pytest.param(WARMING_HELLO_BYTES, WARMING_HELLO, id="hello-warming"),
    pytest.param(LEAVING_HELLO_BYTES, LEAVING_HELLO, id="hello-leaving"),
    pytest.param(ACKNOWLEDGEMENT_BYTES, ACKNOWLEDGEMENT, id="acknowledgement"),
    pytest.param(BUCKETS_BYTES, BUCKETS, id="buckets"),
]
TAGGED_CASES = [
    pytest.param(SIGNED_CLAIM_BYTES, CLAIM, SIGNED_CLAIM_TAG, id="claim"),
    pytest.param(SIGNED_ASSERTION_BYTES, ASSERTION, SIGNED_ASSERTION_TAG, id="assertion"),
    pytest.param(SIGNED_HELLO_BYTES, HELLO, SIGNED_HELLO_TAG, id="hello"),
    pytest.param(
        SIGNED_DRAINING_HELLO_BYTES, DRAINING_HELLO, SIGNED_DRAINING_HELLO_TAG, id="hello-draining"
    ),
    pytest.param(
        SIGNED_WARMING_HELLO_BYTES, WARMING_HELLO, SIGNED_WARMING_HELLO_TAG, id="hello-warming"
    ),
    pytest.param(
        SIGNED_LEAVING_HELLO_BYTES, LEAVING_HELLO, SIGNED_LEAVING_HELLO_TAG, id="hello-leaving"
    ),
    pytest.param(
        SIGNED_ACKNOWLEDGEMENT_BYTES,
        ACKNOWLEDGEMENT,
        SIGNED_ACKNOWLEDGEMENT_TAG,
        id="acknowledgement",
    ),
    pytest.param(SIGNED_BUCKETS_BYTES, BUCKETS, SIGNED_BUCKETS_TAG, id="buckets"),
]
# Both, with tag None for the untagged ones.
ALL_CLAIM_CASES = [
    pytest.param(*case.values, None, id=f"{case.id}-untagged") for case in UNTAGGED_CASES
] + [pytest.param(*case.values, id=f"{case.id}-tagged") for case in TAGGED_CASES]


def _bitmap(buckets: frozenset[int], bucket_count: int) -> bytes:
    """Bucket i as bit i % 8 of byte i // 8 (not protocols.wire.claim.bitmap)."""
    data = bytearray((bucket_count + 7) // 8)
    for bucket in buckets:
        data[bucket // 8] |= 1 << (bucket % 8)
    return bytes(data)


def _declaration_fields(message: ClaimMessage, tag: bytes | None) -> dict[str, Any]:
    """What `CLAIM_MESSAGE` (the construct declaration) holds for a message."""
    flags = 0x01 if tag is not None else 0x00
    body: dict[str, Any]
    if isinstance(message, Hello):
        flags |= 0x02 if message.draining else 0
        flags |= 0x04 if message.warming else 0
        flags |= 0x08 if message.leaving else 0
        message_type, body = 3, {"weight": message.weight}
    elif isinstance(message, Acknowledgement):
        message_type = 4
        body = {"claimer": message.claimer, "claim_counter": message.claim_counter}
    elif isinstance(message, BucketState):
        flags |= 0x02 if message.draining else 0
        flags |= 0x04 if message.warming else 0
        message_type = 5
        count = message.bucket_count
        ports = sorted(message.ports or ())
        body = {
            "bucket_count": count,
            "weight": message.weight,
            "port_count": 0xFF if message.ports is None else len(ports),
            "ports": [{"transport": transport, "port": port} for transport, port in ports],
            "holding": _bitmap(message.holding, count),
            "wanting": _bitmap(message.wanting, count),
            "grant_count": len(message.grants),
            "grants": [
                {
                    "member_id": grant.member_id,
                    "seen_counter": grant.seen_counter,
                    "buckets": _bitmap(grant.buckets, count),
                }
                for grant in message.grants
            ],
        }
    else:
        key = message.session
        message_type = 1 if isinstance(message, Claim) else 2
        body = {
            "score": message.score,
            "session": {
                "family": 4 if len(key.client_address) == 4 else 6,
                "transport": key.transport,
                "client_port": key.client_port,
                "cluster_port": key.cluster_port,
                "client_address": key.client_address,
                "cluster_address": key.cluster_address,
            },
        }
    return {
        "version": 3,
        "message_type": message_type,
        "flags": flags,
        "member_id": message.member_id,
        "counter": message.counter,
        "body": body,
        "tag": tag,
    }


def _plain(value: Any) -> Any:
    """A parsed construct container as plain dicts and lists, without its `_io` entries."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if not key.startswith("_")}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@pytest.mark.parametrize(("golden", "message"), UNTAGGED_CASES)
def test_untagged_claim_message_parses_to_its_value(golden: bytes, message: ClaimMessage) -> None:
    assert parse_claim_message(golden) == message


@pytest.mark.parametrize(("golden", "message"), UNTAGGED_CASES)
def test_untagged_claim_message_builds_to_its_bytes(golden: bytes, message: ClaimMessage) -> None:
    assert message.build() == golden
    assert ClaimAuthenticator(None).seal(message) == golden


@pytest.mark.parametrize(("golden", "message", "tag"), TAGGED_CASES)
def test_tagged_claim_message_parses_to_its_value(
    golden: bytes, message: ClaimMessage, tag: bytes
) -> None:
    assert parse_claim_message(golden) == SignedClaimMessage(message, tag)


@pytest.mark.parametrize(("golden", "message", "tag"), TAGGED_CASES)
def test_tagged_claim_message_builds_to_its_bytes(
    golden: bytes, message: ClaimMessage, tag: bytes
) -> None:
    assert SignedClaimMessage(message, tag).build() == golden
    assert ClaimAuthenticator(CLAIM_KEY).seal(message) == golden


@pytest.mark.parametrize(("golden", "message", "tag"), TAGGED_CASES)
def test_tag_is_the_truncated_hmac_and_a_keyed_member_accepts_it(
    golden: bytes, message: ClaimMessage, tag: bytes
) -> None:
    # The tag stated with the standard library alone, not with protocols.claim_auth.
    signed = golden[:-TAG_LENGTH]
    assert hmac.new(CLAIM_KEY, signed, hashlib.sha256).digest()[:TAG_LENGTH] == tag
    assert golden[-TAG_LENGTH:] == tag
    assert ClaimAuthenticator(CLAIM_KEY).open(golden) == message
    assert ClaimAuthenticator(None).open(golden) == message  # without a key, tags are ignored


@pytest.mark.parametrize(("golden", "message"), UNTAGGED_CASES)
def test_a_keyed_member_refuses_the_untagged_message(golden: bytes, message: ClaimMessage) -> None:
    assert ClaimAuthenticator(None).open(golden) == message
    with pytest.raises(AuthenticationFailure):
        ClaimAuthenticator(CLAIM_KEY).open(golden)


@pytest.mark.parametrize(("golden", "message", "tag"), ALL_CLAIM_CASES)
def test_fast_decoder_reads_the_golden_bytes(
    golden: bytes, message: ClaimMessage, tag: bytes | None
) -> None:
    signed_length = len(golden) - (TAG_LENGTH if tag is not None else 0)
    assert decode_message(golden) == (message, signed_length, tag)


@pytest.mark.parametrize(("golden", "message", "tag"), ALL_CLAIM_CASES)
def test_declaration_reads_and_writes_the_golden_bytes(
    golden: bytes, message: ClaimMessage, tag: bytes | None
) -> None:
    fields = _declaration_fields(message, tag)
    assert _plain(parse_with(CLAIM_MESSAGE, golden, "claim message")) == fields
    assert build_with(CLAIM_MESSAGE, fields, "claim message") == golden


# A claim as it travels: IP protocol 150 from a member to the cluster address,
# in an Ethernet frame to the cluster MAC. Built by the data plane's template.
CLAIM_ETHERNET_HEADER = bytes.fromhex(
    "02 5a 8c 13 7e 01"  # destination: the cluster MAC
    "02 00 00 00 00 21"  # source: the member's own MAC
    "08 00"  # EtherType: IPv4
)
CLAIM_IPV4_BYTES = (
    bytes.fromhex(
        "45"  # version 4, header length 5 words
        "00"  # DSCP 0, ECN 0
        "00 3d"  # total length: 61
        "00 01"  # identification: 1, the builder's first packet
        "40 00"  # flags: don't fragment; fragment offset 0
        "01"  # TTL 1: claims never leave the segment
        "96"  # protocol: 150, the claim protocol
        "f5 0a"  # header checksum
        "c0 00 02 15"  # source: 192.0.2.21, the member
        "c0 00 02 0a"  # destination: 192.0.2.10, the cluster address
    )
    + CLAIM_BYTES
)
CLAIM_FRAME = CLAIM_ETHERNET_HEADER + CLAIM_IPV4_BYTES
CLAIM_IPV4 = Ipv4Packet(
    MEMBER_IP, CLUSTER_IP, 150, CLAIM_BYTES, ttl=1, identification=1, dont_fragment=True
)

SIGNED_HELLO_IPV4_BYTES = (
    bytes.fromhex(
        "45"  # version 4, header length 5 words
        "00"  # DSCP 0, ECN 0
        "00 3f"  # total length: 63
        "00 02"  # identification: 2, the builder's second packet
        "40 00"  # flags: don't fragment; fragment offset 0
        "01"  # TTL 1
        "96"  # protocol: 150, the claim protocol
        "f5 07"  # header checksum
        "c0 00 02 15"  # source: 192.0.2.21, the member
        "c0 00 02 0a"  # destination: 192.0.2.10, the cluster address
    )
    + SIGNED_HELLO_BYTES
)
SIGNED_HELLO_FRAME = CLAIM_ETHERNET_HEADER + SIGNED_HELLO_IPV4_BYTES
SIGNED_HELLO_IPV4 = Ipv4Packet(
    MEMBER_IP, CLUSTER_IP, 150, SIGNED_HELLO_BYTES, ttl=1, identification=2, dont_fragment=True
)


def _frame_builder() -> FrameBuilder:
    return FrameBuilder(
        own_mac=MEMBER_MAC,
        cluster_mac=CLUSTER_MAC,
        cluster_ip=CLUSTER_IP,
        member_ip=MEMBER_IP,
        claim_protocol=150,
    )


def test_the_data_plane_template_builds_the_golden_claim_frames() -> None:
    builder = _frame_builder()
    assert builder.claim_frame(CLAIM_BYTES) == CLAIM_FRAME
    assert builder.claim_frame(SIGNED_HELLO_BYTES) == SIGNED_HELLO_FRAME


# --- Ethernet and ARP ---------------------------------------------------------

ARP_REQUEST = ArpPacket(1, CLIENT_MAC, CLIENT_IP, ZERO_MAC, CLUSTER_IP, padding=bytes(18))
ARP_REQUEST_BYTES = bytes.fromhex(
    "00 01"  # hardware type: Ethernet
    "08 00"  # protocol type: IPv4
    "06"  # hardware address length
    "04"  # protocol address length
    "00 01"  # operation: request
    "02 00 00 00 00 c1"  # sender hardware address: the client
    "c6 33 64 07"  # sender protocol address: 198.51.100.7
    "00 00 00 00 00 00"  # target hardware address: unknown
    "c0 00 02 0a"  # target protocol address: 192.0.2.10, the cluster address
    "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"  # padding to 60 bytes
)
ARP_REQUEST_ETHERNET = EthernetFrame(BROADCAST_MAC, CLIENT_MAC, 0x0806, ARP_REQUEST_BYTES)
ARP_REQUEST_FRAME = (
    bytes.fromhex(
        "ff ff ff ff ff ff"  # destination: broadcast
        "02 00 00 00 00 c1"  # source: the client
        "08 06"  # EtherType: ARP
    )
    + ARP_REQUEST_BYTES
)

# The same request on VLAN 100 at priority 5.
VLAN_ARP_REQUEST_ETHERNET = EthernetFrame(
    BROADCAST_MAC, CLIENT_MAC, 0x0806, ARP_REQUEST_BYTES, vlan=VlanTag(100, priority=5)
)
VLAN_ARP_REQUEST_FRAME = (
    bytes.fromhex(
        "ff ff ff ff ff ff"  # destination: broadcast
        "02 00 00 00 00 c1"  # source: the client
        "81 00"  # tag protocol: 802.1Q
        "a0 64"  # tag control: priority 5 (101), drop eligible 0, VLAN id 100 (0x064)
        "08 06"  # EtherType: ARP
    )
    + ARP_REQUEST_BYTES
)

# A member's answer: the cluster MAC inside ARP only, its own MAC as the Ethernet source.
ARP_REPLY = ArpPacket(2, CLUSTER_MAC, CLUSTER_IP, CLIENT_MAC, CLIENT_IP)
ARP_REPLY_BYTES = bytes.fromhex(
    "00 01"  # hardware type: Ethernet
    "08 00"  # protocol type: IPv4
    "06"  # hardware address length
    "04"  # protocol address length
    "00 02"  # operation: reply
    "02 5a 8c 13 7e 01"  # sender hardware address: the cluster MAC
    "c0 00 02 0a"  # sender protocol address: 192.0.2.10, the cluster address
    "02 00 00 00 00 c1"  # target hardware address: the client
    "c6 33 64 07"  # target protocol address: 198.51.100.7
)
ARP_REPLY_ETHERNET = EthernetFrame(CLIENT_MAC, MEMBER_MAC, 0x0806, ARP_REPLY_BYTES)
ARP_REPLY_FRAME = (
    bytes.fromhex(
        "02 00 00 00 00 c1"  # destination: the client
        "02 00 00 00 00 21"  # source: the member's own MAC, never the cluster MAC
        "08 06"  # EtherType: ARP
    )
    + ARP_REPLY_BYTES
)
VLAN_ARP_REPLY_ETHERNET = EthernetFrame(
    CLIENT_MAC, MEMBER_MAC, 0x0806, ARP_REPLY_BYTES, vlan=VlanTag(100, priority=5)
)
VLAN_ARP_REPLY_FRAME = (
    bytes.fromhex(
        "02 00 00 00 00 c1"  # destination: the client
        "02 00 00 00 00 21"  # source: the member's own MAC
        "81 00"  # tag protocol: 802.1Q
        "a0 64"  # tag control: priority 5, drop eligible 0, VLAN id 100
        "08 06"  # EtherType: ARP
    )
    + ARP_REPLY_BYTES
)

# The announcement a member sends at start (RFC 5227: a request for its own address).
GRATUITOUS_ARP = ArpPacket(1, CLUSTER_MAC, CLUSTER_IP, ZERO_MAC, CLUSTER_IP)
GRATUITOUS_ARP_BYTES = bytes.fromhex(
    "00 01"  # hardware type: Ethernet
    "08 00"  # protocol type: IPv4
    "06"  # hardware address length
    "04"  # protocol address length
    "00 01"  # operation: request
    "02 5a 8c 13 7e 01"  # sender hardware address: the cluster MAC
    "c0 00 02 0a"  # sender protocol address: the cluster address
    "00 00 00 00 00 00"  # target hardware address: unknown
    "c0 00 02 0a"  # target protocol address: the cluster address again
)
GRATUITOUS_ARP_ETHERNET = EthernetFrame(BROADCAST_MAC, MEMBER_MAC, 0x0806, GRATUITOUS_ARP_BYTES)
GRATUITOUS_ARP_FRAME = (
    bytes.fromhex(
        "ff ff ff ff ff ff"  # destination: broadcast
        "02 00 00 00 00 21"  # source: the member's own MAC
        "08 06"  # EtherType: ARP
    )
    + GRATUITOUS_ARP_BYTES
)


@pytest.mark.parametrize(
    ("golden", "expected"),
    [
        pytest.param(ARP_REQUEST_BYTES, ARP_REQUEST, id="request"),
        pytest.param(ARP_REPLY_BYTES, ARP_REPLY, id="reply"),
        pytest.param(GRATUITOUS_ARP_BYTES, GRATUITOUS_ARP, id="gratuitous"),
    ],
)
def test_arp_golden_bytes(golden: bytes, expected: ArpPacket) -> None:
    assert ArpPacket.parse(golden) == expected
    assert expected.build() == golden


def test_the_data_plane_builds_the_golden_arp_frames() -> None:
    builder = _frame_builder()
    assert builder.arp_reply(ARP_REQUEST_FRAME, 14, None) == ARP_REPLY_FRAME
    assert builder.arp_reply(VLAN_ARP_REQUEST_FRAME, 18, VlanTag(100, 5)) == VLAN_ARP_REPLY_FRAME
    assert builder.gratuitous_arp() == GRATUITOUS_ARP_FRAME


# --- IPv4 and what it carries ---------------------------------------------------

# A SYN as Linux sends it: MSS, SACK permitted, timestamps, NOP, window scale.
SYN_OPTIONS_BYTES = bytes.fromhex(
    "02 04 05 b4"  # maximum segment size (kind 2, length 4): 1460
    "04 02"  # SACK permitted (kind 4, length 2)
    "08 0a 00 22 14 65 00 00 00 00"  # timestamps (kind 8, length 10): 2233445, echo 0
    "01"  # no-operation
    "03 03 07"  # window scale (kind 3, length 3): shift 7
)
TCP_SYN = TcpSegment(
    51234, 80, 0x1F2E3D4C, 0, TcpFlags.SYN, window=64240, options=SYN_OPTIONS_BYTES
)
TCP_SYN_BYTES = (
    bytes.fromhex(
        "c8 22"  # source port: 51234
        "00 50"  # destination port: 80
        "1f 2e 3d 4c"  # sequence number
        "00 00 00 00"  # acknowledgment number
        "a0"  # data offset 10 words (40 bytes), reserved 0
        "02"  # flags: SYN
        "fa f0"  # window: 64240
        "27 56"  # checksum (with the IPv4 pseudo-header)
        "00 00"  # urgent pointer
    )
    + SYN_OPTIONS_BYTES
)
IPV4_TCP_SYN = Ipv4Packet(
    CLIENT_IP, CLUSTER_IP, 6, TCP_SYN_BYTES, identification=0x1C46, dont_fragment=True
)
IPV4_TCP_SYN_BYTES = (
    bytes.fromhex(
        "45"  # version 4, header length 5 words
        "00"  # DSCP 0, ECN 0
        "00 3c"  # total length: 60
        "1c 46"  # identification
        "40 00"  # flags: don't fragment; fragment offset 0
        "40"  # TTL 64
        "06"  # protocol: TCP
        "32 31"  # header checksum
        "c6 33 64 07"  # source: 198.51.100.7
        "c0 00 02 0a"  # destination: 192.0.2.10
    )
    + TCP_SYN_BYTES
)
TCP_SYN_ETHERNET = EthernetFrame(CLUSTER_MAC, CLIENT_MAC, 0x0800, IPV4_TCP_SYN_BYTES)
TCP_SYN_FRAME = (
    bytes.fromhex(
        "02 5a 8c 13 7e 01"  # destination: the cluster MAC
        "02 00 00 00 00 c1"  # source: the client
        "08 00"  # EtherType: IPv4
    )
    + IPV4_TCP_SYN_BYTES
)

DNS_QUERY_BYTES = bytes.fromhex(
    "1a 2b"  # query id
    "01 00"  # flags: recursion desired
    "00 01"  # questions: 1
    "00 00"  # answers: 0
    "00 00"  # authority records: 0
    "00 00"  # additional records: 0
    "07 65 78 61 6d 70 6c 65"  # label "example"
    "03 63 6f 6d"  # label "com"
    "00"  # the root
    "00 01"  # type: A
    "00 01"  # class: IN
)
UDP_DNS_QUERY = UdpDatagram(40001, 53, DNS_QUERY_BYTES)
UDP_DNS_QUERY_BYTES = (
    bytes.fromhex(
        "9c 41"  # source port: 40001
        "00 35"  # destination port: 53
        "00 25"  # length: 37
        "8d 4f"  # checksum (with the IPv4 pseudo-header)
    )
    + DNS_QUERY_BYTES
)
IPV4_UDP_DNS_QUERY = Ipv4Packet(
    CLIENT_IP, CLUSTER_IP, 17, UDP_DNS_QUERY_BYTES, identification=0x7A11
)
IPV4_UDP_DNS_QUERY_BYTES = (
    bytes.fromhex(
        "45"  # version 4, header length 5 words
        "00"  # DSCP 0, ECN 0
        "00 39"  # total length: 57
        "7a 11"  # identification
        "00 00"  # flags: none; fragment offset 0
        "40"  # TTL 64
        "11"  # protocol: UDP
        "14 5e"  # header checksum
        "c6 33 64 07"  # source: 198.51.100.7
        "c0 00 02 0a"  # destination: 192.0.2.10
    )
    + UDP_DNS_QUERY_BYTES
)
UDP_DNS_QUERY_FRAME = (
    bytes.fromhex(
        "02 5a 8c 13 7e 01"  # destination: the cluster MAC
        "02 00 00 00 00 c1"  # source: the client
        "08 00"  # EtherType: IPv4
    )
    + IPV4_UDP_DNS_QUERY_BYTES
)

ICMP_ECHO_REQUEST = Icmpv4Echo(0x0A0B, 1, b"0123456789abcdef")
ICMP_ECHO_REQUEST_BYTES = bytes.fromhex(
    "08"  # type: echo request
    "00"  # code 0
    "be bc"  # checksum
    "0a 0b"  # identifier
    "00 01"  # sequence number: 1
    "30 31 32 33 34 35 36 37 38 39 61 62 63 64 65 66"  # data: "0123456789abcdef"
)
IPV4_ICMP_ECHO_REQUEST = Ipv4Packet(
    CLIENT_IP, CLUSTER_IP, 1, ICMP_ECHO_REQUEST_BYTES, identification=0x0101
)
IPV4_ICMP_ECHO_REQUEST_BYTES = (
    bytes.fromhex(
        "45"  # version 4, header length 5 words
        "00"  # DSCP 0, ECN 0
        "00 2c"  # total length: 44
        "01 01"  # identification
        "00 00"  # flags: none; fragment offset 0
        "40"  # TTL 64
        "01"  # protocol: ICMP
        "8d 8b"  # header checksum
        "c6 33 64 07"  # source: 198.51.100.7
        "c0 00 02 0a"  # destination: 192.0.2.10
    )
    + ICMP_ECHO_REQUEST_BYTES
)
ICMP_ECHO_REQUEST_FRAME = (
    bytes.fromhex(
        "02 5a 8c 13 7e 01"  # destination: the cluster MAC
        "02 00 00 00 00 c1"  # source: the client
        "08 00"  # EtherType: IPv4
    )
    + IPV4_ICMP_ECHO_REQUEST_BYTES
)

# A router cannot forward a member's 1440-byte reply to the client: path MTU
# discovery (RFC 1191) quotes the reply's IP header and its first 8 bytes.
QUOTED_REPLY_BYTES = bytes.fromhex(
    "45"  # version 4, header length 5 words
    "00"  # DSCP 0, ECN 0
    "05 a0"  # total length: 1440, of which only 28 bytes are quoted
    "42 42"  # identification
    "40 00"  # flags: don't fragment; fragment offset 0
    "40"  # TTL 64
    "06"  # protocol: TCP
    "06 d1"  # header checksum
    "c0 00 02 0a"  # source: 192.0.2.10, the cluster address
    "c6 33 64 07"  # destination: 198.51.100.7, the client
    "00 50"  # TCP source port: 80
    "c8 22"  # TCP destination port: 51234
    "6a 5b 4c 3e"  # TCP sequence number
)
QUOTED_REPLY = Ipv4Packet(
    CLUSTER_IP,
    CLIENT_IP,
    6,
    bytes.fromhex("00 50 c8 22 6a 5b 4c 3e"),
    identification=0x4242,
    dont_fragment=True,
)
ICMP_FRAGMENTATION_NEEDED = Icmpv4Error(3, 4, QUOTED_REPLY_BYTES, bytes.fromhex("00 00 05 78"))
ICMP_FRAGMENTATION_NEEDED_BYTES = (
    bytes.fromhex(
        "03"  # type: destination unreachable
        "04"  # code: fragmentation needed and don't fragment set
        "78 77"  # checksum
        "00 00"  # unused
        "05 78"  # next-hop MTU: 1400
    )
    + QUOTED_REPLY_BYTES
)
IPV4_ICMP_FRAGMENTATION_NEEDED = Ipv4Packet(
    ROUTER_IP, CLUSTER_IP, 1, ICMP_FRAGMENTATION_NEEDED_BYTES, ttl=254, identification=0x0BAD
)
IPV4_ICMP_FRAGMENTATION_NEEDED_BYTES = (
    bytes.fromhex(
        "45"  # version 4, header length 5 words
        "00"  # DSCP 0, ECN 0
        "00 38"  # total length: 56
        "0b ad"  # identification
        "00 00"  # flags: none; fragment offset 0
        "fe"  # TTL 254
        "01"  # protocol: ICMP
        "b3 0b"  # header checksum
        "cb 00 71 01"  # source: 203.0.113.1, the router
        "c0 00 02 0a"  # destination: 192.0.2.10, the cluster address
    )
    + ICMP_FRAGMENTATION_NEEDED_BYTES
)
ICMP_FRAGMENTATION_NEEDED_FRAME = (
    bytes.fromhex(
        "02 5a 8c 13 7e 01"  # destination: the cluster MAC
        "02 00 00 00 00 fe"  # source: the router
        "08 00"  # EtherType: IPv4
    )
    + IPV4_ICMP_FRAGMENTATION_NEEDED_BYTES
)

# IPv4 options: an IGMPv2 membership report carries Router Alert (RFC 2113, RFC 2236).
IGMP_REPORT_BYTES = bytes.fromhex(
    "16"  # type: IGMPv2 membership report
    "00"  # max response time
    "09 04"  # checksum
    "e0 00 00 fb"  # group: 224.0.0.251
)
IPV4_WITH_OPTIONS = Ipv4Packet(
    MEMBER_IP,
    MDNS_GROUP,
    2,
    IGMP_REPORT_BYTES,
    ttl=1,
    dont_fragment=True,
    dscp=48,
    options=bytes.fromhex("94 04 00 00"),
)
IPV4_WITH_OPTIONS_BYTES = (
    bytes.fromhex(
        "46"  # version 4, header length 6 words
        "c0"  # DSCP 48 (class selector 6), ECN 0
        "00 20"  # total length: 32
        "00 00"  # identification
        "40 00"  # flags: don't fragment; fragment offset 0
        "01"  # TTL 1
        "02"  # protocol: IGMP
        "41 07"  # header checksum (over the options too)
        "c0 00 02 15"  # source: 192.0.2.21
        "e0 00 00 fb"  # destination: 224.0.0.251
        "94 04 00 00"  # option: Router Alert (copied, class 0, number 20), length 4, value 0
    )
    + IGMP_REPORT_BYTES
)
IGMP_REPORT_FRAME = (
    bytes.fromhex(
        "01 00 5e 00 00 fb"  # destination: the multicast MAC of 224.0.0.251
        "02 00 00 00 00 21"  # source: the member
        "08 00"  # EtherType: IPv4
    )
    + IPV4_WITH_OPTIONS_BYTES
)

# A middle fragment of a UDP datagram: more fragments follow, and it starts 1480 bytes in.
IPV4_FRAGMENT = Ipv4Packet(
    CLIENT_IP,
    CLUSTER_IP,
    17,
    bytes(range(16)),
    identification=0x3039,
    more_fragments=True,
    fragment_offset=1480,
)
IPV4_FRAGMENT_BYTES = bytes.fromhex(
    "45"  # version 4, header length 5 words
    "00"  # DSCP 0, ECN 0
    "00 24"  # total length: 36
    "30 39"  # identification: 12345
    "20 b9"  # flags: more fragments; fragment offset 185 units of 8 bytes (1480)
    "40"  # TTL 64
    "11"  # protocol: UDP
    "3d 92"  # header checksum
    "c6 33 64 07"  # source: 198.51.100.7
    "c0 00 02 0a"  # destination: 192.0.2.10
    "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"  # bytes 1480 to 1495 of the datagram
)
IPV4_FRAGMENT_FRAME = (
    bytes.fromhex(
        "02 5a 8c 13 7e 01"  # destination: the cluster MAC
        "02 00 00 00 00 c1"  # source: the client
        "08 00"  # EtherType: IPv4
    )
    + IPV4_FRAGMENT_BYTES
)


def test_ethernet_golden_bytes_untagged() -> None:
    assert EthernetFrame.parse(TCP_SYN_FRAME) == TCP_SYN_ETHERNET
    assert TCP_SYN_ETHERNET.build() == TCP_SYN_FRAME
    assert TCP_SYN_ETHERNET.header_length == 14


@pytest.mark.parametrize(
    ("golden", "expected"),
    [
        pytest.param(VLAN_ARP_REQUEST_FRAME, VLAN_ARP_REQUEST_ETHERNET, id="request"),
        pytest.param(VLAN_ARP_REPLY_FRAME, VLAN_ARP_REPLY_ETHERNET, id="reply"),
    ],
)
def test_ethernet_golden_bytes_with_an_802_1q_tag(golden: bytes, expected: EthernetFrame) -> None:
    assert EthernetFrame.parse(golden) == expected
    assert expected.build() == golden
    assert expected.header_length == 18


@pytest.mark.parametrize(
    ("golden", "expected"),
    [
        pytest.param(IPV4_TCP_SYN_BYTES, IPV4_TCP_SYN, id="tcp-syn"),
        pytest.param(IPV4_UDP_DNS_QUERY_BYTES, IPV4_UDP_DNS_QUERY, id="udp-dns-query"),
        pytest.param(IPV4_ICMP_ECHO_REQUEST_BYTES, IPV4_ICMP_ECHO_REQUEST, id="icmp-echo"),
        pytest.param(
            IPV4_ICMP_FRAGMENTATION_NEEDED_BYTES,
            IPV4_ICMP_FRAGMENTATION_NEEDED,
            id="icmp-fragmentation-needed",
        ),
        pytest.param(IPV4_WITH_OPTIONS_BYTES, IPV4_WITH_OPTIONS, id="options"),
        pytest.param(IPV4_FRAGMENT_BYTES, IPV4_FRAGMENT, id="fragment"),
        pytest.param(CLAIM_IPV4_BYTES, CLAIM_IPV4, id="claim"),
        pytest.param(SIGNED_HELLO_IPV4_BYTES, SIGNED_HELLO_IPV4, id="signed-hello"),
    ],
)
def test_ipv4_golden_bytes(golden: bytes, expected: Ipv4Packet) -> None:
    assert Ipv4Packet.parse(golden) == expected
    assert expected.build() == golden


def test_ipv4_fragment_and_options_fields() -> None:
    assert IPV4_FRAGMENT.is_fragment and IPV4_FRAGMENT.header_length == 20
    assert IPV4_WITH_OPTIONS.header_length == 24 and not IPV4_WITH_OPTIONS.is_fragment


def test_tcp_golden_bytes() -> None:
    assert TcpSegment.parse(TCP_SYN_BYTES, CLIENT_IP, CLUSTER_IP) == TCP_SYN
    assert TCP_SYN.build(CLIENT_IP, CLUSTER_IP) == TCP_SYN_BYTES
    assert TCP_SYN.header_length == 40
    assert TCP_SYN.mss == 1460


def test_tcp_syn_options_golden_bytes() -> None:
    assert parse_tcp_options(SYN_OPTIONS_BYTES) == (
        TcpOption(2, bytes.fromhex("05 b4")),
        TcpOption(4),
        TcpOption(8, bytes.fromhex("00 22 14 65 00 00 00 00")),
        TcpOption(3, bytes.fromhex("07")),
    )
    built = build_tcp_options(
        mss=1460, sack_permitted=True, timestamps=(2_233_445, 0), window_scale=7
    )
    assert built == SYN_OPTIONS_BYTES


def test_udp_golden_bytes_over_ipv4() -> None:
    assert UdpDatagram.parse(UDP_DNS_QUERY_BYTES, CLIENT_IP, CLUSTER_IP) == UDP_DNS_QUERY
    assert UDP_DNS_QUERY.build(CLIENT_IP, CLUSTER_IP) == UDP_DNS_QUERY_BYTES


@pytest.mark.parametrize(
    ("golden", "expected"),
    [
        pytest.param(ICMP_ECHO_REQUEST_BYTES, ICMP_ECHO_REQUEST, id="echo-request"),
        pytest.param(
            ICMP_FRAGMENTATION_NEEDED_BYTES, ICMP_FRAGMENTATION_NEEDED, id="fragmentation-needed"
        ),
    ],
)
def test_icmpv4_golden_bytes(golden: bytes, expected: Icmpv4Message) -> None:
    assert parse_icmpv4(golden) == expected
    assert expected.build() == golden


def test_icmpv4_error_quotes_the_offending_header() -> None:
    assert Icmpv4Error.fragmentation_needed(QUOTED_REPLY_BYTES, 1400) == ICMP_FRAGMENTATION_NEEDED
    assert ICMP_FRAGMENTATION_NEEDED.is_fragmentation_needed
    assert ICMP_FRAGMENTATION_NEEDED.next_hop_mtu == 1400
    assert ICMP_FRAGMENTATION_NEEDED.offending_packet() == QUOTED_REPLY


# --- IPv6 and ICMPv6 ------------------------------------------------------------

NEIGHBOR_SOLICITATION = NeighborSolicitation(CLUSTER_IP6, (NdpOption(1, bytes(CLIENT_MAC)),))
NEIGHBOR_SOLICITATION_BYTES = bytes.fromhex(
    "87"  # type: neighbour solicitation (135)
    "00"  # code 0
    "1b 44"  # checksum (with the IPv6 pseudo-header)
    "00 00 00 00"  # reserved
    "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 10"  # target: 2001:db8::10
    "01"  # option: source link-layer address
    "01"  # option length: 1 unit of 8 bytes
    "02 00 00 00 00 c1"  # the client's MAC
)
IPV6_NEIGHBOR_SOLICITATION = Ipv6Packet(
    CLIENT_IP6, SOLICITED_NODE, 58, NEIGHBOR_SOLICITATION_BYTES, hop_limit=255
)
IPV6_NEIGHBOR_SOLICITATION_BYTES = (
    bytes.fromhex(
        "60 00 00 00"  # version 6, traffic class 0, flow label 0
        "00 20"  # payload length: 32
        "3a"  # next header: ICMPv6
        "ff"  # hop limit 255, as neighbour discovery requires
        "20 01 0d b8 00 01 00 00 00 00 00 00 00 00 00 07"  # source: 2001:db8:1::7
        "ff 02 00 00 00 00 00 00 00 00 00 01 ff 00 00 10"  # destination: ff02::1:ff00:10
    )
    + NEIGHBOR_SOLICITATION_BYTES
)
NEIGHBOR_SOLICITATION_FRAME = (
    bytes.fromhex(
        "33 33 ff 00 00 10"  # destination: the multicast MAC of ff02::1:ff00:10
        "02 00 00 00 00 c1"  # source: the client
        "86 dd"  # EtherType: IPv6
    )
    + IPV6_NEIGHBOR_SOLICITATION_BYTES
)

NEIGHBOR_ADVERTISEMENT = NeighborAdvertisement(
    CLUSTER_IP6, solicited=True, override=True, options=(NdpOption(2, bytes(CLUSTER_MAC)),)
)
NEIGHBOR_ADVERTISEMENT_BYTES = bytes.fromhex(
    "88"  # type: neighbour advertisement (136)
    "00"  # code 0
    "7f e1"  # checksum (from 2001:db8::10 to 2001:db8:1::7)
    "60 00 00 00"  # flags: router 0, solicited 1, override 1; reserved 0
    "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 10"  # target: 2001:db8::10
    "02"  # option: target link-layer address
    "01"  # option length: 1 unit of 8 bytes
    "02 5a 8c 13 7e 01"  # the cluster MAC
)

UDP6_DNS_QUERY_BYTES = (
    bytes.fromhex(
        "9c 41"  # source port: 40001
        "00 35"  # destination port: 53
        "00 25"  # length: 37
        "1e 0b"  # checksum (with the IPv6 pseudo-header)
    )
    + DNS_QUERY_BYTES
)
IPV6_UDP_DNS_QUERY = Ipv6Packet(
    CLIENT_IP6, CLUSTER_IP6, 17, UDP6_DNS_QUERY_BYTES, traffic_class=0x28, flow_label=0x12345
)
IPV6_UDP_DNS_QUERY_BYTES = (
    bytes.fromhex(
        "62 81 23 45"  # version 6, traffic class 0x28, flow label 0x12345
        "00 25"  # payload length: 37
        "11"  # next header: UDP
        "40"  # hop limit 64
        "20 01 0d b8 00 01 00 00 00 00 00 00 00 00 00 07"  # source: 2001:db8:1::7
        "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 10"  # destination: 2001:db8::10
    )
    + UDP6_DNS_QUERY_BYTES
)
UDP6_DNS_QUERY_FRAME = (
    bytes.fromhex(
        "02 5a 8c 13 7e 01"  # destination: the cluster MAC
        "02 00 00 00 00 c1"  # source: the client
        "86 dd"  # EtherType: IPv6
    )
    + IPV6_UDP_DNS_QUERY_BYTES
)

# An extension header: an MLDv2 report (RFC 3810) behind hop-by-hop Router Alert.
MLD_REPORT = Icmpv6Other(
    143,
    0,
    bytes.fromhex("00 00 00 01 04 00 00 00 ff 02 00 00 00 00 00 00 00 00 00 01 ff 00 00 10"),
)
MLD_REPORT_BYTES = bytes.fromhex(
    "8f"  # type: MLDv2 report (143)
    "00"  # code 0
    "71 d8"  # checksum
    "00 00"  # reserved
    "00 01"  # multicast address records: 1
    "04"  # record type: change to exclude mode (a join)
    "00"  # auxiliary data length
    "00 00"  # sources: 0
    "ff 02 00 00 00 00 00 00 00 00 00 01 ff 00 00 10"  # group: ff02::1:ff00:10
)
IPV6_MLD_REPORT = Ipv6Packet(
    MEMBER_LINK_LOCAL,
    ALL_MLDV2_ROUTERS,
    58,
    MLD_REPORT_BYTES,
    hop_limit=1,
    extension_headers=(Ipv6ExtensionHeader(0, bytes.fromhex("05 02 00 00 01 00")),),
)
IPV6_MLD_REPORT_BYTES = (
    bytes.fromhex(
        "60 00 00 00"  # version 6, traffic class 0, flow label 0
        "00 24"  # payload length: 36
        "00"  # next header: hop-by-hop options
        "01"  # hop limit 1
        "fe 80 00 00 00 00 00 00 00 00 00 ff fe 00 00 21"  # source: fe80::ff:fe00:21
        "ff 02 00 00 00 00 00 00 00 00 00 00 00 00 00 16"  # destination: ff02::16
        "3a"  # hop-by-hop: next header ICMPv6
        "00"  # hop-by-hop: length 0 (8 bytes)
        "05 02 00 00"  # option: Router Alert, length 2, value 0 (MLD)
        "01 00"  # option: PadN, length 0
    )
    + MLD_REPORT_BYTES
)
MLD_REPORT_FRAME = (
    bytes.fromhex(
        "33 33 00 00 00 16"  # destination: the multicast MAC of ff02::16
        "02 00 00 00 00 21"  # source: the member
        "86 dd"  # EtherType: IPv6
    )
    + IPV6_MLD_REPORT_BYTES
)


@pytest.mark.parametrize(
    ("golden", "expected"),
    [
        pytest.param(
            IPV6_NEIGHBOR_SOLICITATION_BYTES, IPV6_NEIGHBOR_SOLICITATION, id="solicitation"
        ),
        pytest.param(IPV6_UDP_DNS_QUERY_BYTES, IPV6_UDP_DNS_QUERY, id="udp-dns-query"),
        pytest.param(IPV6_MLD_REPORT_BYTES, IPV6_MLD_REPORT, id="hop-by-hop"),
    ],
)
def test_ipv6_golden_bytes(golden: bytes, expected: Ipv6Packet) -> None:
    assert Ipv6Packet.parse(golden) == expected
    assert expected.build() == golden


def test_udp_golden_bytes_over_ipv6() -> None:
    expected = UdpDatagram(40001, 53, DNS_QUERY_BYTES)
    assert UdpDatagram.parse(UDP6_DNS_QUERY_BYTES, CLIENT_IP6, CLUSTER_IP6) == expected
    assert expected.build(CLIENT_IP6, CLUSTER_IP6) == UDP6_DNS_QUERY_BYTES


@pytest.mark.parametrize(
    ("golden", "expected", "source", "destination"),
    [
        pytest.param(
            NEIGHBOR_SOLICITATION_BYTES,
            NEIGHBOR_SOLICITATION,
            CLIENT_IP6,
            SOLICITED_NODE,
            id="neighbour-solicitation",
        ),
        pytest.param(
            NEIGHBOR_ADVERTISEMENT_BYTES,
            NEIGHBOR_ADVERTISEMENT,
            CLUSTER_IP6,
            CLIENT_IP6,
            id="neighbour-advertisement",
        ),
        pytest.param(
            MLD_REPORT_BYTES, MLD_REPORT, MEMBER_LINK_LOCAL, ALL_MLDV2_ROUTERS, id="mldv2-report"
        ),
    ],
)
def test_icmpv6_golden_bytes(
    golden: bytes, expected: Icmpv6Message, source: IPv6Address, destination: IPv6Address
) -> None:
    assert parse_icmpv6(golden, source, destination) == expected
    assert expected.build(source, destination) == golden


def test_neighbour_discovery_link_layer_addresses() -> None:
    assert NEIGHBOR_SOLICITATION.source_link_layer_address == CLIENT_MAC
    assert NEIGHBOR_ADVERTISEMENT.target_link_layer_address == CLUSTER_MAC


# --- Whole frames: the stack and the fast classifier ------------------------------

FRAME_CASES = [
    pytest.param(TCP_SYN_FRAME, (TCP_SYN_ETHERNET, IPV4_TCP_SYN, TCP_SYN), id="tcp-syn"),
    pytest.param(
        UDP_DNS_QUERY_FRAME,
        (
            EthernetFrame(CLUSTER_MAC, CLIENT_MAC, 0x0800, IPV4_UDP_DNS_QUERY_BYTES),
            IPV4_UDP_DNS_QUERY,
            UDP_DNS_QUERY,
        ),
        id="udp-dns-query",
    ),
    pytest.param(
        ICMP_ECHO_REQUEST_FRAME,
        (
            EthernetFrame(CLUSTER_MAC, CLIENT_MAC, 0x0800, IPV4_ICMP_ECHO_REQUEST_BYTES),
            IPV4_ICMP_ECHO_REQUEST,
            ICMP_ECHO_REQUEST,
        ),
        id="icmp-echo-request",
    ),
    pytest.param(
        ICMP_FRAGMENTATION_NEEDED_FRAME,
        (
            EthernetFrame(CLUSTER_MAC, ROUTER_MAC, 0x0800, IPV4_ICMP_FRAGMENTATION_NEEDED_BYTES),
            IPV4_ICMP_FRAGMENTATION_NEEDED,
            ICMP_FRAGMENTATION_NEEDED,
        ),
        id="icmp-fragmentation-needed",
    ),
    pytest.param(
        IGMP_REPORT_FRAME,
        (
            EthernetFrame(
                MacAddress("01:00:5e:00:00:fb"), MEMBER_MAC, 0x0800, IPV4_WITH_OPTIONS_BYTES
            ),
            IPV4_WITH_OPTIONS,
        ),
        id="ipv4-options",
    ),
    pytest.param(
        IPV4_FRAGMENT_FRAME,
        (EthernetFrame(CLUSTER_MAC, CLIENT_MAC, 0x0800, IPV4_FRAGMENT_BYTES), IPV4_FRAGMENT),
        id="ipv4-fragment",
    ),
    pytest.param(
        CLAIM_FRAME,
        (EthernetFrame(CLUSTER_MAC, MEMBER_MAC, 0x0800, CLAIM_IPV4_BYTES), CLAIM_IPV4, CLAIM),
        id="claim",
    ),
    pytest.param(
        SIGNED_HELLO_FRAME,
        (
            EthernetFrame(CLUSTER_MAC, MEMBER_MAC, 0x0800, SIGNED_HELLO_IPV4_BYTES),
            SIGNED_HELLO_IPV4,
            SignedClaimMessage(HELLO, SIGNED_HELLO_TAG),
        ),
        id="signed-hello",
    ),
    pytest.param(ARP_REQUEST_FRAME, (ARP_REQUEST_ETHERNET, ARP_REQUEST), id="arp-request"),
    pytest.param(
        VLAN_ARP_REQUEST_FRAME, (VLAN_ARP_REQUEST_ETHERNET, ARP_REQUEST), id="vlan-arp-request"
    ),
    pytest.param(ARP_REPLY_FRAME, (ARP_REPLY_ETHERNET, ARP_REPLY), id="arp-reply"),
    pytest.param(VLAN_ARP_REPLY_FRAME, (VLAN_ARP_REPLY_ETHERNET, ARP_REPLY), id="vlan-arp-reply"),
    pytest.param(
        GRATUITOUS_ARP_FRAME,
        (GRATUITOUS_ARP_ETHERNET, GRATUITOUS_ARP),
        id="gratuitous-arp",
    ),
    pytest.param(
        NEIGHBOR_SOLICITATION_FRAME,
        (
            EthernetFrame(
                MacAddress("33:33:ff:00:00:10"),
                CLIENT_MAC,
                0x86DD,
                IPV6_NEIGHBOR_SOLICITATION_BYTES,
            ),
            IPV6_NEIGHBOR_SOLICITATION,
            NEIGHBOR_SOLICITATION,
        ),
        id="neighbour-solicitation",
    ),
    pytest.param(
        UDP6_DNS_QUERY_FRAME,
        (
            EthernetFrame(CLUSTER_MAC, CLIENT_MAC, 0x86DD, IPV6_UDP_DNS_QUERY_BYTES),
            IPV6_UDP_DNS_QUERY,
            UdpDatagram(40001, 53, DNS_QUERY_BYTES),
        ),
        id="udp6-dns-query",
    ),
    pytest.param(
        MLD_REPORT_FRAME,
        (
            EthernetFrame(
                MacAddress("33:33:00:00:00:16"), MEMBER_MAC, 0x86DD, IPV6_MLD_REPORT_BYTES
            ),
            IPV6_MLD_REPORT,
            MLD_REPORT,
        ),
        id="mldv2-report",
    ),
]


@pytest.mark.parametrize(("frame", "layers"), FRAME_CASES)
def test_whole_frame_golden_bytes(frame: bytes, layers: tuple[Layer, ...]) -> None:
    assert parse_stack(frame) == layers
    assert build_stack(layers) == frame


CLASSIFIER = Classifier([CLUSTER_IP.packed, CLUSTER_IP6.packed])


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(
            TCP_SYN_FRAME,
            Classified(
                FrameKind.TCP,
                key=TCP_SESSION,
                tcp_flags=0x02,  # SYN
                network_offset=14,
                payload_offset=14 + 20 + 40,
                sequence=0x1F2E3D4C,
            ),
            id="tcp-syn",
        ),
        pytest.param(
            UDP_DNS_QUERY_FRAME,
            Classified(
                FrameKind.UDP,
                key=SessionKey(17, CLIENT_IP.packed, 40001, CLUSTER_IP.packed, 53),
                network_offset=14,
                payload_offset=14 + 20 + 8,
            ),
            id="udp-dns-query",
        ),
        pytest.param(
            UDP6_DNS_QUERY_FRAME,
            Classified(
                FrameKind.UDP,
                key=UDP6_SESSION,
                network_offset=14,
                payload_offset=14 + 40 + 8,
            ),
            id="udp6-dns-query",
        ),
        pytest.param(
            CLAIM_FRAME,
            Classified(
                FrameKind.CLAIM,
                network_offset=14,
                payload_offset=14 + 20,
                address=MEMBER_IP.packed,  # the sender
                payload_end=len(CLAIM_FRAME),
            ),
            id="claim",
        ),
        pytest.param(
            ARP_REQUEST_FRAME,
            Classified(FrameKind.ARP_REQUEST, network_offset=14, address=CLUSTER_IP.packed),
            id="arp-request",
        ),
        pytest.param(
            VLAN_ARP_REQUEST_FRAME,
            Classified(FrameKind.ARP_REQUEST, network_offset=18, address=CLUSTER_IP.packed),
            id="vlan-arp-request",
        ),
        pytest.param(
            ICMP_ECHO_REQUEST_FRAME,
            Classified(
                FrameKind.ICMP_ECHO,
                key=SessionKey(1, CLIENT_IP.packed, 0x0A0B, CLUSTER_IP.packed, 0),
                network_offset=14,
                payload_offset=14 + 20 + 8,
            ),
            id="icmp-echo-request",
        ),
        pytest.param(
            ICMP_FRAGMENTATION_NEEDED_FRAME,
            Classified(
                FrameKind.ICMP_ERROR,
                key=TCP_SESSION,  # from the quoted header, turned round
                network_offset=14,
                payload_offset=14 + 20 + 8,  # where the quote starts
            ),
            id="icmp-fragmentation-needed",
        ),
        pytest.param(
            IPV4_FRAGMENT_FRAME,
            Classified(
                FrameKind.FRAGMENT,
                network_offset=14,
                fragment=FragmentKey(17, CLIENT_IP.packed, CLUSTER_IP.packed, 0x3039),
            ),
            id="ipv4-fragment",
        ),
        pytest.param(
            NEIGHBOR_SOLICITATION_FRAME,
            Classified(
                FrameKind.NEIGHBOR_SOLICITATION, network_offset=14, address=CLUSTER_IP6.packed
            ),
            id="neighbour-solicitation",
        ),
        pytest.param(IGMP_REPORT_FRAME, Classified(FrameKind.OTHER), id="not-for-the-cluster"),
        pytest.param(MLD_REPORT_FRAME, Classified(FrameKind.OTHER), id="not-for-the-cluster-v6"),
    ],
)
def test_the_classifier_reads_the_golden_frames(frame: bytes, expected: Classified) -> None:
    assert CLASSIFIER.classify(frame) == expected
