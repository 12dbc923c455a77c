"""End to end, with real servers and clients in network namespaces.

Each test states the invariant it checks. The servers' own logs are the
witness: a request served twice, or by nobody, fails the test.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from appliance.operations.status import StatusReport
from lab.namespaces import Lab
from protocols.claim_machine import ClaimSettings
from tests.lab.conftest import Cluster, LongTransfers, client_neighbours, unique_paths

DIG_QUERIES = 300
# The core tests run on both data paths: the kernel fast path (the default)
# and the TUN path (fast_path = off), which stays the fallback.
BOTH_PATHS = pytest.mark.parametrize("cluster", ["kernel", "tun"], indirect=True)


@BOTH_PATHS
def test_every_http_request_is_served_exactly_once(cluster: Cluster) -> None:
    """300 requests, sequential then concurrent: all succeed, each is served once, by
    one of the members, and every member serves some."""
    sequential, concurrent = unique_paths(150, "seq"), unique_paths(150, "par")
    results = cluster.curl(sequential) + cluster.curl(concurrent, parallel=30)
    assert len(results) == 300
    failed = [(path, code) for path, code, _ in results if code != 200]
    assert not failed
    assert {body for _, _, body in results} <= {member.name for member in cluster.members}
    served = cluster.served_uris()
    for path in sequential + concurrent:
        assert served[path] == 1, f"{path} served {served[path]} times"
    by_member = cluster.served_by()
    assert all(by_member[member.name] for member in cluster.members), (
        {name: len(paths) for name, paths in by_member.items()},
        [dict(member.appliance.status().buckets) for member in cluster.members],
    )


@BOTH_PATHS
def test_every_dns_query_gets_exactly_one_answer(cluster: Cluster) -> None:
    """300 queries from distinct source ports each get one answer, and the servers'
    logs hold each query once in all."""
    script = (
        f"for i in $(seq {DIG_QUERIES}); do "
        f"dig +short +tries=1 +time=3 @{cluster.cluster_ip} TXT whoami.cluster & "
        "if (( i % 25 == 0 )); then wait; fi; done; wait"
    )
    result = cluster.client.run(["bash", "-c", script], timeout=300)
    answers = re.findall(r'"(m\d+)"', result.stdout)
    assert len(answers) == DIG_QUERIES, result.stdout[-500:]
    logged = {member.name: member.services.dns_queries() for member in cluster.members}
    assert sum(len(lines) for lines in logged.values()) == DIG_QUERIES, {
        name: (len(lines), _claim_counters(member.appliance.status()))
        for (name, lines), member in zip(logged.items(), cluster.members, strict=True)
    }
    assert len(set(answers)) == len(cluster.members)


def _claim_counters(status: StatusReport) -> dict[str, int]:
    """What explains a query served twice: the claim counters of one member."""
    wanted = ("claims_won", "claims_lost", "conflicts", "decided_on_timeout")
    return {name: status.counters[name] for name in wanted}


@BOTH_PATHS
def test_new_sessions_survive_a_member_killed_mid_run(cluster: Cluster) -> None:
    """kill -9 one appliance mid-run: every session started after the kill succeeds
    (one SYN retransmission allowed), and transfers held by the survivors finish."""
    size = 1_500_000
    for member in cluster.members:
        member.services.write_file("big", size)
    transfers = unique_paths(9, "transfer")
    finished: list[tuple[str, int, int, str]] = []
    downloads = threading.Thread(
        target=lambda: finished.extend(
            cluster.download([f"/slow/big?{path}" for path in transfers], max_time=15)
        )
    )
    downloads.start()
    time.sleep(1.0)
    before = cluster.curl(unique_paths(30, "before"))
    victim = cluster.members[0]
    victim.appliance.kill()
    killed_at = time.monotonic()
    after = cluster.curl(unique_paths(150, "after"), parallel=10)
    # On the fast path the victim's kernel goes on serving new sessions of
    # its buckets until their lease runs out (its host and server are fine;
    # no peer has taken them yet), and never after.
    time.sleep(max(0.0, killed_at + ClaimSettings().member_timeout / 2 + 0.5 - time.monotonic()))
    late = cluster.curl(unique_paths(40, "late"), parallel=10)
    downloads.join()
    assert all(code == 200 for _, code, _ in before)
    lost = [(path, code) for path, code, _ in after + late if code != 200]
    assert not lost, f"{len(lost)} new sessions failed after the kill: {lost[:5]}"
    assert victim.name not in {body for _, _, body in late}
    if cluster.data_path == "tun":
        assert victim.name not in {body for _, _, body in after}
    # Every transfer had begun (its member answered); those the survivors serve
    # are not disturbed.
    assert len(finished) == len(transfers)
    assert all(member for _, _, _, member in finished), finished
    survivor_transfers = [entry for entry in finished if entry[3] != victim.name]
    assert survivor_transfers, "every transfer happened to be on the killed member"
    for path, code, received, server in survivor_transfers:
        assert (code, received) == (200, size), f"{path} on {server} broke"


@BOTH_PATHS
def test_a_late_joiner_breaks_no_running_transfer_and_then_takes_new_sessions(
    cluster: Cluster,
) -> None:
    """A fourth member joins while long transfers run: none breaks, each arrives whole,
    and the newcomer then serves new sessions."""
    # About 9 s each at nginx's rate limit: they outlast the join even on a busy machine.
    transfers = LongTransfers(cluster, count=6, size=2_400_000)
    time.sleep(1.5)
    newcomer = cluster.add_member()
    assert transfers.running, "the transfers ended before the newcomer was up"
    transfers.finish()
    if newcomer.appliance.status().buckets:
        # Its share of buckets, once warm (join_grace) and granted by every member.
        deadline = time.monotonic() + 10
        while not newcomer.appliance.status().buckets.get("held"):
            assert time.monotonic() < deadline, "the newcomer took no bucket within 10 s"
            time.sleep(0.2)
    after = cluster.curl(unique_paths(120, "new"), parallel=10)
    assert all(code == 200 for _, code, _ in after)
    assert any(body == newcomer.name for _, _, body in after)


def test_a_member_whose_service_is_down_stops_claiming(cluster: Cluster) -> None:
    """nginx stops on one member: that member claims no more HTTP sessions and no
    request fails."""
    down = cluster.members[1]
    down.services.stop("nginx")
    deadline = time.monotonic() + 5  # the appliance reads the socket table every second
    while "tcp/80" in down.appliance.status().listening:
        assert time.monotonic() < deadline, "the appliance still sees nginx listening"
        time.sleep(0.1)
    results = cluster.curl(unique_paths(150, "down"), parallel=10)
    assert all(code == 200 for _, code, _ in results), [r for r in results if r[1] != 200][:5]
    assert down.name not in {body for _, _, body in results}
    status = down.appliance.status()
    assert status.drops["not_claimed"] >= 1


def test_the_cluster_mac_never_leaks_into_the_switch(cluster: Cluster) -> None:
    """The switch never learns the cluster MAC; the client maps the cluster IP to it."""
    results = cluster.curl(unique_paths(50, "mac"), parallel=5)
    assert all(code == 200 for _, code, _ in results)
    status = cluster.members[0].appliance.status()
    cluster_mac = status.cluster_mac
    assert cluster_mac not in cluster.lab.switch_macs()
    neighbours = client_neighbours(cluster.client)
    assert re.search(rf"{re.escape(cluster.cluster_ip)} dev eth0 lladdr {cluster_mac}", neighbours)


def test_multicast_mac_mode_serves_each_request_once(lab_segment: Lab, tmp_path: Path) -> None:
    """For switches that do not flood unknown unicast: the cluster MAC carries the
    group bit, the client accepts it from ARP, and each request and each DNS query
    is still served once (the members' own kernels must not answer what reaches
    them through the bridge as multicast)."""
    config = tmp_path / "multicast.toml"
    config.write_text('cluster_mac_mode = "multicast"\n')
    cluster = Cluster(lab_segment)
    try:
        for _ in range(2):
            cluster.add_member("--config", str(config))
        cluster.wait_settled()
        results = cluster.curl(unique_paths(40, "multicast"), parallel=5)
        assert [code for _, code, _ in results] == [200] * 40
        assert set(cluster.served_uris().values()) == {1}
        script = (
            f"for i in $(seq 20); do dig +short +tries=1 +time=3 @{cluster.cluster_ip} "
            "TXT whoami.cluster; done"
        )
        answers = re.findall(r'"(m\d+)"', cluster.client.run(["bash", "-c", script]).stdout)
        assert len(answers) == 20
        assert sum(len(member.services.dns_queries()) for member in cluster.members) == 20
        status = cluster.members[0].appliance.status()
        mac = status.cluster_mac
        assert int(mac[:2], 16) & 0x01  # the group bit
        assert mac in client_neighbours(cluster.client)
    finally:
        for member in cluster.members:
            member.appliance.stop()
