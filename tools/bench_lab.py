"""The cluster path against the direct kernel path, measured in one run on one lab.

    sudo .venv/bin/python -m tools.bench_lab [--members 3] [--seconds 5]

The lab has N members; members 2..N run with weight 0, so every session goes
to member 1 while the others still read, classify and drop every frame (as
they would in a real cluster). "direct" is the client talking to member 1's
own address, bypassing the appliance; "cluster" is the cluster IP. Figures:

- bulk TCP, one iperf3 stream, client to server (every data segment passes
  through the appliance) and server to client (only the client's ACKs do);
- new connections per second: wrk, each short HTTP request on a new
  connection (Connection: close) to nginx;
- first-packet latency: TCP connect() time (SYN to SYN-ACK) at p50 and p99.

Each figure is the median of --rounds rounds (3 by default), each round
measuring both paths, so a burst of noise on a shared VM moves one round, not
the result. Writes tools/figures/lab.json with every round. Ratios carry over
between machines; absolute figures do not.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from lab.members import start_member
from lab.namespaces import Lab, Node, build_lab

FIGURES = Path(__file__).parent / "figures" / "lab.json"

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


def connect_latency(client: Node, target: str, count: int) -> tuple[float, float]:
    """p50 and p99 of connect() time, in milliseconds."""
    result = client.run(["python3", "-c", CONNECT_PROBE, target, str(count)], timeout=count + 60)
    samples = sorted(float(value) * 1000 for value in result.stdout.split())
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples), p99


def measure(segment: Lab, seconds: float, probes: int) -> dict[str, Any]:
    client = segment.clients[0]
    server = segment.members[0]
    paths = {"direct": str(server.address), "cluster": str(segment.cluster_ip)}
    figures: dict[str, Any] = {}
    for name, target in paths.items():
        connect_latency(client, target, 20)  # warm the neighbour caches
        figures[name] = {
            "upload_gbps": iperf(client, target, seconds, reverse=False),
            "download_gbps": iperf(client, target, seconds, reverse=True),
            "connections_per_second": connections_per_second(client, target, seconds),
        }
        p50, p99 = connect_latency(client, target, probes)
        figures[name]["connect_p50_ms"] = p50
        figures[name]["connect_p99_ms"] = p99
        print(f"  {name:8} {figures[name]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--probes", type=int, default=500, help="connects for the latency figure")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    arguments = parser.parse_args()
    with build_lab(members=0, clients=1) as segment:
        serving = start_member(segment, dns=False)
        others = [
            start_member(segment, "--weight", "0", dns=False) for _ in range(arguments.members - 1)
        ]
        iperf_server = serving.node.popen(["iperf3", "-s"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while "tcp/5201" not in serving.appliance.status().listening:
            if time.monotonic() > deadline:
                raise SystemExit("the appliance never saw iperf3 listening on port 5201")
            time.sleep(0.2)
        try:
            print(f"lab with {arguments.members} members; every session served by m1")
            rounds = []
            for number in range(arguments.rounds):
                print(f"round {number + 1} of {arguments.rounds}")
                rounds.append(measure(segment, arguments.seconds, arguments.probes))
            won_elsewhere = sum(other.appliance.status().counters["claims_won"] for other in others)
            if won_elsewhere:
                raise SystemExit(f"members of weight 0 won {won_elsewhere} sessions")
        finally:
            iperf_server.terminate()
    direct, cluster = (
        {key: statistics.median(one[path][key] for one in rounds) for key in rounds[0][path]}
        for path in ("direct", "cluster")
    )
    ratios = {
        "upload": cluster["upload_gbps"] / direct["upload_gbps"],
        "download": cluster["download_gbps"] / direct["download_gbps"],
        "connections_per_second": cluster["connections_per_second"]
        / direct["connections_per_second"],
        "connect_p50": cluster["connect_p50_ms"] / direct["connect_p50_ms"],
        "connect_p99": cluster["connect_p99_ms"] / direct["connect_p99_ms"],
    }
    print()
    print(f"medians of {arguments.rounds} rounds")
    print(f"{'':34} {'direct':>10} {'cluster':>10} {'ratio':>7}")
    rows = [
        ("bulk TCP client->server (Gbit/s)", "upload_gbps", "upload"),
        ("bulk TCP server->client (Gbit/s)", "download_gbps", "download"),
        ("new connections per second", "connections_per_second", "connections_per_second"),
        ("SYN to SYN-ACK p50 (ms)", "connect_p50_ms", "connect_p50"),
        ("SYN to SYN-ACK p99 (ms)", "connect_p99_ms", "connect_p99"),
    ]
    for label, key, ratio in rows:
        print(f"{label:34} {direct[key]:10.2f} {cluster[key]:10.2f} {ratios[ratio]:6.2f}x")
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(
        json.dumps(
            {
                "members": arguments.members,
                "seconds": arguments.seconds,
                "rounds": rounds,
                "python": platform.python_version(),
                "cpus": __import__("os").cpu_count(),
                "direct": direct,
                "cluster": cluster,
                "ratios": {key: round(value, 3) for key, value in ratios.items()},
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
