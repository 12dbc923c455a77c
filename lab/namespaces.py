"""A namespaced Ethernet segment for the demo, the end-to-end tests and benchmarks.

    switch namespace:  bridge sw0, one veth port per host
    member namespaces: eth0 on a veth to the switch, 10.77.0.11, .12, ...
    client namespaces: eth0 on a veth to the switch, 10.77.0.101, ...

Nothing is created in the namespace the lab is started from, and the lab
never looks at the host's own interfaces. Every namespace carries the lab's
name, the creator's pid and a serial number, so a lab left behind by a killed
run is recognised (its creator is dead) and removed by the next one.
Teardown kills every process inside the lab's namespaces, then deletes them,
which deletes their veths too; it runs on failure and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from appliance.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "apl"
SUBNET = IPv4Network("10.77.0.0/24")
CLUSTER_IP = IPv4Address("10.77.0.10")
_serial = itertools.count(1)


def _ip(*arguments: str) -> None:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UserError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")


def _lab_directory(name: str) -> Path:
    """Logs and files of the lab's servers; nginx workers (www-data) must read it.

    Its name starts with the lab's, so a stale lab's directory is found too.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"appliance-lab-{name}-"))
    directory.chmod(0o755)
    return directory


@dataclass
class Node:
    """One host of the lab: a network namespace."""

    namespace: str
    address: IPv4Address
    role: str  # "member" or "client"
    index: int

    @property
    def name(self) -> str:
        return f"{'m' if self.role == 'member' else 'c'}{self.index}"

    def command(self, arguments: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *arguments]

    def run(
        self, arguments: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(arguments),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise UserError(
                f"{self.name}: {' '.join(arguments)} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-400:]}"
            )
        return result

    def popen(self, arguments: Sequence[str], **options: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(arguments), start_new_session=True, **options)  # type: ignore[call-overload, no-any-return]


@dataclass
class Lab:
    name: str
    switch: str
    members: list[Node] = field(default_factory=list)
    clients: list[Node] = field(default_factory=list)
    directory: Path = field(default=Path())
    cluster_ip: IPv4Address = CLUSTER_IP

    def __post_init__(self) -> None:
        if self.directory == Path():
            self.directory = _lab_directory(self.name)

    @property
    def nodes(self) -> list[Node]:
        return [*self.members, *self.clients]

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(node.namespace for node in self.nodes)]

    def add_host(self, role: str) -> Node:
        """A new host on the segment: a namespace with eth0 on the switch."""
        hosts = self.members if role == "member" else self.clients
        index = len(hosts) + 1
        base = 10 if role == "member" else 100
        node = Node(f"{self.name}-{role[0]}{index}", SUBNET[base + index], role, index)
        _ip("netns", "add", node.namespace)
        hosts.append(node)
        port = f"{role[0]}{index}"
        _ip(
            "link", "add", "eth0", "netns", node.namespace,
            "type", "veth", "peer", "name", port, "netns", self.switch,
        )  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", "sw0", "up")
        _ip("-n", node.namespace, "link", "set", "lo", "up")
        _ip(
            "-n", node.namespace, "addr", "add", f"{node.address}/{SUBNET.prefixlen}", "dev", "eth0"
        )
        _ip("-n", node.namespace, "link", "set", "eth0", "up")
        return node

    def switch_macs(self) -> list[str]:
        """The MAC addresses the switch bridge has learned."""
        result = subprocess.run(
            ["bridge", "-n", self.switch, "fdb", "show", "br", "sw0"],
            capture_output=True,
            text=True,
            check=False,
        )
        return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]

    def teardown(self) -> None:
        for namespace in self.namespaces:
            _kill_namespace(namespace)
        shutil.rmtree(self.directory, ignore_errors=True)


def _namespace_exists(namespace: str) -> bool:
    return Path("/run/netns", namespace).exists()


def _kill_namespace(namespace: str) -> None:
    if not _namespace_exists(namespace):
        return
    pids: list[int] = []
    for attempt in range(50):
        result = subprocess.run(
            ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
        )
        pids = [int(pid) for pid in result.stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if attempt < 10 else signal.SIGKILL)
        time.sleep(0.05)
    if pids:
        log.warning("%s: processes %s outlived SIGKILL (stuck in the kernel?)", namespace, pids)
    subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)


def remove_stale_labs() -> list[str]:
    """Delete labs whose creator process is gone; returns their namespaces."""
    netns = Path("/run/netns")
    removed = []
    for path in sorted(netns.glob(f"{PREFIX}-*")) if netns.exists() else []:
        parts = path.name.split("-")
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            os.kill(pid, 0)
            continue  # its creator still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_namespace(path.name)
        removed.append(path.name)
        lab_name = "-".join(parts[:3])
        for directory in Path(tempfile.gettempdir()).glob(f"appliance-lab-{lab_name}-*"):
            shutil.rmtree(directory, ignore_errors=True)
    return removed


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the lab builds network namespaces: run it as root")
    if shutil.which("ip") is None:
        raise UserError("the lab needs iproute2 (`ip`): apt-get install iproute2")


@contextlib.contextmanager
def build_lab(members: int = 3, clients: int = 1) -> Iterator[Lab]:
    """Build a lab; always remove it, whatever happens inside the block."""
    require_root()
    remove_stale_labs()
    name = f"{PREFIX}-{os.getpid()}-{next(_serial)}"
    built = Lab(name=name, switch=f"{name}-sw")
    try:
        _ip("netns", "add", built.switch)
        _ip(
            "-n",
            built.switch,
            "link",
            "add",
            "sw0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        )
        _ip("-n", built.switch, "link", "set", "sw0", "up")
        _ip("-n", built.switch, "link", "set", "lo", "up")
        for _ in range(members):
            built.add_host("member")
        for _ in range(clients):
            built.add_host("client")
        yield built
    finally:
        built.teardown()
