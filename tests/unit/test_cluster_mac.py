from ipaddress import IPv4Address, IPv6Address

from protocols.cluster_mac import cluster_mac


def test_every_member_derives_the_same_locally_administered_unicast_mac() -> None:
    first = cluster_mac(IPv4Address("192.0.2.10"))
    assert first == cluster_mac(IPv4Address("192.0.2.10"))
    assert first.is_locally_administered and not first.is_multicast
    assert first != cluster_mac(IPv4Address("192.0.2.11"))


def test_multicast_mode_sets_the_group_bit() -> None:
    mac = cluster_mac(IPv4Address("192.0.2.10"), multicast=True)
    assert mac.is_multicast and mac.is_locally_administered
    assert mac[1:] == cluster_mac(IPv4Address("192.0.2.10"))[1:]


def test_ipv6_addresses_hash_too() -> None:
    assert cluster_mac(IPv6Address("2001:db8::10")).is_locally_administered
