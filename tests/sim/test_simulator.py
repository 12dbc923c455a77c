"""The claim protocol, proven by the deterministic cluster simulator.

Each test states the property it checks. A failing schedule prints its seed;
`python -m tools.sim replay --seed S` reruns it with the same trace hash.
"""

import os

from protocols.claim_machine import ClaimSettings
from tools.sim.__main__ import run_many
from tools.sim.cluster import run_schedule
from tools.sim.scenario import draw_scenario, loss_scenario, shares_scenario

CI_SCHEDULES = int(os.environ.get("SIM_SCHEDULES", "2000"))


def _failures(results: list) -> list[str]:  # type: ignore[type-arg]
    return [
        f"seed {result.seed}: {result.violations[0]} "
        f"(replay: python -m tools.sim replay --seed {result.seed} --policy {result.policy})"
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


def test_a_guard_shorter_than_the_network_delay_is_caught() -> None:
    """The checker catches the project's own machine when misconfigured."""
    settings = ClaimSettings(guard=0.00002, claim_step=0.0)
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


def test_conflicts_grow_with_loss_and_stay_resolved() -> None:
    lossy = [run_schedule(loss_scenario(seed, 3, 0.2, 1000)) for seed in range(1, 3)]
    assert sum(result.conflicts for result in lossy) > 0
    assert not _failures(lossy)


def test_weights_1_2_4_share_sessions_1_2_4() -> None:
    result = run_schedule(shares_scenario(1, (1.0, 2.0, 4.0), 10_000))
    assert not result.violations and result.conflicts == 0
    total = sum(result.owners.values())
    assert total == 10_000
    for index, weight in enumerate((1.0, 2.0, 4.0)):
        expected = weight / 7.0
        share = result.owners[index] / total
        assert abs(share - expected) / expected < 0.10, (index, share, expected)
