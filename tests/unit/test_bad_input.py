"""Any byte string either parses or raises the project's RemoteProtocolError.

Each parser meets random bytes and mutated real shapes (the fixtures, cut,
overwritten and extended). The CI profile runs 10,000 examples per parser.
"""

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from protocols.claim_auth import ClaimAuthenticator
from protocols.errors import RemoteProtocolError
from protocols.numbers import TcpFlags
from protocols.wire.arp import ArpPacket
from protocols.wire.claim import decode_message, parse_claim_message
from protocols.wire.ethernet import EthernetFrame
from protocols.wire.icmpv4 import Icmpv4Error, parse_icmpv4
from protocols.wire.icmpv6 import parse_icmpv6
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.ipv6 import Ipv6Packet
from protocols.wire.stack import parse_stack
from protocols.wire.tcp import TcpSegment, parse_tcp_options
from protocols.wire.udp import UdpDatagram
from tests.fixtures.frames import CLAIM_KEY, all_fixture_frames

V4 = IPv4Address("198.51.100.7"), IPv4Address("192.0.2.10")
V6 = IPv6Address("2001:db8:1::7"), IPv6Address("2001:db8::10")


def _layers_of(frame: bytes) -> list[bytes]:
    """The frame and each suffix that starts a header inside it."""
    offsets = [0, 14, 18, 34, 38, 54, 58, 62, 74]
    return [frame[offset:] for offset in offsets if offset < len(frame)]


CORPUS = sorted({layer for frame in all_fixture_frames().values() for layer in _layers_of(frame)})


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["cut", "set", "insert"]))
        if edit == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif edit == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


inputs = st.one_of(st.binary(max_size=160), mutated())

AUTHENTICATOR = ClaimAuthenticator(CLAIM_KEY)


def _segment_with_options(data: bytes) -> TcpSegment:
    """A segment whose options field is (a whole-word prefix of) `data`."""
    return TcpSegment(1, 2, 3, 4, TcpFlags(0), options=data[: len(data) // 4 * 4][:40])


PARSERS: dict[str, Callable[[bytes], Any]] = {
    "ethernet": EthernetFrame.parse,
    "arp": ArpPacket.parse,
    "ipv4": Ipv4Packet.parse,
    "ipv4_embedded": lambda data: Ipv4Packet.parse(data, embedded=True),
    "ipv6": Ipv6Packet.parse,
    "tcp": lambda data: TcpSegment.parse(data, *V4),
    "tcp_options": parse_tcp_options,
    "tcp_mss": lambda data: _segment_with_options(data).mss,
    "udp": lambda data: UdpDatagram.parse(data, *V4),
    "udp_over_ipv6": lambda data: UdpDatagram.parse(data, *V6),
    "icmpv4": parse_icmpv4,
    "icmpv4_quote": lambda data: Icmpv4Error(3, 4, data).offending_packet(),
    "icmpv6": lambda data: parse_icmpv6(data, *V6),
    "claim": parse_claim_message,
    "claim_decode": decode_message,
    "claim_authenticated": AUTHENTICATOR.open,
    "stack": parse_stack,
}


@given(inputs)
def test_every_parser_raises_only_protocol_errors(data: bytes) -> None:
    # One example feeds every parser: each parser meets all the profile's
    # examples (10,000 in CI) while Hypothesis's own cost is paid once.
    for name, parser in PARSERS.items():
        try:
            parser(data)
        except RemoteProtocolError:
            pass
        except Exception as error:
            raise AssertionError(f"{name} raised {error!r}") from error
