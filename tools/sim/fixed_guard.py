"""The project's own rule before acknowledgements, for comparison.

Until acknowledgements, every claim was decided `guard` (2 ms) after it left,
whoever had answered: safe only while every member handled every claim within
that time. A busy member does not (the lab's DNS test served one query twice
on a loaded 2-core CI machine), and `--faults slow_member` catches this rule
where the current one holds. It plugs into the real `ClaimMachine` through
its public `DecisionRule` hook.
"""

from __future__ import annotations

from protocols.claim_machine import ClaimSettings


class FixedGuardRule:
    """Whatever was acknowledged, each claim waits for its guard, no longer."""

    def decision_time(
        self, claimed_at: float, acknowledged_by_all: bool, now: float, settings: ClaimSettings
    ) -> float | None:
        return claimed_at + settings.guard


FIXED_GUARD = FixedGuardRule()
