"""The classifier's specification, written with the construct declarations.

Slow and plain: it parses each header the classifier reads with the wire
dataclasses or declarations of `protocols.wire`, without checksums (the fast
classifier does not verify them either). The property tests require the fast
classifier to return exactly what this returns.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from protocols.classifier import Classified, FragmentKey, FrameKind
from protocols.errors import ProtocolError
from protocols.numbers import (
    DEFAULT_CLAIM_PROTOCOL,
    ICMPV4_ERROR_TYPES,
    ICMPV6_ERROR_TYPES,
    EtherType,
    Icmpv6Type,
    IpProtocol,
)
from protocols.session_key import SessionKey
from protocols.wire.arp import ArpPacket
from protocols.wire.common import parse_with
from protocols.wire.ethernet import EthernetFrame
from protocols.wire.icmpv4 import Icmpv4Echo, Icmpv4Error, parse_icmpv4
from protocols.wire.icmpv6 import ICMPV6_MESSAGE, NEIGHBOR_SOLICITATION_BODY
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.ipv6 import IPV6_PACKET, Ipv6Packet
from protocols.wire.tcp import TCP_PORTS, TcpSegment
from protocols.wire.udp import UdpDatagram

MALFORMED = Classified(FrameKind.MALFORMED)
OTHER = Classified(FrameKind.OTHER)


def classify_with_declarations(
    frame: bytes, cluster: frozenset[bytes], claim_protocol: int = DEFAULT_CLAIM_PROTOCOL
) -> Classified:
    try:
        return _classify(frame, cluster, claim_protocol)
    except ProtocolError:
        return MALFORMED


def _classify(frame: bytes, cluster: frozenset[bytes], claim_protocol: int) -> Classified:
    ethernet = EthernetFrame.parse(frame)
    network = ethernet.header_length
    if ethernet.ethertype == EtherType.ARP:
        arp = ArpPacket.parse(ethernet.payload)
        target = arp.target_protocol_address.packed
        if arp.operation == 1 and target in cluster:
            return Classified(FrameKind.ARP_REQUEST, network_offset=network, address=target)
        return OTHER
    if ethernet.ethertype == EtherType.IPV4:
        return _ipv4(
            Ipv4Packet.parse(ethernet.payload, verify_checksum=False),
            network,
            cluster,
            claim_protocol,
        )
    if ethernet.ethertype == EtherType.IPV6:
        return _ipv6(Ipv6Packet.parse(ethernet.payload), network, cluster, claim_protocol)
    return OTHER


def _ipv4(
    packet: Ipv4Packet, network: int, cluster: frozenset[bytes], claim_protocol: int
) -> Classified:
    source, destination = packet.source.packed, packet.destination.packed
    if destination not in cluster:
        return OTHER
    fragment = None
    if packet.is_fragment:
        fragment = FragmentKey(packet.protocol, source, destination, packet.identification)
        if packet.fragment_offset:
            return Classified(FrameKind.FRAGMENT, network_offset=network, fragment=fragment)
    transport = network + packet.header_length
    if packet.protocol in (IpProtocol.TCP, IpProtocol.UDP):
        return _transport(
            packet.protocol, packet.payload, source, destination, network, transport, fragment
        )
    if packet.protocol == IpProtocol.ICMP:
        message = parse_icmpv4(packet.payload, verify_checksum=False)
        if isinstance(message, Icmpv4Echo):
            if not message.is_request:
                return OTHER
            key = SessionKey(IpProtocol.ICMP, source, message.identifier, destination, 0)
            return Classified(FrameKind.ICMP_ECHO, key, 0, network, transport + 8)
        if isinstance(message, Icmpv4Error) and message.icmp_type in ICMPV4_ERROR_TYPES:
            quoted = message.offending_packet()
            ports = parse_with(TCP_PORTS, quoted.payload, "quoted ports")
            if (
                quoted.protocol not in (IpProtocol.TCP, IpProtocol.UDP)
                or quoted.source.packed not in cluster
            ):
                return OTHER
            key = SessionKey(
                quoted.protocol,
                quoted.destination.packed,
                ports.destination_port,
                quoted.source.packed,
                ports.source_port,
            )
            return Classified(FrameKind.ICMP_ERROR, key, 0, network, transport + 8)
        return OTHER
    if packet.protocol == claim_protocol:
        return _claim(network, transport, source, packet.payload)
    return OTHER


def _claim(network: int, transport: int, source: bytes, payload: bytes) -> Classified:
    """A claim message: where it starts and ends, and who sent it."""
    return Classified(
        FrameKind.CLAIM,
        network_offset=network,
        payload_offset=transport,
        address=source,
        payload_end=transport + len(payload),
    )


def _transport(
    protocol: int,
    payload: bytes,
    source: bytes,
    destination: bytes,
    network: int,
    transport: int,
    fragment: FragmentKey | None,
) -> Classified:
    anywhere = IPv4Address(0)  # checksums are not verified, so addresses do not matter
    if protocol == IpProtocol.TCP:
        if fragment is None:
            segment = TcpSegment.parse(payload, anywhere, anywhere, verify_checksum=False)
            header_length = segment.header_length
            sequence, flags = segment.sequence, int(segment.flags)
            ports = (segment.source_port, segment.destination_port)
        else:
            # A first fragment holds the fixed header, perhaps not all options.
            header_length, sequence, flags, ports = _tcp_fixed_header(payload)
        key = SessionKey(IpProtocol.TCP, source, ports[0], destination, ports[1])
        return Classified(
            FrameKind.TCP, key, flags, network, transport + header_length, sequence, None, fragment
        )
    if fragment is None:
        datagram = UdpDatagram.parse(payload, anywhere, anywhere, verify_checksum=False)
        ports = (datagram.source_port, datagram.destination_port)
    else:
        fixed_ports = parse_with(TCP_PORTS, payload, "UDP header")
        if len(payload) < 8:
            raise ProtocolError("first fragment shorter than a UDP header")
        ports = (fixed_ports.source_port, fixed_ports.destination_port)
    key = SessionKey(IpProtocol.UDP, source, ports[0], destination, ports[1])
    return Classified(FrameKind.UDP, key, 0, network, transport + 8, 0, None, fragment)


def _tcp_fixed_header(payload: bytes) -> tuple[int, int, int, tuple[int, int]]:
    if len(payload) < 20:
        raise ProtocolError("first fragment shorter than a TCP header")
    # Parse the 20 fixed bytes with the segment declaration, options cut away.
    fixed = bytearray(payload[:20])
    fixed[12] = 0x50 | (fixed[12] & 0x0F)
    segment = TcpSegment.parse(bytes(fixed), IPv4Address(0), IPv4Address(0), verify_checksum=False)
    header_length = (payload[12] >> 4) * 4
    if header_length < 20:
        raise ProtocolError("TCP data offset below 5")
    return (
        header_length,
        segment.sequence,
        int(segment.flags),
        (segment.source_port, segment.destination_port),
    )


def _ipv6(
    packet: Ipv6Packet, network: int, cluster: frozenset[bytes], claim_protocol: int
) -> Classified:
    source, destination = packet.source.packed, packet.destination.packed
    fragment_header = next(
        (
            header
            for header in packet.extension_headers
            if header.header_type == IpProtocol.FRAGMENT
        ),
        None,
    )
    transport = network + len(packet.build()) - len(packet.padding) - len(packet.payload)
    if packet.next_header == IpProtocol.IPV6_ICMP and fragment_header is None:
        message = parse_with(ICMPV6_MESSAGE, packet.payload, "ICMPv6 message")
        if message.type == Icmpv6Type.NEIGHBOR_SOLICITATION and message.code == 0:
            solicitation = parse_with(NEIGHBOR_SOLICITATION_BODY, message.body, "solicitation")
            if solicitation.target.packed in cluster:
                return Classified(
                    FrameKind.NEIGHBOR_SOLICITATION,
                    network_offset=network,
                    address=solicitation.target.packed,
                )
    if destination not in cluster:
        return OTHER
    fragment = None
    if fragment_header is not None:
        field = int.from_bytes(fragment_header.data[1:3], "big")
        identification = int.from_bytes(fragment_header.data[3:7], "big")
        fragment = FragmentKey(packet.next_header, source, destination, identification)
        if field >> 3:
            return Classified(FrameKind.FRAGMENT, network_offset=network, fragment=fragment)
        if not field & 1:
            fragment = None
    if packet.next_header in (IpProtocol.TCP, IpProtocol.UDP):
        return _transport(
            packet.next_header, packet.payload, source, destination, network, transport, fragment
        )
    if packet.next_header == IpProtocol.IPV6_ICMP:
        message = parse_with(ICMPV6_MESSAGE, packet.payload, "ICMPv6 message")
        if message.type == Icmpv6Type.ECHO_REQUEST and message.code == 0:
            identifier = int.from_bytes(message.body[0:2], "big")
            key = SessionKey(IpProtocol.IPV6_ICMP, source, identifier, destination, 0)
            return Classified(FrameKind.ICMP_ECHO, key, 0, network, transport + 8)
        if message.type in ICMPV6_ERROR_TYPES:
            return _icmpv6_error(message.body[4:], cluster, network, transport)
        return OTHER
    if packet.next_header == claim_protocol:
        return _claim(network, transport, source, packet.payload)
    return OTHER


def _icmpv6_error(
    quoted: bytes, cluster: frozenset[bytes], network: int, transport: int
) -> Classified:
    # The quote may be cut anywhere: read the fixed header and the 4 port bytes
    # after it with the fixed-header declaration, whose length field is set to 4.
    if len(quoted) < 44:
        raise ProtocolError("ICMPv6 error quotes less than a header and ports")
    header = bytearray(quoted[:44])
    header[4:6] = (4).to_bytes(2, "big")
    packet = parse_with(IPV6_PACKET, bytes(header), "quoted IPv6 header")
    if (
        packet.next_header not in (IpProtocol.TCP, IpProtocol.UDP)
        or packet.source.packed not in cluster
    ):
        return OTHER
    ports = parse_with(TCP_PORTS, packet.payload, "quoted ports")
    key = SessionKey(
        packet.next_header,
        packet.destination.packed,
        ports.destination_port,
        packet.source.packed,
        ports.source_port,
    )
    return Classified(FrameKind.ICMP_ERROR, key, 0, network, transport + 8)
