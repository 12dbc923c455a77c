"""`appliance-ctl`: the command line of the appliance.

Errors a user can cause end as one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import UserError
from appliance.operations.status import SessionListing, StatusReport, member_hex

DESCRIPTION = """\
Share one cluster IP address between Linux hosts on one Ethernet segment,
with no load balancer in front. Run the appliance on every host: each new TCP
or UDP session to the cluster address is served by exactly one member.

quick start (as root, on every host):
  appliance-ctl bridge eth0                      # eth0 joins bridge br0, addresses follow
  appliance-ctl run --cluster-ip 192.0.2.10      # serve the cluster IP (foreground)
  appliance-ctl status                           # members, sessions, counters
  appliance-ctl demo                             # all of it on one machine, in namespaces
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance-ctl",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    bridge = commands.add_parser(
        "bridge",
        help="put a NIC into a bridge with its addresses and routes",
        description="Create BRIDGE (default br0) with IFACE's MAC and MTU, make IFACE its port, "
        "and move IFACE's IPv4 and IPv6 addresses and routes (the default route included) "
        "onto the bridge, so the host keeps its address and reachability. Running it twice "
        "is harmless.",
    )
    bridge.add_argument("interface", metavar="IFACE", help="the NIC on the shared segment")
    bridge.add_argument("--bridge", default="br0", metavar="NAME", help="bridge name (default br0)")

    unbridge = commands.add_parser(
        "unbridge",
        help="undo `bridge`: addresses and routes back to the NIC",
        description="Move the bridge's addresses and routes back to IFACE and delete the bridge.",
    )
    unbridge.add_argument("interface", metavar="IFACE")
    unbridge.add_argument(
        "--bridge", default="br0", metavar="NAME", help="bridge name (default br0)"
    )

    run = commands.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Serve the cluster IP: make sure the bridge exists, add a TAP to it and a TUN "
        "with the cluster IP, and take part in claims. Flags override the config file. "
        "Stops cleanly on SIGINT or SIGTERM.",
    )
    run.add_argument("--cluster-ip", metavar="ADDR", help="the shared address")
    run.add_argument("--interface", metavar="IFACE", help="the NIC on the segment (default eth0)")
    run.add_argument("--bridge", metavar="NAME", help="the bridge (default br0)")
    run.add_argument("--weight", type=float, metavar="W", help="share of new sessions (default 1)")
    run.add_argument("--key-file", metavar="FILE", help="claim key file (16 bytes or more)")
    run.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics")
    run.add_argument("--log-format", choices=["plain", "json"], help="log line format")
    run.add_argument(
        "--fast-path",
        choices=["auto", "on", "off"],
        help="kernel fast path: auto (default) when nftables works, on (or refuse), off (TUN only)",
    )
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML file with the same keys")

    for name, text in (
        ("status", "members, sessions and counters of this namespace's daemon"),
        ("sessions", "the sessions this member knows, with their owners"),
    ):
        command = commands.add_parser(name, help=text, description=text.capitalize() + ".")
        command.add_argument("--json", action="store_true", help="print JSON")
        command.add_argument("--control-socket", default="@appliance", metavar="NAME")
        if name == "sessions":
            command.add_argument("--limit", type=int, default=1000, help="at most this many")

    drain = commands.add_parser(
        "drain",
        help="stop claiming new sessions; keep serving the running ones",
        description="Stop claiming new sessions while running ones finish. `status` shows "
        "drained: true when none is left. With --wait, return only then.",
    )
    drain.add_argument("--wait", action="store_true", help="wait until no session is left")
    drain.add_argument("--timeout", type=float, default=600.0, help="give up after this (seconds)")
    drain.add_argument("--control-socket", default="@appliance", metavar="NAME")
    undrain = commands.add_parser("undrain", help="claim new sessions again")
    undrain.add_argument("--control-socket", default="@appliance", metavar="NAME")
    weight = commands.add_parser(
        "weight",
        help="change this member's weight while it runs",
        description="Change this member's weight (0 to 1000; 2 takes twice the share of 1, "
        "0 takes none) until it restarts. Buckets move to follow it; running sessions stay.",
    )
    weight.add_argument("weight", type=float, help="the new weight")
    weight.add_argument("--control-socket", default="@appliance", metavar="NAME")

    demo = commands.add_parser(
        "demo",
        help="the whole thing on one machine, in network namespaces",
        description="Build a namespaced segment, run nginx, dnsmasq and the appliance in each "
        "member, drive HTTP and DNS clients, kill one member part-way, and print a summary. "
        "Needs root and the lab (pip install ./lab, from a clone). Exits 0 only if no request "
        "was lost.",
    )
    demo.add_argument("--members", type=int, default=3, help="members (default 3)")
    demo.add_argument(
        "--duration", type=float, default=20.0, help="seconds of traffic (default 20)"
    )
    demo.add_argument("--no-kill", action="store_true", help="do not kill a member")
    demo.add_argument("--plain", action="store_true", help="no live view; log lines instead")

    commands.add_parser("config-reference", help="print every configuration key as Markdown")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        sys.exit(2)
    try:
        sys.exit(dispatch(arguments))
    except UserError as error:
        print(f"appliance-ctl: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def dispatch(arguments: argparse.Namespace) -> int:
    command = arguments.command
    if command == "bridge":
        from appliance.host.netlink import bridge_interface

        print(bridge_interface(arguments.interface, arguments.bridge))
        return 0
    if command == "unbridge":
        from appliance.host.netlink import unbridge_interface

        print(unbridge_interface(arguments.interface, arguments.bridge))
        return 0
    if command == "run":
        return run_daemon(arguments)
    if command in ("status", "sessions"):
        from appliance.operations.control import control_request

        request: dict[str, Any] = {"command": command}
        if command == "sessions":
            request["limit"] = arguments.limit
        response = control_request(arguments.control_socket, request)
        # Read into the typed report first: an answer of another shape ends in
        # one line, and --json prints exactly the documented fields.
        report: StatusReport | SessionListing
        if command == "status":
            report = StatusReport.from_json(response)
            text = format_status(report)
        else:
            report = SessionListing.from_json(response)
            text = format_sessions(report)
        print(json.dumps(report.to_json(), indent=2) if arguments.json else text)
        return 0
    if command in ("drain", "undrain"):
        return drain(arguments)
    if command == "weight":
        from appliance.operations.control import control_request

        response = control_request(
            arguments.control_socket, {"command": "weight", "weight": arguments.weight}
        )
        status = StatusReport.from_json(response)
        print(f"weight {arguments.weight:g}; {status.buckets.get('held', 0)} bucket(s) held now")
        return 0
    if command == "demo":
        try:
            from lab.demo import run_demo
        except ImportError as error:  # the lab is not installed beside the product
            raise UserError(
                f"the demo needs the lab ({error.name} is missing): install it from a clone "
                "with 'pip install ./lab', or run tools/demo there"
            ) from None

        # SIGTERM tears the lab down as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)

        return run_demo(
            members=arguments.members,
            duration=arguments.duration,
            kill=not arguments.no_kill,
            live=not arguments.plain,
        )
    if command == "config-reference":
        from appliance.config import reference_table

        print(reference_table())
        return 0
    raise AssertionError(command)


def _interrupt(number: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_daemon(arguments: argparse.Namespace) -> int:
    import trio

    from appliance.config import load_config
    from appliance.daemon import Daemon
    from appliance.operations.logs import setup_logging

    config = load_config(
        arguments.config,
        {
            "cluster_ip": arguments.cluster_ip,
            "interface": arguments.interface,
            "bridge": arguments.bridge,
            "weight": arguments.weight,
            "key_file": arguments.key_file,
            "metrics_listen": arguments.metrics_listen,
            "log_format": arguments.log_format,
            "fast_path": arguments.fast_path,
        },
    )
    setup_logging(config.log_format, config.log_level)
    try:
        trio.run(Daemon(config).run)
    except* UserError as group:
        raise first_exception(group) from None
    return 0


def first_exception(group: BaseExceptionGroup[UserError]) -> UserError:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return first_exception(error)
        return error
    raise AssertionError("empty exception group")


def drain(arguments: argparse.Namespace) -> int:
    from appliance.operations.control import control_request

    response = control_request(arguments.control_socket, {"command": arguments.command})
    if arguments.command == "undrain":
        print("claiming new sessions again")
        return 0
    status = StatusReport.from_json(response)
    print(f"draining: no new sessions; {status.sessions.serving} running session(s) left")
    if not arguments.wait:
        return 0
    deadline = time.monotonic() + arguments.timeout
    while not status.drained:
        if time.monotonic() > deadline:
            raise UserError(
                f"still {status.sessions.serving} session(s) after {arguments.timeout:g}s"
            )
        time.sleep(1.0)
        status = StatusReport.from_json(
            control_request(arguments.control_socket, {"command": "status"})
        )
    print("drained: no session left")
    return 0


def _bucket_line(buckets: Mapping[str, int]) -> str:
    if not buckets:
        return "buckets: off (every session claimed on its own)"
    return (
        f"buckets: holds {buckets.get('held', 0)} of {buckets.get('count', 0)}"
        f", wants {buckets.get('wanted', 0)}, granted {buckets.get('granted', 0)} to others"
        f"; taken {buckets.get('taken', 0)}, released {buckets.get('released', 0)}"
        f", conflicts {buckets.get('conflicts', 0)}, lapses {buckets.get('lapses', 0)}"
    )


def format_status(status: StatusReport) -> str:
    state = "draining" + (" (drained)" if status.drained else "") if status.draining else "serving"
    if status.warming:
        state += ", warming up"
    lines = [
        f"cluster {status.cluster_ip} (MAC {status.cluster_mac}) on {status.bridge} "
        f"({status.interface}): {state}",
        f"this member: {member_hex(status.member_id)}, up {status.uptime:.0f}s"
        + (", claims authenticated" if status.authenticated else "")
        + f", data path: {status.data_path}",
        "listening on: " + (" ".join(status.listening) or "nothing (claims ICMP only)"),
        _bucket_line(status.buckets),
        "",
        f"  {'member':18} {'address':15} {'last seen':>9} {'weight':>7} {'share':>6}",
    ]
    for member in status.members:
        seen = "self" if member.is_self else f"{member.last_seen:.1f}s"
        flag = " draining" if member.draining else ""
        lines.append(
            f"  {member_hex(member.member_id):18} {member.address or '?':15} {seen:>9} "
            f"{member.weight:7.2f} {member.share:6.1%}{flag}"
        )
    sessions, counters, frames = status.sessions, status.counters, status.frames
    lines += [
        "",
        f"sessions: {sessions.owned} owned, {sessions.foreign} foreign, "
        f"{sessions.pending} pending, {sessions.closing} closing",
        f"claims: {counters['claims_sent']} sent, {counters['claims_won']} won, "
        f"{counters['claims_lost']} lost, {counters['conflicts']} in conflict "
        f"({counters['conflicts_yielded']} yielded), {counters['decided_on_timeout']} decided "
        f"on timeout; assertions {counters['assertions_sent']} sent, "
        f"{counters['assertions_received']} received",
        "drops: " + ", ".join(f"{reason} {count}" for reason, count in status.drops.items()),
        f"frames: {frames['frames']} read, {frames['malformed']} malformed, "
        f"{frames['claims_malformed']} bad claims, {frames['auth_failures']} authentication "
        f"failures, {frames['arp_replies']} ARP replies, {counters['packets_injected']} packets "
        "served",
    ]
    return "\n".join(lines)


def format_sessions(listing: SessionListing) -> str:
    lines = [f"  {'session':50} {'state':8} {'owner':18} {'age':>8} {'idle':>8}"]
    for session in listing.sessions:
        if session.mine:
            owner = "self"
        else:
            owner = "(none)" if session.owner is None else member_hex(session.owner)
        lines.append(
            f"  {session.session:50} {session.state:8} {owner:18} "
            f"{session.age:8.1f} {session.idle:8.1f}"
        )
    lines.append(f"{len(listing.sessions)} of {listing.total} sessions")
    return "\n".join(lines)
