"""ICMPv6 (RFC 4443) as far as the appliance needs it: neighbour solicitation
and advertisement (RFC 4861), which play ARP's part for an IPv6 cluster address.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv6Address

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    Check,
    Flag,
    GreedyBytes,
    GreedyRange,
    Int8ub,
    Int16ub,
    Padding,
    Rebuild,
    Struct,
    Terminated,
    this,
)

from protocols.errors import ChecksumMismatch
from protocols.numbers import Icmpv6Type, IpProtocol
from protocols.wire.common import (
    IPV6_ADDRESS,
    MacAddress,
    build_with,
    internet_checksum,
    parse_with,
    pseudo_header,
    require_range,
)


class NdpOptionType(IntEnum):
    SOURCE_LINK_LAYER_ADDRESS = 1
    TARGET_LINK_LAYER_ADDRESS = 2


ICMPV6_MESSAGE = Struct(
    "type" / Int8ub,
    "code" / Int8ub,
    "checksum" / Int16ub,
    "body" / GreedyBytes,
    # Every ICMPv6 message has at least 4 bytes of message body (RFC 4443).
    Check(lambda ctx: len(ctx.body) >= 4),
)

NDP_OPTION = Struct(
    "type" / Int8ub,
    "length" / Rebuild(Int8ub, lambda ctx: (len(ctx.data) + 2) // 8),  # in 8-byte units
    Check(this.length >= 1),
    "data" / Bytes(this.length * 8 - 2),
)
NDP_OPTIONS = Struct("options" / GreedyRange(NDP_OPTION), Terminated)

NEIGHBOR_SOLICITATION_BODY = Struct(
    Padding(4),
    "target" / IPV6_ADDRESS,
    "options" / GreedyBytes,
)
NEIGHBOR_ADVERTISEMENT_BODY = Struct(
    "flags"
    / BitStruct(
        "router" / Flag,
        "solicited" / Flag,
        "override" / Flag,
        "reserved" / BitsInteger(29),
    ),
    "target" / IPV6_ADDRESS,
    "options" / GreedyBytes,
)


@dataclass(frozen=True, slots=True)
class NdpOption:
    option_type: int
    data: bytes

    @classmethod
    def link_layer_address(cls, option_type: NdpOptionType, mac: MacAddress) -> NdpOption:
        return cls(option_type, bytes(mac))


def _parse_options(raw: bytes) -> tuple[NdpOption, ...]:
    parsed = parse_with(NDP_OPTIONS, raw, "NDP options")
    return tuple(NdpOption(option.type, option.data) for option in parsed.options)


def _build_options(options: tuple[NdpOption, ...]) -> bytes:
    return build_with(
        NDP_OPTIONS,
        {"options": [{"type": option.option_type, "data": option.data} for option in options]},
        "NDP options",
    )


def _link_layer_address(options: tuple[NdpOption, ...], wanted: int) -> MacAddress | None:
    for option in options:
        if option.option_type == wanted and len(option.data) == 6:
            return MacAddress(option.data)
    return None


@dataclass(frozen=True, slots=True)
class NeighborSolicitation:
    target: IPv6Address
    options: tuple[NdpOption, ...] = ()

    @property
    def source_link_layer_address(self) -> MacAddress | None:
        return _link_layer_address(self.options, NdpOptionType.SOURCE_LINK_LAYER_ADDRESS)

    def build(self, source: IPv6Address, destination: IPv6Address) -> bytes:
        body = build_with(
            NEIGHBOR_SOLICITATION_BODY,
            {"target": self.target, "options": _build_options(self.options)},
            "neighbour solicitation",
        )
        return _build_message(Icmpv6Type.NEIGHBOR_SOLICITATION, 0, body, source, destination)


@dataclass(frozen=True, slots=True)
class NeighborAdvertisement:
    target: IPv6Address
    router: bool = False
    solicited: bool = False
    override: bool = False
    options: tuple[NdpOption, ...] = ()

    @property
    def target_link_layer_address(self) -> MacAddress | None:
        return _link_layer_address(self.options, NdpOptionType.TARGET_LINK_LAYER_ADDRESS)

    def build(self, source: IPv6Address, destination: IPv6Address) -> bytes:
        body = build_with(
            NEIGHBOR_ADVERTISEMENT_BODY,
            {
                "flags": {
                    "router": self.router,
                    "solicited": self.solicited,
                    "override": self.override,
                    "reserved": 0,
                },
                "target": self.target,
                "options": _build_options(self.options),
            },
            "neighbour advertisement",
        )
        return _build_message(Icmpv6Type.NEIGHBOR_ADVERTISEMENT, 0, body, source, destination)


@dataclass(frozen=True, slots=True)
class Icmpv6Other:
    icmp_type: int
    code: int
    body: bytes = b""

    def __post_init__(self) -> None:
        require_range("icmp_type", self.icmp_type, 0, 255)
        require_range("code", self.code, 0, 255)

    def build(self, source: IPv6Address, destination: IPv6Address) -> bytes:
        return _build_message(self.icmp_type, self.code, self.body, source, destination)


Icmpv6Message = NeighborSolicitation | NeighborAdvertisement | Icmpv6Other


def _build_message(
    icmp_type: int, code: int, body: bytes, source: IPv6Address, destination: IPv6Address
) -> bytes:
    raw = bytearray(
        build_with(
            ICMPV6_MESSAGE,
            {"type": icmp_type, "code": code, "checksum": 0, "body": body},
            "ICMPv6 message",
        )
    )
    checksum = internet_checksum(
        pseudo_header(source, destination, IpProtocol.IPV6_ICMP, len(raw)), bytes(raw)
    )
    struct.pack_into("!H", raw, 2, checksum)
    return bytes(raw)


def parse_icmpv6(
    data: bytes,
    source: IPv6Address,
    destination: IPv6Address,
    *,
    verify_checksum: bool = True,
) -> Icmpv6Message:
    parsed = parse_with(ICMPV6_MESSAGE, data, "ICMPv6 message")
    if verify_checksum and internet_checksum(
        pseudo_header(source, destination, IpProtocol.IPV6_ICMP, len(data)), data
    ):
        raise ChecksumMismatch(f"ICMPv6 checksum {parsed.checksum:#06x} does not match")
    # A message whose reserved bits are set stays an Icmpv6Other, which
    # rebuilds to the same bytes.
    if parsed.type == Icmpv6Type.NEIGHBOR_SOLICITATION and parsed.code == 0:
        solicitation = parse_with(NEIGHBOR_SOLICITATION_BODY, parsed.body, "neighbour solicitation")
        if parsed.body[:4] == bytes(4):
            return NeighborSolicitation(solicitation.target, _parse_options(solicitation.options))
    if parsed.type == Icmpv6Type.NEIGHBOR_ADVERTISEMENT and parsed.code == 0:
        advert = parse_with(NEIGHBOR_ADVERTISEMENT_BODY, parsed.body, "neighbour advertisement")
        if advert.flags.reserved == 0:
            return NeighborAdvertisement(
                advert.target,
                advert.flags.router,
                advert.flags.solicited,
                advert.flags.override,
                _parse_options(advert.options),
            )
    return Icmpv6Other(parsed.type, parsed.code, parsed.body)
