"""Command line of the cluster simulator.

    python -m tools.sim run --schedules 2000            # all faults, the project's rule
    python -m tools.sim run --schedules 2000 --policy first-seen
    python -m tools.sim run --schedules 500 --faults slow_member --policy fixed-guard
    python -m tools.sim replay --seed 1234 [--trace]    # one schedule, its trace hash
    python -m tools.sim conflicts                       # conflicts per million vs loss
    python -m tools.sim shares                          # weights 1:2:4, no faults
    python -m tools.sim run --size small --schedules 1000000 --workers 2   # long mode

Every failure prints its seed; `replay --seed S` runs that schedule again and
prints the same trace hash.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tools.sim.cluster import RunResult, run_schedule
from tools.sim.scenario import FAULT_KINDS, draw_scenario, loss_scenario, shares_scenario

FIGURES = Path(__file__).resolve().parent.parent / "figures"
# rendezvous: the project's rule; first-seen: the original clusterd rule;
# fixed-guard: the project's rule before acknowledgements (tools/sim/fixed_guard.py).
POLICIES = ("rendezvous", "first-seen", "fixed-guard")


def schedule(arguments: tuple[int, str, tuple[str, ...], str]) -> RunResult:
    seed, policy, faults, size = arguments
    return run_schedule(draw_scenario(seed, faults=faults, size=size), policy=policy)


def run_many(
    seeds: Iterable[int],
    *,
    policy: str = "rendezvous",
    faults: tuple[str, ...] = FAULT_KINDS,
    size: str = "normal",
    workers: int = 1,
) -> Iterator[RunResult]:
    jobs = ((seed, policy, faults, size) for seed in seeds)
    if workers <= 1:
        yield from map(schedule, jobs)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(schedule, jobs, chunksize=64)


def replay_hint(seed: int, policy: str, *, faults: str = "all", size: str = "normal") -> str:
    """The command that reruns one schedule exactly: seed, policy, faults and size."""
    options = [f"--seed {seed}", f"--policy {policy}"]
    if faults != "all":
        options.append(f"--faults {faults}")
    if size != "normal":
        options.append(f"--size {size}")
    return "python -m tools.sim replay " + " ".join(options)


def parse_faults(text: str) -> tuple[str, ...]:
    if text == "all":
        return FAULT_KINDS
    if text == "none":
        return ()
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise SystemExit(f"unknown fault {unknown[0]!r}; choose from: {', '.join(FAULT_KINDS)}")
    return kinds


def command_run(arguments: argparse.Namespace) -> int:
    faults = parse_faults(arguments.faults)
    started = time.perf_counter()
    failed = sessions = conflicts = events = 0
    first_failures: list[RunResult] = []
    seeds = range(arguments.seed, arguments.seed + arguments.schedules)
    for count, result in enumerate(
        run_many(
            seeds,
            policy=arguments.policy,
            faults=faults,
            size=arguments.size,
            workers=arguments.workers,
        ),
        start=1,
    ):
        sessions += result.sessions
        conflicts += result.conflicts
        events += result.events
        if result.violations:
            failed += 1
            if len(first_failures) < 5:
                first_failures.append(result)
            if not arguments.quiet:
                print(
                    f"seed {result.seed}: {len(result.violations)} violation(s); "
                    f"first: {result.violations[0]}"
                )
        if arguments.progress and count % arguments.progress == 0:
            elapsed = time.perf_counter() - started
            print(f"  {count} schedules, {count / elapsed:.0f}/s, {failed} failed", flush=True)
    elapsed = time.perf_counter() - started
    print(
        f"policy {arguments.policy}: {arguments.schedules} schedules (seeds {arguments.seed}.."
        f"{arguments.seed + arguments.schedules - 1}, faults: {arguments.faults}, size "
        f"{arguments.size}), {sessions} sessions, {events} events"
    )
    print(
        f"violations: {failed} schedule(s); conflicts (two owners at once): "
        f"{conflicts}; {arguments.schedules / elapsed:.1f} schedules/s on "
        f"{arguments.workers} worker(s)"
    )
    for result in first_failures:
        hint = replay_hint(result.seed, result.policy, faults=arguments.faults, size=arguments.size)
        print(f"  replay: {hint}")
    if arguments.figures:
        figures = {
            "command": (
                f"run --schedules {arguments.schedules} --seed {arguments.seed} --policy "
                f"{arguments.policy} --faults {arguments.faults} --size {arguments.size} "
                f"--workers {arguments.workers}"
            ),
            "policy": arguments.policy,
            "faults": arguments.faults,
            "size": arguments.size,
            "seeds": [arguments.seed, arguments.seed + arguments.schedules - 1],
            "schedules": arguments.schedules,
            "sessions": sessions,
            "events": events,
            "schedules_violating": failed,
            "conflicts": conflicts,
            "workers": arguments.workers,
            "schedules_per_second": round(arguments.schedules / elapsed, 1),
        }
        FIGURES.mkdir(exist_ok=True)
        path = FIGURES / f"sim-run-{arguments.policy}-{arguments.size}.json"
        path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {path.relative_to(FIGURES.parent.parent)}")
    return 1 if failed else 0


def command_replay(arguments: argparse.Namespace) -> int:
    scenario = draw_scenario(
        arguments.seed, faults=parse_faults(arguments.faults), size=arguments.size
    )
    result = run_schedule(scenario, policy=arguments.policy, trace=arguments.trace)
    print(
        f"seed {result.seed} ({result.policy}): {len(scenario.members)} members, "
        f"{result.sessions} sessions, faults {result.tags or 'none'}"
    )
    print(
        f"served {result.served}/{result.sessions}, conflicts {result.conflicts}, "
        f"claims {result.claims_sent}, messages lost {result.messages_lost}, events {result.events}"
    )
    for line in result.trace:
        print(line)
    for violation in result.violations:
        print(f"  {violation}")
    print(f"trace hash {result.trace_hash}")
    return 1 if result.violations else 0


def command_conflicts(arguments: argparse.Namespace) -> int:
    rows = []
    print(
        f"{'loss':>6} {'members':>8} {'sessions':>9} {'conflicts':>10} "
        f"{'per million':>12} {'violations':>11}"
    )
    for members in (3, 8):
        for loss in (0.0, 0.01, 0.05, 0.2):
            sessions = conflicts = violations = 0
            for seed in range(arguments.seed, arguments.seed + arguments.schedules):
                result = run_schedule(loss_scenario(seed, members, loss, arguments.sessions))
                sessions += result.sessions
                conflicts += result.conflicts
                violations += len(result.violations)
            per_million = conflicts / sessions * 1e6
            rows.append(
                {
                    "loss": loss,
                    "members": members,
                    "sessions": sessions,
                    "conflicts": conflicts,
                    "per_million": round(per_million),
                    "violations": violations,
                }
            )
            print(
                f"{loss:6.0%} {members:8} {sessions:9} {conflicts:10} "
                f"{per_million:12.0f} {violations:11}"
            )
    FIGURES.mkdir(exist_ok=True)
    (FIGURES / "conflicts.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(row["violations"] for row in rows) else 0


def command_shares(arguments: argparse.Namespace) -> int:
    weights = tuple(float(weight) for weight in arguments.weights.split(":"))
    result = run_schedule(shares_scenario(arguments.seed, weights, arguments.sessions))
    total = sum(result.owners.values())
    expected = [weight / sum(weights) for weight in weights]
    print(
        f"weights {arguments.weights}, {result.sessions} sessions, {total} served, "
        f"{result.conflicts} conflicts"
    )
    worst = 0.0
    for index, weight in enumerate(weights):
        share = result.owners.get(index, 0) / max(1, total)
        error = abs(share - expected[index]) / expected[index]
        worst = max(worst, error)
        print(
            f"  member {index} (weight {weight:g}): {share:6.1%} "
            f"(expected {expected[index]:6.1%}, off by {error:.1%})"
        )
    for violation in result.violations:
        print(f"  {violation}")
    return 1 if result.violations or worst > 0.10 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.sim", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run many seeded schedules and check every invariant")
    run.add_argument("--schedules", type=int, default=2000)
    run.add_argument("--seed", type=int, default=1, help="first seed (schedule i uses seed + i)")
    run.add_argument("--policy", choices=POLICIES, default="rendezvous")
    run.add_argument(
        "--faults", default="all", help=f"all, none, or a list of: {','.join(FAULT_KINDS)}"
    )
    run.add_argument("--size", choices=["normal", "small"], default="normal")
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--progress", type=int, default=0, help="print progress every N schedules")
    run.add_argument("--quiet", action="store_true", help="do not print each failing seed")
    run.add_argument(
        "--figures",
        action="store_true",
        help="write the totals to tools/figures/sim-run-POLICY-SIZE.json",
    )

    replay = commands.add_parser("replay", help="run one schedule again; print its trace hash")
    replay.add_argument("--seed", type=int, required=True)
    replay.add_argument("--policy", choices=POLICIES, default="rendezvous")
    replay.add_argument("--faults", default="all")
    replay.add_argument("--size", choices=["normal", "small"], default="normal")
    replay.add_argument("--trace", action="store_true", help="keep the event trace (slower)")

    conflicts = commands.add_parser("conflicts", help="conflicts per million sessions against loss")
    conflicts.add_argument("--schedules", type=int, default=20)
    conflicts.add_argument("--sessions", type=int, default=2500, help="sessions per schedule")
    conflicts.add_argument("--seed", type=int, default=1)

    shares = commands.add_parser("shares", help="session shares for weighted members, no faults")
    shares.add_argument("--weights", default="1:2:4")
    shares.add_argument("--sessions", type=int, default=10000)
    shares.add_argument("--seed", type=int, default=1)

    arguments = parser.parse_args(argv)
    handler = {
        "run": command_run,
        "replay": command_replay,
        "conflicts": command_conflicts,
        "shares": command_shares,
    }[arguments.command]
    return handler(arguments)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the output went into `head`, say: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
