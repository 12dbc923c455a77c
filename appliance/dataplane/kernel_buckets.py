"""The kernel's bucket sets, kept in step with the claim machine's buckets.

`protocols.buckets` decides which buckets this member holds and which
another member holds or was granted; this mirror writes that into the
table's sets (see `appliance.dataplane.kernel_path`): `mine_tcp4` and
`mine_udp4` with the lease as each element's timeout, renewed while the
machine runs, `other4`, and `history4`, which keeps a bucket's established
sessions reaching the local stack for the TCP idle timeout after it is let go.

The data plane syncs before it sends anything: a bucket let go leaves the
kernel before the message that says so, so no peer takes it while this
kernel still serves it. A daemon that dies or freezes stops renewing, and
its kernel stops serving new sessions of its buckets within the lease,
before the peers give up on it (`member_timeout`).
"""

from __future__ import annotations

import logging

from appliance.dataplane.kernel_path import (
    HISTORY,
    MINE_TCP,
    MINE_UDP,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM,
    OTHER,
    Elements,
    KernelPath,
    TableLost,
    mark_key,
)
from appliance.errors import UserError
from protocols.buckets import MINE, Buckets
from protocols.buckets import OTHER as OTHER_VERDICT

log = logging.getLogger(__name__)

RENEW_FRACTION = 0.25  # renew the lease in the kernel once a quarter of it has passed


class KernelBuckets:
    def __init__(self, path: KernelPath, buckets: Buckets, history_timeout: float) -> None:
        self.path = path
        self.buckets = buckets
        self.history_timeout = history_timeout
        count = buckets.count
        self._version = -1
        self._tcp = bytes(count)  # what the kernel has, as far as we know
        self._udp = bytes(count)
        self._ports: frozenset[tuple[int, int]] | bool | None = False  # False: never written
        self._renewed_until = 0.0
        self.writes = 0
        self.failures = 0
        self.relearned = 0  # buckets whose history a crashed daemon's table kept
        # SYNs and first UDP datagrams the kernel served at once (read by `count_new`).
        self.kernel_new_tcp = 0
        self.kernel_new_udp = 0

    def sync(self, now: float) -> None:
        """Write what changed, and renew the lease when due. Never raises."""
        path = self.path
        if path.lost:
            return
        buckets = self.buckets
        try:
            if buckets.ports != self._ports:
                path.set_bucket_ports(buckets.ports)
                self._ports = buckets.ports
            if buckets.version != self._version:
                self._write_changes(now)
                self._version = buckets.version
            elif buckets.holding and self._due(now):
                self._renew(now)
        except TableLost:
            path.lost = True
        except UserError as error:
            self.failures += 1
            log.error("could not write the bucket ports: %s", error)

    def _due(self, now: float) -> bool:
        lease = self.buckets.settings.lease
        return self.buckets.lease_until - self._renewed_until >= lease * RENEW_FRACTION

    def _lease_ms(self, now: float) -> int:
        return max(1, int((self.buckets.lease_until - now) * 1000))

    def _write_changes(self, now: float) -> None:
        tcp, udp = self.buckets.verdicts()
        lease = self._lease_ms(now)
        removals: dict[str, list[tuple[bytes, int | None]]] = {
            MINE_TCP: [],
            MINE_UDP: [],
            OTHER: [],
        }
        additions: dict[str, list[tuple[bytes, int | None]]] = {
            MINE_TCP: [],
            MINE_UDP: [],
            OTHER: [],
            HISTORY: [],
        }
        old_tcp, old_udp = self._tcp, self._udp
        for bucket in range(len(tcp)):
            key = mark_key(bucket)
            new, old = tcp[bucket], old_tcp[bucket]
            if old == MINE and new != MINE:
                removals[MINE_TCP].append((key, None))
                # Its sessions stay ours for the idle timeout from now.
                additions[HISTORY].append((key, int(self.history_timeout * 1000)))
            if old == OTHER_VERDICT and new != OTHER_VERDICT:
                removals[OTHER].append((key, None))
            if new == OTHER_VERDICT and old != OTHER_VERDICT:
                additions[OTHER].append((key, None))
            if new == MINE and old != MINE:
                additions[MINE_TCP].append((key, lease))
                additions[HISTORY].append((key, int(self.history_timeout * 1000)))
            if udp[bucket] == MINE and old_udp[bucket] != MINE:
                additions[MINE_UDP].append((key, lease))
            elif old_udp[bucket] == MINE and udp[bucket] != MINE:
                removals[MINE_UDP].append((key, None))
        operations: list[tuple[int, str, Elements]] = []
        for name, elements in removals.items():
            operations.append((NFT_MSG_DELSETELEM, name, elements))
        for name, elements in additions.items():
            operations.append((NFT_MSG_NEWSETELEM, name, elements))
        if not self.path.write_buckets(operations):
            # An element the kernel let expire on its own (a late renewal)
            # fails a removal: write each set on its own.
            self.failures += 1
            for operation in operations:
                self.path.write_buckets([operation])
        self.writes += 1
        self._tcp, self._udp = tcp, udp
        if self.buckets.holding:
            self._renew(now)  # the buckets kept: the rest of the lease, too

    def _renew(self, now: float) -> None:
        """Give every held bucket's elements the rest of the lease again."""
        lease = self._lease_ms(now)
        mine_tcp = [(mark_key(b), lease) for b, verdict in enumerate(self._tcp) if verdict == MINE]
        mine_udp = [(mark_key(b), lease) for b, verdict in enumerate(self._udp) if verdict == MINE]
        history = [(key, int(self.history_timeout * 1000)) for key, _ in mine_tcp]
        removals = [(key, None) for key, _ in mine_tcp]
        removals_udp = [(key, None) for key, _ in mine_udp]
        # Removed and added in one transaction: an older kernel does not
        # refresh the timeout of an element added again.
        operations: list[tuple[int, str, Elements]] = [
            (NFT_MSG_DELSETELEM, MINE_TCP, removals),
            (NFT_MSG_DELSETELEM, MINE_UDP, removals_udp),
            (NFT_MSG_NEWSETELEM, MINE_TCP, mine_tcp),
            (NFT_MSG_NEWSETELEM, MINE_UDP, mine_udp),
            (NFT_MSG_NEWSETELEM, HISTORY, history),
        ]
        if not self.path.write_buckets(operations):
            self.failures += 1
            self.path.write_buckets(operations[2:])  # one expired: add what is held
        self._renewed_until = self.buckets.lease_until

    def count_new(self) -> None:
        """Read the kernel's counters of sessions served at once (blocking: from a
        worker thread). A failure leaves the last figures."""
        if self.path.lost:
            return
        try:
            self.kernel_new_tcp, self.kernel_new_udp = self.path.new_sessions()
        except (UserError, ValueError) as error:
            log.debug("could not read the kernel's counters: %s", error)

    def statistics(self) -> dict[str, int]:
        return {
            "held_in_kernel": sum(1 for verdict in self._tcp if verdict == MINE),
            "other_in_kernel": sum(1 for verdict in self._tcp if verdict == OTHER_VERDICT),
            "writes": self.writes,
            "failures": self.failures,
            "history_relearned": self.relearned,
            "kernel_new_tcp": self.kernel_new_tcp,
            "kernel_new_udp": self.kernel_new_udp,
        }
