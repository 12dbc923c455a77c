"""The cluster MAC: the Ethernet address every member answers ARP with.

It is a hash of the cluster IP, so every member derives the same address with
no configuration. By default it is a locally administered unicast address
(first octet 0x02 set, 0x01 clear): no frame is ever sent with it as source,
so switches never learn it and flood frames for it to every port. Some
switches rate-limit or drop unknown unicast floods; for those, multicast mode
sets the group bit (first octet 0x03), which switches flood by design.
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address

from protocols.wire.common import MacAddress

DOMAIN = b"appliance cluster MAC v1:"


def cluster_mac(cluster_ip: IPv4Address | IPv6Address, *, multicast: bool = False) -> MacAddress:
    digest = hashlib.sha256(DOMAIN + cluster_ip.packed).digest()
    first = 0x03 if multicast else 0x02
    return MacAddress(bytes([first]) + digest[:5])
