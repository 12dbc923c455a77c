"""Real servers and the appliance itself, started inside lab members.

nginx answers HTTP with the member's name and logs every request with its
URI; dnsmasq answers a TXT query with the member's name and logs every
query. Both logs let tests count who served what, from the servers' side.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from appliance.errors import UserError
from appliance.operations.status import SessionListing, StatusReport
from lab.namespaces import Lab, Node

NGINX_CONFIG = """\
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format served '$request_uri $status $bytes_sent $remote_addr:$remote_port';
    access_log {directory}/access.log served;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_timeout 0;
    client_max_body_size 0;  # uploads of any size are read and discarded
    server {{
        listen 80 backlog=4096;
        add_header X-Member {name} always;
        location / {{ return 200 "{name}\\n"; }}
        location /slow/ {{ alias {directory}/files/; limit_rate {rate}; }}
        location /files/ {{ alias {directory}/files/; }}
    }}
}}
"""

DNS_NAME = "whoami.cluster"


def _executable(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        package = {"nginx": "nginx-light", "dnsmasq": "dnsmasq-base"}.get(name, name)
        raise UserError(f"{name} is not installed: apt-get install {package}")
    return found


def appliance_command() -> list[str]:
    """How to start appliance-ctl from here: the same Python, the same install."""
    return [sys.executable, "-m", "appliance"]


@dataclass
class MemberServices:
    node: Node
    directory: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_nginx(self, *, rate: str = "1m") -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "files"):
            (self.directory / sub).mkdir(exist_ok=True)
        config = self.directory / "nginx.conf"
        config.write_text(
            NGINX_CONFIG.format(directory=self.directory, name=self.node.name, rate=rate)
        )
        with (self.directory / "nginx.stderr").open("wb") as stderr:  # the child keeps a copy
            self.processes["nginx"] = self.node.popen(
                [
                    _executable("nginx"),
                    "-c",
                    str(config),
                    "-e",
                    str(self.directory / "nginx-error.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self._wait_listening("tcp", 80)

    def write_file(self, name: str, size: int) -> Path:
        path = self.directory / "files" / name
        with path.open("wb") as stream:
            block = bytes(range(256)) * 4096
            remaining = size
            while remaining > 0:
                stream.write(block[: min(remaining, len(block))])
                remaining -= len(block)
        return path

    def start_dnsmasq(self, cluster_ip: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "dnsmasq.stderr").open("wb") as stderr:
            self.processes["dnsmasq"] = self._start_dnsmasq(cluster_ip, stderr)
        self._wait_listening("udp", 53)

    def _start_dnsmasq(self, cluster_ip: str, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        return self.node.popen(
            [
                _executable("dnsmasq"),
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                f"--listen-address={cluster_ip}",
                "--except-interface=lo",
                f"--txt-record={DNS_NAME},{self.node.name}",
                "--log-queries=extra",  # with the client's port: duplicates can be traced
                f"--log-facility={self.directory / 'dnsmasq.log'}",
                f"--pid-file={self.directory / 'dnsmasq.pid'}",
                "--cache-size=0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_listening(self, transport: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        flag = "-lnt" if transport == "tcp" else "-lnu"
        while time.monotonic() < deadline:
            result = self.node.run(["ss", flag, f"sport = :{port}"], check=False)
            if result.stdout.count("\n") >= 2:
                return
            time.sleep(0.05)
        raise UserError(f"{self.node.name}: nothing listens on {transport} port {port}")

    def access_log(self) -> list[str]:
        path = self.directory / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def dns_queries(self) -> list[str]:
        path = self.directory / "dnsmasq.log"
        if not path.exists():
            return []
        return [line for line in path.read_text().splitlines() if f"query[TXT] {DNS_NAME}" in line]


@dataclass
class Appliance:
    """`appliance-ctl run` inside one lab member."""

    node: Node
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, cluster_ip: str, *extra: str) -> None:
        """Start the daemon and wait until it answers on its control socket."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps a copy
            self.process = self.node.popen(
                [
                    *appliance_command(),
                    "run",
                    "--cluster-ip",
                    cluster_ip,
                    "--interface",
                    "eth0",
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise UserError(f"{self.node.name}: the appliance exited: {self.log_tail()}")
            if self.poll_status() is not None:
                return
            time.sleep(0.1)
        raise UserError(f"{self.node.name}: the appliance did not come up: {self.log_tail()}")

    def control(self, command: str, *, check: bool = True) -> dict[str, Any] | None:
        """`appliance-ctl COMMAND --json` in the member's namespace; None if it failed
        and `check` is off."""
        result = self.node.run([*appliance_command(), command, "--json"], check=False)
        if result.returncode != 0:
            if check:
                raise UserError(f"{self.node.name}: {command}: {result.stderr.strip()}")
            return None
        response: dict[str, Any] = json.loads(result.stdout)
        return response

    def status(self) -> StatusReport:
        """`appliance-ctl status --json`, typed; raises if the daemon does not answer."""
        return StatusReport.from_json(self.control("status"))

    def poll_status(self) -> StatusReport | None:
        """The status, or None if the daemon does not answer (yet, or any more)."""
        response = self.control("status", check=False)
        return None if response is None else StatusReport.from_json(response)

    def sessions(self) -> SessionListing:
        """`appliance-ctl sessions --json`, typed; raises if the daemon does not answer."""
        return SessionListing.from_json(self.control("sessions"))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text().strip().splitlines()[-5:])
        except OSError:
            return "(no log)"


def bridge_member(node: Node) -> None:
    node.run([*appliance_command(), "bridge", "eth0"])


@dataclass
class LabMember:
    """A lab host running nginx, dnsmasq and the appliance."""

    node: Node
    services: MemberServices
    appliance: Appliance

    @property
    def name(self) -> str:
        return self.node.name


def start_member(
    lab: Lab, *appliance_flags: str, dns: bool = True, rate: str = "256k"
) -> LabMember:
    """Add a host to the lab, bridge it, and start its servers and its appliance."""
    node = lab.add_host("member")
    bridge_member(node)
    directory = lab.directory / node.name
    services = MemberServices(node, directory)
    services.start_nginx(rate=rate)
    appliance = Appliance(node, directory / "appliance.log")
    appliance.start(str(lab.cluster_ip), *appliance_flags)
    if dns:
        services.start_dnsmasq(str(lab.cluster_ip))
    return LabMember(node, services, appliance)
