"""The daemon's life in a namespace: start, stop cleanly, refuse clearly, drain,
authenticate."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from lab.members import Appliance, appliance_command, bridge_member
from lab.namespaces import Lab
from protocols.session_key import SessionKey
from protocols.wire.claim import Claim, encode_message
from tests.lab.conftest import Cluster, unique_paths


def devices(lab_segment: Lab, index: int = 0) -> str:
    return (
        lab_segment.members[index].run(["ip", "-o", "addr", "show"]).stdout
        + lab_segment.members[index].run(["ip", "-o", "link", "show"]).stdout
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_and_leaves_no_device_behind(lab_segment: Lab, stop_signal: int) -> None:
    node = lab_segment.add_host("member")
    bridge_member(node)
    appliance = Appliance(node, lab_segment.directory / "appliance.log")
    appliance.start(str(lab_segment.cluster_ip))
    running = devices(lab_segment)
    assert "apl-tap0" in running and "apl-tun0" in running and "10.77.0.10/32" in running
    assert appliance.process is not None
    appliance.process.send_signal(stop_signal)
    assert appliance.process.wait(timeout=10) == 0, appliance.log_tail()
    left = devices(lab_segment)
    assert "apl-tap0" not in left and "apl-tun0" not in left and "10.77.0.10" not in left
    assert "stopped" in appliance.log_tail()
    assert "Traceback" not in appliance.log_path.read_text()


def test_one_daemon_per_namespace_and_clear_errors(lab_segment: Lab) -> None:
    node = lab_segment.add_host("member")
    status = node.run([*appliance_command(), "status"], check=False)
    assert status.returncode == 2
    assert "no appliance daemon runs in this network namespace" in status.stderr
    assert status.stderr.count("\n") == 1
    bridge_member(node)
    first = Appliance(node, lab_segment.directory / "first.log")
    first.start(str(lab_segment.cluster_ip))
    second = node.run(
        [*appliance_command(), "run", "--cluster-ip", str(lab_segment.cluster_ip)], check=False
    )
    assert second.returncode == 2
    assert "another appliance daemon already runs in this network namespace" in second.stderr
    assert "Traceback" not in second.stderr and second.stderr.count("\n") == 1
    bad = node.run([*appliance_command(), "run", "--cluster-ip", "10.77.0.300"], check=False)
    assert bad.returncode == 2 and "cluster_ip: '10.77.0.300' is not an IP address" in bad.stderr
    first.stop()
    # Another namespace runs its own daemon alongside: the socket is per namespace.
    other = lab_segment.add_host("member")
    bridge_member(other)
    mine = Appliance(node, lab_segment.directory / "mine.log")
    theirs = Appliance(other, lab_segment.directory / "theirs.log")
    mine.start(str(lab_segment.cluster_ip))
    theirs.start(str(lab_segment.cluster_ip))
    # Each command reached the daemon of its own namespace: it reports that host's
    # address as its own, and the two daemons are distinct members.
    for appliance, host in ((mine, node), (theirs, other)):
        own = [member for member in appliance.status().members if member.is_self]
        assert [member.address for member in own] == [str(host.address)]
    assert mine.status().member_id != theirs.status().member_id
    mine.stop()
    theirs.stop()


def test_gratuitous_arp_at_start_teaches_neighbours_the_cluster_mac(lab_segment: Lab) -> None:
    client = lab_segment.clients[0]
    client.run(["sysctl", "-w", "net.ipv4.conf.eth0.arp_accept=1"])
    node = lab_segment.add_host("member")
    bridge_member(node)
    appliance = Appliance(node, lab_segment.directory / "appliance.log")
    appliance.start(str(lab_segment.cluster_ip))
    status = appliance.status()
    deadline = time.monotonic() + 5
    neighbours = ""
    while time.monotonic() < deadline and status.cluster_mac not in neighbours:
        time.sleep(0.2)
        neighbours = client.run(["ip", "neigh", "show", str(lab_segment.cluster_ip)]).stdout
    assert status.cluster_mac in neighbours
    appliance.stop()


def test_drain_moves_new_sessions_away_and_keeps_running_ones(cluster: Cluster) -> None:
    for member in cluster.members:
        member.services.write_file("big", 1_000_000)
    running: list[tuple[str, int, int, str]] = []
    transfers = unique_paths(6, "held")
    thread = threading.Thread(
        target=lambda: running.extend(
            cluster.download([f"/slow/big?{path}" for path in transfers], max_time=20)
        )
    )
    thread.start()
    time.sleep(1.0)
    # Drain the member serving the most transfers, so that some run through the drain.
    draining = max(cluster.members, key=lambda member: member.appliance.status().sessions.serving)
    result = draining.node.run([*appliance_command(), "drain"])
    assert "draining" in result.stdout
    after = cluster.curl(unique_paths(120, "drained"), parallel=10)
    thread.join()
    assert all(code == 200 for _, code, _ in after)
    assert draining.name not in {body for _, _, body in after}
    assert all((code, size) == (200, 1_000_000) for _, code, size, _ in running), running
    assert draining.name in {member for _, _, _, member in running}
    deadline = time.monotonic() + 15
    status = draining.appliance.status()
    while not status.drained and time.monotonic() < deadline:
        time.sleep(0.5)
        status = draining.appliance.status()
    assert status.drained and status.draining
    for member in cluster.members:
        if member is draining:
            continue
        seen = member.appliance.status()
        flags = {entry.member_id: entry.draining for entry in seen.members}
        assert flags[status.member_id] is True
    draining.node.run([*appliance_command(), "undrain"])
    again = cluster.curl(unique_paths(120, "undrained"), parallel=10)
    assert all(code == 200 for _, code, _ in again)
    assert draining.name in {body for _, _, body in again}


def test_with_a_key_forged_claims_are_refused_and_counted(lab_segment: Lab) -> None:
    key_file = lab_segment.directory / "claim.key"
    key_file.write_text("correct horse battery staple, 32B\n")
    cluster = Cluster(lab_segment)
    try:
        for _ in range(2):
            cluster.add_member("--key-file", str(key_file), dns=False)
        cluster.wait_settled()
        status = cluster.members[0].appliance.status()
        assert status.authenticated
        # An attacker on the segment claims, without the key, the very sessions
        # the client opens next (from ports 45000 to 45019), with a huge score.
        forged = [
            encode_message(
                Claim(
                    0xBAD,
                    port,
                    SessionKey(6, bytes([10, 77, 0, 101]), port, bytes([10, 77, 0, 10]), 80),
                    1e300,
                )
            ).hex()
            for port in range(45000, 45020)
        ]
        cluster.client.run(
            [
                "python3",
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_RAW, 150); "
                "[s.sendto(bytes.fromhex(m), ('10.77.0.10', 0)) for m in sys.argv[1:]]",
                *forged,
            ]
        )
        requests = " ".join(
            f"curl -s -o /dev/null -w '%{{http_code}}\\n' --local-port {port} "
            f"http://10.77.0.10/forged-{port};"
            for port in range(45000, 45020)
        )
        codes = cluster.client.run(["bash", "-c", requests]).stdout.split()
        assert codes == ["200"] * 20
        failures = 0
        for member in cluster.members:
            seen = member.appliance.status()
            failures += seen.frames["auth_failures"]
            assert seen.counters["conflicts"] == 0
            listed = member.appliance.sessions()
            assert 0xBAD not in {entry.owner for entry in listed.sessions}
        assert failures == 20 * len(cluster.members)
    finally:
        for member in cluster.members:
            member.appliance.stop()
