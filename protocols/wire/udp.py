"""UDP datagrams (RFC 768)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from construct import Bytes, Check, Int16ub, Rebuild, Struct, Terminated, this

from protocols.errors import ChecksumMismatch
from protocols.numbers import IpProtocol
from protocols.wire.common import (
    IpAddress,
    build_with,
    internet_checksum,
    parse_with,
    pseudo_header,
    require_range,
)

UDP_DATAGRAM = Struct(
    "source_port" / Int16ub,
    "destination_port" / Int16ub,
    "length" / Rebuild(Int16ub, lambda ctx: 8 + len(ctx.payload)),
    "checksum" / Int16ub,
    Check(this.length >= 8),
    "payload" / Bytes(this.length - 8),
    # The length field must agree with the IP payload: trailing bytes are refused.
    Terminated,
)


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    source_port: int
    destination_port: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        require_range("source_port", self.source_port, 0, 0xFFFF)
        require_range("destination_port", self.destination_port, 0, 0xFFFF)

    @classmethod
    def parse(
        cls,
        data: bytes,
        source: IpAddress,
        destination: IpAddress,
        *,
        verify_checksum: bool = True,
    ) -> UdpDatagram:
        parsed = parse_with(UDP_DATAGRAM, data, "UDP datagram")
        # Over IPv4 a zero checksum means the sender computed none (RFC 768);
        # over IPv6 the checksum is mandatory (RFC 8200).
        skip = parsed.checksum == 0 and not isinstance(source, IPv6Address)
        if (
            verify_checksum
            and not skip
            and internet_checksum(
                pseudo_header(source, destination, IpProtocol.UDP, len(data)), data
            )
        ):
            raise ChecksumMismatch(f"UDP checksum {parsed.checksum:#06x} does not match")
        return cls(parsed.source_port, parsed.destination_port, parsed.payload)

    def build(self, source: IpAddress, destination: IpAddress) -> bytes:
        raw = bytearray(
            build_with(
                UDP_DATAGRAM,
                {
                    "source_port": self.source_port,
                    "destination_port": self.destination_port,
                    "checksum": 0,
                    "payload": self.payload,
                },
                "UDP datagram",
            )
        )
        checksum = internet_checksum(
            pseudo_header(source, destination, IpProtocol.UDP, len(raw)), bytes(raw)
        )
        struct.pack_into("!H", raw, 6, checksum or 0xFFFF)
        return bytes(raw)
