"""The kernel fast path: a bridge-family nftables table that carries decided sessions.

The appliance owns one table, `bridge appliance`, in its network namespace.
At the bridge's prerouting hook, ahead of br_netfilter and conntrack
(priority -300, `dstnat`), every IPv4 frame to the cluster MAC and address
meets these rules, in order:

1. fragments and TCP SYNs go on to the TAP: the claim machine decides
   sessions;
2. a session in `owned4` (client address . protocol . client port . cluster
   port) is handed to the local stack (Ethernet destination set to the
   bridge's MAC, `meta pkttype set host`), and its element's timeout is
   refreshed (`update`): the kernel serves it with no Python in the way;
   its FIN and RST go on to the TAP instead, so that the claim machine knows
   when it ends (and injects them itself);
3. any other TCP segment is dropped in the kernel: a mid-stream packet (or
   the end) of a session this member does not serve (another's, or one it
   never saw start, so a late joiner still never claims it). Without its
   handshake or its end, the claim machine forgets such a session after
   `handshake_timeout`. This rule lives in its own chain,
   `foreign_tcp4`, which is emptied while the set is full (`degrade`): new
   sessions are then served on the TUN path, with every packet through Python;
4. a UDP flow in `foreign4` (asserted by another member) is dropped;
5. everything else (new UDP flows, ICMP, claims, ARP) goes on to the TAP.

Claimed buckets (protocols.buckets) come on top, for the bucket ports in
`bucket_ports4` (the ports every member serves). A packet's bucket is
`jhash ip saddr . th sport mod BUCKETS seed SEED`, put in the packet's mark
(cleared again before the host sees it):

- a SYN of a session in no per-session set, in a bucket in `mine_tcp4`
  (held, with the lease as its timeout), goes to the local stack at once,
  and one in `other4` (held by, or granted to, another member) is dropped:
  no Python and no state on any member, so the owner's SYN cookies take a
  flood; a SYN of an open bucket goes on to the TAP and its claim;
- a later TCP segment of a bucket in `history4` (held now, or within the TCP
  idle timeout) goes to the local stack: the sessions of a bucket this member
  held stay its own when the bucket moves, since only a SYN starts one. Its
  stack has no socket for the new holder's sessions, and answers them with a
  reset that carries no ACK, which the `output` chain drops for the cluster
  address (so a stray segment never resets a session another member serves);
- a new UDP flow in `mine_udp4` (held, and past the UDP transition) goes to
  the local stack, one in `other4` is dropped.

Elements are added and removed at the rate sessions are decided, in one
nfnetlink batch per wake-up written with `struct` on a netlink socket (the
kernel commits a batch inside `sendmsg`, so an element is in place before the
session's first packet is injected). The ruleset itself is loaded, read back
and removed with the `nft` command, from a worker thread. See README
"The kernel fast path" for the measurements behind this choice.

An owned TCP element is added with `handshake_timeout` and refreshed to
`tcp_idle_timeout` by every packet, so an element whose expiry is past
`handshake_timeout` belongs to an established connection, and an expiry
tells when the session's last packet passed (`PathTimeouts` reads both).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address

from appliance.errors import UserError
from protocols.claim_machine import Activity
from protocols.numbers import IpProtocol
from protocols.session_key import SessionKey
from protocols.session_lifecycle import SERVED_HERE, Phase
from protocols.session_table import NO_MEMBER, Session

log = logging.getLogger(__name__)

TABLE = "appliance"
CARRIED = frozenset({IpProtocol.TCP, IpProtocol.UDP})  # what the sets' rules carry
PROTOCOL_NAMES = {
    "tcp": IpProtocol.TCP,
    "udp": IpProtocol.UDP,
    str(int(IpProtocol.TCP)): IpProtocol.TCP,
    str(int(IpProtocol.UDP)): IpProtocol.UDP,
}
OWNED = "owned4"
FOREIGN = "foreign4"
FOREIGN_TCP_CHAIN = "foreign_tcp4"
MINE_TCP = "mine_tcp4"
MINE_UDP = "mine_udp4"
OTHER = "other4"
HISTORY = "history4"
BUCKET_PORTS = "bucket_ports4"
# Counters of what the kernel served at once: SYNs and first datagrams of held buckets.
NEW_TCP = "new_tcp4"
NEW_UDP = "new_udp4_flows"

# nfnetlink, from linux/netfilter/nfnetlink.h and nf_tables.h.
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NFPROTO_BRIDGE = 7
NLM_F_REQUEST = 0x01
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_DATA_VALUE = 1

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NFGENMSG = struct.Struct("!BBH")  # family, version, resource id
_NLATTR = struct.Struct("=HH")  # length, type
_ERROR = struct.Struct("=i")
# Elements per nfnetlink batch: the list attribute holds at most 64 KiB, and an
# element with its key and timeout takes about 40 bytes.
MAX_BATCH = 1024


def element_key(key: SessionKey) -> bytes:
    """The set key of a session, as the kernel stores `ipv4_addr . inet_proto .
    inet_service . inet_service`: each field padded to a 32-bit register."""
    return (
        key.client_address
        + bytes((key.transport, 0, 0, 0))
        + key.client_port.to_bytes(2, "big")
        + b"\0\0"
        + key.cluster_port.to_bytes(2, "big")
        + b"\0\0"
    )


def _attribute(kind: int, payload: bytes) -> bytes:
    header = _NLATTR.pack(_NLATTR.size + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def _message(
    kind: int, flags: int, sequence: int, family: int, resource: int, body: bytes
) -> bytes:
    payload = _NFGENMSG.pack(family, 0, resource) + body
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, flags, sequence, 0) + payload


def mark_key(bucket: int) -> bytes:
    """The set key of a bucket number, as the kernel stores a mark (host byte order)."""
    return bucket.to_bytes(4, sys.byteorder)


Elements = Sequence[tuple[bytes, int | None]]


def element_batch(operation: int, set_name: str, elements: Elements, sequence: int) -> bytes:
    """One nfnetlink batch that adds (NFT_MSG_NEWSETELEM) or removes
    (NFT_MSG_DELSETELEM) `elements`, each a key and a timeout in milliseconds
    (None: the set's default). The batch's messages are numbered from `sequence`."""
    return element_transaction([(operation, set_name, elements)], sequence)


def element_transaction(operations: Sequence[tuple[int, str, Elements]], sequence: int) -> bytes:
    """One nfnetlink batch of several element operations, committed together
    or not at all; its messages are numbered from `sequence`."""
    body = b"".join(
        _element_message(operation, set_name, elements, sequence + 1 + index)
        for index, (operation, set_name, elements) in enumerate(operations)
    )
    return (
        _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, sequence, 0, NFNL_SUBSYS_NFTABLES, b"")
        + body
        + _message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            sequence + 1 + len(operations),
            0,
            NFNL_SUBSYS_NFTABLES,
            b"",
        )
    )


def _element_message(operation: int, set_name: str, elements: Elements, sequence: int) -> bytes:
    listed = b"".join(
        _attribute(
            NFTA_LIST_ELEM | NLA_F_NESTED,
            _attribute(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attribute(NFTA_DATA_VALUE, key))
            + (
                b""
                if timeout is None
                else _attribute(NFTA_SET_ELEM_TIMEOUT, timeout.to_bytes(8, "big"))
            ),
        )
        for key, timeout in elements
    )
    body = (
        _attribute(NFTA_SET_ELEM_LIST_TABLE, TABLE.encode() + b"\0")
        + _attribute(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
        + _attribute(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, listed)
    )
    flags = NLM_F_REQUEST | (NLM_F_CREATE if operation == NFT_MSG_NEWSETELEM else 0)
    return _message(NFNL_SUBSYS_NFTABLES << 8 | operation, flags, sequence, NFPROTO_BRIDGE, 0, body)


def element_query(set_name: str, key: bytes, sequence: int) -> bytes:
    """A request for one element of a set (NFT_MSG_GETSETELEM, not a dump)."""
    listed = _attribute(
        NFTA_LIST_ELEM | NLA_F_NESTED,
        _attribute(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attribute(NFTA_DATA_VALUE, key)),
    )
    body = (
        _attribute(NFTA_SET_ELEM_LIST_TABLE, TABLE.encode() + b"\0")
        + _attribute(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
        + _attribute(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, listed)
    )
    kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM
    return _message(kind, NLM_F_REQUEST, sequence, NFPROTO_BRIDGE, 0, body)


def _attributes(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type (nesting flag cleared): (payload start, payload end)."""
    found = {}
    while start + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, start)
        if length < _NLATTR.size:
            break
        found[kind & ~NLA_F_NESTED] = (start + _NLATTR.size, start + length)
        start += (length + 3) & ~3
    return found


def expiration_in(reply: bytes) -> int | None:
    """Milliseconds until the element in an NFT_MSG_NEWSETELEM reply expires;
    None for an error reply (no such element) or an element without one."""
    if len(reply) < _NLMSGHDR.size + _NFGENMSG.size:
        return None
    length, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
    if kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM:
        return None
    end = min(length, len(reply))
    top = _attributes(reply, _NLMSGHDR.size + _NFGENMSG.size, end)
    if NFTA_SET_ELEM_LIST_ELEMENTS not in top:
        return None
    listed = _attributes(reply, *top[NFTA_SET_ELEM_LIST_ELEMENTS])
    if NFTA_LIST_ELEM not in listed:
        return None
    element = _attributes(reply, *listed[NFTA_LIST_ELEM])
    if NFTA_SET_ELEM_EXPIRATION not in element:
        return None
    start, stop = element[NFTA_SET_ELEM_EXPIRATION]
    return int.from_bytes(reply[start:stop], "big")


def errors_in(replies: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of each NLMSG_ERROR in `replies` that reports a failure."""
    failures = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(replies):
        length, kind, _, sequence, _ = _NLMSGHDR.unpack_from(replies, offset)
        if length < _NLMSGHDR.size:
            break
        if (
            kind == NLMSG_ERROR
            and length >= _NLMSGHDR.size + _ERROR.size
            and offset + _NLMSGHDR.size + _ERROR.size <= len(replies)
        ):
            (code,) = _ERROR.unpack_from(replies, offset + _NLMSGHDR.size)
            if code:
                failures.append((sequence, -code))
        offset += (length + 3) & ~3
    return failures


@dataclass(frozen=True, slots=True)
class KernelSession:
    """An element of a set, read back: a session and how long ago its last packet passed."""

    key: SessionKey
    age: float  # seconds since its last packet (to the kernel's 1 s resolution)
    refreshed: bool  # a packet refreshed it since it was added (TCP: established)


@dataclass(frozen=True, slots=True)
class Leftover:
    """What a crashed daemon's table still held: sessions, and the buckets'
    history (bucket: seconds left)."""

    sessions: tuple[KernelSession, ...] = ()
    history: dict[int, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.sessions or self.history)


@dataclass(frozen=True, slots=True)
class PathTimeouts:
    """The elements' timeouts, and what an element's expiry says of its session."""

    handshake: float  # an owned TCP element's first timeout
    tcp_idle: float
    udp_idle: float

    def idle(self, transport: int) -> float:
        """The timeout every packet of the session refreshes its element to."""
        return self.tcp_idle if transport == IpProtocol.TCP else self.udp_idle

    def first(self, transport: int, *, established: bool = False) -> float:
        """An element's timeout when it is added: a TCP session that has only
        sent its SYN starts at the handshake timeout."""
        if transport == IpProtocol.TCP and not established:
            return self.handshake
        return self.idle(transport)

    def refreshed(self, transport: int, expires: float) -> bool:
        """Whether a packet past the first refreshed an element expiring in
        `expires` seconds (a UDP flow's first datagram counts)."""
        return transport != IpProtocol.TCP or expires > self.handshake + 1


def ruleset(
    *,
    cluster_ip: IPv4Address,
    cluster_mac: str,
    bridge_mac: str,
    size: int,
    timeouts: PathTimeouts,
    buckets: int = 1024,
    seed: int = 0,
    degraded: bool = False,
    comment: str = "",
) -> str:
    """The table, as an `nft -f` script; see the module docstring for the rules."""
    fields = "ip saddr . ip protocol . th sport . th dport"
    key_type = "ipv4_addr . inet_proto . inet_service . inet_service"
    bucket = f"meta mark set jhash ip saddr . th sport mod {buckets} seed {seed:#x}"
    bucket_port = f"meta l4proto . th dport @{BUCKET_PORTS}"
    bucket_sets = "\n".join(
        f"    set {name} {{ type mark; {'flags timeout; ' if timed else ''}size {buckets}; }}"
        for name, timed in ((MINE_TCP, True), (MINE_UDP, True), (OTHER, False), (HISTORY, True))
    )

    def refresh(set_name: str, timeout: float) -> str:
        return f"update @{set_name} {{ {fields} timeout {int(timeout * 1000)}ms }}"

    tcp_idle, udp_idle = refresh(OWNED, timeouts.tcp_idle), refresh(OWNED, timeouts.udp_idle)
    foreign_idle = refresh(FOREIGN, timeouts.udp_idle)
    return f"""
table bridge {TABLE} {{
    comment "{comment}"
    set {OWNED} {{ type {key_type}; flags timeout; size {size}; }}
    set {FOREIGN} {{ type {key_type}; flags timeout; size {size}; }}
    set {BUCKET_PORTS} {{ type inet_proto . inet_service; flags interval; }}
{bucket_sets}
    counter {NEW_TCP} {{ }}
    counter {NEW_UDP} {{ }}
    chain prerouting {{
        type filter hook prerouting priority dstnat; policy accept;
        ether daddr {cluster_mac} ip daddr {cluster_ip} jump cluster4
    }}
    chain cluster4 {{
        ip frag-off & 0x3fff != 0 return
        tcp flags & (syn | ack | rst) == syn {bucket_port} jump new_tcp4
        tcp flags & syn != 0 return
        {fields} @{OWNED} tcp flags & (fin | rst) != 0 return
        {fields} @{OWNED} meta l4proto tcp {tcp_idle} goto to_host
        {fields} @{OWNED} meta l4proto udp {udp_idle} goto to_host
        meta l4proto tcp {bucket_port} jump held_tcp4
        jump {FOREIGN_TCP_CHAIN}
        {fields} @{FOREIGN} meta l4proto udp {foreign_idle} drop
        meta l4proto udp {bucket_port} jump new_udp4
    }}
    chain new_tcp4 {{
        {fields} @{OWNED} return
        {fields} @{FOREIGN} return
        {bucket}
        meta mark @{MINE_TCP} counter name {NEW_TCP} goto to_host
        meta mark @{OTHER} drop
    }}
    chain held_tcp4 {{
        {bucket}
        meta mark @{HISTORY} goto to_host
    }}
    chain new_udp4 {{
        {bucket}
        meta mark @{MINE_UDP} counter name {NEW_UDP} goto to_host
        meta mark @{OTHER} drop
    }}
    chain {FOREIGN_TCP_CHAIN} {{
        {"" if degraded else "meta l4proto tcp drop"}
    }}
    chain to_host {{
        meta mark set 0 ether daddr set {bridge_mac} meta pkttype set host accept
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        ip saddr {cluster_ip} tcp flags & (rst | ack) == rst drop
    }}
}}
"""


def nft(script: str) -> str:
    """Run an `nft -f` script (blocking: call it from a worker thread)."""
    return _run_nft(["nft", "-f", "-"], script)


def nft_json(*command: str) -> str:
    """One `nft -j` command's JSON output, e.g. nft_json("list", "table", ...)."""
    return _run_nft(["nft", "-j", *command], None)


def _run_nft(arguments: list[str], script: str | None) -> str:
    try:
        done = subprocess.run(
            arguments, input=script, capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise UserError("nft is not installed (Debian: apt-get install nftables)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"nft did not answer within 30 s: {' '.join(arguments)}") from None
    if done.returncode:
        message = done.stderr.strip().splitlines()
        raise UserError(f"nft refused: {message[0] if message else done.returncode}")
    return done.stdout


class TableLost(Exception):
    """The appliance's table is gone (an outside `nft flush ruleset`)."""


def remove_table() -> None:
    """Delete the appliance's table if there is one (after a crash, a start on
    the TUN path must not keep the old table's drop rules)."""
    try:
        nft(f"table bridge {TABLE}\ndelete table bridge {TABLE}\n")
    except UserError as error:
        if "not installed" not in str(error):
            log.warning("could not remove the nftables table: %s", error)


class KernelPath:
    """The appliance's nftables table: loaded once, then driven element by element."""

    def __init__(
        self,
        *,
        cluster_ip: IPv4Address,
        cluster_mac: str,
        bridge_mac: str,
        size: int,
        timeouts: PathTimeouts,
        buckets: int = 1024,
        seed: int = 0,
    ) -> None:
        self.buckets = buckets
        self.seed = seed
        self.cluster_ip = cluster_ip
        self.cluster_mac = cluster_mac
        self.bridge_mac = bridge_mac
        self.size = size
        self.timeouts = timeouts
        self.degraded = False
        self.lost = False  # the table was removed from outside: the TUN path serves
        self._socket: socket.socket | None = None
        self._sequence = 0
        self.batches = 0
        self.elements_added = 0
        self.elements_removed = 0
        self.add_failures = 0
        self.queries = 0
        self.query_errors = 0

    # ------------------------------------------------ ruleset (worker thread)

    @property
    def stamp(self) -> str:
        """Written into the table's comment: a table left by a crash is taken
        over only by a daemon of the same cluster IP and timeouts."""
        timeouts = self.timeouts
        return (
            f"appliance {self.cluster_ip} handshake {timeouts.handshake:g} "
            f"tcp {timeouts.tcp_idle:g} udp {timeouts.udp_idle:g} "
            f"buckets {self.buckets} seed {self.seed:#x}"
        )

    def leftover(self) -> Leftover:
        """Owned sessions and held buckets of a table a crashed daemon left
        behind; empty when there is no such table, or it was made for another
        cluster IP, other timeouts or other buckets (it cannot be read right)."""
        try:
            # nft 1.0.6 leaves a table's comment out of its JSON.
            described = _run_nft(["nft", "list", "table", "bridge", TABLE], None)
            listing = nft_json("list", "table", "bridge", TABLE)
        except UserError:
            return Leftover()
        if f'comment "{self.stamp}"' not in described:
            log.warning("a table bridge %s from another configuration is replaced", TABLE)
            return Leftover()
        return Leftover(tuple(self.parse_listing(listing)[0]), self.parse_history(listing))

    def load(self, keep: Leftover | None = None) -> None:
        """Create the table, replacing one left by a crash, in one transaction,
        with `keep`'s sessions already in the owned set, each with the timeout
        it had left (an established TCP session keeps its idle timeout), and
        its buckets' history: their sessions go on reaching the local stack.
        No bucket is held: holding needs the peers' grants afresh."""
        kept = [] if keep is None else list(keep.sessions)
        history = {} if keep is None else keep.history
        elements = ", ".join(
            f"{nft_key(carried.key)} timeout {int(self.timeout_of(carried) * 1000)}ms"
            for carried in kept
        )
        held = ", ".join(
            f"{bucket} timeout {max(1000, int(left * 1000))}ms" for bucket, left in history.items()
        )
        script = (
            f"table bridge {TABLE}\ndelete table bridge {TABLE}\n"
            + ruleset(
                cluster_ip=self.cluster_ip,
                cluster_mac=self.cluster_mac,
                bridge_mac=self.bridge_mac,
                size=max(self.size, len(kept)),
                timeouts=self.timeouts,
                buckets=self.buckets,
                seed=self.seed,
                comment=self.stamp,
            )
            + (f"add element bridge {TABLE} {OWNED} {{ {elements} }}\n" if kept else "")
            + (f"add element bridge {TABLE} {HISTORY} {{ {held} }}\n" if history else "")
        )
        nft(script)
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._socket.setblocking(False)
        self._socket.bind((0, 0))

    def remove(self) -> None:
        """Delete the table (a clean stop); harmless when it is gone already."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        remove_table()

    def timeout_of(self, carried: KernelSession) -> float:
        """The timeout to give an element re-added for a session: the rest of
        its idle timeout if the kernel saw it established, else its first one."""
        transport = carried.key.transport
        if not carried.refreshed:
            return self.timeouts.first(transport)
        return max(1.0, self.timeouts.idle(transport) - carried.age)

    def set_degraded(self, degraded: bool) -> None:
        """Stop (or resume) dropping other members' TCP segments in the kernel."""
        rule = (
            ""
            if degraded
            else f"add rule bridge {TABLE} {FOREIGN_TCP_CHAIN} meta l4proto tcp drop\n"
        )
        nft(f"flush chain bridge {TABLE} {FOREIGN_TCP_CHAIN}\n{rule}")
        self.degraded = degraded

    def parse_listing(self, listing: str) -> tuple[list[KernelSession], list[KernelSession]]:
        """The owned and foreign sets from `nft -j list table` output."""
        owned: list[KernelSession] = []
        foreign: list[KernelSession] = []
        for entry in json.loads(listing).get("nftables", ()):
            found = entry.get("set") if isinstance(entry, dict) else None
            if not isinstance(found, dict) or found.get("name") not in (OWNED, FOREIGN):
                continue
            chosen = owned if found["name"] == OWNED else foreign
            chosen.extend(self._parse_elements(found.get("elem", ())))
        return owned, foreign

    def parse_history(self, listing: str) -> dict[int, float]:
        """The history set's buckets and the seconds each has left, from `nft -j` output."""
        history: dict[int, float] = {}
        for entry in json.loads(listing).get("nftables", ()):
            found = entry.get("set") if isinstance(entry, dict) else None
            if not isinstance(found, dict) or found.get("name") != HISTORY:
                continue
            for item in found.get("elem", ()):
                element = item.get("elem", item) if isinstance(item, dict) else item
                value = element.get("val") if isinstance(element, dict) else element
                left = element.get("expires", 0) if isinstance(element, dict) else 0
                if isinstance(value, int) and 0 <= value < self.buckets:
                    history[value] = float(left)
        return history

    def set_bucket_ports(self, ports: frozenset[tuple[int, int]] | None) -> None:
        """The ports served by bucket (None: every TCP and UDP port); blocking `nft`."""
        if ports is None:
            listed = "tcp . 0-65535, udp . 0-65535"
        else:
            listed = ", ".join(
                f"{'tcp' if transport == IpProtocol.TCP else 'udp'} . {port}"
                for transport, port in sorted(ports)
            )
        script = f"flush set bridge {TABLE} {BUCKET_PORTS}\n" + (
            f"add element bridge {TABLE} {BUCKET_PORTS} {{ {listed} }}\n" if listed else ""
        )
        nft(script)

    def new_sessions(self) -> tuple[int, int]:
        """SYNs and first UDP datagrams the kernel handed to the local stack from
        held buckets (blocking `nft`: call it from a worker thread)."""
        listing = json.loads(nft_json("list", "counters", "table", "bridge", TABLE))
        found = {
            entry["counter"].get("name"): int(entry["counter"].get("packets", 0))
            for entry in listing.get("nftables", ())
            if isinstance(entry, dict) and isinstance(entry.get("counter"), dict)
        }
        return found.get(NEW_TCP, 0), found.get(NEW_UDP, 0)

    def write_buckets(self, operations: Sequence[tuple[int, str, Elements]]) -> bool:
        """Bucket elements, in one transaction: True if the kernel took it.
        Raises TableLost if the table is gone."""
        assert self._socket is not None, "load() first"
        operations = [operation for operation in operations if operation[2]]
        if not operations:
            return True
        self._sequence = (self._sequence + 2 + len(operations)) & 0x7FFFFFFF
        try:
            self._socket.send(element_transaction(operations, self._sequence))
        except OSError as error:
            log.debug("bucket elements refused: %s", error)
            return False
        self.batches += 1
        failed = [code for _, code in errors_in(self._drain())]
        if (
            failed
            and all(code == errno.ENOENT for code in failed)
            and not any(operation == NFT_MSG_DELSETELEM for operation, _, _ in operations)
        ):
            raise TableLost("the bucket sets are gone")
        return not failed

    def _parse_elements(self, elements: Iterable[object]) -> list[KernelSession]:
        parsed = []
        for item in elements:
            if not isinstance(item, dict):
                continue
            element = item.get("elem", item)
            value = element.get("val", {}) if isinstance(element, dict) else {}
            concat = value.get("concat") if isinstance(value, dict) else None
            if not isinstance(concat, list) or len(concat) != 4:
                continue
            address, protocol, client_port, cluster_port = concat
            # nft names the protocol from /etc/protocols, or prints its number.
            transport = PROTOCOL_NAMES.get(str(protocol))
            if transport is None:
                continue
            try:
                key = SessionKey(
                    int(transport),
                    ip_address(address).packed,
                    int(client_port),
                    self.cluster_ip.packed,
                    int(cluster_port),
                )
            except ValueError:
                continue
            # `timeout` stays what the element was added with; a packet's
            # `update` moves only `expires`, up to the idle timeout of its kind.
            # An owned TCP element starts at the handshake timeout, so one that
            # expires later than that has seen a packet past the SYN.
            added_with = float(element.get("timeout", 0))
            expires = float(element.get("expires", 0))
            refreshed = self.timeouts.refreshed(transport, expires)
            age = max(0.0, (self.timeouts.idle(transport) if refreshed else added_with) - expires)
            parsed.append(KernelSession(key, age, refreshed))
        return parsed

    # ------------------------------------------------ elements (trio thread)

    def add(
        self, set_name: str, keys: Sequence[SessionKey], *, established: bool = False
    ) -> list[SessionKey]:
        """Add sessions to a set; returns those that did not fit (the set is
        full). Raises TableLost if the table is gone (removed from outside)."""
        elements = [
            (
                element_key(key),
                int(self.timeouts.first(key.transport, established=established) * 1000),
            )
            for key in keys
        ]
        failed = self._send(NFT_MSG_NEWSETELEM, set_name, elements)
        if not failed:
            self.elements_added += len(keys)
            return []
        if errno.ENOENT in failed:
            raise TableLost(f"the set {set_name} is gone")
        # The batch failed whole: find what fits, one by one.
        refused = []
        for key, element in zip(keys, elements, strict=True):
            if self._send(NFT_MSG_NEWSETELEM, set_name, [element]):
                refused.append(key)
            else:
                self.elements_added += 1
        self.add_failures += len(refused)
        return refused

    def expiration(self, set_name: str, key: SessionKey) -> float | None:
        """Seconds until the session's element expires; None if it is not in
        the set. Raises OSError when the kernel could not be asked."""
        assert self._socket is not None, "load() first"
        self._drain()  # nothing else waits on this socket: every exchange completes in place
        self._sequence = (self._sequence + 1) & 0x7FFFFFFF
        self._socket.send(element_query(set_name, element_key(key), self._sequence))
        self.queries += 1
        reply = self._drain()
        milliseconds = expiration_in(reply)
        if milliseconds is None and not any(code == errno.ENOENT for _, code in errors_in(reply)):
            raise OSError(errno.EIO, "no answer about the element")
        return None if milliseconds is None else milliseconds / 1000

    def remove_elements(self, set_name: str, keys: Sequence[SessionKey]) -> None:
        """Remove sessions from a set; one the kernel already let expire is no error."""
        elements = [(element_key(key), None) for key in keys]
        if not self._send(NFT_MSG_DELSETELEM, set_name, elements):
            self.elements_removed += len(keys)
            return
        for element in elements:
            if not self._send(NFT_MSG_DELSETELEM, set_name, [element]):
                self.elements_removed += 1

    def _send(
        self, operation: int, set_name: str, elements: Sequence[tuple[bytes, int | None]]
    ) -> list[int]:
        """Send batches; the errno of each failed one (the kernel answers inside sendmsg)."""
        assert self._socket is not None, "load() first"
        failures: list[int] = []
        for start in range(0, len(elements), MAX_BATCH):
            self._sequence = (self._sequence + 3) & 0x7FFFFFFF
            batch = element_batch(
                operation, set_name, elements[start : start + MAX_BATCH], self._sequence
            )
            try:
                self._socket.send(batch)
            except OSError as error:
                failures.append(error.errno or errno.EIO)
                continue
            self.batches += 1
            failures.extend(code for _, code in errors_in(self._drain()))
        return failures

    def _drain(self) -> bytes:
        assert self._socket is not None
        replies = b""
        while True:
            try:
                replies += self._socket.recv(65536)
            except BlockingIOError:
                return replies


def nft_key(key: SessionKey) -> str:
    protocol = "tcp" if key.transport == IpProtocol.TCP else "udp"
    address = ip_address(key.client_address)
    return f"{address} . {protocol} . {key.client_port} . {key.cluster_port}"


class KernelSets:
    """Keeps the kernel's sets in step with the claim machine's table.

    The machine's table tells it (as a `protocols.session_table.TableListener`)
    of every session won, yielded, learned or forgotten; `flush` then writes
    the changes in one batch per set. The data plane flushes before it injects
    a won session's first packets, so the session's later packets already find
    their element. A session the full set refuses stays on the TUN path: its
    packets reach the TAP (the kernel stops dropping other members' TCP
    segments while any such session lives), and `retry_refused` moves it to
    the set once there is room.
    """

    def __init__(self, path: KernelPath) -> None:
        self.path = path
        self._add_owned: dict[SessionKey, Session] = {}
        self._remove_owned: dict[SessionKey, None] = {}
        self._add_foreign: dict[SessionKey, None] = {}
        self._remove_foreign: dict[SessionKey, None] = {}
        self.owned: set[SessionKey] = set()  # in the kernel's owned set, as far as we know
        self.foreign: set[SessionKey] = set()
        # Owned sessions served on the TUN path (the set was full), by key.
        self.refused: dict[SessionKey, Session] = {}

    # ---------------------------------------------------- TableListener

    def entered(self, session: Session) -> None:
        if session.phase is Phase.OWNED:
            self.owned.add(session.key)  # adopted after a restart: already in the kernel
        elif _foreign_flow(session):
            self._add_foreign[session.key] = None

    def moved(self, session: Session, before: Phase) -> None:
        key = session.key
        if session.phase is Phase.OWNED and before is not Phase.OWNED:
            if key.transport in CARRIED:
                # A removal still queued for the same key (a new connection on
                # a reused port) stays: it is written first, so the element
                # starts afresh at the handshake timeout.
                self._add_owned[key] = session
        elif before in SERVED_HERE and session.phase not in SERVED_HERE:
            self._forget_owned(key)

    def left(self, session: Session) -> None:
        key = session.key
        self._forget_owned(key)
        if key in self._add_foreign:
            del self._add_foreign[key]
        elif key in self.foreign:
            self.foreign.discard(key)
            self._remove_foreign[key] = None

    def asserted(self, session: Session) -> None:
        if _foreign_flow(session) and session.key not in self.foreign:
            self._add_foreign[session.key] = None  # a removal queued for the key goes first

    def _forget_owned(self, key: SessionKey) -> None:
        self.refused.pop(key, None)
        if key in self._add_owned:
            del self._add_owned[key]
        elif key in self.owned:
            self.owned.discard(key)
            self._remove_owned[key] = None

    # ---------------------------------------------------- writing

    @property
    def pending(self) -> bool:
        return bool(
            self._add_owned or self._remove_owned or self._add_foreign or self._remove_foreign
        )

    def flush(self) -> None:
        """Write the queued changes: removals first, so a key re-used at once
        is added afresh. If the table was removed from outside, the member
        goes on without it: every frame reaches the TAP again, and the claim
        machine injects its sessions' packets itself (the TUN path)."""
        if self.path.lost:
            self._clear()
            return
        try:
            self._write()
        except (TableLost, UserError) as error:
            log.error(
                "the nftables table bridge %s is gone (%s; an outside nft flush ruleset?): "
                "serving on the TUN path from now on",
                TABLE,
                error,
            )
            self.path.lost = True
            self._clear()

    def _clear(self) -> None:
        for pending in (
            self._add_owned,
            self._remove_owned,
            self._add_foreign,
            self._remove_foreign,
        ):
            pending.clear()

    def _write(self) -> None:
        path = self.path
        if self._remove_owned:
            path.remove_elements(OWNED, list(self._remove_owned))
            self._remove_owned.clear()
        if self._remove_foreign:
            path.remove_elements(FOREIGN, list(self._remove_foreign))
            self._remove_foreign.clear()
        if self._add_owned:
            won = dict(self._add_owned)
            self._add_owned.clear()
            refused = set(path.add(OWNED, list(won)))
            self.owned.update(key for key in won if key not in refused)
            if refused:
                self.refused.update((key, won[key]) for key in refused)
                if not path.degraded:
                    # Once per fill, and before the refused sessions' next
                    # packets: a few milliseconds of `nft` on this thread.
                    log.warning(
                        "the kernel's owned set is full (%d): new sessions are served on "
                        "the TUN path until it has room",
                        path.size,
                    )
                    self.degrade(True)
        if self._add_foreign:
            keys = list(self._add_foreign)
            self._add_foreign.clear()
            refused = set(path.add(FOREIGN, keys))  # a refused one is dropped in Python
            self.foreign.update(key for key in keys if key not in refused)

    # ---------------------------------------------------- ActivitySource

    def last_activity(self, session: Session, now: float) -> Activity | None:
        """When the kernel last passed a packet of a session it carries: asked
        when the session's idle or handshake timer is due. An element's expiry
        is refreshed to the idle timeout by every packet; an owned TCP element
        starts at the handshake timeout, so a later expiry means the client
        sent more than its SYN."""
        key = session.key
        timeouts = self.path.timeouts
        chosen = OWNED if key in self.owned else FOREIGN if key in self.foreign else None
        if chosen is None or self.path.lost:
            return None
        try:
            expires = self.path.expiration(chosen, key)
        except OSError as error:
            # Not knowing is no reason to forget a session: ask again later.
            self.path.query_errors += 1
            log.debug("could not ask the kernel about %s: %s", key, error)
            return Activity(now, established=session.established)
        if expires is None:
            return None  # the kernel let it expire: idle there too
        if not timeouts.refreshed(key.transport, expires):
            return None  # only its SYN so far: the handshake timer stands
        return Activity(now - (timeouts.idle(key.transport) - expires), established=True)

    def degrade(self, degraded: bool) -> None:
        """Stop (or resume) dropping other members' TCP in the kernel; a failure
        is logged, never raised into the data plane."""
        try:
            self.path.set_degraded(degraded)
        except UserError as error:
            log.error("could not %s degraded mode: %s", "enter" if degraded else "leave", error)

    def retry_refused(self) -> None:
        """Move sessions served on the TUN path into the set, if it has room
        now; an established one gets its idle timeout at once."""
        if not self.refused or self.path.lost:
            return
        for established in (True, False):
            chosen = [
                key for key, session in self.refused.items() if session.established == established
            ]
            if not chosen:
                continue
            try:
                refused = set(self.path.add(OWNED, chosen, established=established))
            except TableLost:
                self.path.lost = True
                return
            for key in chosen:
                if key not in refused:
                    self.owned.add(key)
                    del self.refused[key]


def _foreign_flow(session: Session) -> bool:
    """A UDP flow another member asserted: the kernel may drop its datagrams."""
    return (
        session.key.transport == IpProtocol.UDP
        and session.phase is Phase.FOREIGN
        and session.best_asserted
        and session.best_member != NO_MEMBER
    )
