"""The other members, as one member learns them from their messages.

This module owns what rule 3 of the claim rule (docs/claim-rule.md) rests on:
which peers are alive, which of their messages never arrived (counter gaps,
and when a gap becomes a loss), and when one of their acknowledgements may be
trusted. It knows nothing of sessions: when it declares messages lost, it says
so, and the claim machine decides what to re-assert.

Pure: time enters as `now`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

MAX_MISSING = 64  # a larger gap in a peer's counter is a loss at once


class Peer:
    """Another member, as learned from its messages."""

    __slots__ = (
        "draining",
        "gap_since",
        "heard_since",
        "in_order_at",
        "known_from_counter",
        "last_counter",
        "last_heard",
        "loss_check_at",
        "member_id",
        "missing",
        "parked_acknowledgements",
        "trust_after",
        "warming",
        "weight",
    )

    def __init__(self, member_id: int, counter: int, now: float) -> None:
        self.member_id = member_id
        self.weight = 1.0
        self.draining = False
        self.warming = False
        self.last_heard = now
        # Loss detection: every message carries the sender's counter, +1 each.
        self.last_counter = counter
        self.in_order_at = now  # when every counter so far had arrived
        self.missing: dict[int, float] = {}  # counter: when its absence was noticed
        self.gap_since = now
        self.loss_check_at: float | None = None
        # Acknowledgements of our claims (by claim counter) that arrived while
        # the peer's counter had a gap wait in `parked_acknowledgements` until
        # it fills. None is trusted from a message numbered `trust_after` or
        # lower (some before them were lost), nor within reorder_window of
        # `heard_since` (messages it sent before we knew it may be in flight).
        # Our claims from before `known_from_counter` went out before we knew
        # it: they do not wait for it.
        self.parked_acknowledgements: list[int] = []
        self.trust_after = counter
        self.heard_since = now
        self.known_from_counter = 0


class PeerTable:
    """Every peer heard, bounded, with the members given up on."""

    def __init__(self, *, member_timeout: float, reorder_window: float, max_members: int) -> None:
        self.member_timeout = member_timeout
        self.reorder_window = reorder_window
        self.max_members = max_members
        self._peers: dict[int, Peer] = {}
        # Members given up on, and when they were last heard: if one comes
        # back it was cut off, not restarted (a restart brings a new id).
        self._departed: OrderedDict[int, float] = OrderedDict()
        self._loss_check_at: float | None = None  # the earliest peer.loss_check_at

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def get(self, member_id: int) -> Peer | None:
        return self._peers.get(member_id)

    def alive(self, peer: Peer, now: float) -> bool:
        return now - peer.last_heard <= self.member_timeout

    def live(self, now: float) -> list[Peer]:
        return [peer for peer in self._peers.values() if self.alive(peer, now)]

    @property
    def is_full(self) -> bool:
        return len(self._peers) >= self.max_members

    def oldest(self) -> Peer:
        return min(self._peers.values(), key=lambda candidate: candidate.last_heard)

    def meet(self, member_id: int, counter: int, now: float) -> tuple[Peer, float | None]:
        """A member heard for the first time (make room first: `is_full`).

        Returns the new peer and, for a member given up on before (cut off by
        a partition), when it was last heard: everything it sent since is lost.
        """
        peer = self._peers[member_id] = Peer(member_id, counter, now)
        return peer, self._departed.pop(member_id, None)

    def forget(self, peer: Peer) -> None:
        del self._peers[peer.member_id]
        self._departed[peer.member_id] = peer.last_heard
        if len(self._departed) > self.max_members:
            self._departed.popitem(last=False)

    def expired(self, now: float) -> list[Peer]:
        """Peers not heard for `member_timeout`: gone."""
        return [peer for peer in self._peers.values() if not self.alive(peer, now)]

    # ------------------------------------------------------------ counters

    def heard(self, peer: Peer, counter: int, now: float) -> bool:
        """A message numbered `counter` from `peer`; true if messages are now
        known lost (a gap of more than MAX_MISSING at once).

        A smaller gap may be reordering; `due_losses` declares it lost if it is
        still open after `reorder_window`.
        """
        peer.last_heard = now
        lost = False
        last = peer.last_counter
        if counter > last:
            if counter > last + 1:
                if not peer.missing:
                    peer.gap_since = peer.in_order_at
                if len(peer.missing) + counter - last - 1 > MAX_MISSING:
                    peer.missing.clear()
                    peer.parked_acknowledgements.clear()
                    peer.trust_after = counter
                    peer.heard_since = now  # the skipped messages may still be in flight
                    peer.in_order_at = now
                    lost = True
                else:
                    peer.missing.update(dict.fromkeys(range(last + 1, counter), now))
                    if peer.loss_check_at is None:
                        peer.loss_check_at = now + self.reorder_window
                        self._note_loss_check(peer.loss_check_at)
            peer.last_counter = counter
        else:
            peer.missing.pop(counter, None)
        if not peer.missing:
            peer.in_order_at = now
            peer.loss_check_at = None
        return lost

    def due_losses(self, now: float) -> list[Peer]:
        """Peers whose counter gaps stayed open for their whole reorder window:
        their missing messages are lost now."""
        if self._loss_check_at is None or now < self._loss_check_at:
            return []
        self._loss_check_at = None
        lost = []
        for peer in list(self._peers.values()):
            if peer.loss_check_at is not None:
                if now >= peer.loss_check_at:
                    if self._check_loss(peer, now):
                        lost.append(peer)
                else:
                    self._note_loss_check(peer.loss_check_at)
        return lost

    def next_deadline(self) -> float | None:
        return self._loss_check_at

    def _note_loss_check(self, at: float) -> None:
        if self._loss_check_at is None or at < self._loss_check_at:
            self._loss_check_at = at

    def _check_loss(self, peer: Peer, now: float) -> bool:
        peer.loss_check_at = None
        if not peer.missing:
            return False
        # Each gap gets its whole reorder window, even one that opened while
        # an older gap (since filled) was being waited for.
        due = min(peer.missing.values()) + self.reorder_window
        if now < due:
            peer.loss_check_at = due
            self._note_loss_check(due)
            return False
        peer.missing.clear()
        # A lost message may have been its claim: its acknowledgements so far
        # prove nothing, and our claims wait for `ack_timeout`.
        peer.parked_acknowledgements.clear()
        peer.trust_after = peer.last_counter
        peer.in_order_at = now
        return True

    # ----------------------------------------------------- acknowledgements

    def park_acknowledgement(
        self, peer: Peer, message_counter: int, claim_counter: int, now: float
    ) -> None:
        """An acknowledgement of our claim `claim_counter`, in `peer`'s message
        `message_counter`: kept until every earlier message of `peer` is here,
        and dropped if it may follow a lost one or came too soon after meeting."""
        if (
            message_counter > peer.trust_after
            and now >= peer.heard_since + self.reorder_window
            and len(peer.parked_acknowledgements) < MAX_MISSING
        ):
            peer.parked_acknowledgements.append(claim_counter)

    def trusted_acknowledgements(self, peer: Peer) -> list[int]:
        """The claim counters `peer` acknowledged that may be trusted now: every
        message it sent before them has arrived. Each is returned once."""
        if not peer.parked_acknowledgements or peer.missing:
            return []
        trusted = list(peer.parked_acknowledgements)
        peer.parked_acknowledgements.clear()
        return trusted
