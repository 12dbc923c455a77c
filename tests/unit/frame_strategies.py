"""Hypothesis strategies for frames: valid ones built through the declarations,
and malformed ones made from them by cutting, corrupting and lying in lengths.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

from hypothesis import strategies as st

from protocols.numbers import DEFAULT_CLAIM_PROTOCOL, EtherType, TcpFlags
from protocols.session_key import SessionKey
from protocols.wire.arp import ArpPacket
from protocols.wire.claim import (
    MAX_PORTS,
    Acknowledgement,
    Assertion,
    BucketState,
    Claim,
    ClaimMessage,
    Grant,
    Hello,
)
from protocols.wire.common import MacAddress
from protocols.wire.ethernet import EthernetFrame, VlanTag
from protocols.wire.icmpv4 import Icmpv4Echo, Icmpv4Error, Icmpv4Other
from protocols.wire.icmpv6 import (
    Icmpv6Other,
    NdpOption,
    NeighborAdvertisement,
    NeighborSolicitation,
)
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.ipv6 import Ipv6ExtensionHeader, Ipv6Packet
from protocols.wire.stack import Layer, build_stack, fill_payloads
from protocols.wire.tcp import TcpSegment
from protocols.wire.udp import UdpDatagram

CLUSTER_V4 = IPv4Address("192.0.2.10")
CLUSTER_V6 = IPv6Address("2001:db8::10")
CLUSTER_ADDRESSES = (CLUSTER_V4.packed, CLUSTER_V6.packed)
CLAIM_PROTOCOL = DEFAULT_CLAIM_PROTOCOL

macs = st.binary(min_size=6, max_size=6).map(MacAddress)
ports = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
small_payloads = st.binary(max_size=64)
ipv4_addresses = st.one_of(
    st.just(CLUSTER_V4),
    st.integers(0, 2**32 - 1).map(IPv4Address),
)
ipv6_addresses = st.one_of(
    st.just(CLUSTER_V6),
    st.binary(min_size=16, max_size=16).map(IPv6Address),
)
# Most real frames are untagged IPv4 without options (the classifier's fast
# path), so the strategies favour them while still covering the rest.
vlans = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.builds(VlanTag, st.integers(0, 4095), st.integers(0, 7), st.booleans()),
)
scores = st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False)
options4 = st.sampled_from([0, 0, 0, 0, 1, 2, 10]).map(lambda words: bytes([1]) * (4 * words))


@st.composite
def session_keys(draw: st.DrawFn) -> SessionKey:
    size = draw(st.sampled_from([4, 16]))
    return SessionKey(
        draw(st.integers(0, 255)),
        draw(st.binary(min_size=size, max_size=size)),
        draw(ports),
        draw(st.binary(min_size=size, max_size=size)),
        draw(ports),
    )


u64 = st.integers(0, 2**64 - 1)


@st.composite
def bucket_states(draw: st.DrawFn) -> BucketState:
    """A BUCKETS message; bucket counts stay small (up to 64) for speed."""
    count = draw(st.integers(1, 64))
    bucket_sets = st.frozensets(st.integers(0, count - 1))
    listening = st.frozensets(st.tuples(st.integers(0, 255), ports), max_size=MAX_PORTS)
    grants = st.lists(st.builds(Grant, u64, u64, bucket_sets), max_size=3)
    return BucketState(
        draw(u64),
        draw(u64),
        count,
        draw(scores),
        draw(st.none() | listening),
        draw(bucket_sets),
        draw(bucket_sets),
        tuple(draw(grants)),
        draining=draw(st.booleans()),
        warming=draw(st.booleans()),
    )


claim_messages: st.SearchStrategy[ClaimMessage] = st.one_of(
    st.builds(Claim, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), session_keys(), scores),
    st.builds(
        Assertion, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), session_keys(), scores
    ),
    st.builds(
        Hello,
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        scores,
        st.booleans(),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        Acknowledgement,
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
    ),
    bucket_states(),
)

tcp_segments = st.builds(
    TcpSegment,
    ports,
    ports,
    u32,
    u32,
    st.integers(0, 255).map(TcpFlags),
    window=ports,
    payload=small_payloads,
    options=options4,
)
udp_datagrams = st.builds(UdpDatagram, ports, ports, small_payloads)


@st.composite
def ipv4_transports(draw: st.DrawFn) -> tuple[int, list[Layer]]:
    kind = draw(
        st.sampled_from(
            ["tcp", "tcp", "udp", "udp", "echo", "error", "icmp_other", "claim", "other"]
        )
    )
    if kind == "tcp":
        return 6, [draw(tcp_segments)]
    if kind == "udp":
        return 17, [draw(udp_datagrams)]
    if kind == "echo":
        return 1, [draw(st.builds(Icmpv4Echo, ports, ports, small_payloads, st.booleans()))]
    if kind == "error":
        quoted = draw(quoted_ipv4_packets())
        icmp_type = draw(st.sampled_from([3, 4, 11, 12]))
        return 1, [Icmpv4Error(icmp_type, draw(st.integers(0, 15)), quoted)]
    if kind == "icmp_other":
        return 1, [
            draw(
                st.builds(
                    Icmpv4Other,
                    # Echo and error types parse as their own dataclasses.
                    st.integers(0, 255).filter(lambda value: value not in {0, 3, 4, 8, 11, 12}),
                    st.integers(0, 255),
                    st.binary(min_size=4, max_size=4),
                    small_payloads,
                )
            )
        ]
    if kind == "claim":
        return CLAIM_PROTOCOL, [draw(claim_messages)]
    unknown = st.integers(0, 255).filter(lambda value: value not in {1, 6, 17, 58, CLAIM_PROTOCOL})
    return draw(unknown), [draw(small_payloads)]


@st.composite
def quoted_ipv4_packets(draw: st.DrawFn) -> bytes:
    """An IP header plus at least 8 bytes, as an ICMP error quotes it."""
    protocol = draw(st.sampled_from([6, 17, 1]))
    packet = Ipv4Packet(
        draw(ipv4_addresses),
        draw(ipv4_addresses),
        protocol,
        payload=draw(st.binary(min_size=8, max_size=40)),
        options=draw(st.integers(0, 2).map(lambda words: bytes(4 * words))),
    )
    raw = packet.build()
    return raw[: draw(st.integers(packet.header_length + 8, len(raw)))]


@st.composite
def ipv4_frames(draw: st.DrawFn) -> tuple[Layer, ...]:
    protocol, inner = draw(ipv4_transports())
    fragment = draw(st.sampled_from(["none", "none", "first", "later"]))
    more = fragment == "first"
    offset = draw(st.integers(1, 100)) * 8 if fragment == "later" else 0
    packet = Ipv4Packet(
        draw(ipv4_addresses),
        draw(ipv4_addresses),
        protocol,
        identification=draw(ports),
        ttl=draw(st.integers(0, 255)),
        more_fragments=more,
        fragment_offset=offset,
        dont_fragment=draw(st.booleans()),
        options=draw(options4),
        padding=draw(st.binary(max_size=4)),
    )
    ethernet = EthernetFrame(draw(macs), draw(macs), EtherType.IPV4, b"", vlan=draw(vlans))
    if fragment != "none":
        # A fragment carries a piece of a datagram: its transport header may be cut.
        whole = replace(packet, more_fragments=False, fragment_offset=0)
        filled = fill_payloads((whole, *inner))[0]
        assert isinstance(filled, Ipv4Packet)
        return (ethernet, packet, filled.payload[: draw(st.integers(0, 60))])
    return (ethernet, packet, *inner)


@st.composite
def ipv6_frames(draw: st.DrawFn) -> tuple[Layer, ...]:
    kind = draw(st.sampled_from(["tcp", "udp", "ns", "na", "icmp_other", "error", "claim"]))
    source, destination = draw(ipv6_addresses), draw(ipv6_addresses)
    inner: list[Layer]
    if kind == "tcp":
        protocol, inner = 6, [draw(tcp_segments)]
    elif kind == "udp":
        protocol, inner = 17, [draw(udp_datagrams)]
    elif kind == "ns":
        options = tuple(
            NdpOption(1, draw(st.binary(min_size=6, max_size=6)))
            for _ in range(draw(st.integers(0, 2)))
        )
        protocol, inner = 58, [NeighborSolicitation(draw(ipv6_addresses), options)]
    elif kind == "na":
        protocol = 58
        inner = [
            NeighborAdvertisement(
                draw(ipv6_addresses), *draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
            )
        ]
    elif kind == "error":
        quoted = Ipv6Packet(
            draw(ipv6_addresses),
            draw(ipv6_addresses),
            draw(st.sampled_from([6, 17])),
            draw(st.binary(min_size=4, max_size=24)),
        ).build()
        protocol, inner = (
            58,
            [Icmpv6Other(draw(st.sampled_from([1, 2, 3, 4])), 0, bytes(4) + quoted)],
        )
    elif kind == "icmp_other":
        protocol = 58
        inner = [
            Icmpv6Other(
                draw(st.sampled_from([128, 129, 133, 134, 137, 200])),
                draw(st.integers(0, 2)),
                draw(st.binary(min_size=4, max_size=32)),
            )
        ]
    else:
        protocol, inner = CLAIM_PROTOCOL, [draw(claim_messages)]
    headers = tuple(
        Ipv6ExtensionHeader(header_type, draw(st.binary(min_size=6, max_size=6)))
        for header_type in draw(st.lists(st.sampled_from([0, 43, 60, 51]), max_size=3))
    )
    fragment = draw(st.sampled_from(["none", "none", "first", "later", "atomic"]))
    if fragment != "none":
        offset = draw(st.integers(1, 100)) if fragment == "later" else 0
        more = 1 if fragment in ("first", "later") else 0
        field = struct.pack("!BHI", draw(st.sampled_from([0, 0, 1])), offset << 3 | more, draw(u32))
        headers = (*headers, Ipv6ExtensionHeader(44, field))
    packet = Ipv6Packet(
        source,
        destination,
        protocol,
        hop_limit=draw(st.integers(0, 255)),
        extension_headers=headers,
        padding=draw(st.binary(max_size=4)),
    )
    ethernet = EthernetFrame(draw(macs), draw(macs), EtherType.IPV6, b"", vlan=draw(vlans))
    return (ethernet, packet, *inner)


@st.composite
def arp_frames(draw: st.DrawFn) -> tuple[Layer, ...]:
    arp = ArpPacket(
        draw(st.integers(0, 3)),
        draw(macs),
        draw(ipv4_addresses),
        draw(macs),
        draw(ipv4_addresses),
        padding=draw(st.binary(max_size=18)),
    )
    return (EthernetFrame(draw(macs), draw(macs), EtherType.ARP, b"", vlan=draw(vlans)), arp)


frame_layers = st.one_of(ipv4_frames(), ipv4_frames(), ipv6_frames(), arp_frames())


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    return build_stack(draw(frame_layers))


@st.composite
def malformed_frames(draw: st.DrawFn) -> bytes:
    """A valid frame, then one of the damages seen on real networks."""
    layers = draw(frame_layers)
    frame = bytearray(build_stack(layers))
    ethernet, network_layer = layers[0], layers[1]
    assert isinstance(ethernet, EthernetFrame)
    network = ethernet.header_length
    if isinstance(network_layer, Ipv4Packet):
        transport = network + network_layer.header_length
    elif isinstance(network_layer, Ipv6Packet):
        transport = (
            network
            + 40
            + sum(
                (1 if header.header_type == 44 else 2) + len(header.data)
                for header in network_layer.extension_headers
            )
        )
    else:
        transport = network + 28
    damage = draw(
        st.sampled_from(
            [
                "truncate",
                "header_length",
                "network_length",
                "transport_length",
                "version",
                "flip",
            ]
        )
    )
    if damage == "truncate":
        return bytes(frame[: draw(st.integers(0, len(frame)))])
    if damage == "header_length" and len(frame) > network:
        frame[network] = (frame[network] & 0xF0) | draw(st.integers(0, 15))
    elif damage == "network_length" and len(frame) > network + 6:
        # IPv4 total length, or IPv6 payload length.
        at = network + 2 if isinstance(network_layer, Ipv4Packet) else network + 4
        struct.pack_into("!H", frame, at, draw(st.integers(0, 0xFFFF)))
    elif damage == "transport_length" and len(frame) > transport + 13:
        # UDP length, or the TCP data offset.
        if draw(st.booleans()):
            struct.pack_into("!H", frame, transport + 4, draw(st.integers(0, 0xFFFF)))
        else:
            frame[transport + 12] = draw(st.integers(0, 15)) << 4
    elif damage == "version" and len(frame) > network:
        frame[network] = (draw(st.integers(0, 15)) << 4) | (frame[network] & 0x0F)
    elif frame:
        for _ in range(draw(st.integers(1, 4))):
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame)


@st.composite
def damaged_lengths(draw: st.DrawFn) -> bytes:
    """Untagged IPv4 TCP or UDP to the cluster, one length field set at random.

    These are the frames of the classifier's fast path, where a missed length
    check would pass a bad packet to the kernel.
    """
    protocol, inner = draw(st.sampled_from([6, 17])), []
    segment = draw(tcp_segments) if protocol == 6 else draw(udp_datagrams)
    inner.append(segment)
    packet = Ipv4Packet(draw(ipv4_addresses), CLUSTER_V4, protocol, identification=draw(ports))
    frame = bytearray(
        build_stack((EthernetFrame(draw(macs), draw(macs), EtherType.IPV4, b""), packet, *inner))
    )
    field = draw(st.sampled_from(["ihl", "total_length", "udp_length", "data_offset"]))
    # Lengths a little off are the interesting ones: too short by a byte, too long by one.
    near = len(frame) - 14
    length = draw(st.one_of(st.integers(0, 0xFFFF), st.integers(max(0, near - 30), near + 2)))
    if field == "ihl":
        frame[14] = 0x40 | draw(st.integers(0, 15))
    elif field == "total_length":
        struct.pack_into("!H", frame, 16, length)
    elif field == "udp_length" and protocol == 17:
        struct.pack_into("!H", frame, 38, max(0, length - 20))
    else:
        frame[46 if protocol == 6 else 38] = draw(st.integers(0, 255))
    return bytes(frame)


any_frames = st.one_of(valid_frames(), malformed_frames(), st.binary(max_size=128))
