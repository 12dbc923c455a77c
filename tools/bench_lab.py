"""The cluster path against the direct kernel path, measured in one run on one lab.

    sudo .venv/bin/python -m tools.bench_lab [--members 3] [--seconds 5]

The lab has N members; members 2..N run with weight 0, so every session goes
to member 1 while the others still see every frame (and drop it: in their
kernel on the fast path, in Python on the TUN path). Each round measures the
cluster IP on the kernel fast path, then (every daemon restarted with
`--fast-path off`) on the TUN path, then "direct": the client talking to
member 1's own address, bypassing the appliance. Figures:

- bulk TCP, one iperf3 stream, client to server (every data segment passes
  through the appliance) and server to client (only the client's ACKs do);
- new connections per second: wrk, each short HTTP request on a new
  connection (Connection: close) to nginx;
- first-packet latency: TCP connect() time (SYN to SYN-ACK) at p50 and p99,
  and what the path adds to it over direct;
- new UDP flows per second: DNS queries to dnsmasq, each from a new socket
  (so a new client port, a new flow), from several processes at once; measured
  once the UDP transition of m1's buckets is over (`udp_idle_timeout` after
  they were taken: until then a new flow is claimed on its own);
- sessions in transition: the connect() latency again with claimed buckets
  off (`buckets = 0`, on the fast path), so that every session is claimed on
  its own, as a session of a bucket in transition is;
- Python's share: the most frames any member's Python read per new TCP
  connection the client made (during the wrk run), and during the upload.

Each figure is the median of --rounds rounds (3 by default), each round
measuring every path, so a burst of noise on a shared VM moves one round, not
the result. Writes tools/figures/lab.json with every round. Ratios carry over
between machines; absolute figures do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

from lab.members import LabMember, start_member
from lab.namespaces import Lab, Node, build_lab
from protocols.claim_machine import ClaimSettings

FIGURES = Path(__file__).parent / "figures" / "lab.json"
# After a member takes a bucket, its new UDP flows are claimed one by one for
# the UDP idle timeout (the appliance's default, which the lab keeps).
UDP_TRANSITION = ClaimSettings().udp_idle_timeout

CONNECT_PROBE = """
import socket, sys, time
target, count = sys.argv[1], int(sys.argv[2])
samples = []
for _ in range(count):
    s = socket.socket()
    started = time.perf_counter()
    s.connect((target, 80))
    samples.append(time.perf_counter() - started)
    s.close()
    time.sleep(0.002)
print(" ".join(f"{sample:.6f}" for sample in samples))
"""


DNS_PROBE = """
import os, socket, struct, sys, time
target, seconds, workers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
name = b"".join(bytes([len(part)]) + part for part in b"whoami.cluster".split(b".")) + b"\\0"
def run():
    answered = 0
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        number = (number + 1) & 0xFFFF
        header = struct.pack("!HHHHHH", number, 0x0100, 1, 0, 0, 0)
        query = header + name + struct.pack("!HH", 16, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        try:
            s.sendto(query, (target, 53))
            if s.recv(512)[:2] == query[:2]:
                answered += 1
        except OSError:
            pass
        s.close()
    return answered
readers = []
for _ in range(workers):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.write(w, str(run()).encode())
        os._exit(0)
    os.close(w)
    readers.append(r)
total = sum(int(os.read(r, 64) or b"0") for r in readers)
print(total / seconds)
"""
DNS_WORKERS = 4


def iperf(client: Node, target: str, seconds: float, reverse: bool) -> float:
    """Gbit/s of one iperf3 TCP stream."""
    result = client.run(
        ["iperf3", "-c", target, "-t", str(seconds), "-J", *(["-R"] if reverse else [])],
        timeout=seconds + 30,
    )
    report = json.loads(result.stdout)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


def connections_per_second(client: Node, target: str, seconds: float) -> float:
    result = client.run(
        [
            "wrk",
            "-t",
            "2",
            "-c",
            "32",
            "-d",
            f"{seconds:g}s",
            "-H",
            "Connection: close",
            f"http://{target}/",
        ],
        timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", result.stdout)
    if match is None:
        raise RuntimeError(f"wrk printed no rate: {result.stdout}")
    if errors:
        print(f"    wrk reported: {errors.group(0)}")
    return float(match.group(1))


def udp_flows_per_second(client: Node, target: str, seconds: float) -> float:
    """DNS queries answered per second, each from a new socket: a new UDP flow each."""
    result = client.run(
        ["python3", "-c", DNS_PROBE, target, str(seconds), str(DNS_WORKERS)],
        timeout=seconds + 60,
    )
    return float(result.stdout.strip())


def connect_latency(client: Node, target: str, count: int) -> tuple[float, float]:
    """p50 and p99 of connect() time, in milliseconds."""
    result = client.run(["python3", "-c", CONNECT_PROBE, target, str(count)], timeout=count + 60)
    samples = sorted(float(value) * 1000 for value in result.stdout.split())
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples), p99


def python_frames(members: list[LabMember]) -> list[tuple[int, int]]:
    """(frames read by Python, sessions started) on each member, from `status`."""
    counts = []
    for member in members:
        status = member.appliance.status()
        counts.append((status.frames["frames"], status.counters["sessions_started"]))
    return counts


def frames_per_session(
    before: list[tuple[int, int]], after: list[tuple[int, int]], connections: float
) -> float:
    """The most frames any member's Python read per connection the client made
    in between (on the fast path, most sessions never reach any member's Python,
    so the members' own session counts would not tell)."""
    sessions = max(1.0, connections)
    return max(
        (frames - frames_before) / sessions
        for (frames_before, _), (frames, _) in zip(before, after, strict=True)
    )


def measure(
    segment: Lab,
    members: list[LabMember],
    target: str,
    seconds: float,
    probes: int,
    udp_ready_at: float | None = None,
) -> dict[str, float]:
    """Every figure against one target address (the cluster IP, or m1's own)."""
    client = segment.clients[0]
    connect_latency(client, target, 20)  # warm the neighbour caches
    figures: dict[str, float] = {}
    before = python_frames(members)
    figures["upload_gbps"] = iperf(client, target, seconds, reverse=False)
    after = python_frames(members)
    figures["upload_python_frames"] = max(
        frames - earlier for (earlier, _), (frames, _) in zip(before, after, strict=True)
    )
    figures["download_gbps"] = iperf(client, target, seconds, reverse=True)
    before = python_frames(members)
    figures["connections_per_second"] = connections_per_second(client, target, seconds)
    figures["python_frames_per_session"] = frames_per_session(
        before, python_frames(members), figures["connections_per_second"] * seconds
    )
    p50, p99 = connect_latency(client, target, probes)
    figures["connect_p50_ms"] = p50
    figures["connect_p99_ms"] = p99
    if udp_ready_at is not None:
        time.sleep(max(0.0, udp_ready_at - time.monotonic()))
    figures["udp_flows_per_second"] = udp_flows_per_second(client, target, seconds)
    return figures


def start_cluster(segment: Lab, members: int, path: str) -> list[LabMember]:
    """m1 serves every session; the others run with weight 0 on the same path."""
    flags = ("--fast-path", "on" if path == "kernel" else "off")
    serving = start_member(segment, *flags, dns=False)
    cluster = [serving]
    cluster.extend(
        start_member(segment, *flags, "--weight", "0", dns=False) for _ in range(members - 1)
    )
    return cluster


def restart_on(members: list[LabMember], cluster_ip: str, path: str, *config: str) -> None:
    flags = ("--fast-path", "on" if path == "kernel" else "off", *config)
    for index, member in enumerate(members):
        member.appliance.stop()
        weight = () if index == 0 else ("--weight", "0")
        member.appliance.start(cluster_ip, *flags, *weight)
    deadline = time.monotonic() + 10
    while any(len(member.appliance.status().members) != len(members) for member in members):
        if time.monotonic() > deadline:
            raise SystemExit("the members never saw each other after the restart")
        time.sleep(0.2)
    while members[0].appliance.status().warming:
        time.sleep(0.2)
    # m1 ranks first for every bucket (the others weigh 0): it takes them all.
    while (buckets := members[0].appliance.status().buckets) and buckets["held"] < buckets["count"]:
        if time.monotonic() > deadline + 10:
            raise SystemExit(f"m1 never held every bucket: {buckets}")
        time.sleep(0.2)


CLAIMED_KEYS = ("connect_p50_ms", "connect_p99_ms")
KEYS = (
    "upload_gbps",
    "download_gbps",
    "connections_per_second",
    "connect_p50_ms",
    "connect_p99_ms",
    "python_frames_per_session",
    "upload_python_frames",
    "udp_flows_per_second",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--probes", type=int, default=500, help="connects for the latency figure")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    arguments = parser.parse_args()
    rounds: list[dict[str, dict[str, float]]] = []
    with build_lab(members=0, clients=1) as segment:
        members = start_cluster(segment, arguments.members, "kernel")
        serving = members[0]
        iperf_server = serving.node.popen(["iperf3", "-s"], stdout=subprocess.DEVNULL)
        # dnsmasq on the cluster IP and on m1's own address (direct), logging nothing.
        dns_server = serving.node.popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-dynamic",
                f"--listen-address={segment.cluster_ip}",
                f"--listen-address={serving.node.address}",
                "--except-interface=lo",
                "--txt-record=whoami.cluster,m1",
                "--cache-size=0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cluster_ip = str(segment.cluster_ip)
        per_session = segment.directory / "per-session.toml"
        per_session.write_text("buckets = 0\n")
        try:
            print(f"lab with {arguments.members} members; every session served by m1")
            for number in range(arguments.rounds):
                print(f"round {number + 1} of {arguments.rounds}")
                figures: dict[str, dict[str, float]] = {}
                for path in ("kernel", "tun"):
                    restart_on(members, cluster_ip, path)
                    udp_ready_at = time.monotonic() + UDP_TRANSITION + 1
                    wait_listening(serving, "tcp/5201")
                    wait_listening(serving, "udp/53")
                    figures[path] = measure(
                        segment,
                        members,
                        cluster_ip,
                        arguments.seconds,
                        arguments.probes,
                        udp_ready_at,
                    )
                    print(f"  {path:8} {figures[path]}")
                restart_on(members, cluster_ip, "kernel", "--config", str(per_session))
                p50, p99 = connect_latency(segment.clients[0], cluster_ip, arguments.probes)
                figures["claimed"] = {"connect_p50_ms": p50, "connect_p99_ms": p99}
                print(f"  {'claimed':8} {figures['claimed']}")
                figures["direct"] = measure(
                    segment, members, str(serving.node.address), arguments.seconds, arguments.probes
                )
                print(f"  {'direct':8} {figures['direct']}")
                rounds.append(figures)
            won_elsewhere = sum(
                other.appliance.status().counters["claims_won"] for other in members[1:]
            )
            if won_elsewhere:
                raise SystemExit(f"members of weight 0 won {won_elsewhere} sessions")
        finally:
            iperf_server.terminate()
            dns_server.terminate()
    medians = {
        path: {key: statistics.median(one[path][key] for one in rounds) for key in KEYS}
        for path in ("direct", "kernel", "tun")
    }
    spread = {
        path: {
            key: [min(one[path][key] for one in rounds), max(one[path][key] for one in rounds)]
            for key in KEYS
        }
        for path in ("kernel", "tun")
    }
    direct = medians["direct"]
    ratios = {
        path: {
            "upload": medians[path]["upload_gbps"] / direct["upload_gbps"],
            "download": medians[path]["download_gbps"] / direct["download_gbps"],
            "connections_per_second": medians[path]["connections_per_second"]
            / direct["connections_per_second"],
            "connect_p50": medians[path]["connect_p50_ms"] / direct["connect_p50_ms"],
            "connect_p99": medians[path]["connect_p99_ms"] / direct["connect_p99_ms"],
            "udp_flows_per_second": medians[path]["udp_flows_per_second"]
            / direct["udp_flows_per_second"],
            "added_connect_p50_ms": medians[path]["connect_p50_ms"] - direct["connect_p50_ms"],
            "added_connect_p99_ms": medians[path]["connect_p99_ms"] - direct["connect_p99_ms"],
        }
        for path in ("kernel", "tun")
    }
    claimed = {
        key: statistics.median(one["claimed"][key] for one in rounds) for key in CLAIMED_KEYS
    }
    added_by_claims = {f"added_{key}": claimed[key] - direct[key] for key in CLAIMED_KEYS}
    print()
    print(f"medians of {arguments.rounds} rounds (ratio: against direct)")
    print(f"{'':34} {'direct':>9} {'kernel':>9} {'ratio':>6} {'tun':>9} {'ratio':>6}")
    rows = [
        ("bulk TCP client->server (Gbit/s)", "upload_gbps", "upload"),
        ("bulk TCP server->client (Gbit/s)", "download_gbps", "download"),
        ("new connections per second", "connections_per_second", "connections_per_second"),
        ("SYN to SYN-ACK p50 (ms)", "connect_p50_ms", "connect_p50"),
        ("SYN to SYN-ACK p99 (ms)", "connect_p99_ms", "connect_p99"),
        ("new UDP flows (DNS) per second", "udp_flows_per_second", "udp_flows_per_second"),
    ]
    for label, key, ratio in rows:
        print(
            f"{label:34} {direct[key]:9.2f} {medians['kernel'][key]:9.2f} "
            f"{ratios['kernel'][ratio]:6.2f} {medians['tun'][key]:9.2f} "
            f"{ratios['tun'][ratio]:6.2f}"
        )
    for label, added in (
        ("added SYN to SYN-ACK p50 (ms)", "added_connect_p50_ms"),
        ("added SYN to SYN-ACK p99 (ms)", "added_connect_p99_ms"),
    ):
        print(
            f"{label:34} {'':9} {ratios['kernel'][added]:9.3f} {'':6} {ratios['tun'][added]:9.3f}"
        )
    print(
        f"{'claimed one by one (buckets off):':34} added SYN to SYN-ACK "
        f"p50 {added_by_claims['added_connect_p50_ms']:.3f} ms, "
        f"p99 {added_by_claims['added_connect_p99_ms']:.3f} ms"
    )
    for label, key in (
        ("Python frames per new TCP session", "python_frames_per_session"),
        ("Python frames during the upload", "upload_python_frames"),
    ):
        print(f"{label:34} {'':9} {medians['kernel'][key]:9.3f} {'':6} {medians['tun'][key]:9.3f}")
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(
        json.dumps(
            {
                "members": arguments.members,
                "seconds": arguments.seconds,
                "rounds": rounds,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "medians": medians,
                "spread": spread,
                "claimed": {**claimed, **added_by_claims},
                "ratios": {
                    path: {key: round(value, 3) for key, value in values.items()}
                    for path, values in ratios.items()
                },
            },
            indent=2,
        )
        + "\n"
    )


def wait_listening(member: LabMember, port: str) -> None:
    deadline = time.monotonic() + 10
    while port not in member.appliance.status().listening:
        if time.monotonic() > deadline:
            raise SystemExit(f"the appliance never saw {port} listening")
        time.sleep(0.2)


if __name__ == "__main__":
    main()
