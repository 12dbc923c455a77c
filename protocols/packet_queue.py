"""Bounded memory for packets that wait: queued packets of sessions being
claimed, and the fragments of datagrams whose first fragment named a session.

Every SYN of a flood costs a queued packet, so both tables hold fixed bounds
and drop the oldest first. No protocol rules live here: the claim machine says
which packets wait and when they are taken or dropped.

Pure: time enters as `now` or as plain deadlines.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from protocols.classifier import FragmentKey
from protocols.session_key import SessionKey
from protocols.session_table import QueuedPacket, Session


class PacketQueues:
    """The per-session queues of one member, bounded per session and in total."""

    def __init__(
        self,
        *,
        max_per_session: int,
        max_packets: int,
        max_bytes: int,
        drops: dict[str, int],
        session: Callable[[SessionKey], Session | None],
    ) -> None:
        self.max_per_session = max_per_session
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.packets = 0
        self.bytes = 0
        self._drops = drops
        self._session = session
        # Sessions holding queued packets, in the order their queues began.
        self._holders: OrderedDict[SessionKey, None] = OrderedDict()

    def add(self, session: Session, packet: object, size: int) -> bool:
        """Keep a packet until the claim is decided; the oldest go first when
        full. False if the packet alone is past the byte bound (dropped)."""
        if size > self.max_bytes:
            self._drops["queue_full"] += 1
            return False
        if len(session.queue) >= self.max_per_session:
            self._drop_oldest(session)
        while self.packets >= self.max_packets or self.bytes + size > self.max_bytes:
            oldest = self._session(next(iter(self._holders)))
            assert oldest is not None
            self._drop_oldest(oldest)
        if not session.queue:
            self._holders[session.key] = None
        session.queue.append(QueuedPacket(packet, size))
        session.queued_bytes += size
        self.packets += 1
        self.bytes += size
        return True

    def discard(self, session: Session, reason: str) -> None:
        """Drop the session's queued packets, counted under `reason`."""
        self._drops[reason] += len(session.queue)
        self.take(session)

    def take(self, session: Session) -> tuple[object, ...]:
        """The session's queued packets, in order; its queue is empty after."""
        packets = tuple(queued.packet for queued in session.queue)
        self.packets -= len(session.queue)
        self.bytes -= session.queued_bytes
        session.queue.clear()
        session.queued_bytes = 0
        self._holders.pop(session.key, None)
        return packets

    def _drop_oldest(self, session: Session) -> None:
        size = session.queue.popleft().size
        session.queued_bytes -= size
        self.packets -= 1
        self.bytes -= size
        self._drops["queue_full"] += 1
        if not session.queue:
            del self._holders[session.key]

    def bound_violation(self) -> str | None:
        if self.packets > self.max_packets:
            return f"queued packets: {self.packets} > {self.max_packets}"
        if self.bytes > self.max_bytes:
            return f"queued bytes: {self.bytes} > {self.max_bytes}"
        for key in self._holders:
            session = self._session(key)
            if session is None or not session.queue:
                return f"queue bookkeeping lost {key}"
            if len(session.queue) > self.max_per_session:
                return f"queue of {key}: {len(session.queue)} packets"
        return None


class FragmentEntry(NamedTuple):
    session: SessionKey
    expires: float


class FragmentTable:
    """Which session a fragmented datagram belongs to, learned from its first
    fragment (later fragments carry no ports); bounded, oldest first."""

    def __init__(self, *, max_fragments: int, timeout: float) -> None:
        self.max_fragments = max_fragments
        self.timeout = timeout
        self._entries: OrderedDict[FragmentKey, FragmentEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, fragment: FragmentKey, key: SessionKey, now: float) -> None:
        self._entries.pop(fragment, None)
        self._entries[fragment] = FragmentEntry(key, now + self.timeout)
        if len(self._entries) > self.max_fragments:
            self._entries.popitem(last=False)

    def session_of(self, fragment: FragmentKey | None) -> SessionKey | None:
        entry = self._entries.get(fragment) if fragment is not None else None
        return None if entry is None else entry.session

    def expire(self, now: float) -> None:
        while self._entries:
            fragment, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[fragment]

    def next_deadline(self) -> float | None:
        for entry in self._entries.values():
            return entry.expires
        return None
