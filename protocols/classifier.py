"""The fast classifier: one frame in, a small record out, at fixed offsets.

Every frame from the segment passes through here, so it reads headers with
`struct` and byte indexing (about a microsecond) instead of construct (tens
of microseconds a header). It decides only what the data plane must know:
what the frame is, which session it belongs to, its TCP flags and where its
IP packet and transport payload start. Property tests check it against the
construct declarations in `protocols.wire`.

Validation is exactly what classification needs. A frame is MALFORMED when a
header it must read is truncated or inconsistent: an IPv4 header length below
20, a total length past the end of the frame, a TCP data offset below 20 or
past the packet, a UDP length that disagrees with the packet. Checksums are
not verified here: frames from a TAP device with offloads carry partial
checksums, and the kernel that finally receives the packet verifies them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple

from protocols import numbers
from protocols.numbers import (
    DEFAULT_CLAIM_PROTOCOL,
    ICMPV4_ERROR_TYPES,
    IPV4_HEADER,
    EtherType,
    Icmpv4Type,
    Icmpv6Type,
    IpProtocol,
)
from protocols.session_key import SessionKey

# The hot path compares plain ints, aliased here from `protocols.numbers`.
ETHERTYPE_IPV4 = int(EtherType.IPV4)
ETHERTYPE_ARP = int(EtherType.ARP)
ETHERTYPE_VLAN = int(EtherType.VLAN)
ETHERTYPE_IPV6 = int(EtherType.IPV6)

TCP = int(IpProtocol.TCP)
UDP = int(IpProtocol.UDP)
ICMP = int(IpProtocol.ICMP)
ICMPV6 = int(IpProtocol.IPV6_ICMP)

ICMP_ECHO_REQUEST = int(Icmpv4Type.ECHO_REQUEST)
ICMP_ERROR_TYPES = frozenset(int(kind) for kind in ICMPV4_ERROR_TYPES)
ICMPV6_ECHO_REQUEST = int(Icmpv6Type.ECHO_REQUEST)
ICMPV6_ERROR_TYPES = frozenset(int(kind) for kind in numbers.ICMPV6_ERROR_TYPES)
ICMPV6_NEIGHBOR_SOLICITATION = int(Icmpv6Type.NEIGHBOR_SOLICITATION)

IPV6_GENERIC_EXTENSIONS = frozenset(int(number) for number in numbers.IPV6_GENERIC_EXTENSIONS)
IPV6_FRAGMENT = int(IpProtocol.FRAGMENT)
IPV6_AUTHENTICATION = int(IpProtocol.AUTHENTICATION)
MAX_IPV6_EXTENSIONS = 8
_IPV6_EXTENSIONS = IPV6_GENERIC_EXTENSIONS | {IPV6_FRAGMENT, IPV6_AUTHENTICATION}

# The Ethernet type, then the IPv4 header of `protocols.numbers.IPV4_HEADER`.
_ETHERNET_IPV4_FIELDS = struct.Struct("!12xH" + IPV4_HEADER.format.lstrip("!"))
_TCP_FIELDS = struct.Struct("!HHI4xBB")  # ports, sequence, data offset, flags
_UDP_FIELDS = struct.Struct("!HHH")  # ports, length
_PORTS = struct.Struct("!HH")
_ARP_FIELDS = struct.Struct("!HHBBH")
_U16 = struct.Struct("!H")


class FrameKind(IntEnum):
    OTHER = 0  # not for the cluster address, or not a kind the appliance handles
    MALFORMED = 1
    ARP_REQUEST = 2  # an ARP request for a cluster address
    NEIGHBOR_SOLICITATION = 3  # an IPv6 neighbour solicitation for a cluster address
    CLAIM = 4  # a claim-protocol packet to a cluster address
    TCP = 5
    UDP = 6
    ICMP_ECHO = 7  # an echo request to a cluster address
    ICMP_ERROR = 8  # an ICMP error about a packet sent from a cluster address
    FRAGMENT = 9  # a non-first fragment to a cluster address (no ports)


class FragmentKey(NamedTuple):
    """Names the datagram a fragment belongs to (RFC 791 / RFC 8200)."""

    transport: int
    client_address: bytes
    cluster_address: bytes
    identification: int


class Classified(NamedTuple):
    """What one frame is, for the data plane.

    `network_offset` is where the IP packet (or ARP packet) starts and
    `payload_offset` where the transport payload starts (for CLAIM, where the
    claim message starts, and `payload_end` where it ends: the IP packet's
    end, Ethernet padding left out). `key` names the session for TCP, UDP,
    ICMP_ECHO and ICMP_ERROR frames. `address` is the address asked for by
    ARP_REQUEST and NEIGHBOR_SOLICITATION, and the sender's for CLAIM.
    `fragment` is set for every fragment, first or not, of a fragmented
    datagram to a cluster address. `sequence` is the TCP sequence number.
    """

    kind: FrameKind
    key: SessionKey | None = None
    tcp_flags: int = 0
    network_offset: int = 0
    payload_offset: int = 0
    sequence: int = 0
    address: bytes | None = None
    fragment: FragmentKey | None = None
    payload_end: int = 0


_MALFORMED = Classified(FrameKind.MALFORMED)
_OTHER = Classified(FrameKind.OTHER)

# The hot path builds records with tuple.__new__ and reads kinds from module
# globals: a NamedTuple's generated __new__ and an enum attribute lookup each
# cost more than the header parsing itself.
_new = tuple.__new__
_KIND_TCP = FrameKind.TCP
_KIND_UDP = FrameKind.UDP
_KIND_CLAIM = FrameKind.CLAIM
_KIND_ARP_REQUEST = FrameKind.ARP_REQUEST
_KIND_NEIGHBOR_SOLICITATION = FrameKind.NEIGHBOR_SOLICITATION
_KIND_ICMP_ECHO = FrameKind.ICMP_ECHO
_KIND_ICMP_ERROR = FrameKind.ICMP_ERROR
_KIND_FRAGMENT = FrameKind.FRAGMENT


def _record(
    kind: FrameKind,
    key: SessionKey | None,
    network_offset: int,
    payload_offset: int = 0,
    address: bytes | None = None,
    fragment: FragmentKey | None = None,
    payload_end: int = 0,
) -> Classified:
    return _new(
        Classified,
        (kind, key, 0, network_offset, payload_offset, 0, address, fragment, payload_end),
    )


def network_offset(frame: bytes, start: int) -> int:
    """Where the network header starts in a frame that classified as IP: after the
    Ethernet header, and its 802.1Q tag if it has one."""
    return start + (18 if frame[start + 12] << 8 | frame[start + 13] == ETHERTYPE_VLAN else 14)


class Classifier:
    """Classifies frames for a set of cluster addresses (4- or 16-byte values)."""

    __slots__ = ("_claim_protocol", "_ipv4", "_ipv6")

    def __init__(
        self, cluster_addresses: Iterable[bytes], claim_protocol: int = DEFAULT_CLAIM_PROTOCOL
    ) -> None:
        addresses = [bytes(address) for address in cluster_addresses]
        self._ipv4 = frozenset(address for address in addresses if len(address) == 4)
        self._ipv6 = frozenset(address for address in addresses if len(address) == 16)
        self._claim_protocol = claim_protocol

    def classify(self, frame: bytes | memoryview, start: int = 0) -> Classified:
        """Classify the Ethernet frame that begins at `start` in `frame`."""
        if type(frame) is not bytes:
            frame = bytes(frame)  # slices must be hashable bytes
        size = len(frame)
        if size - start >= 34:
            (
                ethertype,
                version_ihl,
                _,
                total_length,
                identification,
                fragment,
                _,
                protocol,
                _,
                source,
                destination,
            ) = _ETHERNET_IPV4_FIELDS.unpack_from(frame, start)
            # The fast path: untagged IPv4 without options, nearly every frame.
            if ethertype == ETHERTYPE_IPV4 and version_ihl == 0x45:
                offset = start + 14
                end = offset + total_length
                if total_length < 20 or end > size:
                    return _MALFORMED
                if destination not in self._ipv4:
                    return _OTHER
                if protocol == TCP and not fragment & 0x3FFF:
                    if end - offset < 40:
                        return _MALFORMED
                    source_port, destination_port, sequence, data_offset, flags = (
                        _TCP_FIELDS.unpack_from(frame, offset + 20)
                    )
                    payload = offset + 20 + (data_offset >> 4) * 4
                    if data_offset < 0x50 or payload > end:
                        return _MALFORMED
                    return _new(
                        Classified,
                        (
                            _KIND_TCP,
                            _new(
                                SessionKey,
                                (TCP, source, source_port, destination, destination_port),
                            ),
                            flags,
                            offset,
                            payload,
                            sequence,
                            None,
                            None,
                            0,
                        ),
                    )
                return self._ipv4_transport(
                    frame,
                    offset,
                    offset + 20,
                    end,
                    protocol,
                    identification,
                    fragment,
                    source,
                    destination,
                )
        if size - start < 14:
            return _MALFORMED
        offset = start + 12
        ethertype = frame[offset] << 8 | frame[offset + 1]
        offset += 2
        if ethertype == ETHERTYPE_VLAN:
            if size - offset < 4:
                return _MALFORMED
            ethertype = frame[offset + 2] << 8 | frame[offset + 3]
            offset += 4
        if ethertype == ETHERTYPE_IPV4:
            return self._ipv4_packet(frame, offset, size)
        if ethertype == ETHERTYPE_IPV6:
            return self._ipv6_packet(frame, offset, size)
        if ethertype == ETHERTYPE_ARP:
            return self._arp_packet(frame, offset, size)
        return _OTHER

    def _ipv4_packet(self, frame: bytes, offset: int, size: int) -> Classified:
        if size - offset < 20:
            return _MALFORMED
        version_ihl = frame[offset]
        header_length = (version_ihl & 0x0F) * 4
        if version_ihl >> 4 != 4 or header_length < 20:
            return _MALFORMED
        _, _, total_length, identification, fragment, _, protocol, _, source, destination = (
            IPV4_HEADER.unpack_from(frame, offset)
        )
        end = offset + total_length
        if total_length < header_length or end > size:
            return _MALFORMED
        if destination not in self._ipv4:
            return _OTHER
        return self._ipv4_transport(
            frame,
            offset,
            offset + header_length,
            end,
            protocol,
            identification,
            fragment,
            source,
            destination,
        )

    def _ipv4_transport(
        self,
        frame: bytes,
        offset: int,
        transport: int,
        end: int,
        protocol: int,
        identification: int,
        fragment: int,
        source: bytes,
        destination: bytes,
    ) -> Classified:
        fragment_key = None
        if fragment & 0x3FFF:  # more-fragments flag or a fragment offset
            fragment_key = _new(FragmentKey, (protocol, source, destination, identification))
            if fragment & 0x1FFF:
                return _record(_KIND_FRAGMENT, None, offset, fragment=fragment_key)
        if protocol == TCP:
            return _tcp(frame, offset, transport, end, source, destination, fragment_key)
        if protocol == UDP:
            return _udp(frame, offset, transport, end, source, destination, fragment_key)
        if protocol == ICMP:
            return self._icmpv4(frame, offset, transport, end, source, destination)
        if protocol == self._claim_protocol:
            return _record(_KIND_CLAIM, None, offset, transport, source, payload_end=end)
        return _OTHER

    def _arp_packet(self, frame: bytes, offset: int, size: int) -> Classified:
        if size - offset < 28:
            return _MALFORMED
        hardware, protocol, hardware_length, protocol_length, operation = _ARP_FIELDS.unpack_from(
            frame, offset
        )
        if (hardware, protocol, hardware_length, protocol_length) != (1, ETHERTYPE_IPV4, 6, 4):
            return _MALFORMED
        target = frame[offset + 24 : offset + 28]
        if operation == 1 and target in self._ipv4:
            return _record(_KIND_ARP_REQUEST, None, offset, address=target)
        return _OTHER

    def _icmpv4(
        self,
        frame: bytes,
        offset: int,
        transport: int,
        end: int,
        source: bytes,
        destination: bytes,
    ) -> Classified:
        if end - transport < 8:
            return _MALFORMED
        icmp_type = frame[transport]
        if icmp_type == ICMP_ECHO_REQUEST and frame[transport + 1] == 0:
            (identifier,) = _U16.unpack_from(frame, transport + 4)
            key = _new(SessionKey, (ICMP, source, identifier, destination, 0))
            return _record(_KIND_ICMP_ECHO, key, offset, transport + 8)
        if icmp_type not in ICMP_ERROR_TYPES:
            return _OTHER
        # The quoted packet went from a cluster address to the client.
        quoted = transport + 8
        if end - quoted < 20:
            return _MALFORMED
        version_ihl = frame[quoted]
        quoted_header_length = (version_ihl & 0x0F) * 4
        if version_ihl >> 4 != 4 or quoted_header_length < 20:
            return _MALFORMED
        if end - quoted < quoted_header_length + 4:
            return _MALFORMED
        quoted_protocol = frame[quoted + 9]
        quoted_source = frame[quoted + 12 : quoted + 16]
        if quoted_protocol not in (TCP, UDP) or quoted_source not in self._ipv4:
            return _OTHER
        cluster_port, client_port = _PORTS.unpack_from(frame, quoted + quoted_header_length)
        key = SessionKey(
            quoted_protocol,
            frame[quoted + 16 : quoted + 20],
            client_port,
            quoted_source,
            cluster_port,
        )
        return _record(_KIND_ICMP_ERROR, key, offset, quoted)

    def _ipv6_packet(self, frame: bytes, offset: int, size: int) -> Classified:
        if size - offset < 40:
            return _MALFORMED
        if frame[offset] >> 4 != 6:
            return _MALFORMED
        (payload_length,) = _U16.unpack_from(frame, offset + 4)
        end = offset + 40 + payload_length
        if end > size:
            return _MALFORMED
        next_header = frame[offset + 6]
        position = offset + 40
        fragment_offset = 0
        more_fragments = False
        identification = -1
        for _ in range(MAX_IPV6_EXTENSIONS + 1 if next_header in _IPV6_EXTENSIONS else 0):
            if next_header in IPV6_GENERIC_EXTENSIONS:
                if end - position < 8:
                    return _MALFORMED
                length = (frame[position + 1] + 1) * 8
            elif next_header == IPV6_FRAGMENT:
                if end - position < 8:
                    return _MALFORMED
                (fragment_field,) = _U16.unpack_from(frame, position + 2)
                fragment_offset = fragment_field >> 3
                more_fragments = bool(fragment_field & 1)
                identification = int.from_bytes(frame[position + 4 : position + 8], "big")
                length = 8
            elif next_header == IPV6_AUTHENTICATION:
                if end - position < 8:
                    return _MALFORMED
                length = (frame[position + 1] + 2) * 4
            else:
                break
            if end - position < length:
                return _MALFORMED
            next_header = frame[position]
            position += length
        else:
            if next_header in _IPV6_EXTENSIONS:
                return _MALFORMED  # an extension chain this long is an attack
        source = frame[offset + 8 : offset + 24]
        destination = frame[offset + 24 : offset + 40]
        if next_header == ICMPV6 and identification < 0:
            # Neighbour solicitations go to a multicast address, so they are
            # recognised by their target before the destination is checked.
            if end - position < 8:
                return _MALFORMED
            if frame[position] == ICMPV6_NEIGHBOR_SOLICITATION and frame[position + 1] == 0:
                if end - position < 24:
                    return _MALFORMED
                target = frame[position + 8 : position + 24]
                if target in self._ipv6:
                    return _record(_KIND_NEIGHBOR_SOLICITATION, None, offset, address=target)
        if destination not in self._ipv6:
            return _OTHER
        fragment_key = None
        if identification >= 0:
            fragment_key = _new(FragmentKey, (next_header, source, destination, identification))
            if fragment_offset:
                return _record(_KIND_FRAGMENT, None, offset, fragment=fragment_key)
            if not more_fragments:
                fragment_key = None  # an atomic fragment is a whole datagram
        if next_header == TCP:
            return _tcp(frame, offset, position, end, source, destination, fragment_key)
        if next_header == UDP:
            return _udp(frame, offset, position, end, source, destination, fragment_key)
        if next_header == ICMPV6:
            return self._icmpv6(frame, offset, position, end, source, destination)
        if next_header == self._claim_protocol:
            return _record(_KIND_CLAIM, None, offset, position, source, payload_end=end)
        return _OTHER

    def _icmpv6(
        self,
        frame: bytes,
        offset: int,
        transport: int,
        end: int,
        source: bytes,
        destination: bytes,
    ) -> Classified:
        if end - transport < 8:
            return _MALFORMED
        icmp_type = frame[transport]
        if icmp_type == ICMPV6_ECHO_REQUEST and frame[transport + 1] == 0:
            (identifier,) = _U16.unpack_from(frame, transport + 4)
            key = _new(SessionKey, (ICMPV6, source, identifier, destination, 0))
            return _record(_KIND_ICMP_ECHO, key, offset, transport + 8)
        if icmp_type not in ICMPV6_ERROR_TYPES:
            return _OTHER
        quoted = transport + 8
        if end - quoted < 44:
            return _MALFORMED
        if frame[quoted] >> 4 != 6:
            return _MALFORMED
        quoted_protocol = frame[quoted + 6]
        quoted_source = frame[quoted + 8 : quoted + 24]
        if quoted_protocol not in (TCP, UDP) or quoted_source not in self._ipv6:
            return _OTHER
        cluster_port, client_port = _PORTS.unpack_from(frame, quoted + 40)
        key = SessionKey(
            quoted_protocol,
            frame[quoted + 24 : quoted + 40],
            client_port,
            quoted_source,
            cluster_port,
        )
        return _record(_KIND_ICMP_ERROR, key, offset, quoted)


def _tcp(
    frame: bytes,
    offset: int,
    transport: int,
    end: int,
    source: bytes,
    destination: bytes,
    fragment_key: FragmentKey | None,
) -> Classified:
    if end - transport < 20:
        return _MALFORMED
    source_port, destination_port, sequence, data_offset, flags = _TCP_FIELDS.unpack_from(
        frame, transport
    )
    header_length = (data_offset >> 4) * 4
    # A first fragment may end inside the options; only a whole packet must hold them.
    if header_length < 20 or (fragment_key is None and transport + header_length > end):
        return _MALFORMED
    return _new(
        Classified,
        (
            _KIND_TCP,
            _new(SessionKey, (TCP, source, source_port, destination, destination_port)),
            flags,
            offset,
            transport + header_length,
            sequence,
            None,
            fragment_key,
            0,
        ),
    )


def _udp(
    frame: bytes,
    offset: int,
    transport: int,
    end: int,
    source: bytes,
    destination: bytes,
    fragment_key: FragmentKey | None,
) -> Classified:
    if end - transport < 8:
        return _MALFORMED
    source_port, destination_port, length = _UDP_FIELDS.unpack_from(frame, transport)
    # The length covers the whole datagram, which a first fragment only begins.
    if fragment_key is None and length != end - transport:
        return _MALFORMED
    return _new(
        Classified,
        (
            _KIND_UDP,
            _new(SessionKey, (UDP, source, source_port, destination, destination_port)),
            0,
            offset,
            transport + 8,
            0,
            None,
            fragment_key,
            0,
        ),
    )
