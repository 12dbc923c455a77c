"""Re-assertion plans: when an owner asserts its sessions again.

An owner asserts a session once when it wins and again on a short plan
(`assertion_repeats`) for a claim that crossed the assertion; after messages
from a peer went missing, or a partition healed, or a newcomer appeared, it
asserts the sessions concerned on a longer plan (`resync_repeats`), spread
out at `resync_rate` so a large table does not burst (rule 5 of
docs/claim-rule.md). Nothing acknowledges an assertion: the whole plan is
always sent. This module holds the plans; the claim machine sends.

Pure: time enters as `now`.
"""

from __future__ import annotations

from protocols.session_table import Session, SessionTable


class Reassertion:
    """The repeat plans of one member's owned sessions."""

    def __init__(self, table: SessionTable, *, resync_rate: float, now: float) -> None:
        self._table = table
        self._spacing = 1.0 / resync_rate
        self._resync_until = now  # re-assertions are spread out from here on

    def start(self, session: Session, base: float, plan: tuple[float, ...]) -> None:
        """Assert `session` again at `base` plus each offset of `plan`."""
        session.repeat_base = base
        session.repeat_plan = plan
        session.repeat_index = 0
        advance(session)
        if session.next_assertion_at is not None:
            self._table.schedule(session, session.next_assertion_at)

    def resync(
        self,
        *,
        since: float | None,
        plan: tuple[float, ...],
        now: float,
        limit: int | None = None,
    ) -> None:
        """Put owned sessions won since `since` (all if None) on `plan`, spread
        out at `resync_rate`. With `limit`, only that many of the most recently
        won sessions."""
        start = max(now, self._resync_until)
        chosen = [
            session
            for session in self._table
            if session.mine
            and session.won_at is not None
            and (since is None or session.won_at >= since)
            and repeats_left(session) < len(plan)  # else its plan already covers this one
        ]
        if limit is not None and len(chosen) > limit:
            chosen.sort(key=lambda session: session.won_at or 0.0, reverse=True)
            del chosen[limit:]
        for session in chosen:
            self.start(session, start, plan)
            start += self._spacing
        self._resync_until = start


def advance(session: Session) -> None:
    """Move the session to the next assertion of its plan (None after the last)."""
    plan = session.repeat_plan
    if session.repeat_index >= len(plan):
        session.next_assertion_at = None
        return
    session.next_assertion_at = session.repeat_base + plan[session.repeat_index]
    session.repeat_index += 1


def repeats_left(session: Session) -> int:
    """Assertions still to come on the session's repeat plan (the next one included)."""
    if session.next_assertion_at is None:
        return 0
    return len(session.repeat_plan) - session.repeat_index + 1
