"""Every protocol number, EtherType, flag value and fixed header layout, once.

The wire declarations, the classifier, the claim machine, the simulator and
the I/O shell import these names from here; a hot path may alias one to a
local name, never write the number again. Values are the IANA assignments
(RFC 791, 793, 768, 792, 4443, 8200 and the 802.1Q tag).
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag


class EtherType(IntEnum):
    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100  # an 802.1Q tag follows, then the real EtherType
    IPV6 = 0x86DD


ETHERNET_HEADER_LENGTH = 14  # destination, source, EtherType
VLAN_TAG_LENGTH = 4  # tag protocol 0x8100, then priority, DEI and VLAN id


class IpProtocol(IntEnum):
    """IPv4 protocol and IPv6 next-header numbers the appliance reads."""

    HOP_BY_HOP = 0  # IPv6 extension headers ...
    ROUTING = 43
    FRAGMENT = 44
    AUTHENTICATION = 51
    DESTINATION_OPTIONS = 60
    MOBILITY = 135
    HOST_IDENTITY = 139
    SHIM6 = 140
    EXPERIMENT_1 = 253
    EXPERIMENT_2 = 254  # ... up to here
    ICMP = 1
    TCP = 6
    UDP = 17
    IPV6_ICMP = 58


# IPv6 extension headers whose length is (byte 1 + 1) * 8; the fragment header
# (fixed 8 bytes) and the authentication header ((byte 1 + 2) * 4) differ.
IPV6_GENERIC_EXTENSIONS = frozenset(
    {
        IpProtocol.HOP_BY_HOP,
        IpProtocol.ROUTING,
        IpProtocol.DESTINATION_OPTIONS,
        IpProtocol.MOBILITY,
        IpProtocol.HOST_IDENTITY,
        IpProtocol.SHIM6,
        IpProtocol.EXPERIMENT_1,
        IpProtocol.EXPERIMENT_2,
    }
)

# The claim protocol's IP protocol number, unless configured otherwise: 150 is
# unassigned by IANA (and so is every number from 143 to 252).
DEFAULT_CLAIM_PROTOCOL = 150


class TcpFlags(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


class Icmpv4Type(IntEnum):
    ECHO_REPLY = 0
    DESTINATION_UNREACHABLE = 3
    SOURCE_QUENCH = 4
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12


# Error types: the payload quotes the offending packet.
ICMPV4_ERROR_TYPES = frozenset(
    {
        Icmpv4Type.DESTINATION_UNREACHABLE,
        Icmpv4Type.SOURCE_QUENCH,
        Icmpv4Type.TIME_EXCEEDED,
        Icmpv4Type.PARAMETER_PROBLEM,
    }
)
FRAGMENTATION_NEEDED = 4  # a code of DESTINATION_UNREACHABLE


class Icmpv6Type(IntEnum):
    DESTINATION_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAMETER_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    NEIGHBOR_SOLICITATION = 135
    NEIGHBOR_ADVERTISEMENT = 136


ICMPV6_ERROR_TYPES = frozenset(
    {
        Icmpv6Type.DESTINATION_UNREACHABLE,
        Icmpv6Type.PACKET_TOO_BIG,
        Icmpv6Type.TIME_EXCEEDED,
        Icmpv6Type.PARAMETER_PROBLEM,
    }
)

# The IPv4 header without options, as `struct` reads it: version and IHL,
# type of service, total length, identification, flags and fragment offset,
# TTL, protocol, checksum, source, destination. `protocols.wire.ipv4` declares
# the same header in full (with options); a test holds the two together.
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV4_HEADER_LENGTH = IPV4_HEADER.size  # 20: without options
IPV4_VERSION_IHL = 0x45  # version 4, five 32-bit words: no options
IPV4_CHECKSUM_OFFSET = 10
IPV4_DONT_FRAGMENT = 0x4000
IPV4_MORE_FRAGMENTS = 0x2000
IPV4_FRAGMENT_OFFSET = 0x1FFF  # the mask of the offset in the flags-and-offset field
IPV6_HEADER_LENGTH = 40
TCP_HEADER_LENGTH = 20  # without options
UDP_HEADER_LENGTH = 8
ICMP_HEADER_LENGTH = 8  # type, code, checksum and four bytes of rest-of-header
