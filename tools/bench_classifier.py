"""Microseconds per frame: the fast classifier beside construct, on the fixture frames.

    .venv/bin/python -m tools.bench_classifier [--rounds N]

Prints a table and writes tools/figures/classifier.json. "construct" is a full
dissection through the declarations (protocols.wire.stack.parse_stack), which
is what the data plane would cost without the fast classifier.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from pathlib import Path

from protocols.classifier import Classifier
from protocols.wire.stack import parse_stack
from tests.fixtures.frames import CLUSTER_IP, CLUSTER_IP6, all_fixture_frames

FIGURES = Path(__file__).parent / "figures" / "classifier.json"


def microseconds(function: object, frame: bytes, rounds: int) -> float:
    """The best of many short timings: a shared VM's noise only ever adds time."""
    timer = timeit.Timer(lambda: function(frame))  # type: ignore[operator]
    chunk = max(1, rounds // 20)
    best = min(timer.repeat(repeat=20, number=chunk))
    return best / chunk * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=20_000, help="calls per timing (default 20000)"
    )
    arguments = parser.parse_args()
    classifier = Classifier([CLUSTER_IP.packed, CLUSTER_IP6.packed])
    rows = []
    print(f"{'frame':28} {'classifier µs':>14} {'construct µs':>13} {'ratio':>7}")
    for name, frame in sorted(all_fixture_frames().items()):
        fast = microseconds(classifier.classify, frame, arguments.rounds)
        slow = microseconds(parse_stack, frame, max(1, arguments.rounds // 50))
        rows.append(
            {"frame": name, "classifier_us": round(fast, 3), "construct_us": round(slow, 1)}
        )
        print(f"{name:28} {fast:14.2f} {slow:13.1f} {slow / fast:6.0f}x")
    mean_fast = sum(row["classifier_us"] for row in rows) / len(rows)  # type: ignore[misc]
    mean_slow = sum(row["construct_us"] for row in rows) / len(rows)  # type: ignore[misc]
    worst = max(row["classifier_us"] for row in rows)  # type: ignore[type-var]
    print(f"{'mean':28} {mean_fast:14.2f} {mean_slow:13.1f} {mean_slow / mean_fast:6.0f}x")
    print(f"worst classifier frame: {worst:.2f} µs")
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "mean_classifier_us": round(mean_fast, 3),
                "mean_construct_us": round(mean_slow, 1),
                "worst_classifier_us": worst,
                "frames": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
