"""`appliance-ctl bridge` and `unbridge` in a namespace, against the real kernel."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lab.members import appliance_command
from lab.namespaces import Lab, Node, build_lab


@pytest.fixture
def host() -> Iterator[tuple[Lab, Node]]:
    """A member with a static IPv4 and IPv6 address, a default route and an extra route."""
    with build_lab(members=1, clients=1) as segment:
        node = segment.members[0]
        node.run(["ip", "addr", "add", "fd00:77::11/64", "dev", "eth0", "nodad"])
        node.run(["ip", "link", "set", "eth0", "mtu", "1400"])
        node.run(["ip", "route", "add", "default", "via", "10.77.0.1"])
        node.run(["ip", "route", "add", "198.51.100.0/24", "via", "10.77.0.101", "metric", "50"])
        node.run(["ip", "-6", "route", "add", "fd00:99::/64", "via", "fd00:77::101"])
        yield segment, node


def ctl(node: Node, *arguments: str) -> subprocess.CompletedProcess[str]:
    return node.run([*appliance_command(), *arguments], check=False)


@dataclass(frozen=True)
class NetworkState:
    addresses: dict[str, list[str]]
    routes: list[str]
    links: dict[str, tuple[str, int]]


def network_state(node: Node) -> NetworkState:
    """Addresses, routes and links as the kernel reports them, link-local aside."""

    def query(*arguments: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(node.run(["ip", "-j", *arguments]).stdout)
        return result

    addresses = {
        link["ifname"]: sorted(
            f"{entry['local']}/{entry['prefixlen']}"
            for entry in link.get("addr_info", [])
            if entry.get("scope") != "link"
        )
        for link in query("addr", "show")
    }
    routes = sorted(
        f"{route.get('dst')} via {route.get('gateway', '-')} dev {route.get('dev')} "
        f"metric {route.get('metric', 0)}"
        for family in ("-4", "-6")
        for route in query(family, "route", "show")
        if not str(route.get("dst", "")).startswith("fe80")
        and route.get("protocol") not in ("kernel", "ra")
    )
    links = {link["ifname"]: (link["address"], link["mtu"]) for link in query("link", "show")}
    return NetworkState(addresses, routes, links)


def sysctl(node: Node, path: str) -> str:
    return node.run(["cat", f"/proc/sys/net/{path}"]).stdout.strip()


def test_bridge_moves_addresses_and_routes_and_keeps_mac_mtu(host: tuple[Lab, Node]) -> None:
    segment, node = host
    before = network_state(node)
    result = ctl(node, "bridge", "eth0")
    assert result.returncode == 0, result.stderr
    after = network_state(node)
    assert after.addresses["br0"] == before.addresses["eth0"]
    assert after.addresses["eth0"] == []
    assert after.links["br0"] == before.links["eth0"]
    assert {route.replace("dev eth0", "dev br0") for route in before.routes} == set(after.routes)
    assert "master br0" in node.run(["ip", "link", "show", "eth0"]).stdout
    assert sysctl(node, "ipv4/conf/br0/arp_ignore") == "1"
    assert sysctl(node, "ipv4/conf/br0/arp_announce") == "2"
    # The host keeps its reachability: a connection to a closed port is refused by
    # the host itself (a RST), not lost.
    reply = segment.clients[0].run(
        ["bash", "-c", f"timeout 5 bash -c 'exec 3<>/dev/tcp/{node.address}/22'"], check=False
    )
    assert "Connection refused" in reply.stderr, reply.stderr


def test_bridge_twice_is_harmless_and_unbridge_restores(host: tuple[Lab, Node]) -> None:
    _, node = host
    before = network_state(node)
    assert ctl(node, "bridge", "eth0").returncode == 0
    bridged = network_state(node)
    second = ctl(node, "bridge", "eth0")
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert network_state(node) == bridged
    undone = ctl(node, "unbridge", "eth0")
    assert undone.returncode == 0, undone.stderr
    assert network_state(node) == before
    again = ctl(node, "unbridge", "eth0")
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.parametrize(
    ("setup", "arguments", "message"),
    [
        ([], ["bridge", "eth7"], "there is no interface named 'eth7'"),
        (
            [
                ["ip", "link", "add", "other0", "type", "bridge"],
                ["ip", "link", "set", "eth0", "master", "other0"],
            ],
            ["bridge", "eth0"],
            "eth0 is already a port of bridge 'other0'",
        ),
        (
            [["ip", "link", "add", "br0", "type", "veth"]],
            ["bridge", "eth0"],
            "'br0' exists and is not a bridge",
        ),
        (
            # br0 already bridges another NIC: eth0 would join the two segments.
            [
                ["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"],
                ["ip", "link", "add", "br0", "type", "bridge"],
                ["ip", "link", "set", "eth1", "master", "br0"],
            ],
            ["run", "--cluster-ip", "10.77.0.10", "--interface", "eth0"],
            "bridge 'br0' already holds eth1; adding eth0 would join two segments",
        ),
    ],
)
def test_refusals_are_one_line_and_change_nothing(
    host: tuple[Lab, Node], setup: list[list[str]], arguments: list[str], message: str
) -> None:
    _, node = host
    for command in setup:
        node.run(command)
    before = network_state(node)
    result = ctl(node, *arguments)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert network_state(node) == before


def test_without_privilege_it_refuses_and_changes_nothing(host: tuple[Lab, Node]) -> None:
    _, node = host
    before = network_state(node)
    result = node.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            *appliance_command(),
            "bridge",
            "eth0",
        ],
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "needs CAP_NET_ADMIN" in result.stderr and result.stderr.count("\n") == 1
    assert network_state(node) == before
