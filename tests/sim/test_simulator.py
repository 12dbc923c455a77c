"""The claim protocol, proven by the deterministic cluster simulator.

Each test states the property it checks. A failing schedule prints its seed;
`python -m tools.sim replay --seed S` reruns it with the same trace hash.
"""

import os

import pytest

from protocols.claim_machine import ClaimMachine, ClaimSettings
from tools.sim.__main__ import replay_hint, run_many
from tools.sim.cluster import RunResult, run_schedule
from tools.sim.scenario import LIVENESS_BOUND, draw_scenario, loss_scenario, shares_scenario

CI_SCHEDULES = int(os.environ.get("SIM_SCHEDULES", "2000"))


def _failures(results: list[RunResult]) -> list[str]:
    return [
        f"seed {result.seed}: {result.violations[0]} "
        f"(replay: {replay_hint(result.seed, result.policy)})"
        for result in results
        if result.violations
    ]


def test_the_rule_holds_under_every_fault() -> None:
    """Safety, liveness, stability, bounds and late joins over 2,000 faulty schedules."""
    results = list(run_many(range(1, CI_SCHEDULES + 1), workers=2))
    assert len(results) == CI_SCHEDULES
    assert sum(result.sessions for result in results) > 40 * CI_SCHEDULES
    assert not _failures(results)
    # The faults really happened: conflicts after lost claims were seen and resolved.
    assert sum(result.conflicts for result in results) > 0
    assert sum(result.messages_lost for result in results) > 0


def test_the_original_first_seen_rule_is_caught() -> None:
    """The checker has teeth: "first claim seen wins" elects two winners under reordering."""
    results = list(run_many(range(1, 101), policy="first-seen", faults=()))
    failures = [result for result in results if result.violations]
    assert len(failures) > 50
    invariants = {violation.invariant for result in failures for violation in result.violations}
    assert "safety" in invariants


def test_a_slow_member_breaks_the_fixed_guard_but_not_acknowledgements() -> None:
    """A member whose traffic runs 5 to 45 ms late (a starved CPU): the rule
    before acknowledgements serves sessions twice; the current one never does."""
    seeds = range(1, 151)
    old = list(run_many(seeds, policy="fixed-guard", faults=("slow_member",), workers=2))
    assert any(violation.invariant == "safety" for result in old for violation in result.violations)
    current = list(run_many(seeds, faults=("slow_member",), workers=2))
    assert not _failures(current)
    assert sum(result.conflicts for result in current) == 0


def test_timeouts_shorter_than_the_network_delay_are_caught() -> None:
    """The checker catches the project's own machine when misconfigured: claims
    decided before anyone could have answered."""
    settings = ClaimSettings(guard=0.00002, ack_timeout=0.00002, claim_step=0.0)
    results = [
        run_schedule(draw_scenario(seed, faults=()), settings=settings) for seed in range(1, 40)
    ]
    assert any(
        violation.invariant == "safety" for result in results for violation in result.violations
    )


def test_the_same_seed_replays_the_same_trace() -> None:
    first = run_schedule(draw_scenario(1234))
    second = run_schedule(draw_scenario(1234))
    other = run_schedule(draw_scenario(1235))
    assert first.trace_hash == second.trace_hash
    assert first.events == second.events and first.violations == second.violations
    assert other.trace_hash != first.trace_hash


def test_no_loss_means_no_conflicts() -> None:
    for members in (3, 8):
        for seed in range(1, 4):
            result = run_schedule(loss_scenario(seed, members, 0.0, 1000))
            assert result.served == result.sessions
            assert result.conflicts == 0
            assert not result.violations


def test_conflicts_grow_with_loss() -> None:
    """Conflicts come from lost claims, so more loss makes more of them. (That
    each one ends in time is checked by the faulty schedules above, whose
    sessions outlive the resolution bound.)"""
    light, heavy = (
        [run_schedule(loss_scenario(seed, 3, loss, 1000)) for seed in range(1, 3)]
        for loss in (0.01, 0.2)
    )
    assert sum(result.conflicts for result in heavy) > 2 * sum(result.conflicts for result in light)
    assert not _failures(light + heavy)


def test_every_session_is_checked_for_liveness() -> None:
    """Sessions start early enough that their liveness deadline falls in the run."""
    grace = ClaimSettings().join_grace
    for seed in range(1, 200):
        scenario = draw_scenario(seed)
        latest = max(plan.start for plan in scenario.sessions)
        assert latest + LIVENESS_BOUND + grace <= scenario.end_time
        assert latest > scenario.heal_time  # and some start after the faults healed


def test_a_member_claiming_while_draining_or_not_listening_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checker catches a machine that ignores draining and the listening ports."""
    monkeypatch.setattr(
        ClaimMachine,
        "_may_claim",
        lambda self, key, now: key.transport == 6 or self._may_claim_flows(now),
    )
    results = [
        run_schedule(draw_scenario(seed, faults=("drain", "service_down"))) for seed in range(1, 60)
    ]
    assert any(
        violation.invariant == "silence" for result in results for violation in result.violations
    )


def test_weights_1_2_4_share_sessions_1_2_4() -> None:
    result = run_schedule(shares_scenario(1, (1.0, 2.0, 4.0), 10_000))
    assert not result.violations and result.conflicts == 0
    total = sum(result.owners.values())
    assert total == 10_000
    for index, weight in enumerate((1.0, 2.0, 4.0)):
        expected = weight / 7.0
        share = result.owners[index] / total
        assert abs(share - expected) / expected < 0.10, (index, share, expected)
