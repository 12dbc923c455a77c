"""Whole-member fuzzing: one member fed a hostile segment keeps its invariants.

Hypothesis drives one member through a run of steps. What is real: the data
plane's trio task (`DataPlane.run` in appliance/dataplane/loop.py, so its
batch drain, its claim and ARP handling and `carry_out`), the frames it
builds (appliance/dataplane/frames.py), the fast classifier, the claim
machine (with and without buckets, with small bounds so that they are hit)
and the claim authenticator (with and without a claim key). What is faked:

- the TAP is one end of an AF_UNIX SOCK_SEQPACKET socket pair, so the loop
  waits on its fd and reads it with `os.read`, one frame a read, exactly as
  it reads the device; what the member writes to it is recorded;
- the TUN records what is injected and written, and checks it at that moment;
- time is trio's `MockClock`, moved only by the test: either timer by timer
  (a healthy member) or in one jump (a frozen one); each example is one
  `trio.run` (pytest-trio is not needed for that);
- the kernel fast path is off (the TUN path), and the other member is a
  script that builds its claim frames with the real `FrameBuilder` and
  `ClaimAuthenticator`, and reads the member's own claims and bucket
  messages off the fake TAP to acknowledge and grant them.

The steps mix client frames of a small pool of sessions (SYN, data, FIN,
RST, UDP, echo, ICMP errors, first and later fragments, some damaged), junk
(frames from tests/unit/frame_strategies.py, runts, VLAN tags over junk),
the peer's messages (hellos, claims, assertions, acknowledgements, grants,
arbitrary messages, gaps in its counters, replays, missing and wrong tags,
random protocol-150 payloads), operator changes, and time passing. After
every step the test proves:

- no exception left the loop (it refuses bad frames by counting them);
- every frame fed was read, and the frame counters equal what the frames
  are: malformed ones as the construct declarations reject them, and claims
  refused or malformed exactly as the authenticator judges them;
- the session table, the packet queues, the fragment table and the peer
  table stay within their configured bounds;
- every packet injected into the TUN belongs to a session the claim machine
  owns at that moment, is a well-formed IP packet to the cluster, and is
  injected no more often than the segment carried it; every local reset is
  for a session the member does not serve;
- every frame the member sends has its own MAC as source (the switch never
  learns the cluster MAC), and every claim message it sends opens under the
  cluster key, its counters rising;
- no counter ever goes down.

Beside the fuzz: a test that the TUN's ownership check does catch a packet
injected behind the machine's back, and the two failures the fuzz found,
shrunk (both fixed in 416faa3).
"""

from __future__ import annotations

import functools
import socket
import struct
from collections import Counter
from dataclasses import dataclass, fields
from ipaddress import IPv4Address
from typing import cast

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.dataplane.frames import FrameBuilder
from appliance.dataplane.loop import MAX_KNOWN_ADDRESSES, DataPlane, FrameCounters
from appliance.host.devices import VNET_LENGTH, TapDevice, TunDevice
from protocols.buckets import ANSWER_SCORE, BUCKET_SCORE, BucketCounters, BucketSettings
from protocols.claim_auth import ClaimAuthenticator
from protocols.claim_machine import ClaimMachine, ClaimSettings, Counters
from protocols.classifier import Classifier, FragmentKey, FrameKind
from protocols.cluster_mac import cluster_mac
from protocols.errors import AuthenticationFailure, RemoteProtocolError
from protocols.numbers import EtherType, TcpFlags
from protocols.rendezvous import rendezvous_score, session_digest_input
from protocols.session_key import SessionKey
from protocols.session_table import PENDING
from protocols.wire.arp import ArpOperation, ArpPacket
from protocols.wire.claim import (
    CLAIM_VERSION,
    Acknowledgement,
    Assertion,
    BucketState,
    Claim,
    ClaimMessage,
    Grant,
    Hello,
)
from protocols.wire.common import BROADCAST_MAC, ZERO_MAC, MacAddress
from protocols.wire.ethernet import EthernetFrame, VlanTag
from protocols.wire.icmpv4 import Icmpv4Echo, Icmpv4Error
from protocols.wire.ipv4 import Ipv4Packet
from protocols.wire.stack import Layer, build_stack
from protocols.wire.tcp import TcpSegment
from protocols.wire.udp import UdpDatagram
from tests.fixtures.frames import CLAIM_KEY
from tests.unit.classifier_oracle import classify_with_declarations
from tests.unit.frame_strategies import (
    CLAIM_PROTOCOL,
    CLUSTER_V4,
    claim_messages,
    damaged_lengths,
    malformed_frames,
    valid_frames,
)

ME, PEER = 0x1111, 0x2222
CLUSTER_MAC = cluster_mac(CLUSTER_V4)
MEMBER_MAC = MacAddress("02:00:00:00:00:21")
MEMBER_IP = IPv4Address("192.0.2.21")
PEER_MAC = MacAddress("02:00:00:00:00:22")
PEER_IP = IPv4Address("192.0.2.22")
ROUTER_IP = IPv4Address("198.51.100.1")
WRONG_KEY = b"not-the-cluster-key-0123456789"
CLUSTER = frozenset({CLUSTER_V4.packed})
SERVED_PORTS = frozenset({(6, 80), (17, 53)})

# Small bounds and short timeouts, so that a few dozen steps reach them.
SETTINGS = ClaimSettings(
    hello_interval=0.3,
    member_timeout=1.5,
    join_grace=0.5,
    handshake_timeout=2.0,
    tcp_idle_timeout=6.0,
    udp_idle_timeout=3.0,
    fin_timeout=1.0,
    fragment_timeout=1.0,
    max_sessions=6,
    max_queued_per_session=2,
    max_queued_packets=5,
    max_queued_bytes=600,
    max_members=3,
    max_fragments=3,
)

CLIENT_KINDS = frozenset(
    {FrameKind.TCP, FrameKind.UDP, FrameKind.ICMP_ECHO, FrameKind.ICMP_ERROR, FrameKind.FRAGMENT}
)

# ------------------------------------------------------------ the session pool


@dataclass(frozen=True)
class PoolSession:
    transport: int  # 6, 17 or 1 (echo: the client port is the identifier)
    client: IPv4Address
    client_port: int
    cluster_port: int

    @property
    def key(self) -> SessionKey:
        return SessionKey(
            self.transport,
            self.client.packed,
            self.client_port,
            CLUSTER_V4.packed,
            self.cluster_port,
        )


CLIENTS = (IPv4Address("198.51.100.7"), IPv4Address("203.0.113.9"))
POOL = (
    *(PoolSession(6, client, port, 80) for client in CLIENTS for port in (40000, 40001)),
    PoolSession(6, CLIENTS[0], 40002, 8080),  # a port the member may not serve
    *(PoolSession(17, client, port, 53) for client in CLIENTS for port in (40000, 40001)),
    PoolSession(17, CLIENTS[1], 40003, 5353),
    PoolSession(1, CLIENTS[0], 7, 0),
    PoolSession(1, CLIENTS[1], 7, 0),
)
TCP_KINDS = ("syn", "syn", "ack", "data", "fin", "rst", "syn_ack")
FRAGMENT_KINDS = ("first_fragment", "later_fragment", "icmp_error")
PACKET_KINDS = {
    6: (*TCP_KINDS, *FRAGMENT_KINDS),
    17: ("datagram", "datagram", *FRAGMENT_KINDS),
    1: ("echo",),
}
# Fragment ids repeat across a client's sessions: a later fragment may name
# a datagram whose first fragment belonged to another session.
FRAGMENT_IDS = (1, 1, 2, 3)


def _client_mac(client: IPv4Address) -> MacAddress:
    return MacAddress(b"\x02\x00" + client.packed)


def _transport(session: PoolSession, kind: str, variant: int) -> Layer:
    sequence = 1000 + 1000 * variant
    if session.transport == 1:
        return Icmpv4Echo(session.client_port, variant, b"ping")
    if session.transport == 17:
        return UdpDatagram(session.client_port, session.cluster_port, b"q" * (8 + 8 * variant))
    flags = {
        "syn": TcpFlags.SYN,
        "syn_ack": TcpFlags.SYN | TcpFlags.ACK,
        "ack": TcpFlags.ACK,
        "data": TcpFlags.ACK | TcpFlags.PSH,
        "fin": TcpFlags.FIN | TcpFlags.ACK,
        "rst": TcpFlags.RST,
        "first_fragment": TcpFlags.SYN if variant % 2 else TcpFlags.ACK,
    }[kind]
    payload = b"GET / HTTP/1.0\r\n" * (variant + 1) if kind in ("data", "first_fragment") else b""
    if flags & TcpFlags.SYN:
        return TcpSegment(session.client_port, session.cluster_port, sequence, 0, flags)
    return TcpSegment(
        session.client_port, session.cluster_port, sequence + 1, 1, flags, payload=payload
    )


@functools.cache
def client_frame(index: int, kind: str, variant: int, tagged: bool) -> bytes:
    """One frame of a pool session, built through the declarations (cached: construct is slow)."""
    session = POOL[index]
    ethernet = EthernetFrame(
        CLUSTER_MAC,
        _client_mac(session.client),
        EtherType.IPV4,
        b"",
        vlan=VlanTag(7) if tagged else None,
    )
    client, protocol = session.client, session.transport
    identification = FRAGMENT_IDS[variant]
    if kind == "icmp_error":
        # A router says it could not deliver the cluster's reply to the client.
        ports = struct.pack("!HHI", session.cluster_port, session.client_port, 0)
        quoted = Ipv4Packet(CLUSTER_V4, client, protocol, payload=ports).build()
        return build_stack(
            (ethernet, Ipv4Packet(ROUTER_IP, CLUSTER_V4, 1), Icmpv4Error(3, 4, quoted))
        )
    if kind == "later_fragment":
        packet = Ipv4Packet(
            client,
            CLUSTER_V4,
            protocol,
            identification=identification,
            fragment_offset=8 * (1 + variant),
            more_fragments=variant % 2 == 0,
        )
        return build_stack((ethernet, packet, bytes(16)))
    transport = _transport(session, kind, variant)
    if kind == "first_fragment":
        assert isinstance(transport, TcpSegment | UdpDatagram)
        whole = transport.build(client, CLUSTER_V4)
        packet = Ipv4Packet(
            client, CLUSTER_V4, protocol, identification=identification, more_fragments=True
        )
        return build_stack((ethernet, packet, whole[:24]))
    return build_stack((ethernet, Ipv4Packet(client, CLUSTER_V4, protocol), transport))


@functools.cache
def arp_request(asker: int, tagged: bool) -> bytes:
    """Who has the cluster IP? From one of the pool's clients."""
    client = CLIENTS[asker]
    ethernet = EthernetFrame(
        BROADCAST_MAC,
        _client_mac(client),
        EtherType.ARP,
        b"",
        vlan=VlanTag(7) if tagged else None,
    )
    request = ArpPacket(ArpOperation.REQUEST, _client_mac(client), client, ZERO_MAC, CLUSTER_V4)
    return build_stack((ethernet, request))


@functools.cache
def flood_syn(client_port: int) -> bytes:
    """A SYN from a port outside the pool, as a SYN flood sends them."""
    ethernet = EthernetFrame(CLUSTER_MAC, _client_mac(CLIENTS[1]), EtherType.IPV4, b"")
    segment = TcpSegment(client_port, 80, client_port, 0, TcpFlags.SYN)
    return build_stack((ethernet, Ipv4Packet(CLIENTS[1], CLUSTER_V4, 6), segment))


@functools.lru_cache(maxsize=4096)
def declared_kind(frame: bytes) -> FrameKind:
    """What the construct declarations make of a frame (cached: pool frames recur)."""
    return classify_with_declarations(frame, CLUSTER, CLAIM_PROTOCOL).kind


def damaged_frame(frame: bytes, how: str, amount: int) -> bytes:
    """What a bad NIC, a bad driver or an attacker does to a frame's IPv4 header."""
    if how == "intact":
        return frame
    if how == "truncated":
        return frame[: 1 + amount % (len(frame) - 1)]
    network = 18 if frame[12:14] == b"\x81\x00" else 14
    damaged = bytearray(frame)
    if how == "header_length":
        damaged[network] = 0x40 | amount % 16
    elif how == "length_past_frame":
        struct.pack_into("!H", damaged, network + 2, len(frame) - network + 1 + amount)
    else:  # "version"
        damaged[network] = (amount % 16) << 4 | damaged[network] & 0x0F
    return bytes(damaged)


# ------------------------------------------------------------------ the steps


@dataclass(frozen=True)
class PoolFrame:
    """A frame of a pool session (see `client_frame`), perhaps damaged."""

    session: int
    kind: str
    variant: int = 0
    tagged: bool = False
    damage: str = "intact"  # or how `damaged_frame` damages it
    amount: int = 0

    @property
    def frame(self) -> bytes:
        built = client_frame(self.session, self.kind, self.variant, self.tagged)
        return damaged_frame(built, self.damage, self.amount)


@dataclass(frozen=True)
class ArpRequest:
    asker: int  # which of CLIENTS asks
    tagged: bool

    @property
    def frame(self) -> bytes:
        return arp_request(self.asker, self.tagged)


@dataclass(frozen=True)
class JunkFrame:
    frame: bytes


@dataclass(frozen=True)
class PeerHello:
    weight: float
    draining: bool
    leaving: bool


@dataclass(frozen=True)
class PeerBid:
    """A claim or an assertion; `score` None: the member's own score (a tie)."""

    session: int  # of the pool, or with `of_members_session` of the member's table now
    of_members_session: bool  # a rival claim for a session the member claims, or has
    score: float | None
    asserted: bool


@dataclass(frozen=True)
class PeerAcknowledges:
    """The peer acknowledges every claim of the member's it has not yet acknowledged."""


@dataclass(frozen=True)
class PeerBuckets:
    holding: frozenset[int]
    wanting: frozenset[int]
    grant_wanted: bool  # grant the member every bucket its latest message wants


@dataclass(frozen=True)
class PeerArbitrary:
    message: ClaimMessage  # any member id and counter, any values the wire allows


PeerMessage = PeerHello | PeerBid | PeerAcknowledges | PeerBuckets | PeerArbitrary


@dataclass(frozen=True)
class PeerSends:
    message: PeerMessage
    seal: str  # "cluster key", "no tag" or "wrong key"
    counters_lost: int  # counters the peer skips first: messages lost on the way


@dataclass(frozen=True)
class RawClaim:
    payload: bytes  # a protocol-150 packet to the cluster, from the peer, carrying this


@dataclass(frozen=True)
class Conversation:
    """Frames of one pool session in a row: a SYN and its RST, data after a FIN."""

    session: int
    kinds: tuple[str, ...]
    variant: int


@dataclass(frozen=True)
class Flood:
    """Many frames at once: ARP requests (past the reply limiter's burst) or SYNs."""

    syn: bool
    count: int
    first_port: int


@dataclass(frozen=True)
class Replay:
    back: int  # resend the peer's frame this many frames ago


ClientFrame = PoolFrame | ArpRequest | JunkFrame
Feed = ClientFrame | Conversation | PeerSends | RawClaim | Flood | Replay


@dataclass(frozen=True)
class Batch:
    """Frames that reach the TAP together: the loop reads them in one batch."""

    feeds: tuple[Feed, ...]


@dataclass(frozen=True)
class TimePasses:
    seconds: float
    frozen: bool  # True: one jump, the loop wakes once; False: woken at every timer


@dataclass(frozen=True)
class OperatorChanges:
    draining: bool
    serves_every_port: bool


Step = Batch | TimePasses | OperatorChanges


@dataclass(frozen=True)
class Scenario:
    claim_key: bytes | None
    bucket_count: int  # 0: no buckets
    serves_every_port: bool
    vnet_header: bytes | None  # the offload header before every TAP frame, or None
    peer_is_live: bool  # it also says hello on time and acknowledges every claim it hears
    steps: tuple[Step, ...]


damages = st.sampled_from(
    ["intact"] * 6 + ["truncated", "header_length", "length_past_frame", "version"]
)
client_frames = st.integers(0, len(POOL) - 1).flatmap(
    lambda index: st.builds(
        PoolFrame,
        st.just(index),
        st.sampled_from(PACKET_KINDS[POOL[index].transport]),
        st.integers(0, 3),
        st.sampled_from([False, False, False, True]),
        damages,
        st.integers(0, 200),
    )
)
conversations = st.integers(0, len(POOL) - 1).flatmap(
    lambda index: st.builds(
        Conversation,
        st.just(index),
        st.lists(st.sampled_from(PACKET_KINDS[POOL[index].transport]), min_size=2, max_size=4).map(
            tuple
        ),
        st.integers(0, 3),
    )
)
arp_requests = st.builds(ArpRequest, st.integers(0, 1), st.booleans())
floods = st.builds(Flood, st.booleans(), st.integers(5, 60), st.sampled_from([50000, 50100, 50200]))
runts = st.binary(min_size=1, max_size=40)


@st.composite
def junk_behind_vlan_tags(draw: st.DrawFn) -> bytes:
    ethertype = draw(st.sampled_from([EtherType.IPV4, EtherType.IPV6, EtherType.ARP, 0x8100]))
    return (
        bytes(CLUSTER_MAC)
        + draw(st.binary(min_size=6, max_size=6))
        + b"\x81\x00"
        + draw(st.binary(min_size=2, max_size=2))
        + struct.pack("!H", ethertype)
        + draw(st.binary(max_size=60))
    )


# Each of these costs a millisecond or so to draw (construct): one feed in ten.
junk_frames = st.one_of(
    malformed_frames(), damaged_lengths(), valid_frames(), runts, junk_behind_vlan_tags()
).map(JunkFrame)
bid_scores = st.one_of(
    st.none(),
    st.sampled_from([0.0, 1e-12, 0.5, 1.0, ANSWER_SCORE, BUCKET_SCORE]),
    st.floats(0, 1),
)
small_buckets = st.frozensets(st.integers(0, 15), max_size=4)
peer_hellos = st.builds(
    PeerHello,
    st.sampled_from([0.0, 0.5, 1.0, 1.0, 4.0]),
    st.sampled_from([False] * 3 + [True]),
    st.sampled_from([False] * 7 + [True]),
)
peer_messages: st.SearchStrategy[PeerMessage] = st.one_of(
    peer_hellos,
    peer_hellos,
    st.builds(PeerBid, st.integers(0, len(POOL) - 1), st.booleans(), bid_scores, st.booleans()),
    st.just(PeerAcknowledges()),
    st.just(PeerAcknowledges()),
    st.builds(PeerBuckets, small_buckets, small_buckets, st.booleans()),
    st.builds(PeerBuckets, st.just(frozenset()), st.just(frozenset()), st.just(True)),
    st.builds(PeerArbitrary, claim_messages),
)
peer_sends = st.builds(
    PeerSends,
    peer_messages,
    st.sampled_from(["cluster key"] * 8 + ["no tag", "wrong key"]),
    st.sampled_from([0] * 12 + [1, 70]),
)
# A rival's claim for what the member is claiming right now: the race of rule 3.
rival_claims = st.builds(
    PeerSends,
    st.builds(PeerBid, st.integers(0, 5), st.just(True), bid_scores, st.just(False)),
    st.just("cluster key"),
    st.just(0),
)
raw_claims = st.builds(
    RawClaim,
    st.one_of(
        st.binary(max_size=80),
        st.binary(max_size=80).map(lambda rest: bytes([CLAIM_VERSION]) + rest),
        st.tuples(st.integers(0, 5), st.binary(max_size=80)).map(
            lambda parts: bytes([CLAIM_VERSION, parts[0]]) + parts[1]
        ),
    ),
)
feeds = st.one_of(
    client_frames,
    client_frames,
    client_frames,
    conversations,
    conversations,
    peer_sends,
    peer_sends,
    peer_sends,
    rival_claims,
    junk_frames,
    arp_requests,
    raw_claims,
    floods,
    st.builds(Replay, st.integers(1, 4)),
)
pauses = st.sampled_from([0.0005, 0.001, 0.002, 0.003, 0.01, 0.05, 0.1, 0.3, 0.8, 1.6, 3.5, 7.0])
steps = st.one_of(
    st.lists(feeds, min_size=1, max_size=8).map(lambda items: Batch(tuple(items))),
    st.lists(feeds, min_size=1, max_size=8).map(lambda items: Batch(tuple(items))),
    st.builds(TimePasses, pauses, st.just(False)),
    st.builds(TimePasses, pauses, st.just(False)),
    st.builds(TimePasses, pauses, st.just(True)),
    st.builds(OperatorChanges, st.sampled_from([False] * 3 + [True]), st.booleans()),
)
scenarios = st.builds(
    Scenario,
    st.sampled_from([None, CLAIM_KEY]),
    st.sampled_from([0, 4, 16]),
    st.booleans(),
    st.sampled_from([None, None, bytes(VNET_LENGTH), bytes([1, 1]) + bytes(VNET_LENGTH - 2)]),
    st.booleans(),
    st.lists(steps, min_size=8, max_size=50).map(tuple),
)

# ------------------------------------------------------------------ the fakes


class SocketTap:
    """A TAP device as the loop sees it: a non-blocking fd yielding one frame a read."""

    def __init__(self, vnet_header: bytes | None) -> None:
        self._inside, self._outside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._inside.setblocking(False)
        self.fd = self._inside.fileno()
        self.vnet_header = vnet_header or b""
        self.header_length = len(self.vnet_header)
        self.mac = bytes(MEMBER_MAC)
        self.written: list[bytes] = []

    def feed(self, frame: bytes) -> bytes:
        """Put a frame from the segment on the TAP; returns it as the loop will read it."""
        read = self.vnet_header + frame
        self._outside.send(read)
        return read

    def write(self, frame: bytes) -> bool:
        self.written.append(frame)
        return True

    def close(self) -> None:
        self._inside.close()
        self._outside.close()


class CheckingTun:
    """A TUN device that checks every packet against the member at the moment it is written."""

    def __init__(self, member: MemberUnderTest) -> None:
        self.member = member
        self.injected = 0
        self.resets = 0

    def inject(self, frame: bytes, network_offset: int) -> bool:
        self.injected += 1
        self.member.check_injection(frame, network_offset)
        return True

    def write(self, packet: bytes) -> bool:
        self.resets += 1
        self.member.check_local_reset(packet)
        return True


class ScriptedPeer:
    """The other member: claim frames built with the real builder and authenticator."""

    def __init__(self, claim_key: bytes | None, bucket_count: int) -> None:
        self.sealers = {
            "cluster key": ClaimAuthenticator(claim_key),
            "no tag": ClaimAuthenticator(None),
            "wrong key": ClaimAuthenticator(WRONG_KEY),
        }
        self.builder = FrameBuilder(
            own_mac=bytes(PEER_MAC),
            cluster_mac=CLUSTER_MAC,
            cluster_ip=CLUSTER_V4,
            member_ip=PEER_IP,
            claim_protocol=CLAIM_PROTOCOL,
        )
        self.bucket_count = bucket_count
        self.counter = 0
        self.frames: list[bytes] = []
        self.acknowledged: set[int] = set()

    def _next(self, lost: int) -> int:
        self.counter += 1 + lost
        return self.counter

    def messages(
        self,
        sent: PeerSends,
        member_claims: list[int],
        member_buckets: BucketState | None,
        member_sessions: list[SessionKey],
    ) -> list[ClaimMessage]:
        wanted = sent.message
        lost = sent.counters_lost
        if isinstance(wanted, PeerHello):
            return [
                Hello(
                    PEER,
                    self._next(lost),
                    wanted.weight,
                    draining=wanted.draining,
                    leaving=wanted.leaving,
                )
            ]
        if isinstance(wanted, PeerBid):
            key = POOL[wanted.session].key
            if wanted.of_members_session and member_sessions:
                key = member_sessions[wanted.session % len(member_sessions)]
            score = wanted.score
            if score is None:
                score = rendezvous_score(session_digest_input(key), ME, 1.0)
            kind = Assertion if wanted.asserted else Claim
            return [kind(PEER, self._next(lost), key, score)]
        if isinstance(wanted, PeerAcknowledges):
            fresh = [counter for counter in member_claims if counter not in self.acknowledged]
            self.acknowledged.update(fresh)
            return [Acknowledgement(PEER, self._next(lost), ME, counter) for counter in fresh]
        if isinstance(wanted, PeerBuckets):
            count = self.bucket_count or 16
            grants: tuple[Grant, ...] = ()
            if wanted.grant_wanted and member_buckets is not None and member_buckets.wanting:
                grants = (Grant(ME, member_buckets.counter, member_buckets.wanting),)
            return [
                BucketState(
                    PEER,
                    self._next(lost),
                    count,
                    1.0,
                    None,
                    frozenset(bucket for bucket in wanted.holding if bucket < count),
                    frozenset(bucket for bucket in wanted.wanting if bucket < count),
                    grants,
                )
            ]
        return [wanted.message]

    def hello(self) -> Hello:
        return Hello(PEER, self._next(0), 1.0)

    def frame(self, message: ClaimMessage, seal: str) -> bytes:
        frame = self.builder.claim_frame(self.sealers[seal].seal(message))
        self.frames.append(frame)
        return frame

    def raw_frame(self, payload: bytes) -> bytes:
        frame = self.builder.claim_frame(payload)
        self.frames.append(frame)
        return frame


# ------------------------------------------------------------------ the member


COUNTER_FIELDS = {
    "frames": tuple(field.name for field in fields(FrameCounters)),
    "machine": tuple(field.name for field in fields(Counters)),
    "buckets": tuple(field.name for field in fields(BucketCounters)),
}


def _monotonic_counters(plane: DataPlane, machine: ClaimMachine) -> dict[tuple[str, str], int]:
    """Every counter of the member, read field by field (`as_dict` deep-copies: too slow here)."""
    groups: list[tuple[str, object]] = [("frames", plane.counters), ("machine", machine.counters)]
    if machine.buckets is not None:
        groups.append(("buckets", machine.buckets.counters))
    counters = {
        (group, name): cast(int, getattr(source, name))
        for group, source in groups
        for name in COUNTER_FIELDS[group]
    }
    counters.update((("drops", reason), count) for reason, count in machine.drops.items())
    return counters


class MemberUnderTest:
    """One member over the fakes, and what the test expects of it so far."""

    def __init__(self, scenario: Scenario) -> None:
        now = trio.current_time()
        self.tap = SocketTap(scenario.vnet_header)
        self.tun = CheckingTun(self)
        buckets = (
            BucketSettings(
                count=scenario.bucket_count,
                lease=SETTINGS.member_timeout / 2,
                udp_transition=SETTINGS.udp_idle_timeout,
            )
            if scenario.bucket_count
            else None
        )
        self.machine = ClaimMachine(
            ME,
            SETTINGS,
            now,
            listening=None if scenario.serves_every_port else SERVED_PORTS,
            buckets=buckets,
        )
        self.classifier = Classifier([CLUSTER_V4.packed], CLAIM_PROTOCOL)
        self.plane = DataPlane(
            tap=cast(TapDevice, self.tap),
            tun=cast(TunDevice, self.tun),
            machine=self.machine,
            classifier=self.classifier,
            builder=FrameBuilder(
                own_mac=bytes(MEMBER_MAC),
                cluster_mac=CLUSTER_MAC,
                cluster_ip=CLUSTER_V4,
                member_ip=MEMBER_IP,
                claim_protocol=CLAIM_PROTOCOL,
            ),
            authenticator=ClaimAuthenticator(scenario.claim_key),
        )
        self.peer = ScriptedPeer(scenario.claim_key, scenario.bucket_count)
        self.peer_is_live = scenario.peer_is_live
        self.peer_hello_at = now
        # Judges the claim frames fed in the order the member reads them.
        self.shadow_authenticator = ClaimAuthenticator(scenario.claim_key)
        # Opens what the member sends, as a peer holding the cluster key would.
        self.listener = ClaimAuthenticator(scenario.claim_key)
        self.violations: list[str] = []
        self.fed: Counter[bytes] = Counter()
        self.injected: Counter[bytes] = Counter()
        self.expected = Counter[str]()
        self.fragment_sessions: dict[FragmentKey, set[SessionKey]] = {}
        self.read_written = 0
        self.member_claims: list[int] = []
        self.member_buckets: BucketState | None = None
        self.member_counter = 0
        self.counters = _monotonic_counters(self.plane, self.machine)

    # ---------------------------------------------------------------- feeding

    def feed(self, frame: bytes) -> None:
        """Put a frame on the TAP and note what the member must make of it."""
        read = self.tap.feed(frame)
        self.fed[read] += 1
        self.expected["frames"] += 1
        start = self.tap.header_length
        record = self.classifier.classify(read, start)
        kind = record.kind
        if declared_kind(frame) is FrameKind.MALFORMED:
            self.expected["malformed"] += 1
        if kind in (FrameKind.OTHER, FrameKind.NEIGHBOR_SOLICITATION):
            self.expected["other"] += 1
        elif kind is FrameKind.ARP_REQUEST:
            self.expected["arp_requests"] += 1
        elif kind is FrameKind.CLAIM:
            self.expected["claim_frames"] += 1
            self._judge_claim(read[record.payload_offset : record.payload_end])
        if record.fragment is not None and record.key is not None:
            self.fragment_sessions.setdefault(record.fragment, set()).add(record.key)

    def _judge_claim(self, payload: bytes) -> None:
        try:
            self.shadow_authenticator.open(payload)
        except AuthenticationFailure:
            self.expected["auth_failures"] += 1
        except RemoteProtocolError:
            self.expected["claims_malformed"] += 1
        except Exception:
            pass  # the loop meets the same error: the test reports what the loop does with it

    def peer_keeps_up(self) -> bool:
        """A live peer's hellos due by now (those sent while the member was
        frozen queue up), and its acknowledgement of every claim it heard."""
        if not self.peer_is_live:
            return False
        self.read_member_output()
        now = trio.current_time()
        fed = False
        while self.peer_hello_at <= now:
            self.feed(self.peer.frame(self.peer.hello(), "cluster key"))
            self.peer_hello_at += SETTINGS.hello_interval
            fed = True
        acknowledging = PeerSends(PeerAcknowledges(), "cluster key", 0)
        for message in self.peer.messages(acknowledging, self.member_claims, None, []):
            self.feed(self.peer.frame(message, "cluster key"))
            fed = True
        return fed

    def feed_batch(self, batch: Batch) -> None:
        self.peer_keeps_up()
        self.read_member_output()
        for item in batch.feeds:
            if isinstance(item, PoolFrame | ArpRequest | JunkFrame):
                self.feed(item.frame)
            elif isinstance(item, RawClaim):
                self.feed(self.peer.raw_frame(item.payload))
            elif isinstance(item, Conversation):
                for kind in item.kinds:
                    self.feed(client_frame(item.session, kind, item.variant, False))
            elif isinstance(item, Flood):
                for offset in range(item.count):
                    if item.syn:
                        self.feed(flood_syn(item.first_port + offset))
                    else:
                        self.feed(arp_request(offset % 2, False))
            elif isinstance(item, Replay):
                if len(self.peer.frames) >= item.back:
                    self.feed(self.peer.frames[-item.back])
            else:
                # Those it is claiming first: a rival claim must meet one in time.
                sessions = self.machine.sessions()
                member_sessions = sorted(
                    session.key for session in sessions if session.state is PENDING
                ) or sorted(session.key for session in sessions)
                for message in self.peer.messages(
                    item, self.member_claims, self.member_buckets, member_sessions
                ):
                    self.feed(self.peer.frame(message, item.seal))

    # ------------------------------------------------------------- the checks

    def _violation(self, what: str) -> None:
        self.violations.append(f"at {trio.current_time():.4f}: {what}")

    def check_injection(self, frame: bytes, network_offset: int) -> None:
        """A later fragment carries no ports: it may go to any session whose
        first fragment named its datagram (its id may be reused)."""
        start = self.tap.header_length
        record = self.classifier.classify(frame, start)
        if record.kind is FrameKind.FRAGMENT:
            assert record.fragment is not None
            keys = self.fragment_sessions.get(record.fragment, set())
        else:
            keys = set() if record.key is None else {record.key}
        if not any(self.machine.owns(key) for key in keys):
            self._violation(f"injected a {record.kind.name} packet of {keys or 'no session'}")
        if network_offset != record.network_offset:
            self._violation(f"injected from offset {network_offset}, not {record.network_offset}")
        judged = declared_kind(frame[start:])
        if judged not in CLIENT_KINDS:
            self._violation(f"injected a packet the declarations call {judged.name}")
        self.injected[frame] += 1
        if self.injected[frame] > self.fed[frame]:
            self._violation(
                f"injected {self.injected[frame]} copies of a frame fed {self.fed[frame]}"
            )

    def check_local_reset(self, packet: bytes) -> None:
        try:
            reset = Ipv4Packet.parse(packet)
            segment = TcpSegment.parse(reset.payload, reset.source, reset.destination)
        except RemoteProtocolError as error:
            self._violation(f"wrote a local reset that does not parse: {error}")
            return
        key = SessionKey(
            6,
            reset.source.packed,
            segment.source_port,
            reset.destination.packed,
            segment.destination_port,
        )
        if segment.flags != TcpFlags.RST or reset.destination != CLUSTER_V4:
            self._violation(f"wrote a local packet that is no reset to the cluster: {segment}")
        if self.machine.owns(key):
            self._violation(f"reset {key}, a session the member serves")

    def read_member_output(self) -> None:
        """Check every frame the member sent since the last look, and learn its claims."""
        for frame in self.tap.written[self.read_written :]:
            if frame[6:12] != bytes(MEMBER_MAC):
                self._violation(f"sent a frame from {MacAddress(frame[6:12])}")
            ethertype = int.from_bytes(frame[12:14], "big")
            if ethertype == EtherType.VLAN:  # an ARP answer keeps the asker's tag
                ethertype = int.from_bytes(frame[16:18], "big")
            if ethertype == EtherType.ARP:
                continue
            if ethertype != EtherType.IPV4 or frame[14 + 9] != CLAIM_PROTOCOL:
                self._violation(f"sent a frame that is neither ARP nor a claim: {frame.hex()}")
                continue
            try:
                message = self.listener.open(frame[34:])
            except RemoteProtocolError as error:
                self._violation(f"sent a claim message its peers refuse: {error}")
                continue
            if message.counter <= self.member_counter:
                self._violation(f"sent counter {message.counter} after {self.member_counter}")
            self.member_counter = message.counter
            if isinstance(message, Claim):
                self.member_claims.append(message.counter)
            elif isinstance(message, BucketState):
                self.member_buckets = message
        self.read_written = len(self.tap.written)

    def check(self, step: Step) -> None:
        self.read_member_output()
        assert not self.violations, f"after {step}: {self.violations}"
        counters = self.plane.counters
        for name, value in self.expected.items():
            assert getattr(counters, name) == value, (
                f"after {step}: {name} is {getattr(counters, name)}, expected {value}"
            )
        assert counters.arp_replies + counters.arp_rate_limited <= counters.arp_requests
        machine = self.machine
        assert machine.bound_violation() is None, f"after {step}: {machine.bound_violation()}"
        statistics = machine.statistics()
        assert cast(int, statistics["sessions"]) <= SETTINGS.max_sessions
        assert cast(int, statistics["queued_packets"]) <= SETTINGS.max_queued_packets
        assert cast(int, statistics["queued_bytes"]) <= SETTINGS.max_queued_bytes
        assert cast(int, statistics["fragments"]) <= SETTINGS.max_fragments
        assert cast(int, statistics["members"]) <= SETTINGS.max_members
        assert len(self.plane.addresses) <= MAX_KNOWN_ADDRESSES
        now = _monotonic_counters(self.plane, machine)
        went_down = {
            name: (self.counters[name], value)
            for name, value in now.items()
            if value < self.counters[name]
        }
        assert not went_down, f"after {step}: counters went down: {went_down}"
        self.counters = now

    # ------------------------------------------------------------------ time

    async def let_time_pass(self, passing: TimePasses, clock: trio.testing.MockClock) -> None:
        target = trio.current_time() + passing.seconds
        if passing.frozen:
            clock.jump(passing.seconds)
            self.peer_keeps_up()  # what the peer sent meanwhile waits in the TAP
            await trio.testing.wait_all_tasks_blocked()
            return
        while (now := trio.current_time()) < target:
            wakeup = self.machine.next_wakeup()
            assert wakeup > now, f"the loop left a timer due at {wakeup} unhandled at {now}"
            if self.peer_is_live:
                wakeup = min(wakeup, self.peer_hello_at)
            clock.jump(min(target, wakeup) - now)
            self.peer_keeps_up()
            await trio.testing.wait_all_tasks_blocked()
            if self.peer_keeps_up():  # acknowledgements of the claims just sent
                await trio.testing.wait_all_tasks_blocked()
            self.check(passing)


async def run_member(scenario: Scenario) -> None:
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    member = MemberUnderTest(scenario)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(member.plane.run)
            member.plane.announce()
            for step in scenario.steps:
                if isinstance(step, Batch):
                    member.feed_batch(step)
                elif isinstance(step, TimePasses):
                    await member.let_time_pass(step, clock)
                else:
                    member.machine.update_local(
                        trio.current_time(),
                        draining=step.draining,
                        listening=None if step.serves_every_port else SERVED_PORTS,
                    )
                    member.plane.wake()
                await trio.testing.wait_all_tasks_blocked()
                if member.peer_keeps_up():
                    await trio.testing.wait_all_tasks_blocked()
                member.check(step)
            nursery.cancel_scope.cancel()
    finally:
        member.tap.close()


FUZZ = settings(max_examples=min(settings().max_examples, 250))


@FUZZ
@given(scenarios)
def test_a_member_fed_a_hostile_segment_keeps_its_invariants(scenario: Scenario) -> None:
    trio.run(run_member, scenario, clock=trio.testing.MockClock())


def test_the_fakes_catch_an_injection_the_machine_does_not_own() -> None:
    """The check is live: a packet injected behind the machine's back is caught."""

    async def inject_behind_the_machines_back() -> list[str]:
        member = MemberUnderTest(Scenario(None, 0, True, None, False, ()))
        syn = client_frame(0, "syn", 0, False)
        member.feed(syn)
        member.tun.inject(syn, 14)
        member.tap.close()
        return member.violations

    violations = trio.run(inject_behind_the_machines_back, clock=trio.testing.MockClock())
    assert len(violations) == 1 and "injected a TCP packet" in violations[0]


# The two examples below are what this fuzz found, shrunk. Each failed before
# the fix its comment names.


def test_a_claim_undecided_past_its_sessions_expiry_injects_nothing() -> None:
    """A member frozen past a pending session's handshake timeout forgets it on
    waking. Before the fix in `ClaimMachine._session_timer` one handle_timer
    call won the claim (queuing its SYN and an assertion), then expired the
    session in the same `pop_due` loop: the loop injected the SYN of a session
    the machine no longer had, and peers kept an assertion it had forgotten."""
    one_syn_then_a_long_freeze = Scenario(
        claim_key=None,
        bucket_count=0,
        serves_every_port=True,
        vnet_header=None,
        peer_is_live=False,
        steps=(
            Batch((PoolFrame(0, "syn"),)),
            TimePasses(SETTINGS.handshake_timeout + 0.5, frozen=True),
        ),
    )
    trio.run(run_member, one_syn_then_a_long_freeze, clock=trio.testing.MockClock())


def test_an_evicted_sessions_reset_is_written_before_its_successor_is_served() -> None:
    """On the TUN path with buckets, a SYN flood evicts a half-open session
    served at once, and the client's retransmitted SYN in the same batch is
    served at once again. Before the fix in `DataPlane.drain` the SYN was
    injected at once while the eviction's reset waited for the batch's end:
    the reset, with that SYN's sequence, then dropped the connection the
    machine owned."""
    syn = PoolFrame(0, "syn")
    flood_then_the_same_syn_again = Scenario(
        claim_key=None,
        bucket_count=4,
        serves_every_port=True,
        vnet_header=None,
        peer_is_live=False,
        steps=(
            TimePasses(SETTINGS.member_timeout, frozen=False),  # alone: it takes every bucket
            Batch((syn,)),  # served at once
            Batch((Flood(syn=True, count=SETTINGS.max_sessions, first_port=50000), syn)),
        ),
    )
    trio.run(run_member, flood_then_the_same_syn_again, clock=trio.testing.MockClock())
