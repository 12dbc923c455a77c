"""Buckets moving under load, on the fast path: a member's daemon killed while a
client opens connection after connection, and a weight changed while long
transfers run. No connection fails, no transfer breaks, and the buckets follow."""

from __future__ import annotations

import itertools
import json
import threading
import time

from lab.members import appliance_command
from tests.lab.conftest import Cluster, LongTransfers, unique_paths

CONNECT_LOOP = """
import json, socket, sys, time
target, seconds = sys.argv[1], float(sys.argv[2])
results = []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    started = time.monotonic()
    s = socket.socket()
    s.settimeout(2.9)  # one SYN retransmission (after 1 s), not two (after 3 s)
    try:
        s.connect((target, 80))
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        ok = s.recv(12).startswith(b"HTTP/1.")
    except OSError:
        ok = False
    s.close()
    results.append((started, time.monotonic(), ok))
    time.sleep(0.005)
print(json.dumps(results))
"""


def test_a_daemon_killed_while_a_client_connects_costs_at_most_one_retransmission(
    cluster: Cluster,
) -> None:
    cluster.wait_for_buckets()
    results: list[list[float]] = []
    loop = threading.Thread(
        target=lambda: results.extend(
            json.loads(
                cluster.client.run(
                    ["python3", "-c", CONNECT_LOOP, cluster.cluster_ip, "7"], timeout=60
                ).stdout
            )
        )
    )
    loop.start()
    time.sleep(2.0)
    victim = cluster.members[0]
    victim.appliance.kill()
    killed_at = time.monotonic()
    loop.join()
    failed = [entry for entry in results if not entry[2]]
    durations = sorted(end - start for start, end, _ in results)
    ends = sorted(end for _, end, ok in results if ok)
    largest_gap = max(later - earlier for earlier, later in itertools.pairwise(ends))
    print(
        f"{len(results)} connections, {len(failed)} failed; slowest {durations[-1]:.3f} s; "
        f"largest gap between completed connections {largest_gap:.3f} s"
    )
    assert len(results) > 200
    assert not failed, failed[:5]
    assert durations[-1] < 2.9
    # The survivors take the dead member's buckets once it is gone.
    survivors = cluster.members[1:]
    deadline = killed_at + 10
    while sum(member.appliance.status().buckets["held"] for member in survivors) != 1024:
        assert time.monotonic() < deadline, [
            member.appliance.status().buckets for member in survivors
        ]
        time.sleep(0.2)


def test_a_weight_change_moves_buckets_and_breaks_no_transfer(cluster: Cluster) -> None:
    before = cluster.wait_for_buckets()
    transfers = LongTransfers(cluster, count=6, size=1_200_000)
    time.sleep(1.0)
    heavy = cluster.members[0]
    answer = heavy.node.run([*appliance_command(), "weight", "3"])
    assert "weight 3" in answer.stdout
    # Weights 3, 1, 1: about 3/5 of the buckets for the heavy member.
    after = cluster.wait_for_buckets(lambda shares: shares[0] > 0.5 * 1024 and sum(shares) == 1024)
    assert transfers.running, "the transfers ended before the weight changed"
    transfers.finish()
    requests = cluster.curl(unique_paths(200, "weighted"), parallel=10)
    assert all(code == 200 for _, code, _ in requests)
    served = [body for _, _, body in requests]
    print(f"buckets before {before}, after {after}; {served.count(heavy.name)} requests to m1")
    assert served.count(heavy.name) > 0.4 * len(served)
