"""IPv6 packets (RFC 8200): the fixed header, with extension headers skipped.

The dataclass keeps the extension headers it skipped, so a packet rebuilds to
the same bytes, and gives the upper-layer protocol and its payload directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    Const,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Nibble,
    Rebuild,
    Struct,
    this,
)

from protocols.errors import LocalProtocolError, MalformedPacket
from protocols.numbers import IPV6_GENERIC_EXTENSIONS, IpProtocol
from protocols.wire.common import IPV6_ADDRESS, build_with, parse_with, require_range

FRAGMENT = IpProtocol.FRAGMENT
AUTHENTICATION = IpProtocol.AUTHENTICATION
EXTENSION_HEADERS = IPV6_GENERIC_EXTENSIONS | {FRAGMENT, AUTHENTICATION}
# A chain longer than this is treated as an attack, not a packet.
MAX_EXTENSION_HEADERS = 8

IPV6_PACKET = Struct(
    "first_word"
    / BitStruct(
        "version" / Const(6, Nibble),
        "traffic_class" / BitsInteger(8),
        "flow_label" / BitsInteger(20),
    ),
    "payload_length" / Rebuild(Int16ub, lambda ctx: len(ctx.payload)),
    "next_header" / Int8ub,
    "hop_limit" / Int8ub,
    "source" / IPV6_ADDRESS,
    "destination" / IPV6_ADDRESS,
    "payload" / Bytes(this.payload_length),
    "padding" / GreedyBytes,
)

IPV6_EXTENSION_HEADER = Struct(
    "next_header" / Int8ub,
    "length" / Rebuild(Int8ub, lambda ctx: (len(ctx.data) + 2) // 8 - 1),
    "data" / Bytes(this.length * 8 + 6),
)

# The fragment header is always 8 bytes; its second byte is reserved and
# ignored on reception (RFC 8200), so it is data here, not a length.
IPV6_FRAGMENT_HEADER = Struct(
    "next_header" / Int8ub,
    "data" / Bytes(7),  # reserved, offset and flags, identification
)

# The authentication header counts its length in 4-octet units, minus 2.
IPV6_AUTHENTICATION_HEADER = Struct(
    "next_header" / Int8ub,
    "length" / Rebuild(Int8ub, lambda ctx: (len(ctx.data) + 2) // 4 - 2),
    "data" / Bytes((this.length + 2) * 4 - 2),
)


def _declaration(header_type: int) -> object:
    if header_type == AUTHENTICATION:
        return IPV6_AUTHENTICATION_HEADER
    if header_type == FRAGMENT:
        return IPV6_FRAGMENT_HEADER
    return IPV6_EXTENSION_HEADER


@dataclass(frozen=True, slots=True)
class Ipv6ExtensionHeader:
    header_type: int
    data: bytes

    def __post_init__(self) -> None:
        if self.header_type not in EXTENSION_HEADERS:
            raise LocalProtocolError(f"{self.header_type} is not an IPv6 extension header")
        if self.header_type == FRAGMENT:
            if len(self.data) != 7:
                raise LocalProtocolError("fragment header data must be 7 bytes")
            return
        unit = 4 if self.header_type == AUTHENTICATION else 8
        if (len(self.data) + 2) % unit or len(self.data) < 6:
            raise LocalProtocolError(
                f"extension header {self.header_type} data of {len(self.data)} bytes "
                f"does not fill whole {unit}-byte units"
            )

    def declaration(self) -> object:
        return _declaration(self.header_type)


@dataclass(frozen=True, slots=True)
class Ipv6Packet:
    source: IPv6Address
    destination: IPv6Address
    next_header: int  # the upper-layer protocol, after any extension headers
    payload: bytes = b""  # the upper-layer payload
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0
    extension_headers: tuple[Ipv6ExtensionHeader, ...] = ()
    padding: bytes = b""

    def __post_init__(self) -> None:
        require_range("next_header", self.next_header, 0, 255)
        require_range("hop_limit", self.hop_limit, 0, 255)
        require_range("traffic_class", self.traffic_class, 0, 255)
        require_range("flow_label", self.flow_label, 0, 0xFFFFF)

    @property
    def fragment_offset(self) -> int | None:
        """Byte offset of this fragment, or None when there is no fragment header."""
        for header in self.extension_headers:
            if header.header_type == FRAGMENT:
                return (int.from_bytes(header.data[1:3], "big") >> 3) * 8
        return None

    @classmethod
    def parse(cls, data: bytes) -> Ipv6Packet:
        parsed = parse_with(IPV6_PACKET, data, "IPv6 packet")
        next_header = parsed.next_header
        rest = parsed.payload
        headers: list[Ipv6ExtensionHeader] = []
        while next_header in EXTENSION_HEADERS:
            if len(headers) == MAX_EXTENSION_HEADERS:
                raise MalformedPacket(
                    f"IPv6 packet has more than {MAX_EXTENSION_HEADERS} extension headers"
                )
            header = parse_with(
                _declaration(next_header), rest, f"IPv6 extension header {next_header}"
            )
            size = (1 if next_header == FRAGMENT else 2) + len(header.data)
            headers.append(Ipv6ExtensionHeader(next_header, header.data))
            next_header = header.next_header
            rest = rest[size:]
        return cls(
            source=parsed.source,
            destination=parsed.destination,
            next_header=next_header,
            payload=rest,
            hop_limit=parsed.hop_limit,
            traffic_class=parsed.first_word.traffic_class,
            flow_label=parsed.first_word.flow_label,
            extension_headers=tuple(headers),
            padding=parsed.padding,
        )

    def build(self) -> bytes:
        chain = b""
        following = self.next_header
        for header in reversed(self.extension_headers):
            chain = (
                build_with(
                    header.declaration(),
                    {"next_header": following, "data": header.data},
                    "IPv6 extension header",
                )
                + chain
            )
            following = header.header_type
        if len(chain) + len(self.payload) > 0xFFFF:
            raise LocalProtocolError("IPv6 payload longer than 65535 bytes (no jumbograms)")
        return build_with(
            IPV6_PACKET,
            {
                "first_word": {
                    "traffic_class": self.traffic_class,
                    "flow_label": self.flow_label,
                },
                "next_header": following,
                "hop_limit": self.hop_limit,
                "source": self.source,
                "destination": self.destination,
                "payload": chain + self.payload,
                "padding": self.padding,
            },
            "IPv6 packet",
        )
