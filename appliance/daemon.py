"""`appliance-ctl run`: the daemon, one trio root nursery owning every service.

Start-up order: claim the control socket (one daemon per namespace), make
sure the bridge exists, create the TAP (in the bridge) and the TUN (with the
cluster IP), then start the data plane, the control socket, the local-facts
refresher, announcements, metrics and the systemd watchdog, and only then
tell systemd READY. SIGINT and SIGTERM cancel the nursery; the daemon says
goodbye to its peers and closes its devices, which removes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from ipaddress import IPv4Address
from typing import Any

import trio

from appliance.config import Config
from appliance.dataplane.frames import FrameBuilder
from appliance.dataplane.kernel_buckets import KernelBuckets
from appliance.dataplane.kernel_path import (
    OWNED,
    TABLE,
    KernelPath,
    KernelSets,
    Leftover,
    PathTimeouts,
    remove_table,
)
from appliance.dataplane.loop import DataPlane
from appliance.errors import UserError
from appliance.host.devices import TapDevice, TunDevice
from appliance.host.listening import connections_on, listening_ports
from appliance.host.netlink import (
    BridgeFacts,
    address_in_use,
    attach_tap,
    bridge_facts,
    bridge_interface,
    configure_tun,
    delete_link,
    write_sysctl,
)
from appliance.host.notify import Notifier
from appliance.operations.control import ControlServer
from appliance.operations.metrics import MetricsServer
from appliance.operations.status import (
    MemberReport,
    QueueReport,
    SessionCounts,
    SessionListing,
    SessionReport,
    StatusReport,
)
from protocols.claim_auth import ClaimAuthenticator
from protocols.claim_machine import ClaimMachine
from protocols.classifier import Classifier
from protocols.cluster_mac import cluster_mac
from protocols.session_key import TRANSPORT_NAMES
from protocols.session_table import PENDING

log = logging.getLogger("appliance")

FACTS_INTERVAL = 1.0
MAX_WEIGHT = 1000.0  # as the configuration's weight
KERNEL_ROOM_INTERVAL = 1.0  # while the owned set is full: seconds between tries to move back
ANNOUNCEMENTS = 3
STATUS_INTERVAL = 10.0
MAX_SESSIONS_LISTED = 10_000


def current_load() -> float:
    """The 1-minute load average per CPU: 0 idle, about 1 when every CPU is busy."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def describe_ports(pairs: frozenset[tuple[int, int]]) -> list[str]:
    """Listening (transport, port) pairs as sorted "tcp/80" strings."""
    return [f"{TRANSPORT_NAMES[transport]}/{port}" for transport, port in sorted(pairs)]


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.cluster_mac = cluster_mac(
            config.cluster_ip, multicast=config.cluster_mac_mode == "multicast"
        )
        self.member_id = int.from_bytes(os.urandom(8), "big")
        self.started_wall = time.time()
        self.plane: DataPlane | None = None
        # TCP connections of the local stack on the cluster IP (read once a second).
        self.connections = 0

    @property
    def machine(self) -> ClaimMachine:
        assert self.plane is not None
        return self.plane.machine

    async def run(self) -> None:
        config = self.config
        with (
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            contextlib.ExitStack() as cleanup,  # undoes what was made, in reverse
        ):
            # Everything that can refuse comes before anything changes on the host.
            key = config.claim_key()
            config.bucket_settings(key)  # a bad bucket configuration refuses here
            control = ControlServer(config.control_socket, self.handle_control)
            cleanup.callback(control.close)
            await control.bind()
            holder = await trio.to_thread.run_sync(
                address_in_use, config.cluster_ip, config.tun_name
            )
            if holder is not None:
                raise UserError(
                    f"{config.cluster_ip} is already an address of {holder}; the cluster IP "
                    "must live only on the appliance's TUN device"
                )
            report = await trio.to_thread.run_sync(
                bridge_interface, config.interface, config.bridge
            )
            log.info("%s", report)
            if config.cluster_mac_mode == "multicast":
                # Frames to a multicast cluster MAC also reach the host's own
                # stack through the bridge; its kernel must not answer them
                # itself (UDP and ICMP would be served by every member).
                write_sysctl(f"ipv4/conf/{config.bridge}/drop_unicast_in_l2_multicast", 1)
            facts = await trio.to_thread.run_sync(bridge_facts, config.bridge)
            path, leftover = await self._start_kernel_path(facts, key)
            if path is not None:
                cleanup.callback(path.remove)  # also if anything below refuses
            tap = TapDevice(config.tap_name, offloads=config.offloads)
            cleanup.callback(self._stopped)
            cleanup.callback(tap.close)
            tun = TunDevice(config.tun_name, offloads=config.offloads, persistent=path is not None)
            if path is not None:
                # A clean stop: the table goes first, then the persistent TUN.
                cleanup.callback(_delete_quietly, tun.name)
            cleanup.callback(tun.close)
            if path is not None:
                cleanup.callback(path.remove)
            await trio.to_thread.run_sync(attach_tap, tap.name, config.bridge, facts.mtu)
            await trio.to_thread.run_sync(configure_tun, tun.name, config.cluster_ip, facts.mtu)
            await self._serve(control, tap, tun, facts.ipv4, key, signals, path, leftover)

    async def _start_kernel_path(
        self, facts: BridgeFacts, key: bytes | None
    ) -> tuple[KernelPath | None, Leftover]:
        """Load the fast path's table (replacing one a crashed daemon left,
        whose owned sessions are returned to be re-learned); None for the TUN path."""
        config = self.config
        if config.fast_path == "off":
            # A table a crashed daemon left would drop this path's sessions.
            await trio.to_thread.run_sync(remove_table)
            log.info("serving on the TUN path (fast_path = off)")
            return None, Leftover()
        settings = config.claim_settings()
        buckets = config.bucket_settings(key)
        path = KernelPath(
            cluster_ip=config.cluster_ip,
            cluster_mac=str(self.cluster_mac),
            bridge_mac=facts.mac,
            size=config.kernel_set_size,
            timeouts=PathTimeouts(
                handshake=settings.handshake_timeout,
                tcp_idle=settings.tcp_idle_timeout,
                udp_idle=settings.udp_idle_timeout,
            ),
            buckets=buckets.count if buckets else 1,
            seed=buckets.seed if buckets else 0,
        )
        try:
            leftover = await trio.to_thread.run_sync(path.leftover)
            await trio.to_thread.run_sync(path.load, leftover)
        except (UserError, OSError) as error:
            if config.fast_path == "on":
                raise UserError(
                    f"fast_path = on, but the kernel fast path cannot start: {error}"
                ) from None
            await trio.to_thread.run_sync(remove_table)
            log.warning("the kernel fast path is unavailable (%s): serving on the TUN path", error)
            return None, Leftover()
        log.info(
            "serving on the kernel fast path (nftables table bridge %s, sets of %d)",
            TABLE,
            path.size,
        )
        return path, leftover

    def _stopped(self) -> None:
        self.notifier.stopping()
        log.info("stopped; %s and %s removed", self.config.tap_name, self.config.tun_name)

    async def _serve(
        self,
        control: ControlServer,
        tap: TapDevice,
        tun: TunDevice,
        member_ip: IPv4Address | None,
        key: bytes | None,
        signals: Any,
        path: KernelPath | None,
        leftover: Leftover,
    ) -> None:
        config = self.config
        now = trio.current_time()
        kernel = None if path is None else KernelSets(path)
        bucket_settings = config.bucket_settings(key)
        machine = ClaimMachine(
            self.member_id,
            config.claim_settings(),
            now,
            weight=config.weight,
            load=self.local_load(),
            listening=listening_ports(config.cluster_ip),
            table_listener=kernel,
            activity=kernel,
            buckets=bucket_settings,
        )
        kernel_buckets = (
            None
            if path is None or machine.buckets is None
            else KernelBuckets(path, machine.buckets, config.claim_settings().tcp_idle_timeout)
        )
        if kernel_buckets is not None:
            kernel_buckets.relearned = len(leftover.history)
        # Sessions the kernel kept serving while no daemon ran are this
        # member's again, asserted to peers, before anything new is claimed.
        declined = [
            carried.key
            for carried in leftover.sessions
            if not machine.adopt(
                carried.key, now, last_seen=now - carried.age, established=carried.refreshed
            )
        ]
        if leftover:
            log.info(
                "re-learned %d session(s) the kernel kept serving, and %d bucket(s) whose "
                "sessions it serves",
                len(leftover.sessions) - len(declined),
                len(leftover.history),
            )
        if path is not None and declined:
            path.remove_elements(OWNED, declined)  # no room in the table: not ours to serve
        builder = FrameBuilder(
            own_mac=tap.mac,
            cluster_mac=self.cluster_mac,
            cluster_ip=config.cluster_ip,
            member_ip=member_ip,
            claim_protocol=config.claim_protocol,
        )
        self.plane = DataPlane(
            tap=tap,
            tun=tun,
            machine=machine,
            classifier=Classifier([config.cluster_ip.packed], config.claim_protocol),
            builder=builder,
            authenticator=ClaimAuthenticator(key),
            kernel=kernel,
            kernel_buckets=kernel_buckets,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals, nursery.cancel_scope)
                await nursery.start(self.plane.run)
                await nursery.start(control.serve)
                if config.metrics_listen:
                    metrics = MetricsServer(
                        config.metrics_listen, lambda: self.status(trio.current_time())
                    )
                    await nursery.start(metrics.serve)
                nursery.start_soon(self._refresh_local_facts)
                if kernel is not None:
                    nursery.start_soon(self.plane.keep_kernel_room, KERNEL_ROOM_INTERVAL)
                nursery.start_soon(self._announce)
                nursery.start_soon(self._report_to_systemd)
                log.info(
                    "serving %s (cluster MAC %s) on %s as member %016x, weight %g%s",
                    config.cluster_ip,
                    self.cluster_mac,
                    config.bridge,
                    self.member_id,
                    config.weight,
                    ", claims authenticated" if key else "",
                )
                self.notifier.ready(self.status_line())
        finally:
            # Say goodbye, so peers stop waiting for this member at once.
            machine.leave(trio.current_time())
            self.plane.carry_out()

    async def _watch_signals(self, signals: Any, scope: trio.CancelScope) -> None:
        async for number in signals:
            log.info("received %s; stopping", signal.Signals(number).name)
            scope.cancel()
            return

    async def _refresh_local_facts(self) -> None:
        config = self.config
        while True:
            await trio.sleep(FACTS_INTERVAL)
            # /proc/net/tcp lists every socket: a busy server's is large, so it
            # is read off the event loop.
            listening = await trio.to_thread.run_sync(listening_ports, config.cluster_ip)
            self.connections = await trio.to_thread.run_sync(connections_on, config.cluster_ip)
            assert self.plane is not None
            if self.plane.kernel_buckets is not None:
                await trio.to_thread.run_sync(self.plane.kernel_buckets.count_new)
            self.machine.update_local(
                trio.current_time(),
                load=self.local_load(),
                listening=listening,
            )

    async def _announce(self) -> None:
        assert self.plane is not None
        for _ in range(ANNOUNCEMENTS):
            self.plane.announce()
            await trio.sleep(1.0)

    async def _report_to_systemd(self) -> None:
        interval = self.notifier.watchdog_interval
        next_status = trio.current_time() + STATUS_INTERVAL
        while True:
            if interval is not None:
                # Pinged from the trio loop itself: a wedged loop stops the pings.
                self.notifier.watchdog()
            now = trio.current_time()
            if now >= next_status:
                self.notifier.status(self.status_line())
                next_status = now + STATUS_INTERVAL
            await trio.sleep(min(interval or STATUS_INTERVAL, STATUS_INTERVAL))

    # ---------------------------------------------------------------- control

    def local_load(self) -> float:
        """The load this member weighs its claims by (0 unless load_aware)."""
        return current_load() if self.config.load_aware else 0.0

    def status_line(self) -> str:
        if self.plane is None:
            return "starting"
        report = self.status(trio.current_time())
        state = "draining" if report.draining else "serving"
        return (
            f"{state} {report.cluster_ip}: {report.sessions.owned} sessions owned, "
            f"{len(report.members)} members"
        )

    def handle_control(self, request: dict[str, Any]) -> StatusReport | SessionListing:
        """One control command; UserError for a request the daemon cannot serve."""
        command = request["command"]
        if self.plane is None:
            raise UserError("the daemon is still starting")
        now = trio.current_time()
        if command == "status":
            return self.status(now)
        if command == "sessions":
            limit = request.get("limit", 1000)
            if not isinstance(limit, int):
                raise UserError(f"limit must be a whole number, not {limit!r}")
            return self.sessions(now, limit)
        if command == "weight":
            weight = request.get("weight")
            if (
                not isinstance(weight, int | float)
                or isinstance(weight, bool)
                or not 0 <= weight <= MAX_WEIGHT
            ):
                raise UserError(f"weight must be a number from 0 to {MAX_WEIGHT:g}, not {weight!r}")
            self.machine.update_local(now, weight=float(weight))
            self.plane.wake()
            log.info("weight %g requested over the control socket", weight)
            return self.status(now)
        if command in ("drain", "undrain"):
            self.machine.update_local(now, draining=command == "drain")
            self.plane.wake()
            log.info("%s requested over the control socket", command)
            return self.status(now)
        raise UserError(f"unknown command {command!r}")

    def status(self, now: float) -> StatusReport:
        """The status report. The one place that reads the claim machine's
        statistics(), an untyped dict: its shape is checked here."""
        assert self.plane is not None
        machine = self.machine
        statistics = machine.statistics()

        def count(name: str) -> int:
            value = statistics[name]
            if not isinstance(value, int):
                raise TypeError(f"ClaimMachine.statistics()[{name!r}] is {value!r}, not a count")
            return value

        def tally(name: str) -> dict[str, int]:
            value = statistics[name]
            if not isinstance(value, dict):
                raise TypeError(f"ClaimMachine.statistics()[{name!r}] is {value!r}, not a dict")
            return {str(key): int(number) for key, number in value.items()}

        owners: dict[int, int] = {}
        serving = 0  # sessions this member injects: owned, or closing after owned
        for session in machine.sessions():
            serving += session.mine
            owner = self.member_id if session.mine else session.owner
            if session.state is not PENDING and owner >= 0:
                owners[owner] = owners.get(owner, 0) + 1
        total = sum(owners.values()) or 1
        config = self.config
        members = [
            MemberReport(
                member_id=self.member_id,
                is_self=True,
                address=str(self.plane.builder.member_ip),
                last_seen=0.0,
                weight=float(machine.announced_weight),
                draining=machine.draining,
                share=owners.get(self.member_id, 0) / total,
            )
        ]
        members.extend(
            MemberReport(
                member_id=peer.member_id,
                is_self=False,
                address=self.plane.address_of(peer.member_id),
                last_seen=round(now - peer.last_heard, 3),
                weight=float(peer.weight),
                draining=peer.draining,
                share=owners.get(peer.member_id, 0) / total,
            )
            for peer in machine.peers(now)
        )
        return StatusReport(
            cluster_ip=config.cluster_ip,
            cluster_mac=str(self.cluster_mac),
            member_id=self.member_id,
            interface=config.interface,
            bridge=config.bridge,
            uptime=round(time.time() - self.started_wall, 1),
            draining=machine.draining,
            drained=machine.draining and serving == 0 and self.connections == 0,
            warming=machine.is_warming(now),
            listening=tuple(describe_ports(machine.listening or frozenset())),
            authenticated=self.plane.authenticator.enabled,
            members=tuple(members),
            sessions=SessionCounts(
                owned=count("owned"),
                foreign=count("foreign"),
                pending=count("pending"),
                closing=count("closing"),
                total=count("sessions"),
                serving=serving,
            ),
            queued=QueueReport(packets=count("queued_packets"), bytes=count("queued_bytes")),
            counters=tally("counters"),
            drops=tally("drops"),
            frames=self.plane.counters.as_dict() | self._kernel_counters(),
            data_path=self.data_path(),
            buckets=self.bucket_report(statistics),
        )

    def bucket_report(self, statistics: dict[str, object]) -> dict[str, int]:
        """The bucket rule's figures, flat: counts, its counters, and what the kernel holds."""
        figures = statistics.get("buckets")
        if not isinstance(figures, dict):
            return {}
        report = {name: int(value) for name, value in figures.items() if isinstance(value, int)}
        counters = figures.get("counters")
        if isinstance(counters, dict):
            report.update({str(name): int(value) for name, value in counters.items()})
        assert self.plane is not None
        if self.plane.kernel_buckets is not None:
            report.update(self.plane.kernel_buckets.statistics())
        return report

    def data_path(self) -> str:
        """Which path serves won sessions, as `status` shows it: "kernel", else why not."""
        assert self.plane is not None
        kernel = self.plane.kernel
        if kernel is None:
            return "tun"
        if kernel.path.lost:
            return "tun (the fast path's table was removed from outside)"
        return "kernel, degraded (owned set full)" if kernel.path.degraded else "kernel"

    def _kernel_counters(self) -> dict[str, int]:
        assert self.plane is not None
        kernel = self.plane.kernel
        if kernel is None:
            return {}
        path = kernel.path
        return {
            "kernel_batches": path.batches,
            "kernel_elements_added": path.elements_added,
            "kernel_elements_removed": path.elements_removed,
            "kernel_add_refused": path.add_failures,
            "kernel_queries": path.queries,
        }

    def sessions(self, now: float, limit: int) -> SessionListing:
        sessions = self.machine.sessions()
        listed = []
        for session in sessions[: max(0, min(limit, MAX_SESSIONS_LISTED))]:
            owner = self.member_id if session.mine else session.owner
            listed.append(
                SessionReport(
                    session=str(session.key),
                    state=session.state.value,
                    owner=owner if owner >= 0 else None,
                    mine=session.mine,
                    age=round(now - session.started, 3),
                    idle=round(now - session.last_seen, 3),
                )
            )
        return SessionListing(sessions=tuple(listed), total=len(sessions), member_id=self.member_id)


def _delete_quietly(name: str) -> None:
    try:
        delete_link(name)
    except UserError as error:
        log.warning("%s", error)
