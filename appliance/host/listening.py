"""Which ports the local service listens on, from the kernel's socket tables.

A member claims a TCP session only if a socket listens on the cluster port
(bound to the wildcard address or to the cluster address), and a UDP flow
only if a socket is bound there. The tables are those of the current network
namespace (/proc/net is per namespace).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
WILDCARD_V4 = "00000000"
WILDCARD_V6 = "00000000000000000000000000000000"


def _hex_ipv4(address: IPv4Address) -> str:
    """/proc/net/tcp writes an IPv4 address as one host-order (little-endian) word."""
    return address.packed[::-1].hex().upper()


def _hex_mapped_ipv6(address: IPv4Address) -> str:
    """The IPv4-mapped IPv6 address ::ffff:a.b.c.d as /proc/net/tcp6 writes it."""
    mapped = bytes(10) + b"\xff\xff" + address.packed
    words = [mapped[index : index + 4][::-1] for index in range(0, 16, 4)]
    return b"".join(words).hex().upper()


def parse_socket_table(text: str, state: str, accepted: set[str]) -> set[int]:
    """Local ports of sockets in `state` bound to one of the `accepted` addresses."""
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != state:
            continue
        address, _, port = fields[1].partition(":")
        if address in accepted:
            ports.add(int(port, 16))
    return ports


# TCP states of a connection still to be served or closed: SYN_RECV, ESTABLISHED,
# FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
TCP_SERVING = ("03", "01", "04", "05", "08", "09", "0B")


def connections_on(cluster_ip: IPv4Address, proc_net: Path = Path("/proc/net")) -> int:
    """TCP connections of the local stack on the cluster address, not yet closed:
    on the fast path, sessions of a held bucket reach the stack with no state
    in the daemon, and a drain is over only once they are gone."""
    accepted = {
        "tcp": _hex_ipv4(cluster_ip),
        "tcp6": _hex_mapped_ipv6(cluster_ip),
    }
    count = 0
    for name, address in accepted.items():
        try:
            text = (proc_net / name).read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 4 and fields[3] in TCP_SERVING and fields[1].startswith(address):
                count += 1
    return count


def listening_ports(
    cluster_ip: IPv4Address, proc_net: Path = Path("/proc/net")
) -> frozenset[tuple[int, int]]:
    """(transport, port) pairs the local service accepts on the cluster address."""
    accepted_v4 = {WILDCARD_V4, _hex_ipv4(cluster_ip)}
    accepted_v6 = {WILDCARD_V6, _hex_mapped_ipv6(cluster_ip)}
    pairs: set[tuple[int, int]] = set()
    for name, transport, state, accepted in (
        ("tcp", 6, TCP_LISTEN, accepted_v4),
        ("tcp6", 6, TCP_LISTEN, accepted_v6),
        ("udp", 17, UDP_UNCONNECTED, accepted_v4),
        ("udp6", 17, UDP_UNCONNECTED, accepted_v6),
    ):
        try:
            text = (proc_net / name).read_text()
        except OSError:
            continue  # IPv6 disabled, for instance
        pairs.update((transport, port) for port in parse_socket_table(text, state, accepted))
    return frozenset(pairs)
