"""The key that names one session: transport, client end and cluster end."""

from __future__ import annotations

from ipaddress import ip_address
from typing import NamedTuple

TRANSPORT_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


class SessionKey(NamedTuple):
    """A session seen from the cluster: who connected, to which cluster port.

    A NamedTuple rather than a dataclass because the fast path builds one per
    frame and uses it as a dict key; tuples are several times cheaper.
    Addresses are raw bytes: 4 for IPv4, 16 for IPv6.
    """

    transport: int
    client_address: bytes
    client_port: int
    cluster_address: bytes
    cluster_port: int

    @property
    def family(self) -> int:
        return 4 if len(self.client_address) == 4 else 6

    def __str__(self) -> str:
        name = TRANSPORT_NAMES.get(self.transport, str(self.transport))
        client = ip_address(self.client_address)
        cluster = ip_address(self.cluster_address)
        if self.family == 6:
            return f"{name} [{client}]:{self.client_port} -> [{cluster}]:{self.cluster_port}"
        return f"{name} {client}:{self.client_port} -> {cluster}:{self.cluster_port}"
