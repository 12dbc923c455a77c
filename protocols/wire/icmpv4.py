"""ICMPv4 (RFC 792): echo, and the errors that quote the offending packet.

An error quotes the IP header and at least the first 8 bytes of the packet
that caused it. For the appliance that packet was sent by a member from the
cluster address, so the quote names the session the error belongs to (the
fragmentation-needed message of path MTU discovery matters most).
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import Bytes, GreedyBytes, Int8ub, Int16ub, Padding, Struct

from protocols.errors import ChecksumMismatch, LocalProtocolError
from protocols.numbers import FRAGMENTATION_NEEDED, ICMPV4_ERROR_TYPES, Icmpv4Type
from protocols.wire.common import (
    build_with,
    internet_checksum,
    parse_with,
    require_length,
    require_range,
)
from protocols.wire.ipv4 import Ipv4Packet

ICMPV4_MESSAGE = Struct(
    "type" / Int8ub,
    "code" / Int8ub,
    "checksum" / Int16ub,
    "rest_of_header" / Bytes(4),
    "payload" / GreedyBytes,
)
ICMPV4_ECHO_FIELDS = Struct("identifier" / Int16ub, "sequence" / Int16ub)
ICMPV4_MTU_FIELDS = Struct(Padding(2), "next_hop_mtu" / Int16ub)


@dataclass(frozen=True, slots=True)
class Icmpv4Echo:
    identifier: int
    sequence: int
    data: bytes = b""
    is_request: bool = True

    def __post_init__(self) -> None:
        require_range("identifier", self.identifier, 0, 0xFFFF)
        require_range("sequence", self.sequence, 0, 0xFFFF)

    def build(self) -> bytes:
        icmp_type = Icmpv4Type.ECHO_REQUEST if self.is_request else Icmpv4Type.ECHO_REPLY
        rest = build_with(
            ICMPV4_ECHO_FIELDS,
            {"identifier": self.identifier, "sequence": self.sequence},
            "ICMP echo",
        )
        return _build_message(icmp_type, 0, rest, self.data)


@dataclass(frozen=True, slots=True)
class Icmpv4Error:
    icmp_type: int
    code: int
    original: bytes  # the quoted IP header and the first bytes after it
    rest_of_header: bytes = bytes(4)  # next-hop MTU, or a parameter-problem pointer

    def __post_init__(self) -> None:
        if self.icmp_type not in ICMPV4_ERROR_TYPES:
            raise LocalProtocolError(f"ICMP type {self.icmp_type} is not an error")
        require_range("code", self.code, 0, 255)
        require_length("rest_of_header", self.rest_of_header, 4)

    @classmethod
    def fragmentation_needed(cls, original: bytes, next_hop_mtu: int) -> Icmpv4Error:
        rest = build_with(ICMPV4_MTU_FIELDS, {"next_hop_mtu": next_hop_mtu}, "ICMP error")
        return cls(Icmpv4Type.DESTINATION_UNREACHABLE, FRAGMENTATION_NEEDED, original, rest)

    @property
    def is_fragmentation_needed(self) -> bool:
        return (
            self.icmp_type == Icmpv4Type.DESTINATION_UNREACHABLE
            and self.code == FRAGMENTATION_NEEDED
        )

    @property
    def next_hop_mtu(self) -> int:
        return int(parse_with(ICMPV4_MTU_FIELDS, self.rest_of_header, "ICMP error").next_hop_mtu)

    def offending_packet(self) -> Ipv4Packet:
        """The quoted packet; its payload holds only the bytes that were quoted."""
        return Ipv4Packet.parse(self.original, verify_checksum=False, embedded=True)

    def build(self) -> bytes:
        return _build_message(self.icmp_type, self.code, self.rest_of_header, self.original)


@dataclass(frozen=True, slots=True)
class Icmpv4Other:
    icmp_type: int
    code: int
    rest_of_header: bytes
    payload: bytes = b""

    def __post_init__(self) -> None:
        require_range("icmp_type", self.icmp_type, 0, 255)
        require_range("code", self.code, 0, 255)
        require_length("rest_of_header", self.rest_of_header, 4)

    def build(self) -> bytes:
        return _build_message(self.icmp_type, self.code, self.rest_of_header, self.payload)


Icmpv4Message = Icmpv4Echo | Icmpv4Error | Icmpv4Other


def _build_message(icmp_type: int, code: int, rest: bytes, payload: bytes) -> bytes:
    fields = {"type": icmp_type, "code": code, "rest_of_header": rest, "payload": payload}
    unsummed = build_with(ICMPV4_MESSAGE, {**fields, "checksum": 0}, "ICMP message")
    return build_with(
        ICMPV4_MESSAGE,
        {**fields, "checksum": internet_checksum(unsummed)},
        "ICMP message",
    )


def parse_icmpv4(data: bytes, *, verify_checksum: bool = True) -> Icmpv4Message:
    parsed = parse_with(ICMPV4_MESSAGE, data, "ICMP message")
    if verify_checksum and internet_checksum(data):
        raise ChecksumMismatch(f"ICMP checksum {parsed.checksum:#06x} does not match")
    if parsed.type in (Icmpv4Type.ECHO_REQUEST, Icmpv4Type.ECHO_REPLY) and parsed.code == 0:
        echo = parse_with(ICMPV4_ECHO_FIELDS, parsed.rest_of_header, "ICMP echo")
        return Icmpv4Echo(
            echo.identifier,
            echo.sequence,
            parsed.payload,
            is_request=parsed.type == Icmpv4Type.ECHO_REQUEST,
        )
    if parsed.type in ICMPV4_ERROR_TYPES:
        return Icmpv4Error(parsed.type, parsed.code, parsed.payload, parsed.rest_of_header)
    return Icmpv4Other(parsed.type, parsed.code, parsed.rest_of_header, parsed.payload)
