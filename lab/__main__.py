"""The namespaced lab from the command line (the tests use it as a pytest fixture).

    sudo .venv/bin/python -m lab up --members 3        # build, wait for Ctrl-C, remove
    sudo .venv/bin/python -m lab up --members 3 --serve  # ... with nginx, dnsmasq, appliance
    sudo .venv/bin/python -m lab clean                 # remove labs left by killed runs

While it is up, run commands inside a host with `ip netns exec NAMESPACE ...`;
the namespaces are printed. Everything is removed on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from appliance.errors import UserError
from lab.members import start_member
from lab.namespaces import build_lab, remove_stale_labs, require_root


def command_up(arguments: argparse.Namespace) -> int:
    stop = threading.Event()

    def request_stop(number: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with build_lab(
        members=0 if arguments.serve else arguments.members, clients=arguments.clients
    ) as built:
        if arguments.serve:
            for _ in range(arguments.members):
                start_member(built)
        print(f"lab {built.name}: cluster IP {built.cluster_ip}, switch namespace {built.switch}")
        for node in built.nodes:
            print(f"  {node.name:4} {node.address:15} ip netns exec {node.namespace} bash")
        print("Ctrl-C removes it all.", flush=True)
        stop.wait()
    print("lab removed")
    return 0


def command_clean(arguments: argparse.Namespace) -> int:
    require_root()
    removed = remove_stale_labs()
    print(
        f"removed {len(removed)} namespace(s) of dead labs"
        + (": " + ", ".join(removed) if removed else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build a lab and keep it until Ctrl-C")
    up.add_argument("--members", type=int, default=3)
    up.add_argument("--clients", type=int, default=1)
    up.add_argument("--serve", action="store_true", help="start nginx, dnsmasq and the appliance")
    commands.add_parser("clean", help="remove labs whose creator is gone")
    arguments = parser.parse_args(argv)
    try:
        return {"up": command_up, "clean": command_clean}[arguments.command](arguments)
    except UserError as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
