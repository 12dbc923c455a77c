"""Every structured fixture round-trips through the declarations, both ways."""

from ipaddress import IPv4Address

import pytest

from protocols.numbers import TcpFlags
from protocols.wire.arp import ArpPacket
from protocols.wire.claim import Acknowledgement, Assertion, Claim, Hello, SignedClaimMessage
from protocols.wire.ethernet import EthernetFrame
from protocols.wire.icmpv4 import Icmpv4Echo, Icmpv4Error
from protocols.wire.icmpv6 import NeighborAdvertisement, NeighborSolicitation
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.ipv6 import Ipv6Packet
from protocols.wire.stack import build_stack, fill_payloads, parse_stack
from protocols.wire.tcp import TcpSegment, parse_tcp_options
from protocols.wire.udp import UdpDatagram
from tests.fixtures import frames
from tests.fixtures.frames import FIXTURES

REQUIRED_SHAPES = {
    "arp_request",
    "arp_reply",
    "gratuitous_arp",
    "tcp_syn",
    "tcp_syn_ack",
    "tcp_ack_with_data",
    "tcp_fin",
    "tcp_rst",
    "udp_dns_query",
    "icmp_echo_request",
    "icmp_fragmentation_needed",
    "ipv4_first_fragment",
    "ipv4_later_fragment",
    "vlan_tagged_syn",
    "ipv6_tcp_syn",
    "ndp_neighbor_solicitation",
    "claim",
    "assertion",
    "hello",
    "acknowledgement",
}


def test_every_required_shape_exists() -> None:
    assert FIXTURES.keys() >= REQUIRED_SHAPES


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_build_then_parse_gives_the_same_value(name: str) -> None:
    layers = FIXTURES[name]
    assert parse_stack(build_stack(layers)) == fill_payloads(layers)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_parse_then_build_gives_the_same_bytes(name: str) -> None:
    frame = build_stack(FIXTURES[name])
    assert build_stack(parse_stack(frame)) == frame


def test_the_syn_carries_readable_options() -> None:
    syn = parse_stack(frames.fixture_frame("tcp_syn"))[2]
    assert isinstance(syn, TcpSegment)
    assert syn.flags == TcpFlags.SYN
    assert syn.mss == 1460
    kinds = [option.kind for option in parse_tcp_options(syn.options)]
    assert kinds == [2, 4, 8, 3]  # MSS, SACK permitted, timestamps, window scale


def test_the_arp_reply_hides_the_cluster_mac_in_its_payload() -> None:
    ethernet, arp = parse_stack(frames.fixture_frame("arp_reply"))
    assert isinstance(ethernet, EthernetFrame) and isinstance(arp, ArpPacket)
    assert arp.sender_hardware_address == frames.CLUSTER_MAC
    assert ethernet.source == frames.MEMBER_MAC != frames.CLUSTER_MAC


def test_gratuitous_arp_announces_the_cluster_address() -> None:
    _, arp = parse_stack(frames.fixture_frame("gratuitous_arp"))
    assert isinstance(arp, ArpPacket) and arp.is_gratuitous
    assert arp.sender_protocol_address == frames.CLUSTER_IP


def test_fragmentation_needed_quotes_the_offending_tcp_header() -> None:
    layers = parse_stack(frames.fixture_frame("icmp_fragmentation_needed"))
    error = layers[2]
    assert isinstance(error, Icmpv4Error)
    assert error.is_fragmentation_needed and error.next_hop_mtu == 1400
    quoted = error.offending_packet()
    assert quoted.source == frames.CLUSTER_IP and quoted.destination == frames.CLIENT_IP
    assert len(quoted.payload) == 8
    assert int.from_bytes(quoted.payload[0:2], "big") == frames.HTTP
    assert int.from_bytes(quoted.payload[2:4], "big") == frames.CLIENT_PORT


def test_fragments_stop_at_the_ip_layer() -> None:
    first = parse_stack(frames.fixture_frame("ipv4_first_fragment"))
    later = parse_stack(frames.fixture_frame("ipv4_later_fragment"))
    assert len(first) == len(later) == 2
    first_ip, later_ip = first[1], later[1]
    assert isinstance(first_ip, Ipv4Packet) and isinstance(later_ip, Ipv4Packet)
    assert first_ip.more_fragments and first_ip.fragment_offset == 0
    assert not later_ip.more_fragments and later_ip.fragment_offset == 1480
    reassembled = first_ip.payload + later_ip.payload
    datagram = UdpDatagram.parse(reassembled, frames.CLIENT_IP, frames.CLUSTER_IP)
    assert len(datagram.payload) == 2992


def test_vlan_tag_and_ipv6_and_ndp_layers() -> None:
    tagged = parse_stack(frames.fixture_frame("vlan_tagged_syn"))[0]
    assert isinstance(tagged, EthernetFrame) and tagged.vlan is not None
    assert tagged.vlan.vlan_id == 42 and tagged.header_length == 18
    ipv6_layers = parse_stack(frames.fixture_frame("ipv6_tcp_syn"))
    assert isinstance(ipv6_layers[1], Ipv6Packet) and isinstance(ipv6_layers[2], TcpSegment)
    solicitation = parse_stack(frames.fixture_frame("ndp_neighbor_solicitation"))[2]
    assert isinstance(solicitation, NeighborSolicitation)
    assert solicitation.target == frames.CLUSTER_IP6
    assert solicitation.source_link_layer_address == frames.CLIENT_MAC
    advert = parse_stack(frames.fixture_frame("ndp_neighbor_advertisement"))[2]
    assert isinstance(advert, NeighborAdvertisement)
    assert advert.target_link_layer_address == frames.CLUSTER_MAC


def test_claim_fixtures_cover_every_message_type() -> None:
    kinds = {
        type(parse_stack(frames.fixture_frame(name))[2])
        for name in FIXTURES
        if "claim" in name or name in {"assertion", "hello", "hello_draining", "acknowledgement"}
    }
    assert {Claim, Assertion, Hello, Acknowledgement, SignedClaimMessage} <= kinds


def test_echo_and_dns_shapes() -> None:
    echo = parse_stack(frames.fixture_frame("icmp_echo_request"))[2]
    assert isinstance(echo, Icmpv4Echo) and echo.is_request and echo.identifier == 0x0A0B
    dns = parse_stack(frames.fixture_frame("udp_dns_query"))
    ip, udp = dns[1], dns[2]
    assert isinstance(ip, Ipv4Packet) and ip.destination == IPv4Address("192.0.2.10")
    assert isinstance(udp, UdpDatagram) and udp.destination_port == 53
    assert b"\x07example\x03com\x00" in udp.payload
