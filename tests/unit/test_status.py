"""The status report: its JSON form pinned field by field (scripts read
`appliance-ctl status --json`), what a reply of another shape gives, and the
three readers (CLI, metrics, the daemon that builds it) on one typed value."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from ipaddress import IPv4Address
from typing import Any, cast

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from appliance.cli import format_sessions, format_status
from appliance.config import load_config
from appliance.daemon import Daemon
from appliance.dataplane.frames import FrameBuilder
from appliance.dataplane.loop import DataPlane, FrameCounters
from appliance.errors import UserError
from appliance.host.devices import TapDevice, TunDevice
from appliance.operations.metrics import ApplianceCollector
from appliance.operations.status import (
    SHOWN_COUNTERS,
    SHOWN_FRAMES,
    MemberReport,
    QueueReport,
    SessionCounts,
    SessionListing,
    SessionReport,
    StatusReport,
    UnreadableReport,
)
from protocols.claim_auth import ClaimAuthenticator
from protocols.claim_machine import ClaimMachine, Counters
from protocols.classifier import Classified, Classifier, FrameKind
from protocols.session_key import SessionKey
from protocols.wire.claim import Hello

COUNTERS = {name.name: index for index, name in enumerate(fields(Counters))}
DROPS = {"foreign": 12, "not_claimed": 3}
FRAMES = {name.name: 100 + index for index, name in enumerate(fields(FrameCounters))}


BUCKETS = {"count": 1024, "held": 341, "wanted": 2, "granted": 683, "taken": 343, "conflicts": 0}


def sample_report() -> StatusReport:
    return StatusReport(
        cluster_ip=IPv4Address("192.0.2.10"),
        cluster_mac="02:c0:00:02:0a:01",
        member_id=0x0123456789ABCDEF,
        interface="eth0",
        bridge="br0",
        uptime=12.5,
        draining=True,
        drained=False,
        warming=False,
        listening=("tcp/80", "udp/53"),
        authenticated=True,
        members=(
            MemberReport(0x0123456789ABCDEF, True, "192.0.2.1", 0.0, 1.0, True, 0.25),
            MemberReport(0xBAD, False, None, 0.125, 2.0, False, 0.75),
        ),
        sessions=SessionCounts(owned=1, foreign=3, pending=2, closing=4, total=10, serving=5),
        queued=QueueReport(packets=6, bytes=900),
        counters=COUNTERS,
        drops=DROPS,
        frames=FRAMES,
        data_path="kernel",
        buckets=BUCKETS,
    )


# What `appliance-ctl status --json` prints for sample_report(), field by field.
SAMPLE_JSON: dict[str, Any] = {
    "cluster_ip": "192.0.2.10",
    "cluster_mac": "02:c0:00:02:0a:01",
    "member_id": "0123456789abcdef",
    "interface": "eth0",
    "bridge": "br0",
    "uptime": 12.5,
    "draining": True,
    "drained": False,
    "warming": False,
    "listening": ["tcp/80", "udp/53"],
    "authenticated": True,
    "members": [
        {
            "member_id": "0123456789abcdef",
            "self": True,
            "address": "192.0.2.1",
            "last_seen": 0.0,
            "weight": 1.0,
            "draining": True,
            "share": 0.25,
        },
        {
            "member_id": "0000000000000bad",
            "self": False,
            "address": None,
            "last_seen": 0.125,
            "weight": 2.0,
            "draining": False,
            "share": 0.75,
        },
    ],
    "sessions": {"owned": 1, "foreign": 3, "pending": 2, "closing": 4, "total": 10, "serving": 5},
    "queued": {"packets": 6, "bytes": 900},
    "counters": COUNTERS,
    "drops": DROPS,
    "frames": FRAMES,
    "data_path": "kernel",
    "buckets": BUCKETS,
}


def test_the_json_fields_are_pinned() -> None:
    dumped = sample_report().to_json()
    assert dumped == SAMPLE_JSON
    # The order too, so the printed JSON reads the same from one release to the next.
    assert list(dumped) == list(SAMPLE_JSON)
    assert [list(member) for member in dumped["members"]] == [
        list(member) for member in SAMPLE_JSON["members"]
    ]
    assert list(dumped["sessions"]) == list(SAMPLE_JSON["sessions"])


def test_the_json_reads_back_into_the_same_report() -> None:
    text = json.dumps(sample_report().to_json())
    assert StatusReport.from_json(json.loads(text)) == sample_report()


def test_whole_numbers_where_a_float_is_expected_are_read() -> None:
    data = copy.deepcopy(SAMPLE_JSON)
    data["uptime"] = 12
    data["members"][0]["weight"] = 1
    report = StatusReport.from_json(data)
    assert report.uptime == 12.0 and isinstance(report.uptime, float)
    assert report.members[0].weight == 1.0


def _without(path: tuple[str | int, ...]) -> dict[str, Any]:
    data = copy.deepcopy(SAMPLE_JSON)
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return data


def _with(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(SAMPLE_JSON)
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (_without(("cluster_mac",)), "cluster_mac is missing"),
        (_without(("members", 1, "weight")), "members[1].weight is missing"),
        (_without(("sessions", "serving")), "sessions.serving is missing"),
        (_without(("counters", "claims_won")), "counters.claims_won is missing"),
        (_without(("frames", "auth_failures")), "frames.auth_failures is missing"),
        (_with(("draining",), "yes"), "draining is 'yes', not true or false"),
        (_with(("sessions", "owned"), True), "sessions.owned is True, not a count"),
        (_with(("sessions", "owned"), -1), "sessions.owned is -1, not a count"),
        (_with(("drops", "foreign"), 1.5), "drops.foreign is 1.5, not a count"),
        (_with(("uptime",), "12"), "uptime is '12', not a number"),
        (_with(("member_id",), "bad"), "member_id is 'bad', not 16 hex digits"),
        (_with(("cluster_ip",), "10.0.0.300"), "cluster_ip is '10.0.0.300', not an IP"),
        (_with(("listening",), "tcp/80"), "listening is 'tcp/80', not a list of text"),
        (_with(("members",), {}), "members is {}, not a list"),
        (_with(("members", 0), []), "members[0] is not a JSON object"),
        (_with(("queued",), None), "queued is not a JSON object"),
        ([SAMPLE_JSON], "the answer is not a JSON object"),
    ],
)
def test_a_reply_of_another_shape_is_one_clear_line(answer: object, named: str) -> None:
    with pytest.raises(UnreadableReport) as raised:
        StatusReport.from_json(answer)
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert "\n" not in message
    assert named in message
    assert "another version" in message


def test_a_long_bad_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(UnreadableReport) as raised:
        StatusReport.from_json(_with(("listening",), "x" * 1000))
    assert len(str(raised.value)) < 250


SAMPLE_LISTING = SessionListing(
    sessions=(
        SessionReport("tcp 198.51.100.7:40000 -> 192.0.2.10:80", "owned", 0x0123, True, 1.5, 0.25),
        SessionReport("udp 198.51.100.7:40001 -> 192.0.2.10:53", "pending", None, False, 0.0, 0.0),
    ),
    total=7,
    member_id=0x0123,
)
SAMPLE_LISTING_JSON: dict[str, Any] = {
    "sessions": [
        {
            "session": "tcp 198.51.100.7:40000 -> 192.0.2.10:80",
            "state": "owned",
            "owner": "0000000000000123",
            "mine": True,
            "age": 1.5,
            "idle": 0.25,
        },
        {
            "session": "udp 198.51.100.7:40001 -> 192.0.2.10:53",
            "state": "pending",
            "owner": None,
            "mine": False,
            "age": 0.0,
            "idle": 0.0,
        },
    ],
    "total": 7,
    "member_id": "0000000000000123",
}


def test_the_sessions_listing_json_is_pinned_and_reads_back() -> None:
    dumped = SAMPLE_LISTING.to_json()
    assert dumped == SAMPLE_LISTING_JSON
    assert [list(row) for row in dumped["sessions"]] == [
        list(row) for row in SAMPLE_LISTING_JSON["sessions"]
    ]
    assert SessionListing.from_json(json.loads(json.dumps(dumped))) == SAMPLE_LISTING
    with pytest.raises(UnreadableReport, match=r"sessions\[1\]\.owner is 'nobody'"):
        SessionListing.from_json(
            {
                **SAMPLE_LISTING_JSON,
                "sessions": [dumped["sessions"][0], {**dumped["sessions"][1], "owner": "nobody"}],
            }
        )


# ------------------------------------------------------------------ readers


def test_the_cli_prints_the_typed_report() -> None:
    text = format_status(sample_report())
    lines = text.splitlines()
    assert lines[0] == "cluster 192.0.2.10 (MAC 02:c0:00:02:0a:01) on br0 (eth0): draining"
    assert lines[1] == (
        "this member: 0123456789abcdef, up 12s, claims authenticated, data path: kernel"
    )
    assert lines[2] == "listening on: tcp/80 udp/53"
    assert lines[3] == (
        "buckets: holds 341 of 1024, wants 2, granted 683 to others; taken 343, released 0"
        ", conflicts 0, lapses 0"
    )
    assert lines[6] == "  0123456789abcdef   192.0.2.1            self    1.00  25.0% draining"
    assert lines[7] == "  0000000000000bad   ?                    0.1s    2.00  75.0%"
    assert "sessions: 1 owned, 3 foreign, 2 pending, 4 closing" in lines
    assert f"claims: {COUNTERS['claims_sent']} sent, {COUNTERS['claims_won']} won" in text
    assert "drops: foreign 12, not_claimed 3" in lines


def test_the_cli_prints_the_sessions_listing() -> None:
    lines = format_sessions(SAMPLE_LISTING).splitlines()
    assert lines[1].split() == [
        *("tcp", "198.51.100.7:40000", "->", "192.0.2.10:80"),
        *("owned", "self", "1.5", "0.2"),
    ]
    assert lines[2].split()[-4:] == ["pending", "(none)", "0.0", "0.0"]
    assert lines[-1] == "2 of 7 sessions"


def test_the_metrics_export_the_typed_report() -> None:
    registry = CollectorRegistry()
    registry.register(ApplianceCollector(sample_report))
    scraped = generate_latest(registry).decode()
    assert f"appliance_claims_won_total {float(COUNTERS['claims_won'])}" in scraped
    assert 'appliance_sessions{state="closing"} 4.0' in scraped
    assert 'appliance_dropped_packets_total{reason="foreign"} 12.0' in scraped
    assert 'appliance_queued{unit="bytes"} 900.0' in scraped
    assert "appliance_members 2.0" in scraped
    assert "appliance_draining 1.0" in scraped
    assert f"appliance_frames_auth_failures_total {float(FRAMES['auth_failures'])}" in scraped


def test_what_the_cli_prints_by_name_is_what_the_layers_count() -> None:
    assert set(SHOWN_COUNTERS) <= set(Counters().as_dict())
    assert set(SHOWN_FRAMES) <= set(FrameCounters().as_dict())


# ------------------------------------------------------------------ the daemon

ME, PEER = 0x0123456789ABCDEF, 0xBAD


def daemon_with_a_plane() -> Daemon:
    """A daemon with a real claim machine and data plane, and no devices."""
    config = load_config(None, {"cluster_ip": "192.0.2.10"})
    daemon = Daemon(config)
    daemon.member_id = ME
    machine = ClaimMachine(
        ME, config.claim_settings(), trio.current_time(), listening=frozenset({(6, 80)})
    )
    daemon.plane = DataPlane(
        tap=cast(TapDevice, None),  # never touched: nothing runs the plane
        tun=cast(TunDevice, None),
        machine=machine,
        classifier=Classifier([config.cluster_ip.packed], config.claim_protocol),
        builder=FrameBuilder(
            own_mac=bytes.fromhex("020000000001"),
            cluster_mac=daemon.cluster_mac,
            cluster_ip=config.cluster_ip,
            member_ip=IPv4Address("192.0.2.1"),
            claim_protocol=config.claim_protocol,
        ),
        authenticator=ClaimAuthenticator(None),
    )
    return daemon


async def test_the_daemon_builds_the_report_from_its_layers(autojump_clock: object) -> None:
    daemon = daemon_with_a_plane()
    machine = daemon.machine
    key = SessionKey(6, bytes([198, 51, 100, 7]), 40000, bytes([192, 0, 2, 10]), 80)
    syn = Classified(FrameKind.TCP, key, 0x02, 14, 54, 1000)
    machine.handle_client_packet(syn, b"", 60, trio.current_time())
    for _ in range(100):
        if machine.owns(key):
            break
        await trio.sleep_until(machine.next_wakeup())
        machine.handle_timer(trio.current_time())
    assert machine.owns(key)
    now = trio.current_time()
    machine.handle_message(Hello(PEER, 1, 2.0, draining=True, warming=False, leaving=False), now)

    report = daemon.status(now)
    assert report.member_id == ME and report.cluster_ip == IPv4Address("192.0.2.10")
    assert report.listening == ("tcp/80",)
    assert not report.authenticated and not report.draining and not report.drained
    assert report.sessions == SessionCounts(
        owned=1, foreign=0, pending=0, closing=0, total=1, serving=1
    )
    assert report.queued == QueueReport(packets=0, bytes=0)
    own, peer = report.members
    assert (own.member_id, own.is_self, own.address, own.share) == (ME, True, "192.0.2.1", 1.0)
    assert (peer.member_id, peer.is_self, peer.address) == (PEER, False, None)
    assert (peer.weight, peer.draining, peer.share) == (2.0, True, 0.0)
    assert report.counters["claims_won"] == 1
    assert set(report.drops) and set(report.frames) >= set(SHOWN_FRAMES)
    # What the control socket carries reads back into the same report.
    assert StatusReport.from_json(json.loads(json.dumps(report.to_json()))) == report

    listing = daemon.sessions(now, limit=10)
    assert listing.total == 1 and listing.member_id == ME
    (row,) = listing.sessions
    assert (row.session, row.state, row.owner, row.mine) == (str(key), "owned", ME, True)
    assert SessionListing.from_json(listing.to_json()) == listing
    answered = daemon.handle_control({"command": "status"})
    assert isinstance(answered, StatusReport)
    assert (answered.members, answered.sessions) == (report.members, report.sessions)
    assert daemon.status_line() == "serving 192.0.2.10: 1 sessions owned, 2 members"


async def test_the_daemon_refuses_what_it_cannot_serve_as_user_errors() -> None:
    daemon = daemon_with_a_plane()
    with pytest.raises(UserError, match="unknown command 'reboot'"):
        daemon.handle_control({"command": "reboot"})
    with pytest.raises(UserError, match="limit must be a whole number"):
        daemon.handle_control({"command": "sessions", "limit": "all"})
    daemon.plane = None
    with pytest.raises(UserError, match="still starting"):
        daemon.handle_control({"command": "status"})
