"""Ethernet II frames, with an optional 802.1Q VLAN tag."""

from __future__ import annotations

from dataclasses import dataclass

from construct import (
    BitsInteger,
    BitStruct,
    Const,
    Flag,
    GreedyBytes,
    If,
    Int16ub,
    Peek,
    Struct,
    this,
)

from protocols.numbers import EtherType
from protocols.wire.common import (
    MAC_ADDRESS,
    MacAddress,
    build_with,
    parse_with,
    require_range,
)

VLAN_TAG = Struct(
    Const(b"\x81\x00"),
    "tci"
    / BitStruct(
        "priority" / BitsInteger(3),
        "drop_eligible" / Flag,
        "vlan_id" / BitsInteger(12),
    ),
)

ETHERNET_FRAME = Struct(
    "destination" / MAC_ADDRESS,
    "source" / MAC_ADDRESS,
    # A VLAN tag is there when the type field says so; a cut tag is an error.
    "tag_protocol" / Peek(Int16ub),
    "vlan" / If(this.tag_protocol == EtherType.VLAN, VLAN_TAG),
    "ethertype" / Int16ub,
    "payload" / GreedyBytes,
)


@dataclass(frozen=True, slots=True)
class VlanTag:
    vlan_id: int
    priority: int = 0
    drop_eligible: bool = False

    def __post_init__(self) -> None:
        require_range("vlan_id", self.vlan_id, 0, 4095)
        require_range("priority", self.priority, 0, 7)


@dataclass(frozen=True, slots=True)
class EthernetFrame:
    destination: MacAddress
    source: MacAddress
    ethertype: int
    payload: bytes
    vlan: VlanTag | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "destination", MacAddress(self.destination))
        object.__setattr__(self, "source", MacAddress(self.source))
        require_range("ethertype", self.ethertype, 0, 0xFFFF)

    @property
    def header_length(self) -> int:
        return 18 if self.vlan else 14

    @classmethod
    def parse(cls, data: bytes) -> EthernetFrame:
        parsed = parse_with(ETHERNET_FRAME, data, "Ethernet frame")
        vlan = None
        if parsed.vlan is not None:
            tci = parsed.vlan.tci
            vlan = VlanTag(tci.vlan_id, tci.priority, tci.drop_eligible)
        return cls(parsed.destination, parsed.source, parsed.ethertype, parsed.payload, vlan)

    def build(self) -> bytes:
        vlan = None
        if self.vlan is not None:
            vlan = {
                "tci": {
                    "priority": self.vlan.priority,
                    "drop_eligible": self.vlan.drop_eligible,
                    "vlan_id": self.vlan.vlan_id,
                }
            }
        return build_with(
            ETHERNET_FRAME,
            {
                "destination": self.destination,
                "source": self.source,
                "tag_protocol": EtherType.VLAN if vlan else self.ethertype,
                "vlan": vlan,
                "ethertype": self.ethertype,
                "payload": self.payload,
            },
            "Ethernet frame",
        )
