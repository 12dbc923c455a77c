"""Frames the appliance sends: claims, ARP answers, and local resets.

ARP answers and resets are rare and built through the wire declarations.
Claim messages (claims, assertions, acknowledgements, hellos) go out for every
new session, so their Ethernet and IP headers come from a prepared template
with `struct`.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from protocols.errors import RemoteProtocolError
from protocols.numbers import (
    IPV4_CHECKSUM_OFFSET,
    IPV4_DONT_FRAGMENT,
    IPV4_HEADER,
    IPV4_HEADER_LENGTH,
    IPV4_VERSION_IHL,
    EtherType,
    IpProtocol,
    TcpFlags,
)
from protocols.session_key import SessionKey
from protocols.wire.arp import ArpOperation, ArpPacket
from protocols.wire.common import BROADCAST_MAC, ZERO_MAC, MacAddress, internet_checksum
from protocols.wire.ethernet import EthernetFrame, VlanTag
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.tcp import TcpSegment

CLAIM_TTL = 1  # claims never leave the segment


class FrameBuilder:
    def __init__(
        self,
        *,
        own_mac: bytes,
        cluster_mac: MacAddress,
        cluster_ip: IPv4Address,
        member_ip: IPv4Address | None,
        claim_protocol: int,
    ) -> None:
        self.own_mac = MacAddress(own_mac)
        self.cluster_mac = cluster_mac
        self.cluster_ip = cluster_ip
        self.member_ip = member_ip or IPv4Address(0)
        self.claim_protocol = claim_protocol
        # Claims go to the cluster MAC, which every member's bridge floods to its TAP.
        self._claim_ethernet = (
            bytes(cluster_mac) + bytes(self.own_mac) + EtherType.IPV4.to_bytes(2, "big")
        )
        self._identification = 0

    def claim_frame(self, message: bytes) -> bytes:
        self._identification = (self._identification + 1) & 0xFFFF
        header = bytearray(
            IPV4_HEADER.pack(
                IPV4_VERSION_IHL,
                0,
                IPV4_HEADER_LENGTH + len(message),
                self._identification,
                IPV4_DONT_FRAGMENT,
                CLAIM_TTL,
                self.claim_protocol,
                0,
                self.member_ip.packed,
                self.cluster_ip.packed,
            )
        )
        struct.pack_into("!H", header, IPV4_CHECKSUM_OFFSET, internet_checksum(bytes(header)))
        return self._claim_ethernet + bytes(header) + message

    def arp_reply(self, request: bytes, network_offset: int, vlan: VlanTag | None) -> bytes | None:
        """The answer to an ARP request for the cluster IP.

        The cluster MAC goes only in the ARP payload. The Ethernet source is
        this member's own MAC, so the switch never learns the cluster MAC.
        """
        try:
            asked = ArpPacket.parse(request[network_offset:])
        except RemoteProtocolError:
            return None
        answer = ArpPacket(
            ArpOperation.REPLY,
            self.cluster_mac,
            self.cluster_ip,
            asked.sender_hardware_address,
            asked.sender_protocol_address,
        )
        return EthernetFrame(
            asked.sender_hardware_address,
            self.own_mac,
            EtherType.ARP,
            answer.build(),
            vlan=vlan,
        ).build()

    def gratuitous_arp(self) -> bytes:
        """An announcement that the cluster IP is at the cluster MAC, for every neighbour."""
        announcement = ArpPacket(
            ArpOperation.REQUEST, self.cluster_mac, self.cluster_ip, ZERO_MAC, self.cluster_ip
        )
        return EthernetFrame(
            BROADCAST_MAC, self.own_mac, EtherType.ARP, announcement.build()
        ).build()

    @staticmethod
    def local_reset(key: SessionKey, sequence: int) -> bytes:
        """A RST as if from the client, so the local kernel drops a half-open connection.

        Injected into the TUN only: it never reaches the wire.
        """
        client = IPv4Address(key.client_address)
        cluster = IPv4Address(key.cluster_address)
        segment = TcpSegment(key.client_port, key.cluster_port, sequence, 0, TcpFlags.RST, window=0)
        return Ipv4Packet(
            client, cluster, IpProtocol.TCP, payload=segment.build(client, cluster)
        ).build()
