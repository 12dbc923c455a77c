"""Every netlink change the appliance makes, through pyroute2's IPRoute.

Synchronous on purpose: the daemon calls these from a worker thread
(`trio.to_thread.run_sync`), and each call opens and closes its own IPRoute,
which is cheap (about half a millisecond) and never shares a netlink socket
between threads.

`bridge_interface` moves a NIC into a bridge without cutting the host off:
snapshot the addresses and routes, create the bridge with the NIC's MAC and
MTU, enslave the NIC, add the addresses to the bridge, remove them from the
NIC (IPv4 routes go with them), then re-create the routes on the bridge.
`unbridge_interface` does the reverse. Both are idempotent, and refuse with a
one-line error, having changed nothing, when the interface does not exist,
belongs to another bridge, or the caller lacks CAP_NET_ADMIN.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from appliance.errors import UserError

log = logging.getLogger(__name__)

RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTPROT_RA = 9
RT_SCOPE_LINK = 253
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80
SYSCTL = Path("/proc/sys/net")


@contextmanager
def _netlink(action: str) -> Iterator[IPRoute]:
    """An IPRoute whose netlink errors become one-line UserErrors."""
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as error:
        if error.code == errno.EPERM:
            raise UserError(f"{action} needs CAP_NET_ADMIN: run it as root") from None
        raise UserError(
            f"{action} failed: {error.args[1] if len(error.args) > 1 else error}"
        ) from None


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _require_index(ipr: IPRoute, name: str) -> int:
    index = _index(ipr, name)
    if index is None:
        raise UserError(f"there is no interface named {name!r} (see `ip link`)")
    return index


def _link(ipr: IPRoute, index: int) -> Any:
    return ipr.link("get", index=index)[0]


def _kind(link: Any) -> str | None:
    kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
    return str(kind) if kind else None


def _master_name(ipr: IPRoute, link: Any) -> str | None:
    master = link.get("IFLA_MASTER")
    if not master:
        return None
    return str(_link(ipr, master).get("IFLA_IFNAME"))


def write_sysctl(path: str, value: int | str) -> None:
    """Write /proc/sys/net/<path>: settings of this network namespace only."""
    target = SYSCTL / path
    try:
        target.write_text(f"{value}\n")
    except PermissionError:
        raise UserError(f"writing net.{path.replace('/', '.')} needs CAP_NET_ADMIN") from None
    except OSError as error:
        raise UserError(f"cannot write net.{path.replace('/', '.')}: {error.strerror}") from None


# -------------------------------------------------------- addresses and routes


def _movable_addresses(ipr: IPRoute, index: int) -> list[Any]:
    """Addresses an operator configured: IPv4 ones, and permanent global IPv6 ones.

    Link-local and autoconfigured IPv6 addresses stay; the bridge makes its own.
    IPv4 primaries come first (the first address of a subnet becomes primary).
    """
    chosen = []
    for address in ipr.addr("dump", index=index):
        flags = address.get("IFA_FLAGS") or address["flags"]
        if address["family"] == socket.AF_INET6 and (
            address["scope"] == RT_SCOPE_LINK or not flags & IFA_F_PERMANENT
        ):
            continue
        chosen.append(address)
    chosen.sort(
        key=lambda address: (
            address["family"],
            bool((address.get("IFA_FLAGS") or address["flags"]) & IFA_F_SECONDARY),
        )
    )
    return chosen


def _movable_routes(ipr: IPRoute, index: int) -> list[Any]:
    """Main-table routes out of `index`, except those the kernel or RAs will redo."""
    return [
        route
        for family in (socket.AF_INET, socket.AF_INET6)
        for route in ipr.route("dump", family=family, table=RT_TABLE_MAIN, oif=index)
        if route["proto"] not in (RTPROT_KERNEL, RTPROT_RA)
    ]


def _route_spec(route: Any, oif: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "family": route["family"],
        "dst_len": route["dst_len"],
        "table": RT_TABLE_MAIN,
        "oif": oif,
        "proto": route["proto"],
        "scope": route["scope"],
        "type": route["type"],
    }
    for attribute, key in (
        ("RTA_DST", "dst"),
        ("RTA_GATEWAY", "gateway"),
        ("RTA_PRIORITY", "priority"),
        ("RTA_PREFSRC", "prefsrc"),
    ):
        if route.get(attribute) is not None:
            spec[key] = route.get(attribute)
    return spec


def _local_address(address: Any) -> str:
    """An IPv4 address's own address (IFA_LOCAL; IFA_ADDRESS is the peer's on
    point-to-point links, and the same otherwise)."""
    return str(address.get("IFA_LOCAL") or address.get("IFA_ADDRESS"))


def _other_ports(ipr: IPRoute, bridge_index: int, interface_index: int) -> list[Any]:
    """The bridge's ports other than `interface_index`."""
    return [
        port
        for port in ipr.link("dump")
        if port.get("IFLA_MASTER") == bridge_index and port["index"] != interface_index
    ]


def _address_spec(address: Any, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "index": index,
        "address": address.get("IFA_ADDRESS"),
        "prefixlen": address["prefixlen"],
    }
    if address["family"] == socket.AF_INET:
        spec["local"] = _local_address(address)
        if address.get("IFA_BROADCAST"):
            spec["broadcast"] = address.get("IFA_BROADCAST")
    else:
        spec["flags"] = IFA_F_NODAD  # the address already passed duplicate detection
    return spec


def _describe(address: Any) -> str:
    return f"{address.get('IFA_ADDRESS')}/{address['prefixlen']}"


def _move_addresses_and_routes(ipr: IPRoute, source: int, target: int) -> tuple[list[str], int]:
    addresses = _movable_addresses(ipr, source)
    routes = _movable_routes(ipr, source)
    for address in addresses:
        ipr.addr("replace", **_address_spec(address, target))
    for address in reversed(addresses):  # secondaries before their primary
        try:
            ipr.addr(
                "del",
                index=source,
                address=address.get("IFA_ADDRESS"),
                prefixlen=address["prefixlen"],
            )
        except NetlinkError as error:
            if error.code != errno.EADDRNOTAVAIL:  # went with its primary already
                raise
    for route in routes:
        ipr.route("replace", **_route_spec(route, target))
    for route in _movable_routes(ipr, source):  # IPv6 gateway routes stay behind
        try:
            ipr.route("del", **_route_spec(route, source))
        except NetlinkError as error:
            if error.code != errno.ESRCH:
                raise
    return [_describe(address) for address in addresses], len(routes)


# ------------------------------------------------------------------ bridge


@dataclass
class BridgeReport:
    interface: str
    bridge: str
    created: bool
    addresses: list[str] = field(default_factory=list)
    routes: int = 0

    def __str__(self) -> str:
        if not self.created and not self.addresses and not self.routes:
            return f"{self.interface} is already a port of {self.bridge}; nothing to do"
        moved = ", ".join(self.addresses) or "no addresses"
        verb = "created" if self.created else "completed"
        return (
            f"{verb} bridge {self.bridge} with {self.interface}; moved {moved} "
            f"and {self.routes} route(s) to {self.bridge}"
        )


def bridge_interface(interface: str, bridge: str) -> BridgeReport:
    """Put `interface` into `bridge`, moving its addresses and routes onto the bridge."""
    action = f"bridging {interface} into {bridge}"
    with _netlink(action) as ipr:
        index = _require_index(ipr, interface)
        link = _link(ipr, index)
        if _kind(link) == "bridge":
            raise UserError(f"{interface} is itself a bridge; give the NIC to bridge instead")
        master = _master_name(ipr, link)
        if master is not None and master != bridge:
            raise UserError(
                f"{interface} is already a port of bridge {master!r}; "
                f"use --bridge {master} or release it first (ip link set {interface} nomaster)"
            )
        bridge_index = _index(ipr, bridge)
        if bridge_index is not None and _kind(_link(ipr, bridge_index)) != "bridge":
            raise UserError(f"{bridge!r} exists and is not a bridge; choose another --bridge")
        if bridge_index is not None and master is None:
            # A TAP port is an appliance's (gone with its process); any other
            # port is another segment, which this would join to IFACE's.
            nics = [
                str(port.get("IFLA_IFNAME"))
                for port in _other_ports(ipr, bridge_index, index)
                if _kind(port) != "tun"
            ]
            if nics:
                raise UserError(
                    f"bridge {bridge!r} already holds {', '.join(nics)}; adding {interface} "
                    f"would join two segments: use --interface {nics[0]}, or another --bridge"
                )
        created = bridge_index is None
        if created:
            ipr.link(
                "add",
                ifname=bridge,
                kind="bridge",
                address=link.get("IFLA_ADDRESS"),
                br_stp_state=0,
                br_forward_delay=0,
            )
            bridge_index = _require_index(ipr, bridge)
        assert bridge_index is not None
        try:
            # The MTU given at creation follows the first port; set it after.
            ipr.link("set", index=bridge_index, mtu=link.get("IFLA_MTU"))
            ipr.link("set", index=bridge_index, state="up")
            if master is None:
                ipr.link("set", index=index, master=bridge_index)
            addresses, routes = _move_addresses_and_routes(ipr, index, bridge_index)
        except (NetlinkError, UserError):
            if created:
                _undo_bridge(ipr, index, bridge_index)
            raise
    # The bridge answers ARP only for its own addresses, and announces its own
    # address, never the cluster IP (which lives on the TUN device).
    write_sysctl(f"ipv4/conf/{bridge}/arp_ignore", 1)
    write_sysctl(f"ipv4/conf/{bridge}/arp_announce", 2)
    return BridgeReport(interface, bridge, created, addresses, routes)


def _undo_bridge(ipr: IPRoute, index: int, bridge_index: int) -> None:
    log.warning("rolling back: moving addresses back and deleting the new bridge")
    try:
        ipr.link("set", index=index, master=0)
        _move_addresses_and_routes(ipr, bridge_index, index)
        ipr.link("del", index=bridge_index)
    except NetlinkError as error:
        log.error("rollback incomplete: %s", error)


@dataclass
class UnbridgeReport:
    interface: str
    bridge: str
    removed: bool
    addresses: list[str] = field(default_factory=list)
    routes: int = 0

    def __str__(self) -> str:
        if not self.removed:
            return f"{self.interface} is not a port of {self.bridge}; nothing to do"
        moved = ", ".join(self.addresses) or "no addresses"
        return (
            f"removed bridge {self.bridge}; {self.interface} has its {moved} "
            f"and {self.routes} route(s) back"
        )


def unbridge_interface(interface: str, bridge: str) -> UnbridgeReport:
    """Undo `bridge_interface`: addresses and routes back to `interface`, bridge deleted."""
    with _netlink(f"unbridging {interface} from {bridge}") as ipr:
        index = _require_index(ipr, interface)
        master = _master_name(ipr, _link(ipr, index))
        if master != bridge:
            if master is not None:
                raise UserError(f"{interface} is a port of {master!r}, not {bridge!r}")
            return UnbridgeReport(interface, bridge, removed=False)
        bridge_index = _require_index(ipr, bridge)
        others = [str(port.get("IFLA_IFNAME")) for port in _other_ports(ipr, bridge_index, index)]
        if others:
            raise UserError(
                f"{bridge} still has other ports ({', '.join(others)}); "
                "stop the appliance (or remove them) first"
            )
        ipr.link("set", index=index, master=0)
        addresses, routes = _move_addresses_and_routes(ipr, bridge_index, index)
        ipr.link("del", index=bridge_index)
    return UnbridgeReport(interface, bridge, removed=True, addresses=addresses, routes=routes)


# ----------------------------------------------------------- daemon devices


@dataclass(frozen=True)
class BridgeFacts:
    mtu: int
    ipv4: IPv4Address | None  # the bridge's primary IPv4 address, the source of claims
    mac: str  # frames the kernel fast path hands to the local stack get this destination


def bridge_facts(bridge: str) -> BridgeFacts:
    with _netlink(f"reading {bridge}") as ipr:
        index = _require_index(ipr, bridge)
        link = _link(ipr, index)
        ipv4 = None
        for address in _movable_addresses(ipr, index):
            if address["family"] == socket.AF_INET:
                ipv4 = IPv4Address(_local_address(address))
                break
        return BridgeFacts(
            mtu=int(link.get("IFLA_MTU")), ipv4=ipv4, mac=str(link.get("IFLA_ADDRESS"))
        )


# Frames the bridge may queue for the appliance while it is busy. Longer than
# the kernel's default (1000) so that bursts are absorbed rather than dropped;
# at most this many frames (of at most 64 KB each) wait in the kernel.
TAP_QUEUE_LENGTH = 4096


def _disable_ipv6(device: str) -> None:
    """No IPv6 of its own (no link-local address, no router solicitations)."""
    if (SYSCTL / "ipv6" / "conf" / device / "disable_ipv6").exists():
        write_sysctl(f"ipv6/conf/{device}/disable_ipv6", 1)


def attach_tap(tap: str, bridge: str, mtu: int) -> None:
    """Make the TAP a quiet port of the bridge: no IPv6 of its own, same MTU, up."""
    _disable_ipv6(tap)
    with _netlink(f"adding {tap} to {bridge}") as ipr:
        index = _require_index(ipr, tap)
        ipr.link("set", index=index, mtu=mtu, txqlen=TAP_QUEUE_LENGTH)
        ipr.link("set", index=index, master=_require_index(ipr, bridge))
        ipr.link("set", index=index, state="up")


def configure_tun(tun: str, cluster_ip: IPv4Address, mtu: int) -> None:
    """Give the TUN the cluster IP, and accept packets from any client on it.

    Reverse-path filtering uses max(conf.all, conf.<dev>): loose mode (2) on
    the TUN accepts clients routed via the bridge whatever `all` says.
    """
    _disable_ipv6(tun)
    write_sysctl(f"ipv4/conf/{tun}/rp_filter", 2)
    with _netlink(f"configuring {tun}") as ipr:
        index = _require_index(ipr, tun)
        ipr.link("set", index=index, mtu=mtu)
        ipr.addr("replace", index=index, address=str(cluster_ip), prefixlen=32)
        ipr.link("set", index=index, state="up")


def delete_link(name: str) -> None:
    """Delete a device this daemon made persistent (the TUN on the fast path);
    nothing if it is gone already."""
    with _netlink(f"deleting {name}") as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


def address_in_use(cluster_ip: IPv4Address, except_device: str) -> str | None:
    """The interface already holding `cluster_ip` in this namespace, if any."""
    with _netlink("reading addresses") as ipr:
        for address in ipr.addr("dump", family=socket.AF_INET):
            if address.get("IFA_LOCAL") == str(cluster_ip):
                name = str(_link(ipr, address["index"]).get("IFLA_IFNAME"))
                if name != except_device:
                    return name
    return None
