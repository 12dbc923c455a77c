"""IPv4 packets (RFC 791): options, fragments and the header checksum."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    Check,
    Const,
    Flag,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Nibble,
    Rebuild,
    Struct,
    this,
)

from protocols.errors import ChecksumMismatch, LocalProtocolError
from protocols.wire.common import (
    IPV4_ADDRESS,
    build_with,
    internet_checksum,
    parse_with,
    require_range,
)

IPV4_PACKET = Struct(
    "version_ihl"
    / BitStruct(
        "version" / Const(4, Nibble),
        "ihl" / Rebuild(Nibble, lambda ctx: 5 + len(ctx._.options) // 4),
    ),
    "type_of_service" / BitStruct("dscp" / BitsInteger(6), "ecn" / BitsInteger(2)),
    "total_length" / Rebuild(Int16ub, lambda ctx: 20 + len(ctx.options) + len(ctx.payload)),
    "identification" / Int16ub,
    "fragment"
    / BitStruct(
        "reserved" / Flag,
        "dont_fragment" / Flag,
        "more_fragments" / Flag,
        "offset" / BitsInteger(13),  # in units of 8 bytes
    ),
    "ttl" / Int8ub,
    "protocol" / Int8ub,
    "header_checksum" / Int16ub,
    "source" / IPV4_ADDRESS,
    "destination" / IPV4_ADDRESS,
    Check(this.version_ihl.ihl >= 5),
    "options" / Bytes(this.version_ihl.ihl * 4 - 20),
    Check(this.total_length >= this.version_ihl.ihl * 4),
    "payload" / Bytes(this.total_length - this.version_ihl.ihl * 4),
    # Whatever follows total_length: Ethernet padding of short frames.
    "padding" / GreedyBytes,
)

# The header without the length checks, for the truncated copy that ICMP
# errors embed: only the header and the first 8 bytes after it survive.
IPV4_EMBEDDED_PACKET = Struct(
    "version_ihl" / BitStruct("version" / Const(4, Nibble), "ihl" / Nibble),
    "type_of_service" / BitStruct("dscp" / BitsInteger(6), "ecn" / BitsInteger(2)),
    "total_length" / Int16ub,
    "identification" / Int16ub,
    "fragment"
    / BitStruct(
        "reserved" / Flag,
        "dont_fragment" / Flag,
        "more_fragments" / Flag,
        "offset" / BitsInteger(13),
    ),
    "ttl" / Int8ub,
    "protocol" / Int8ub,
    "header_checksum" / Int16ub,
    "source" / IPV4_ADDRESS,
    "destination" / IPV4_ADDRESS,
    Check(this.version_ihl.ihl >= 5),
    "options" / Bytes(this.version_ihl.ihl * 4 - 20),
    "payload" / GreedyBytes,
)


@dataclass(frozen=True, slots=True)
class Ipv4Packet:
    source: IPv4Address
    destination: IPv4Address
    protocol: int
    payload: bytes = b""
    ttl: int = 64
    identification: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    fragment_offset: int = 0  # in bytes, a multiple of 8
    dscp: int = 0
    ecn: int = 0
    options: bytes = b""
    padding: bytes = b""
    reserved_flag: bool = False

    def __post_init__(self) -> None:
        require_range("protocol", self.protocol, 0, 255)
        require_range("ttl", self.ttl, 0, 255)
        require_range("identification", self.identification, 0, 0xFFFF)
        require_range("dscp", self.dscp, 0, 63)
        require_range("ecn", self.ecn, 0, 3)
        require_range("fragment_offset", self.fragment_offset, 0, 0x1FFF * 8)
        if self.fragment_offset % 8:
            raise LocalProtocolError(
                f"fragment_offset must be a multiple of 8, not {self.fragment_offset}"
            )
        if len(self.options) % 4 or len(self.options) > 40:
            raise LocalProtocolError(
                f"options must be a multiple of 4 bytes and at most 40, not {len(self.options)}"
            )

    @property
    def header_length(self) -> int:
        return 20 + len(self.options)

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.fragment_offset > 0

    @classmethod
    def parse(
        cls, data: bytes, *, verify_checksum: bool = True, embedded: bool = False
    ) -> Ipv4Packet:
        """Parse a packet. `embedded` accepts the truncated copy inside an ICMP error."""
        declaration = IPV4_EMBEDDED_PACKET if embedded else IPV4_PACKET
        parsed = parse_with(declaration, data, "IPv4 packet")
        header_length = parsed.version_ihl.ihl * 4
        if verify_checksum and internet_checksum(data[:header_length]) != 0:
            raise ChecksumMismatch(
                f"IPv4 header checksum {parsed.header_checksum:#06x} does not match"
            )
        return cls(
            source=parsed.source,
            destination=parsed.destination,
            protocol=parsed.protocol,
            payload=parsed.payload,
            ttl=parsed.ttl,
            identification=parsed.identification,
            dont_fragment=parsed.fragment.dont_fragment,
            more_fragments=parsed.fragment.more_fragments,
            fragment_offset=parsed.fragment.offset * 8,
            dscp=parsed.type_of_service.dscp,
            ecn=parsed.type_of_service.ecn,
            options=parsed.options,
            padding=b"" if embedded else parsed.padding,
            reserved_flag=parsed.fragment.reserved,
        )

    def build(self) -> bytes:
        if self.header_length + len(self.payload) > 0xFFFF:
            raise LocalProtocolError(f"an IPv4 packet cannot carry {len(self.payload)} bytes")
        raw = bytearray(
            build_with(
                IPV4_PACKET,
                {
                    "version_ihl": {},
                    "type_of_service": {"dscp": self.dscp, "ecn": self.ecn},
                    "identification": self.identification,
                    "fragment": {
                        "reserved": self.reserved_flag,
                        "dont_fragment": self.dont_fragment,
                        "more_fragments": self.more_fragments,
                        "offset": self.fragment_offset // 8,
                    },
                    "ttl": self.ttl,
                    "protocol": self.protocol,
                    "header_checksum": 0,
                    "source": self.source,
                    "destination": self.destination,
                    "options": self.options,
                    "payload": self.payload,
                    "padding": self.padding,
                },
                "IPv4 packet",
            )
        )
        struct.pack_into("!H", raw, 10, internet_checksum(bytes(raw[: self.header_length])))
        return bytes(raw)
