"""ARP for IPv4 over Ethernet (RFC 826), the only kind the appliance speaks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from construct import Const, GreedyBytes, Int8ub, Int16ub, Struct

from protocols.wire.common import (
    IPV4_ADDRESS,
    MAC_ADDRESS,
    MacAddress,
    build_with,
    parse_with,
    require_range,
)


class ArpOperation(IntEnum):
    REQUEST = 1
    REPLY = 2


ARP_PACKET = Struct(
    "hardware_type" / Const(1, Int16ub),
    "protocol_type" / Const(0x0800, Int16ub),
    "hardware_length" / Const(6, Int8ub),
    "protocol_length" / Const(4, Int8ub),
    "operation" / Int16ub,
    "sender_hardware_address" / MAC_ADDRESS,
    "sender_protocol_address" / IPV4_ADDRESS,
    "target_hardware_address" / MAC_ADDRESS,
    "target_protocol_address" / IPV4_ADDRESS,
    # Ethernet pads short frames to 60 bytes; the padding is not ARP's.
    "padding" / GreedyBytes,
)


@dataclass(frozen=True, slots=True)
class ArpPacket:
    operation: int
    sender_hardware_address: MacAddress
    sender_protocol_address: IPv4Address
    target_hardware_address: MacAddress
    target_protocol_address: IPv4Address
    padding: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "sender_hardware_address", MacAddress(self.sender_hardware_address)
        )
        object.__setattr__(
            self, "target_hardware_address", MacAddress(self.target_hardware_address)
        )
        require_range("operation", self.operation, 0, 0xFFFF)

    @property
    def is_gratuitous(self) -> bool:
        """Announces the sender's own address: sender and target address agree."""
        return self.sender_protocol_address == self.target_protocol_address

    @classmethod
    def parse(cls, data: bytes) -> ArpPacket:
        parsed = parse_with(ARP_PACKET, data, "ARP packet")
        return cls(
            parsed.operation,
            parsed.sender_hardware_address,
            parsed.sender_protocol_address,
            parsed.target_hardware_address,
            parsed.target_protocol_address,
            parsed.padding,
        )

    def build(self) -> bytes:
        return build_with(
            ARP_PACKET,
            {
                "operation": self.operation,
                "sender_hardware_address": self.sender_hardware_address,
                "sender_protocol_address": self.sender_protocol_address,
                "target_hardware_address": self.target_hardware_address,
                "target_protocol_address": self.target_protocol_address,
                "padding": self.padding,
            },
            "ARP packet",
        )
