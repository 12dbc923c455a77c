"""An optional Prometheus endpoint with the same counters and gauges as `status`.

The exposition format comes from prometheus-client; the HTTP side is a few
lines of trio, so the endpoint lives in the daemon's nursery and stops with it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.errors import UserError
from appliance.operations.status import StatusReport

log = logging.getLogger(__name__)

Snapshot = Callable[[], StatusReport]


class ApplianceCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        sessions = GaugeMetricFamily(
            "appliance_sessions", "Sessions tracked, by state", labels=["state"]
        )
        counts = status.sessions
        for state, count in (
            ("owned", counts.owned),
            ("foreign", counts.foreign),
            ("pending", counts.pending),
            ("closing", counts.closing),
        ):
            sessions.add_metric([state], count)
        yield sessions
        yield GaugeMetricFamily(
            "appliance_members",
            "Members seen alive, this one included",
            value=len(status.members),
        )
        yield GaugeMetricFamily(
            "appliance_draining", "1 while this member drains", value=int(status.draining)
        )
        queued = GaugeMetricFamily(
            "appliance_queued", "Packets and bytes waiting for claims", labels=["unit"]
        )
        queued.add_metric(["packets"], status.queued.packets)
        queued.add_metric(["bytes"], status.queued.bytes)
        yield queued
        for name, value in status.counters.items():
            yield CounterMetricFamily(
                f"appliance_{name}", f"Claim machine: {name.replace('_', ' ')}", value=value
            )
        drops = CounterMetricFamily(
            "appliance_dropped_packets", "Client packets not injected, by reason", labels=["reason"]
        )
        for reason, value in status.drops.items():
            drops.add_metric([reason], value)
        yield drops
        for name, value in status.frames.items():
            yield CounterMetricFamily(
                f"appliance_frames_{name}", f"Data plane: {name.replace('_', ' ')}", value=value
            )
        # Buckets: how many are held, wanted and granted now (gauges), and what
        # happened to them since start (counters).
        for name, value in status.buckets.items():
            if name in BUCKET_GAUGES:
                yield GaugeMetricFamily(
                    f"appliance_buckets_{name}", f"Buckets: {name.replace('_', ' ')}", value=value
                )
            else:
                yield CounterMetricFamily(
                    f"appliance_buckets_{name}", f"Buckets: {name.replace('_', ' ')}", value=value
                )


BUCKET_GAUGES = frozenset(
    {"count", "held", "wanted", "granted", "ports", "held_in_kernel", "other_in_kernel"}
)


class MetricsServer:
    def __init__(self, listen: str, snapshot: Snapshot) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.registry = CollectorRegistry()
        self.registry.register(ApplianceCollector(snapshot))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as error:
            raise UserError(f"metrics_listen {self.host}:{self.port}: {error.strerror}") from None
        task_status.started()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        """One scrape. A client's trouble (a reset, garbage) never reaches the daemon."""
        try:
            await self._answer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            log.debug("metrics client went away: %s", error)
        except Exception:
            log.exception("metrics request failed")

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] != b"/metrics":
                body, status = b"not found; try /metrics\n", b"404 Not Found"
                content_type = b"text/plain"
            else:
                body, status = generate_latest(self.registry), b"200 OK"
                content_type = b"text/plain; version=0.0.4; charset=utf-8"
            head = (
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + content_type
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(head + body)
