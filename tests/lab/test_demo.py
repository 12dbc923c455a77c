"""`appliance-ctl demo`, the README's first command, as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.namespaces import remove_stale_labs


def namespaces_of(pid: int) -> list[str]:
    return [path.name for path in Path("/run/netns").glob(f"apl-{pid}-*")]


def test_the_demo_answers_every_request_and_leaves_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--duration", "8", "--plain"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "every request was answered" in result.stdout
    assert re.search(r"lost: 0\b", result.stdout)
    # Each survivor's status counts as many sessions won (claims, and sessions
    # of its buckets served at once) as its clients saw it serve.
    cross_checks = re.findall(r"served by m\d: (\d+), won (\d+) sessions", result.stdout)
    assert len(cross_checks) == 2, result.stdout[-2000:]
    assert all(int(served) <= int(won) for served, won in cross_checks), cross_checks
    assert "status counters match the clients" in result.stdout
    assert "killed" in result.stdout and "failover:" in result.stdout
    lab_line = next(line for line in result.stdout.splitlines() if line.startswith("lab "))
    pid = int(lab_line.split()[1].split("-")[1])
    assert namespaces_of(pid) == []


def test_ctrl_c_tears_the_demo_down(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "demo", "--duration", "60", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + 90
        seen = ""
        while "requests" not in seen and time.monotonic() < deadline:
            seen += process.stdout.readline()
        assert "requests" in seen, seen
        assert namespaces_of(process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        assert namespaces_of(process.pid) == []
        # No daemon, load generator or server of the lab survives it.
        leftovers = subprocess.run(
            ["pgrep", "-af", "appliance run --cluster-ip|lab.loadgen|appliance-lab-"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert leftovers.strip() == ""
        assert os.path.exists("/dev/net/tun")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        remove_stale_labs()
