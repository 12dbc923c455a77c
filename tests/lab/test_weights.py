"""Load awareness on a real segment: a weight-2 member next to two weight-1 members."""

from __future__ import annotations

from lab.namespaces import Lab
from tests.lab.conftest import Cluster, unique_paths


def test_a_weight_2_member_takes_about_half_of_600_sessions(lab_segment: Lab) -> None:
    cluster = Cluster(lab_segment)
    try:
        heavy = cluster.add_member("--weight", "2", dns=False)
        cluster.add_member(dns=False)
        cluster.add_member(dns=False)
        cluster.wait_settled()
        results = cluster.curl(unique_paths(600, "weight"), parallel=20)
        assert all(code == 200 for _, code, _ in results)
        share = sum(body == heavy.name for _, _, body in results) / len(results)
        assert 0.40 <= share <= 0.60, f"weight-2 member served {share:.0%}"
    finally:
        for member in cluster.members:
            member.appliance.stop()
