"""Set elements per second: the ways the fast path could write its sessions.

    sudo .venv/bin/python -m tools.bench_kernel_elements [--elements 20000]

In a network namespace of its own (removed at the end), it loads the fast
path's table and adds, then removes, N owned-session elements with:

- `nfnetlink`: `KernelPath.add` and `remove_elements`, the appliance's own
  struct-built batches on a netlink socket: one element per batch, and every
  element in one batch (split at MAX_BATCH);
- `libnftables`: the library behind the `nft` command (and behind Debian's
  python3-nftables, which has no PyPI wheel), called through ctypes with
  text commands: one element per call, and every element in one call;
- `nft -f`: the command, once per element and once for all.

Prints elements per second (the median of --rounds) and writes
tools/figures/kernel-elements.json. Only ratios carry over between machines.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from appliance.dataplane.kernel_path import (
    OWNED,
    TABLE,
    KernelPath,
    PathTimeouts,
    nft,
    nft_key,
)
from protocols.session_key import SessionKey

FIGURES = Path(__file__).parent / "figures" / "kernel-elements.json"
CLUSTER = IPv4Address("10.77.0.10")


def sessions(count: int) -> list[SessionKey]:
    return [
        SessionKey(
            6,
            bytes([10, 77, (index >> 16) & 0xFF, 1 + index % 250]),
            1024 + index % 60000,
            CLUSTER.packed,
            80,
        )
        for index in range(count)
    ]


class Libnftables:
    """Text commands through libnftables.so.1, as python3-nftables does."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        self.library = ctypes.CDLL(name)
        self.library.nft_ctx_new.restype = ctypes.c_void_p
        self.library.nft_ctx_new.argtypes = [ctypes.c_uint32]
        self.library.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.library.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        self.library.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        self.context = self.library.nft_ctx_new(0)
        self.library.nft_ctx_buffer_output(self.context)
        self.library.nft_ctx_buffer_error(self.context)

    def run(self, command: str) -> None:
        if self.library.nft_run_cmd_from_buffer(self.context, command.encode()):
            raise RuntimeError(f"libnftables refused: {command[:80]}")


def element_text(keys: list[SessionKey]) -> str:
    listed = ", ".join(f"{nft_key(key)} timeout 10000ms" for key in keys)
    return f"add element bridge {TABLE} {OWNED} {{ {listed} }}"


def removal_text(keys: list[SessionKey]) -> str:
    listed = ", ".join(nft_key(key) for key in keys)
    return f"delete element bridge {TABLE} {OWNED} {{ {listed} }}"


def timed(work: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def measure(path: KernelPath, keys: list[SessionKey], cli_count: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    library = Libnftables()
    few = keys[:cli_count]

    def each(
        action: Callable[[SessionKey], object], chosen: list[SessionKey]
    ) -> Callable[[], None]:
        def run() -> None:
            for key in chosen:
                action(key)

        return run

    figures["nfnetlink_single_add"] = timed(
        each(lambda key: path.add(OWNED, [key]), keys), len(keys)
    )
    figures["nfnetlink_single_remove"] = timed(
        each(lambda key: path.remove_elements(OWNED, [key]), keys), len(keys)
    )
    figures["nfnetlink_batch_add"] = timed(lambda: path.add(OWNED, keys), len(keys))
    figures["nfnetlink_batch_remove"] = timed(lambda: path.remove_elements(OWNED, keys), len(keys))
    figures["libnftables_single_add"] = timed(
        each(lambda key: library.run(element_text([key])), keys), len(keys)
    )
    library.run(removal_text(keys))
    figures["libnftables_batch_add"] = timed(lambda: library.run(element_text(keys)), len(keys))
    library.run(removal_text(keys))
    figures["nft_command_single_add"] = timed(
        each(lambda key: nft(element_text([key]) + "\n"), few), len(few)
    )
    nft(removal_text(few) + "\n")
    figures["nft_command_batch_add"] = timed(lambda: nft(element_text(keys) + "\n"), len(keys))
    nft(removal_text(keys) + "\n")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if not arguments.inside:
        if os.geteuid() != 0:
            raise SystemExit("tools.bench_kernel_elements: run as root (it makes a namespace)")
        namespace = f"apl-bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        try:
            command = [sys.executable, "-m", "tools.bench_kernel_elements", "--inside"]
            command += ["--elements", str(arguments.elements), "--rounds", str(arguments.rounds)]
            subprocess.run(["ip", "netns", "exec", namespace, *command], check=True)
        finally:
            subprocess.run(["ip", "netns", "del", namespace], check=False)
        return
    path = KernelPath(
        cluster_ip=CLUSTER,
        cluster_mac="02:00:5e:01:02:03",
        bridge_mac="02:11:22:33:44:55",
        size=4 * arguments.elements,
        timeouts=PathTimeouts(handshake=10.0, tcp_idle=3600.0, udp_idle=30.0),
    )
    path.load()
    keys = sessions(arguments.elements)
    rounds = [measure(path, keys, min(500, arguments.elements)) for _ in range(arguments.rounds)]
    path.remove()
    medians = {key: statistics.median(one[key] for one in rounds) for key in rounds[0]}
    spread = {
        key: [min(one[key] for one in rounds), max(one[key] for one in rounds)] for key in rounds[0]
    }
    print(f"elements per second, median of {arguments.rounds} rounds of {arguments.elements}:")
    for key, value in medians.items():
        low, high = spread[key]
        print(f"  {key:28} {value:12,.0f}   ({low:,.0f} to {high:,.0f})")
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(
        json.dumps(
            {
                "elements": arguments.elements,
                "rounds": rounds,
                "medians": medians,
                "spread": spread,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
