"""A real cluster in network namespaces: nginx, dnsmasq and the appliance in each
member, curl and dig in the client. Needs root; the lab removes everything it
built, even when a test fails.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from lab.members import LabMember, start_member
from lab.namespaces import Lab, Node, build_lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is a lab test (`-m "not lab"` leaves them out); without
    root they are skipped, saying why."""
    for item in items:
        if "tests/lab" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
            if os.geteuid() != 0:
                item.add_marker(
                    pytest.mark.skip(reason="the lab builds network namespaces: run as root")
                )


@dataclass
class Cluster:
    lab: Lab
    members: list[LabMember] = field(default_factory=list)
    data_path: str = "kernel"  # or "tun": every member started with --fast-path off

    @property
    def client(self) -> Node:
        return self.lab.clients[0]

    @property
    def cluster_ip(self) -> str:
        return str(self.lab.cluster_ip)

    def add_member(self, *appliance_flags: str, dns: bool = True) -> LabMember:
        """A member on this cluster's data path: `--fast-path on` (a member that
        cannot load its table fails to start), or off."""
        path_flag = ("--fast-path", "off" if self.data_path == "tun" else "on")
        member = start_member(self.lab, *path_flag, *appliance_flags, dns=dns)
        self.members.append(member)
        assert member.appliance.status().data_path == self.data_path
        return member

    def wait_settled(self, timeout: float = 20.0) -> None:
        """Until every member is past its warm-up (it claims UDP flows only then),
        sees all the others, and has seen its servers' ports listening; then,
        with claimed buckets, until every bucket is held and none is moving."""
        deadline = time.monotonic() + timeout
        pending: dict[str, object] = {}
        while time.monotonic() < deadline:
            pending = {}
            for member in self.members:
                status = member.appliance.status()
                wanted = {"tcp/80", *(["udp/53"] if "dnsmasq" in member.services.processes else [])}
                if status.warming or len(status.members) != len(self.members):
                    pending[member.name] = (status.warming, len(status.members))
                elif not wanted <= set(status.listening):
                    pending[member.name] = status.listening
            if not pending:
                if self.members[0].appliance.status().buckets:
                    self.wait_for_buckets(every_member=False)
                return
            time.sleep(0.2)
        raise AssertionError(f"the cluster did not settle: {pending}")

    def bucket_shares(self) -> list[int]:
        """How many buckets each member holds, in member order."""
        return [member.appliance.status().buckets.get("held", 0) for member in self.members]

    def wait_for_buckets(
        self,
        check: Callable[[list[int]], bool] | None = None,
        *,
        every_member: bool = True,
        timeout: float = 15.0,
    ) -> list[int]:
        """Until the buckets are at rest (no member still wants one) and their
        shares pass `check` (by default: every bucket is held, and with
        `every_member` every member holds some)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = [member.appliance.status().buckets for member in self.members]
            shares = [status.get("held", 0) for status in statuses]
            at_rest = not any(status.get("wanted", 0) for status in statuses)
            count = statuses[0].get("count", 0)
            if check is not None:
                passed = check(shares)
            else:
                passed = sum(shares) == count and (all(shares) or not every_member)
            if at_rest and passed:
                return shares
            assert time.monotonic() < deadline, f"buckets held {shares}, {statuses}"
            time.sleep(0.2)

    def curl(
        self,
        paths: list[str],
        *,
        parallel: int = 1,
        max_time: float = 10.0,
        connect_timeout: float = 2.9,
    ) -> list[tuple[str, int, str]]:
        """GET each path on a new connection: (path, HTTP status or 0, member) each.

        The member comes from the X-Member header nginx adds, printed on the
        same line as the status (bodies of parallel transfers may interleave).
        The default connect timeout allows one SYN retransmission (sent after
        1 s), not two (the second goes after 3 s). The maximum time covers all.
        """
        targets = [f"http://{self.cluster_ip}{path}" for path in paths]
        write_out = "\n%{url} %{http_code} member=%header{x-member}\n"
        result = self.client.run(
            [
                "curl",
                "--silent",
                "--no-keepalive",
                "--connect-timeout",
                str(connect_timeout),
                "--max-time",
                str(max_time),
                *(["--parallel", "--parallel-max", str(parallel)] if parallel > 1 else []),
                "--write-out",
                write_out,
                *targets,
            ],
            check=False,
            timeout=600,
        )
        return parse_curl(result.stdout, self.cluster_ip)

    def download(
        self, paths: list[str], *, max_time: float = 60.0
    ) -> list[tuple[str, int, int, str]]:
        """Fetch each path in its own curl process, all at once: (path, status, bytes,
        member), the member from nginx's X-Member header ("" if none came back)."""
        write_out = "%{url} %{http_code} %{size_download} member=%header{x-member}\\n"
        script = " ".join(
            f"curl --silent --no-keepalive --max-time {max_time} --output /dev/null "
            f"--write-out '{write_out}' 'http://{self.cluster_ip}{path}' &"
            for path in paths
        )
        result = self.client.run(
            ["bash", "-c", f"{script} wait"], check=False, timeout=max_time + 30
        )
        prefix = f"http://{self.cluster_ip}"
        downloads = []
        for line in result.stdout.splitlines():
            url, code, size, member = line.rsplit(" ", 3)
            downloads.append(
                (url.removeprefix(prefix), int(code), int(size), member.removeprefix("member="))
            )
        return downloads

    def served_uris(self) -> Counter[str]:
        """How often each URI appears in all members' nginx access logs."""
        counts: Counter[str] = Counter()
        for member in self.members:
            counts.update(line.split()[0] for line in member.services.access_log())
        return counts

    def served_by(self) -> dict[str, list[str]]:
        return {
            member.name: [line.split()[0] for line in member.services.access_log()]
            for member in self.members
        }


class LongTransfers:
    """Slow downloads (nginx's rate limit) running in the background, each
    checked against the file's SHA-256 when it ends."""

    def __init__(self, cluster: Cluster, count: int, size: int) -> None:
        for member in cluster.members:
            content = member.services.write_file("big", size).read_bytes()
        self.expected = hashlib.sha256(content).hexdigest()
        self.count = count
        script = " & ".join(
            f"curl -s --no-keepalive --max-time 60 http://{cluster.cluster_ip}/slow/big?{path} "
            f"| sha256sum | cut -c1-64"
            for path in unique_paths(count, "long")
        )
        self._results: list[str] = []
        self._runner = threading.Thread(
            target=lambda: self._results.extend(
                cluster.client.run(["bash", "-c", script + " & wait"], timeout=120).stdout.split()
            )
        )
        self._runner.start()

    @property
    def running(self) -> bool:
        return self._runner.is_alive()

    def finish(self) -> None:
        """Wait for every transfer; each must have arrived whole."""
        self._runner.join()
        assert self._results == [self.expected] * self.count


def parse_curl(output: str, cluster_ip: str) -> list[tuple[str, int, str]]:
    results = []
    prefix = f"http://{cluster_ip}"
    for line in output.splitlines():
        if line.startswith(prefix):
            url, code, member = line.rsplit(" ", 2)
            results.append((url[len(prefix) :], int(code), member.removeprefix("member=")))
    return results


def unique_paths(count: int, prefix: str = "req") -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"/{prefix}-{run}-{index}" for index in range(count)]


@pytest.fixture
def lab_segment() -> Iterator[Lab]:
    with build_lab(members=0, clients=1) as segment:
        yield segment


@pytest.fixture
def cluster(lab_segment: Lab, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three members serving the cluster IP, and one client; on the kernel fast
    path unless a test parametrizes it indirectly with "tun"."""
    built = Cluster(lab_segment, data_path=getattr(request, "param", "kernel"))
    try:
        for _ in range(3):
            built.add_member()
        built.wait_settled()
        yield built
    finally:
        for member in built.members:
            member.appliance.stop()


def client_neighbours(client: Node) -> str:
    return client.run(["ip", "neigh", "show"]).stdout
