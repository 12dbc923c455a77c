"""`appliance-ctl`: the command line of the appliance.

Errors a user can cause end as one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from appliance import __version__

DESCRIPTION = """\
Share one cluster IP address between Linux hosts on one Ethernet segment,
with no load balancer in front. Run the appliance on every host: each new TCP
or UDP session to the cluster address is served by exactly one member.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance-ctl",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        sys.exit(2)
