"""The project's own rule before acknowledgements, for comparison.

Until acknowledgements, every claim was decided `guard` (2 ms) after it left,
whoever had answered: safe only while every member handled every claim within
that time. A busy member does not (the lab's DNS test served one query twice
on a loaded 2-core CI machine), and `--faults slow_member` catches this rule
where the current one holds.
"""

from __future__ import annotations

from protocols.claim_machine import ClaimMachine
from protocols.session_table import PENDING


class FixedGuardMachine(ClaimMachine):
    def _decide_acknowledged(self, now: float) -> None:
        # Whatever was acknowledged, each claim waits for its guard, no longer.
        awaiting = self._awaiting
        while awaiting:
            session = self._table.get(awaiting.pop(next(iter(awaiting))))
            if session is not None and session.state is PENDING:
                session.decide_at = session.claimed_at + self.settings.guard
                self._table.schedule(session, session.decide_at)
