"""The status report: one typed value that the daemon builds and the CLI, the
metrics and the lab read.

This module owns the report's shape and its JSON form, which the control
socket carries and `appliance-ctl status --json` prints. The JSON field names
are an interface scripts depend on (tests/unit/test_status.py pins them).
Reading JSON back refuses a reply of another shape with one line, never a
KeyError. It must not import the daemon, trio or the protocol core:
`appliance-ctl status` loads only this.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from appliance.errors import UserError

# What `appliance-ctl status` prints by name: a reply without one of these is
# refused when read, rather than failing half-way through the printout.
SHOWN_COUNTERS = (
    "claims_sent",
    "claims_won",
    "claims_lost",
    "conflicts",
    "conflicts_yielded",
    "decided_on_timeout",
    "assertions_sent",
    "assertions_received",
    "packets_injected",
)
SHOWN_FRAMES = ("frames", "malformed", "claims_malformed", "auth_failures", "arp_replies")


class UnreadableReport(UserError):
    """The daemon answered with a report of another shape (another version, most often)."""


def member_hex(member_id: int) -> str:
    """A member id as the logs and the JSON write it: 16 hex digits."""
    return f"{member_id:016x}"


@dataclass(frozen=True, slots=True)
class MemberReport:
    """One member as this one sees it: itself, or a live peer."""

    member_id: int
    is_self: bool  # "self" in JSON
    address: str | None  # where its claims come from; None until one has arrived
    last_seen: float  # seconds ago; 0 for this member
    weight: float  # as announced (after the load adjustment, if load_aware)
    draining: bool
    share: float  # of the sessions with a known owner, 0 to 1

    def to_json(self) -> dict[str, Any]:
        return {
            "member_id": member_hex(self.member_id),
            "self": self.is_self,
            "address": self.address,
            "last_seen": self.last_seen,
            "weight": self.weight,
            "draining": self.draining,
            "share": self.share,
        }

    @classmethod
    def _read(cls, data: _Object) -> MemberReport:
        return cls(
            member_id=data.member_id("member_id"),
            is_self=data.flag("self"),
            address=data.optional_text("address"),
            last_seen=data.number("last_seen"),
            weight=data.number("weight"),
            draining=data.flag("draining"),
            share=data.number("share"),
        )


@dataclass(frozen=True, slots=True)
class SessionCounts:
    """Sessions in the table, by state."""

    owned: int
    foreign: int
    pending: int
    closing: int
    total: int
    serving: int  # injected by this member: owned, or closing after owned

    def to_json(self) -> dict[str, Any]:
        return {
            "owned": self.owned,
            "foreign": self.foreign,
            "pending": self.pending,
            "closing": self.closing,
            "total": self.total,
            "serving": self.serving,
        }

    @classmethod
    def _read(cls, data: _Object) -> SessionCounts:
        return cls(
            owned=data.whole("owned"),
            foreign=data.whole("foreign"),
            pending=data.whole("pending"),
            closing=data.whole("closing"),
            total=data.whole("total"),
            serving=data.whole("serving"),
        )


@dataclass(frozen=True, slots=True)
class QueueReport:
    """Client packets held while their sessions are being claimed."""

    packets: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"packets": self.packets, "bytes": self.bytes}

    @classmethod
    def _read(cls, data: _Object) -> QueueReport:
        return cls(packets=data.whole("packets"), bytes=data.whole("bytes"))


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What `appliance-ctl status` shows and the metrics endpoint exports.

    `counters` are the claim machine's (claims_won, conflicts, ...), `drops`
    its dropped client packets by reason, `frames` the data plane's counters;
    their names follow those layers, so they are mappings, not fields.
    """

    cluster_ip: IPv4Address | IPv6Address
    cluster_mac: str
    member_id: int
    interface: str
    bridge: str
    uptime: float  # seconds
    draining: bool
    drained: bool  # draining, and no session left to serve
    warming: bool
    listening: tuple[str, ...]  # "tcp/80", sorted
    authenticated: bool
    members: tuple[MemberReport, ...]  # this member first
    sessions: SessionCounts
    queued: QueueReport
    counters: Mapping[str, int]
    drops: Mapping[str, int]
    frames: Mapping[str, int]
    data_path: str  # "kernel" (the fast path), "kernel, degraded (owned set full)" or "tun"
    # Claimed buckets: count, held, wanted, granted, taken, released, conflicts,
    # lapses, and on the fast path held_in_kernel and other_in_kernel; empty without them.
    buckets: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of `appliance-ctl status --json`."""
        return {
            "cluster_ip": str(self.cluster_ip),
            "cluster_mac": self.cluster_mac,
            "member_id": member_hex(self.member_id),
            "interface": self.interface,
            "bridge": self.bridge,
            "uptime": self.uptime,
            "draining": self.draining,
            "drained": self.drained,
            "warming": self.warming,
            "listening": list(self.listening),
            "authenticated": self.authenticated,
            "members": [member.to_json() for member in self.members],
            "sessions": self.sessions.to_json(),
            "queued": self.queued.to_json(),
            "counters": dict(self.counters),
            "drops": dict(self.drops),
            "frames": dict(self.frames),
            "data_path": self.data_path,
            "buckets": dict(self.buckets),
        }

    @classmethod
    def from_json(cls, data: object) -> StatusReport:
        """The report from its JSON object; UnreadableReport if it has another shape."""
        report = _Object(data, "status", "")
        return cls(
            cluster_ip=report.address("cluster_ip"),
            cluster_mac=report.text("cluster_mac"),
            member_id=report.member_id("member_id"),
            interface=report.text("interface"),
            bridge=report.text("bridge"),
            uptime=report.number("uptime"),
            draining=report.flag("draining"),
            drained=report.flag("drained"),
            warming=report.flag("warming"),
            listening=report.texts("listening"),
            authenticated=report.flag("authenticated"),
            members=tuple(MemberReport._read(member) for member in report.objects("members")),
            sessions=SessionCounts._read(report.object("sessions")),
            queued=QueueReport._read(report.object("queued")),
            counters=report.tally("counters", SHOWN_COUNTERS),
            drops=report.tally("drops"),
            frames=report.tally("frames", SHOWN_FRAMES),
            data_path=report.text("data_path"),
            buckets=report.tally("buckets"),
        )


@dataclass(frozen=True, slots=True)
class SessionReport:
    """One row of `appliance-ctl sessions`."""

    session: str  # "tcp 198.51.100.7:40000 -> 192.0.2.10:80", as the session key prints
    state: str  # pending, owned, foreign or closing
    owner: int | None  # None while nobody has won it
    mine: bool
    age: float  # seconds since it started
    idle: float  # seconds since its last packet

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "state": self.state,
            "owner": None if self.owner is None else member_hex(self.owner),
            "mine": self.mine,
            "age": self.age,
            "idle": self.idle,
        }

    @classmethod
    def _read(cls, data: _Object) -> SessionReport:
        return cls(
            session=data.text("session"),
            state=data.text("state"),
            owner=data.optional_member_id("owner"),
            mine=data.flag("mine"),
            age=data.number("age"),
            idle=data.number("idle"),
        )


@dataclass(frozen=True, slots=True)
class SessionListing:
    """What `appliance-ctl sessions` shows: up to its limit of rows, and the total."""

    sessions: tuple[SessionReport, ...]
    total: int
    member_id: int

    def to_json(self) -> dict[str, Any]:
        """The JSON object of `appliance-ctl sessions --json`."""
        return {
            "sessions": [session.to_json() for session in self.sessions],
            "total": self.total,
            "member_id": member_hex(self.member_id),
        }

    @classmethod
    def from_json(cls, data: object) -> SessionListing:
        """The listing from its JSON object; UnreadableReport if it has another shape."""
        listing = _Object(data, "sessions listing", "")
        return cls(
            sessions=tuple(SessionReport._read(row) for row in listing.objects("sessions")),
            total=listing.whole("total"),
            member_id=listing.member_id("member_id"),
        )


# ------------------------------------------------------------- reading JSON


class _Object:
    """A JSON object being read into a report. Each accessor checks one field's
    type, and an error names the field by its path (members[1].weight)."""

    __slots__ = ("_data", "_path", "_report")

    def __init__(self, data: object, report: str, path: str) -> None:
        self._report = report
        self._path = path
        if not isinstance(data, dict):
            raise self._unreadable(path or "the answer", "is not a JSON object")
        self._data: dict[str, object] = data

    def _unreadable(self, path: str, problem: str) -> UnreadableReport:
        return UnreadableReport(
            f"the daemon's {self._report} is not one this appliance-ctl reads: {path} "
            f"{problem}; is the daemon of another version? Restart it after an upgrade, or "
            "use the appliance-ctl installed with it"
        )

    def _at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str) -> object:
        try:
            return self._data[key]
        except KeyError:
            raise self._unreadable(self._at(key), "is missing") from None

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._unreadable(self._at(key), f"is {_shown(value)}, not text")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self._get(key) is None else self.text(key)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._unreadable(self._at(key), f"is {_shown(value)}, not true or false")
        return value

    def whole(self, key: str) -> int:
        return self._whole(self._get(key), self._at(key))

    def _whole(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._unreadable(path, f"is {_shown(value)}, not a count")
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._unreadable(self._at(key), f"is {_shown(value)}, not a number")
        return float(value)

    def address(self, key: str) -> IPv4Address | IPv6Address:
        text = self.text(key)
        try:
            return ip_address(text)
        except ValueError:
            raise self._unreadable(self._at(key), f"is {_shown(text)}, not an IP address") from None

    def member_id(self, key: str) -> int:
        text = self.text(key)
        if len(text) != 16 or not set(text) <= set(string.hexdigits):
            raise self._unreadable(self._at(key), f"is {_shown(text)}, not 16 hex digits")
        return int(text, 16)

    def optional_member_id(self, key: str) -> int | None:
        return None if self._get(key) is None else self.member_id(key)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._unreadable(self._at(key), f"is {_shown(value)}, not a list of text")
        return tuple(value)

    def tally(self, key: str, required: tuple[str, ...] = ()) -> dict[str, int]:
        """Counts by name; `required` names must be among them."""
        counts = self.object(key)
        tally = {name: self._whole(value, counts._at(name)) for name, value in counts._data.items()}
        for name in required:
            if name not in tally:
                raise self._unreadable(counts._at(name), "is missing")
        return tally

    def object(self, key: str) -> _Object:
        return _Object(self._get(key), self._report, self._at(key))

    def objects(self, key: str) -> list[_Object]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._unreadable(self._at(key), f"is {_shown(value)}, not a list")
        return [
            _Object(item, self._report, f"{self._at(key)}[{index}]")
            for index, item in enumerate(value)
        ]


def _shown(value: object) -> str:
    """A bad value for an error line: its JSON-ish repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
