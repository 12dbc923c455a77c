"""The data plane: frames from the TAP through the classifier and the claim machine.

One trio task. Each time the TAP is readable (or the machine's timer is
due) it drains the TAP in a batch, without awaiting between frames, then runs
the machine's timers, then carries out what the machine asked for. Draining
before the timers matters: every claim is decided on a timer (set by its last
acknowledgement, or by its guard or acknowledgement timeout), so it is
decided only when the TAP's queue is empty, having seen every rival claim
that reached this host. Under a flood the queue may not empty within a
batch; decisions then wait for a later batch (hellos do not), which costs
latency, never safety.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from ipaddress import ip_address
from typing import cast

import trio

from appliance.dataplane.frames import FrameBuilder
from appliance.dataplane.kernel_buckets import KernelBuckets
from appliance.dataplane.kernel_path import KernelSets
from appliance.host.devices import READ_SIZE, TapDevice, TunDevice
from protocols.claim_auth import ClaimAuthenticator
from protocols.claim_machine import (
    INJECT,
    QUEUED,
    ClaimMachine,
    InjectPackets,
    ResetLocalSession,
    SendMessage,
)
from protocols.classifier import Classified, Classifier, FrameKind, network_offset
from protocols.errors import AuthenticationFailure, RemoteProtocolError
from protocols.wire.ethernet import EthernetFrame

log = logging.getLogger(__name__)

BATCH = 2048  # frames per wake-up before other tasks get a turn
FIRST_CLIENT_KIND = FrameKind.TCP  # TCP, UDP, ICMP_ECHO, ICMP_ERROR and FRAGMENT follow
ARP_REPLIES_PER_SECOND = 200.0
ARP_BURST = 50.0
MAX_KNOWN_ADDRESSES = 256


@dataclass(slots=True)
class FrameCounters:
    frames: int = 0
    wakeups: int = 0
    busy_batches: int = 0  # batches that left frames queued (decisions waited)
    other: int = 0
    malformed: int = 0
    claim_frames: int = 0  # protocol-150 frames, before authentication
    claims_malformed: int = 0
    auth_failures: int = 0
    arp_requests: int = 0
    arp_replies: int = 0
    arp_rate_limited: int = 0
    inject_errors: int = 0
    send_errors: int = 0
    local_resets: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DataPlane:
    def __init__(
        self,
        *,
        tap: TapDevice,
        tun: TunDevice,
        machine: ClaimMachine,
        classifier: Classifier,
        builder: FrameBuilder,
        authenticator: ClaimAuthenticator,
        kernel: KernelSets | None = None,
        kernel_buckets: KernelBuckets | None = None,
    ) -> None:
        self.tap = tap
        self.kernel = kernel  # None: the TUN path, every packet through this loop
        self.kernel_buckets = kernel_buckets
        self.tun = tun
        self.machine = machine
        self.classifier = classifier
        self.builder = builder
        self.authenticator = authenticator
        self.counters = FrameCounters()
        # Where each member's claims come from (IPv4, raw), for `status`.
        self.addresses: OrderedDict[int, bytes] = OrderedDict()
        self._arp_tokens = ARP_BURST
        self._arp_refilled = trio.current_time()
        self._waiting: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.carry_out()
        machine = self.machine
        wait_readable = trio.lowlevel.wait_readable
        while True:
            with trio.CancelScope(deadline=machine.next_wakeup()) as self._waiting:
                await wait_readable(self.tap.fd)
            self._waiting = None
            drained = self.drain()
            machine.handle_timer(trio.current_time(), sessions=drained)
            self.carry_out()
            if not drained:
                self.counters.busy_batches += 1
                await trio.lowlevel.checkpoint()

    async def keep_kernel_room(self, interval: float) -> None:
        """On the fast path, while the owned set is full, try every `interval`
        to move the sessions served on the TUN path into it; once none is
        left, the kernel drops other members' TCP segments again."""
        kernel = self.kernel
        assert kernel is not None
        path = kernel.path
        while True:
            await trio.sleep(interval)
            if not path.degraded or path.lost:
                continue
            kernel.retry_refused()
            if not kernel.refused and len(kernel.owned) < path.size * 0.9:
                await trio.to_thread.run_sync(kernel.degrade, False)
                if kernel.refused:
                    # Refused while the drop rule came back: their packets must
                    # reach the TAP again.
                    kernel.degrade(True)
                else:
                    log.info("the kernel's owned set has room again: back on the fast path")

    def wake(self) -> None:
        """Run the loop now: the machine's state changed from outside (control, facts)."""
        self.carry_out()
        if self._waiting is not None:
            self._waiting.cancel()

    def drain(self) -> bool:
        """Handle queued frames; True when the TAP's queue was emptied.

        Every frame is handled at its own time, and claims and answers go out
        the moment the machine asks for them: a claim's guard window starts
        when the claim leaves, not when the batch began.
        """
        read = os.read
        fd = self.tap.fd
        start = self.tap.header_length
        classify = self.classifier.classify
        machine = self.machine
        handle = machine.handle_client_packet
        inject = self.tun.inject
        counters = self.counters
        # trio's clock is perf_counter plus an offset; reading it directly
        # costs a fifth of trio.current_time(), which matters once per frame.
        perf_counter = time.perf_counter
        offset = trio.current_time() - perf_counter()
        first_client_kind = FIRST_CLIENT_KIND
        malformed = FrameKind.MALFORMED
        frames = 0
        emptied = False
        for _ in range(BATCH):
            try:
                frame = read(fd, READ_SIZE)
            except BlockingIOError:
                emptied = True
                break
            frames += 1
            record = classify(frame, start)
            kind = record[0]
            if kind >= first_client_kind:
                verdict = handle(record, frame, len(frame), perf_counter() + offset)
                if verdict is INJECT:
                    if machine.has_actions:
                        # What earlier frames asked for goes first: a reset of
                        # an evicted session, before its successor is served.
                        self.carry_out()
                    if not inject(frame, record[3]):
                        counters.inject_errors += 1
                elif verdict is QUEUED and machine.has_actions:
                    self.carry_out()  # the claim, now
            elif kind > malformed:  # claims and ARP: they need the time
                self._control_frame(frame, record, perf_counter() + offset)
                if machine.has_actions:
                    self.carry_out()  # an answer to a rival, now
            elif kind:
                counters.malformed += 1
            else:
                counters.other += 1  # most of a busy segment: not for the cluster
        counters.frames += frames
        counters.wakeups += 1
        return emptied

    def _control_frame(self, frame: bytes, record: Classified, now: float) -> None:
        kind = record.kind
        counters = self.counters
        if kind is FrameKind.CLAIM:
            counters.claim_frames += 1
            try:
                message = self.authenticator.open(frame[record.payload_offset : record.payload_end])
            except AuthenticationFailure as error:
                counters.auth_failures += 1
                log.debug("refused claim: %s", error)
                return
            except RemoteProtocolError as error:
                counters.claims_malformed += 1
                log.debug("malformed claim: %s", error)
                return
            source = record.address
            assert source is not None  # the classifier names every claim's sender
            if self.addresses.get(message.member_id) != source:
                self.addresses[message.member_id] = source
                if len(self.addresses) > MAX_KNOWN_ADDRESSES:
                    self.addresses.popitem(last=False)
            self.machine.handle_message(message, now)
        elif kind is FrameKind.ARP_REQUEST:
            counters.arp_requests += 1
            self._answer_arp(frame, record, now)
        else:
            counters.other += 1  # a neighbour solicitation: IPv6 is not served

    def _answer_arp(self, frame: bytes, record: Classified, now: float) -> None:
        # A token bucket: an ARP flood costs a bounded amount of work.
        self._arp_tokens = min(
            ARP_BURST, self._arp_tokens + (now - self._arp_refilled) * ARP_REPLIES_PER_SECOND
        )
        self._arp_refilled = now
        if self._arp_tokens < 1:
            self.counters.arp_rate_limited += 1
            return
        self._arp_tokens -= 1
        start = self.tap.header_length
        vlan = (
            EthernetFrame.parse(frame[start:]).vlan if record.network_offset - start == 18 else None
        )
        reply = self.builder.arp_reply(frame, record.network_offset, vlan)
        if reply is None:
            return
        if self.tap.write(reply):
            self.counters.arp_replies += 1
        else:
            self.counters.send_errors += 1

    def address_of(self, member_id: int) -> str | None:
        source = self.addresses.get(member_id)
        return None if source is None else str(ip_address(source))

    def announce(self) -> None:
        """Gratuitous ARP: neighbours learn the cluster MAC without asking."""
        if not self.tap.write(self.builder.gratuitous_arp()):
            self.counters.send_errors += 1

    def carry_out(self) -> None:
        counters = self.counters
        kernel = self.kernel
        if kernel is not None and kernel.pending:
            # Before a won session's first packets are injected: its later
            # packets must already find its element in the kernel.
            kernel.flush()
        if self.kernel_buckets is not None:
            # Before any message: a bucket let go leaves the kernel before
            # the peers can hear of it.
            self.kernel_buckets.sync(trio.current_time())
        for action in self.machine.pop_actions():
            if isinstance(action, SendMessage):
                frame = self.builder.claim_frame(self.authenticator.seal(action.message))
                if not self.tap.write(frame):
                    counters.send_errors += 1
            elif isinstance(action, InjectPackets):
                start = self.tap.header_length
                for packet in action.packets:
                    # The queued packets are the TAP frames handed to the machine.
                    queued = cast(bytes, packet)
                    if not self.tun.inject(queued, network_offset(queued, start)):
                        counters.inject_errors += 1
            elif isinstance(action, ResetLocalSession):
                counters.local_resets += 1
                if not self.tun.write(FrameBuilder.local_reset(action.key, action.sequence)):
                    counters.inject_errors += 1
