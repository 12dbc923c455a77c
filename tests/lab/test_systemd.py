"""The systemd unit: it verifies, it is hardened as promised, the daemon speaks the
notify protocol, and it serves traffic as an unprivileged user with two capabilities."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from appliance.config import load_config
from lab.members import MemberServices, appliance_command
from lab.namespaces import Lab
from tests.lab.conftest import Cluster, unique_paths

UNIT = Path(__file__).parents[2] / "systemd" / "appliance.service"
EXAMPLE = Path(__file__).parents[2] / "systemd" / "appliance.toml"


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this installation.
    installed = Path(sys.executable).parent / "appliance-ctl"
    copy = tmp_path / "appliance.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/appliance-ctl", str(installed)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_unit_is_hardened_as_documented() -> None:
    settings = unit_settings()
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "on-failure"
    assert settings["WatchdogSec"]
    for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
        assert set(settings[key].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert "ProtectKernelTunables" not in settings  # it writes net sysctls
    assert "AF_PACKET" in settings["RestrictAddressFamilies"]


def test_the_example_config_loads() -> None:
    config = load_config(EXAMPLE, {})
    assert str(config.cluster_ip) == "192.0.2.10"


def test_ready_only_once_devices_are_up_then_watchdog_and_stopping(
    lab_segment: Lab, tmp_path: Path
) -> None:
    node = lab_segment.add_host("member")
    notify_path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(15)
    environment = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    process = node.popen(
        [*appliance_command(), "run", "--cluster-ip", str(lab_segment.cluster_ip)],
        env=environment,
        stderr=subprocess.DEVNULL,
    )
    try:
        first = sock.recv(4096).decode()
        assert first.startswith("READY=1\nSTATUS=serving 10.77.0.10"), first
        links = node.run(["ip", "-o", "link", "show"]).stdout
        assert "apl-tap0" in links and "apl-tun0" in links and "master br0" in links
        messages = [sock.recv(4096).decode() for _ in range(3)]
        assert messages.count("WATCHDOG=1") >= 2, messages
        process.send_signal(signal.SIGTERM)
        rest = []
        while "STOPPING=1" not in rest:
            rest.append(sock.recv(4096).decode())
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        sock.close()


def test_serves_as_an_unprivileged_user_with_only_two_capabilities(lab_segment: Lab) -> None:
    cluster = Cluster(lab_segment)
    node = lab_segment.add_host("member")
    services = MemberServices(node, lab_segment.directory / node.name)
    services.start_nginx()
    device = lab_segment.directory / "tun-device"
    # /dev/net/tun is mode 0600 on this VM (0666 on a stock Debian): give the
    # daemon's private mount namespace a 0666 node, leaving the host's alone.
    script = (
        f"mknod {device} c 10 200 && chmod 0666 {device} && "
        f"mount --bind {device} /dev/net/tun && exec setpriv --reuid=65534 --regid=65534 "
        "--clear-groups --inh-caps=-all,+net_admin,+net_raw "
        "--ambient-caps=-all,+net_admin,+net_raw "
        "--bounding-set=-all,+net_admin,+net_raw "
        + " ".join(appliance_command())
        + f" run --cluster-ip {lab_segment.cluster_ip}"
    )
    log = lab_segment.directory / "unprivileged.log"
    with log.open("wb") as stderr:  # the child keeps a copy
        process = node.popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 20
        while "serving" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "serving" in log.read_text(), log.read_text()
        # ip netns exec, unshare, sh's last command and setpriv all exec in
        # place: the process started here is the daemon itself.
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"appliance" in command_line and b"run" in command_line, command_line
        status = Path(f"/proc/{process.pid}/status").read_text()
        assert re.search(r"^Uid:\s+65534\s", status, re.MULTILINE)
        assert re.search(r"^CapEff:\s+0000000000003000$", status, re.MULTILINE), status
        results = cluster.curl(unique_paths(20, "unprivileged"))
        assert [code for _, code, _ in results] == [200] * 20
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    assert "Traceback" not in log.read_text()
