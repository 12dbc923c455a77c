"""Whole frames as stacks of layers: build one from its layers, or take one apart.

A stack is a sequence such as (EthernetFrame, Ipv4Packet, TcpSegment, b"data").
Building fills each layer's payload from the layers inside it, so a stack is
written without payloads; the innermost layer may be raw bytes. This is how
the test fixtures are written, and `parse_stack` is how a frame is dissected
for logs and tests. It is slow (construct), never on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

from protocols.errors import LocalProtocolError
from protocols.numbers import DEFAULT_CLAIM_PROTOCOL, EtherType, IpProtocol
from protocols.wire.arp import ArpPacket
from protocols.wire.claim import (
    Acknowledgement,
    Assertion,
    BucketState,
    Claim,
    Hello,
    SignedClaimMessage,
    parse_claim_message,
)
from protocols.wire.ethernet import EthernetFrame
from protocols.wire.icmpv4 import Icmpv4Echo, Icmpv4Error, Icmpv4Other, parse_icmpv4
from protocols.wire.icmpv6 import (
    Icmpv6Other,
    NeighborAdvertisement,
    NeighborSolicitation,
    parse_icmpv6,
)
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.ipv6 import Ipv6Packet
from protocols.wire.tcp import TcpSegment
from protocols.wire.udp import UdpDatagram

Layer = (
    EthernetFrame
    | ArpPacket
    | Ipv4Packet
    | Ipv6Packet
    | TcpSegment
    | UdpDatagram
    | Icmpv4Echo
    | Icmpv4Error
    | Icmpv4Other
    | NeighborSolicitation
    | NeighborAdvertisement
    | Icmpv6Other
    | Claim
    | Assertion
    | Hello
    | BucketState
    | Acknowledgement
    | SignedClaimMessage
    | bytes
)

# The field of each container layer that holds the layer inside it.
_PAYLOAD_FIELD: dict[type, str] = {
    EthernetFrame: "payload",
    Ipv4Packet: "payload",
    Ipv6Packet: "payload",
    TcpSegment: "payload",
    UdpDatagram: "payload",
    Icmpv4Echo: "data",
    Icmpv4Error: "original",
    Icmpv4Other: "payload",
    Icmpv6Other: "body",
}


def _build_layer(layer: Layer, outer: Layer | None) -> bytes:
    if isinstance(layer, bytes):
        return layer
    if isinstance(
        layer, TcpSegment | UdpDatagram | NeighborSolicitation | NeighborAdvertisement | Icmpv6Other
    ):
        if not isinstance(outer, Ipv4Packet | Ipv6Packet):
            raise LocalProtocolError(f"{type(layer).__name__} needs an IP layer outside it")
        if isinstance(layer, TcpSegment | UdpDatagram):
            return layer.build(outer.source, outer.destination)
        if not isinstance(outer, Ipv6Packet):
            raise LocalProtocolError(f"{type(layer).__name__} needs an IPv6 layer outside it")
        return layer.build(outer.source, outer.destination)
    return layer.build()


def fill_payloads(layers: Sequence[Layer]) -> tuple[Layer, ...]:
    """The layers with every payload filled in from the layers inside it.

    Trailing raw bytes are folded into the layer around them, so the result is
    what `parse_stack` returns for the built frame.
    """
    filled: list[Layer] = list(layers)
    inner: bytes | None = None
    for index in range(len(filled) - 1, -1, -1):
        layer = filled[index]
        if inner is not None:
            field = _PAYLOAD_FIELD.get(type(layer))
            if field is None:
                raise LocalProtocolError(f"{type(layer).__name__} cannot carry another layer")
            layer = replace(layer, **{field: inner})  # type: ignore[type-var]
            filled[index] = layer
        inner = _build_layer(layer, filled[index - 1] if index else None)
    while filled and isinstance(filled[-1], bytes):
        filled.pop()
    return tuple(filled)


def build_stack(layers: Sequence[Layer]) -> bytes:
    filled = fill_payloads(layers)
    return _build_layer(filled[0], None)


def parse_stack(frame: bytes, *, claim_protocol: int = DEFAULT_CLAIM_PROTOCOL) -> tuple[Layer, ...]:
    """Take a frame apart as far as the appliance understands it.

    Raises a RemoteProtocolError for a malformed header or a bad checksum.
    Fragments stop at the IP layer, since their transport header is incomplete.
    """
    ethernet = EthernetFrame.parse(frame)
    layers: list[Layer] = [ethernet]
    if ethernet.ethertype == EtherType.ARP:
        layers.append(ArpPacket.parse(ethernet.payload))
    elif ethernet.ethertype == EtherType.IPV4:
        ipv4 = Ipv4Packet.parse(ethernet.payload)
        layers.append(ipv4)
        if not ipv4.is_fragment:
            layers.extend(_transport(ipv4, claim_protocol))
    elif ethernet.ethertype == EtherType.IPV6:
        ipv6 = Ipv6Packet.parse(ethernet.payload)
        layers.append(ipv6)
        if ipv6.fragment_offset is None:
            layers.extend(_transport(ipv6, claim_protocol))
    return tuple(layers)


def _transport(packet: Ipv4Packet | Ipv6Packet, claim_protocol: int) -> list[Layer]:
    protocol = packet.protocol if isinstance(packet, Ipv4Packet) else packet.next_header
    if protocol == IpProtocol.TCP:
        return [TcpSegment.parse(packet.payload, packet.source, packet.destination)]
    if protocol == IpProtocol.UDP:
        return [UdpDatagram.parse(packet.payload, packet.source, packet.destination)]
    if protocol == IpProtocol.ICMP and isinstance(packet.source, IPv4Address):
        return [parse_icmpv4(packet.payload)]
    if (
        protocol == IpProtocol.IPV6_ICMP
        and isinstance(packet.source, IPv6Address)
        and isinstance(packet.destination, IPv6Address)
    ):
        return [parse_icmpv6(packet.payload, packet.source, packet.destination)]
    if protocol == claim_protocol:
        return [parse_claim_message(packet.payload)]
    return []
