"""The original clusterd rule, kept only to show that the checker catches it.

"If the first claim packet for a particular session originated from the
receiving server, then that server handles the session." A member sees its own
claim before anyone else's, so on a switched network every member that gets
the SYN before a rival's claim serves it: two winners without any loss.
"""

from __future__ import annotations

from protocols.claim_machine import (
    ACK,
    RST,
    SYN,
    UNCHANGED,
    Action,
    SendMessage,
    Unchanged,
    Verdict,
)
from protocols.classifier import Classified, FrameKind
from protocols.session_key import SessionKey
from protocols.wire.claim import Claim, ClaimMessage


class FirstSeenMachine:
    def __init__(
        self, member_id: int, now: float, *, listening: frozenset[tuple[int, int]] | None = None
    ) -> None:
        self.member_id = member_id
        self._first_claimer: dict[SessionKey, int] = {}
        self._actions: list[Action] = []
        self._counter = 0
        self._listening = listening
        self._draining = False

    def handle_client_packet(
        self, record: Classified, packet: object, size: int, now: float
    ) -> Verdict:
        key = record.key
        if key is None:
            return Verdict.DROP
        owner = self._first_claimer.get(key)
        if owner is None:
            starts = record.kind is FrameKind.UDP or (
                record.kind is FrameKind.TCP and record.tcp_flags & (SYN | ACK | RST) == SYN
            )
            listening = (
                self._listening is None or (key.transport, key.cluster_port) in self._listening
            )
            if not starts or self._draining or not listening:
                return Verdict.DROP
            self._first_claimer[key] = self.member_id  # our own claim is seen first
            self._counter += 1
            self._actions.append(SendMessage(Claim(self.member_id, self._counter, key, 0.0)))
            return Verdict.INJECT
        return Verdict.INJECT if owner == self.member_id else Verdict.DROP

    def handle_message(self, message: ClaimMessage, now: float) -> None:
        if isinstance(message, Claim):
            self._first_claimer.setdefault(message.session, message.member_id)

    def handle_timer(self, now: float) -> None:
        pass

    def pop_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def next_wakeup(self) -> float:
        return float("inf")

    def update_local(
        self,
        now: float,
        *,
        draining: bool | None = None,
        listening: frozenset[tuple[int, int]] | Unchanged | None = UNCHANGED,
    ) -> None:
        if draining is not None:
            self._draining = draining
        if listening is not UNCHANGED:
            self._listening = listening

    def knows(self, member_id: int, now: float) -> bool:
        return False  # it waits for nobody

    def owns(self, key: SessionKey) -> bool:
        return self._first_claimer.get(key) == self.member_id

    def statistics(self) -> dict[str, object]:
        return {"sessions": len(self._first_claimer)}

    def bound_violation(self) -> str | None:
        return None  # the original had no bounds at all
