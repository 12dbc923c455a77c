"""The project's own rule before acknowledgements, for comparison.

Until acknowledgements, every claim was decided `guard` (2 ms) after it left,
whoever had answered: safe only while every member handled every claim within
that time. A busy member does not (the lab's DNS test served one query twice
on a loaded 2-core CI machine), and `--faults slow_member` catches this rule
where the current one holds.
"""

from __future__ import annotations

from protocols.claim_machine import ClaimMachine
from protocols.session_table import Session


class FixedGuardMachine(ClaimMachine):
    def _check_acknowledged(self, session: Session, now: float) -> None:
        # Whatever was acknowledged, each claim waits for its guard, no longer.
        self._decide_earlier(session, session.claimed_at + self.settings.guard)
