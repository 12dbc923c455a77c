"""The kernel fast path, end to end: what the kernel carries, and what survives.

Each test states its invariant; the servers' logs and the clients' checksums
are the witnesses.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from lab.members import appliance_command, bridge_member
from lab.namespaces import Lab
from tests.lab.conftest import Cluster, LongTransfers, unique_paths


def test_bytes_moved_never_reach_python(cluster: Cluster) -> None:
    """A 20 MB download and 20 MB upload on the fast path: the serving member's
    Python handles a few frames per session (its start and end, and the
    claims), however many bytes move."""
    for member in cluster.members:
        member.services.write_file("large", 20_000_000)
    before = {member.name: member.appliance.status().frames["frames"] for member in cluster.members}
    fetched = cluster.download(["/files/large?down"])
    assert [(code, size) for _, code, size, _ in fetched] == [(200, 20_000_000)]
    uploaded = cluster.client.run(
        [
            "bash",
            "-c",
            f"head -c 20000000 /dev/zero | curl -s -o /dev/null -w '%{{http_code}}' "
            f"--data-binary @- http://{cluster.cluster_ip}/sink?up",
        ],
        check=False,
        timeout=60,
    )
    assert uploaded.stdout.strip() == "200", uploaded.stdout
    time.sleep(1.5)  # the read-back of the kernel's sets
    handled = {
        member.name: member.appliance.status().frames["frames"] - before[member.name]
        for member in cluster.members
    }
    # 20 MB is over 13,000 full-size frames each way; the start, the end and
    # the claim messages of two sessions, and a few hellos, are far fewer.
    assert max(handled.values()) < 200, handled


def test_transfers_outlive_a_kill_9_of_every_daemon_and_are_relearned(cluster: Cluster) -> None:
    """Every member's daemon is killed with SIGKILL while long transfers run: none
    breaks (the kernel carries them), and when the daemons start again they
    re-learn what the kernel carries (sessions from the owned set, and the
    buckets whose sessions it serves) and serve new ones."""
    transfers = LongTransfers(cluster, count=6, size=1_200_000)
    time.sleep(1.5)
    for member in cluster.members:
        member.appliance.kill()
    time.sleep(1.0)
    assert transfers.running, "the transfers ended before the daemons were killed"
    for member in cluster.members:
        member.appliance.start(cluster.cluster_ip, "--fast-path", "on")
    statuses = [member.appliance.status() for member in cluster.members]
    adopted = sum(status.counters["sessions_adopted"] for status in statuses)
    histories = [status.buckets["history_relearned"] for status in statuses]
    transfers.finish()
    # A transfer started in a held bucket lives on in that bucket's history;
    # one claimed on its own, in the owned set.
    assert adopted + sum(histories) >= 1, (adopted, histories)
    assert all(histories), histories
    cluster.wait_settled()
    after = cluster.curl(unique_paths(60, "after"), parallel=10)
    assert all(code == 200 for _, code, _ in after), after


def test_a_full_set_sends_new_sessions_to_the_tun_path(lab_segment: Lab, tmp_path: Path) -> None:
    """With room for 16 sessions in the kernel's owned set, 60 requests to one
    member all succeed: past the 16th the set refuses, the member serves on the
    TUN path (and says so), and once the closed sessions leave the set it is
    back on the fast path. Without buckets, so that every session is claimed
    on its own and goes into the owned set (a held bucket's sessions need no
    element: the kernel serves them by bucket)."""
    config = tmp_path / "small-set.toml"
    config.write_text("kernel_set_size = 16\nfin_timeout = 2.0\nbuckets = 0\n")
    cluster = Cluster(lab_segment)
    try:
        member = cluster.add_member("--config", str(config), dns=False)
        cluster.wait_settled()
        results = cluster.curl(unique_paths(60, "full"))
        assert [code for _, code, _ in results] == [200] * 60
        status = member.appliance.status()
        assert status.frames["kernel_add_refused"] > 0, status.frames
        assert status.data_path.startswith("kernel, degraded"), status.data_path
        deadline = time.monotonic() + 20
        while member.appliance.status().data_path != "kernel":
            assert time.monotonic() < deadline, member.appliance.status().data_path
            time.sleep(0.5)
        again = cluster.curl(unique_paths(10, "again"))
        assert [code for _, code, _ in again] == [200] * 10
    finally:
        for started in cluster.members:
            started.appliance.stop()


def test_a_clean_stop_removes_the_table_and_the_tun(lab_segment: Lab) -> None:
    """SIGTERM on the fast path: the nftables table and the (persistent) TUN go."""
    cluster = Cluster(lab_segment)
    member = cluster.add_member(dns=False)
    node = member.node
    assert "table bridge appliance" in node.run(["nft", "list", "tables"]).stdout
    assert member.appliance.stop() == 0, member.appliance.log_tail()
    assert "appliance" not in node.run(["nft", "list", "tables"]).stdout
    assert "apl-tun0" not in node.run(["ip", "-o", "link", "show"]).stdout


def test_without_nft_on_refuses_in_one_line_and_auto_runs_the_tun_path(
    lab_segment: Lab, tmp_path: Path
) -> None:
    """No `nft` on the PATH: `--fast-path on` refuses to start with one line and
    no traceback; `auto` says which path runs and serves on the TUN path."""
    node = lab_segment.add_host("member")
    bridge_member(node)
    empty = tmp_path / "no-nft"
    empty.mkdir()
    without_nft = ["env", f"PATH={empty}", *appliance_command()]
    run = ["run", "--cluster-ip", str(lab_segment.cluster_ip), "--interface", "eth0"]
    refused = node.run([*without_nft, *run, "--fast-path", "on"], check=False, timeout=30)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert "Traceback" not in refused.stderr
    assert lines[-1].startswith("appliance-ctl: error: fast_path = on, but the kernel fast path"), (
        lines
    )
    assert "nft is not installed" in lines[-1]
    log = tmp_path / "auto.log"
    with log.open("wb") as written:
        daemon = node.popen([*without_nft, *run], stdout=subprocess.DEVNULL, stderr=written)
    try:
        deadline = time.monotonic() + 20
        while node.run([*appliance_command(), "status"], check=False).returncode != 0:
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        status = node.run([*appliance_command(), "status", "--json"]).stdout
        assert '"data_path": "tun"' in status
        assert "serving on the TUN path" in log.read_text()
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_a_restart_on_the_tun_path_after_a_crash_removes_the_old_table(lab_segment: Lab) -> None:
    """kill -9 on the fast path leaves its table and TUN; a start with
    `--fast-path off` removes the table (its drop rule would break the TUN
    path's sessions), serves, and leaves no device behind when stopped."""
    cluster = Cluster(lab_segment)
    member = cluster.add_member(dns=False)
    cluster.wait_settled()
    node = member.node
    member.appliance.kill()
    assert "table bridge appliance" in node.run(["nft", "list", "tables"]).stdout
    assert "apl-tun0" in node.run(["ip", "-o", "link", "show"]).stdout
    member.appliance.start(cluster.cluster_ip, "--fast-path", "off")
    assert member.appliance.status().data_path == "tun"
    assert "appliance" not in node.run(["nft", "list", "tables"]).stdout
    cluster.data_path = "tun"
    cluster.wait_settled()
    results = cluster.curl(unique_paths(20, "after-crash"))
    assert [code for _, code, _ in results] == [200] * 20
    assert member.appliance.stop() == 0, member.appliance.log_tail()
    assert "apl-tun0" not in node.run(["ip", "-o", "link", "show"]).stdout
