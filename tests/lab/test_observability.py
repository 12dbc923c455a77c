"""What `status`, `sessions` and the metrics endpoint report, against what the
clients saw."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from appliance.operations.status import StatusReport
from lab.members import appliance_command
from lab.namespaces import Lab
from tests.lab.conftest import Cluster, unique_paths


def sessions_won(status: StatusReport) -> int:
    """Claims won, and new sessions of held buckets served at once (by the claim
    machine, or by the kernel, which counts them)."""
    return (
        status.counters["claims_won"]
        + status.counters["served_at_once"]
        + status.buckets.get("kernel_new_tcp", 0)
        + status.buckets.get("kernel_new_udp", 0)
    )


def test_status_counters_match_what_the_clients_saw(cluster: Cluster) -> None:
    results = cluster.curl(unique_paths(60, "count")) + cluster.curl(
        unique_paths(60, "count-par"), parallel=10
    )
    assert [code for _, code, _ in results] == [200] * 120
    served = Counter(body for _, _, body in results)
    time.sleep(1.5)  # the daemons read their kernel's counters once a second
    won = {}
    for member in cluster.members:
        status = member.appliance.status()
        won[member.name] = sessions_won(status)
        assert status.counters["conflicts"] == 0
        assert status.buckets["conflicts"] == 0
        assert len(status.members) == 3
    assert won == {member.name: served[member.name] for member in cluster.members}


def test_sessions_lists_each_session_with_its_owner(lab_segment: Lab, tmp_path: Path) -> None:
    """Sessions claimed one by one (buckets = 0) are known to every member, with
    their owner. (A held bucket's sessions are its holder's alone: on the fast
    path its kernel's, listed by `ss`, not by the daemon.)"""
    config = tmp_path / "claims.toml"
    config.write_text("buckets = 0\n")
    cluster = Cluster(lab_segment)
    try:
        for _ in range(3):
            cluster.add_member("--config", str(config), dns=False)
        cluster.wait_settled()
        cluster.curl(unique_paths(10, "listed"))
        member = cluster.members[0]
        listed = member.appliance.sessions()
        assert listed.total == 10 and len(listed.sessions) == 10
        mine = sum(session.mine for session in listed.sessions)
        status = member.appliance.status()
        assert mine == status.counters["claims_won"]
        assert all(session.owner is not None for session in listed.sessions)
        text = member.node.run([*appliance_command(), "sessions"]).stdout
        assert "tcp 10.77.0.101:" in text and "10 of 10 sessions" in text
    finally:
        for running in cluster.members:
            running.appliance.stop()


def test_metrics_endpoint_exposes_the_same_counters(lab_segment: Lab) -> None:
    cluster = Cluster(lab_segment)
    try:
        member = cluster.add_member("--metrics-listen", "127.0.0.1:9150", dns=False)
        cluster.add_member(dns=False)
        cluster.wait_settled()
        assert all(code == 200 for _, code, _ in cluster.curl(unique_paths(40, "metrics")))
        scraped = member.node.run(["curl", "-s", "http://127.0.0.1:9150/metrics"]).stdout
        status = member.appliance.status()
        won = re.search(r"^appliance_claims_won_total (\S+)$", scraped, re.MULTILINE)
        assert won is not None, scraped[:500]
        assert float(won.group(1)) == status.counters["claims_won"]
        assert re.search(r'^appliance_sessions\{state="owned"\} ', scraped, re.MULTILINE)
        assert re.search(
            r'^appliance_dropped_packets_total\{reason="foreign"\} ', scraped, re.MULTILINE
        )
        assert "appliance_members 2.0" in scraped
        missing = member.node.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9150/"]
        )
        assert missing.stdout == "404"
    finally:
        for running in cluster.members:
            running.appliance.stop()
