"""`appliance-ctl demo`: the whole appliance on one machine, in network namespaces.

It builds a lab segment, starts nginx, dnsmasq and the appliance in every
member, drives HTTP and DNS clients (lab.loadgen, in the client
namespace), shows a live view, kills one member's appliance part-way with
SIGKILL, and prints a summary. It exits 0 only if every request was answered,
at worst after one retry. The lab is removed on success, failure and Ctrl-C.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from appliance.errors import UserError
from appliance.operations.status import StatusReport
from lab.members import LabMember, start_member
from lab.namespaces import Lab, build_lab, require_root
from protocols.claim_machine import ClaimSettings

KILL_AT = 0.4  # of the run
LEASE_MARGIN = 0.25  # seconds: a request already on its way when the lease ended
STATUS_INTERVAL = 1.0


@dataclass
class DemoState:
    started: float
    duration: float
    results: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, StatusReport] = field(default_factory=dict)
    killed: str | None = None
    killed_at: float | None = None
    events: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, text: str) -> None:
        with self.lock:
            self.events.append(f"{time.monotonic() - self.started:5.1f}s  {text}")


def run_demo(
    *, members: int = 3, duration: float = 20.0, kill: bool = True, live: bool = True
) -> int:
    require_root()
    if not 1 <= members <= 8:
        raise UserError(f"--members {members}: the demo runs 1 to 8 members")
    if not 5 <= duration <= 3600:
        raise UserError(f"--duration {duration:g}: give 5 to 3600 seconds")
    if kill and members < 2:
        raise UserError("killing a member needs at least 2 members (or use --no-kill)")
    console = Console()
    with build_lab(members=0, clients=1) as segment:
        console.print(
            f"[bold]lab[/] {segment.name}: switch, {members} members, 1 client, "
            f"cluster IP {segment.cluster_ip}"
        )
        cluster: list[LabMember] = []
        for _ in range(members):
            member = start_member(segment)
            cluster.append(member)
            console.print(f"  {member.name} ({member.node.address}): nginx, dnsmasq, appliance up")
        state = DemoState(started=time.monotonic(), duration=duration)
        return drive(segment, cluster, state, console, kill=kill, live=live)


def drive(
    segment: Lab,
    cluster: list[LabMember],
    state: DemoState,
    console: Console,
    *,
    kill: bool,
    live: bool,
) -> int:
    client = segment.clients[0]
    generator = client.popen(
        [
            sys.executable,
            "-m",
            "lab.loadgen",
            "--cluster-ip",
            str(segment.cluster_ip),
            "--duration",
            str(state.duration),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    reader = threading.Thread(target=read_results, args=(generator, state), daemon=True)
    reader.start()
    state.event("clients started: HTTP 30/s and DNS 20/s, each on a new session")
    victim = cluster[1] if kill else None
    next_status = 0.0
    display = Live(render(state, cluster), console=console, refresh_per_second=4) if live else None
    if display is not None:
        display.start()
    try:
        while generator.poll() is None:
            now = time.monotonic()
            if (
                victim is not None
                and state.killed is None
                and now - state.started >= KILL_AT * state.duration
            ):
                victim.appliance.kill()
                state.killed, state.killed_at = victim.name, now
                state.event(f"kill -9 of {victim.name}'s appliance")
            if now >= next_status:
                poll_statuses(cluster, state)
                next_status = now + STATUS_INTERVAL
                if display is None:
                    console.print(plain_line(state))
            if display is not None:
                display.update(render(state, cluster))
            time.sleep(0.25)
        reader.join(timeout=10)
        # The daemons read their kernel's counters of sessions served at once
        # every second: let them catch up with the last requests.
        time.sleep(1.5)
        poll_statuses(cluster, state)
        if display is not None:
            display.update(render(state, cluster))
    finally:
        if display is not None:
            display.stop()
        if generator.poll() is None:
            generator.kill()
    return summarize(state, cluster, console)


def read_results(generator: subprocess.Popen[bytes], state: DemoState) -> None:
    assert generator.stdout is not None
    for line in generator.stdout:
        try:
            result = json.loads(line)
        except ValueError:
            continue
        with state.lock:
            state.results.append(result)


def poll_statuses(cluster: list[LabMember], state: DemoState) -> None:
    for member in cluster:
        if member.name == state.killed:
            continue
        status = member.appliance.poll_status()
        if status is not None:
            state.statuses[member.name] = status


def counts(state: DemoState) -> tuple[Counter[str], int, int, int]:
    with state.lock:
        results = list(state.results)
    served: Counter[str] = Counter(result["member"] for result in results if result["ok"])
    lost = sum(not result["ok"] for result in results)
    retried = sum(result["ok"] and result["retries"] > 0 for result in results)
    return served, len(results), lost, retried


def render(state: DemoState, cluster: list[LabMember]) -> Group:
    served, total, lost, retried = counts(state)
    table = Table(title="appliance demo", expand=False)
    for column in ("member", "state", "served", "owned now", "sessions won", "conflicts"):
        table.add_column(column, justify="right" if column not in ("member", "state") else "left")
    for member in cluster:
        status = state.statuses.get(member.name)
        alive = member.name != state.killed
        draining = status is not None and status.draining
        label = "[red]killed[/]" if not alive else ("draining" if draining else "[green]serving[/]")
        table.add_row(
            member.name,
            label,
            str(served.get(member.name, 0)),
            str(status.sessions.owned) if alive and status is not None else "-",
            str(sessions_won(status)) if status is not None else "-",
            str(status.counters["conflicts"]) if status is not None else "-",
        )
    elapsed = time.monotonic() - state.started
    totals = Text(
        f"{elapsed:5.1f}s of {state.duration:g}s   requests {total}   answered {total - lost}   "
        f"retried {retried}   lost {lost}",
        style="bold red" if lost else "bold",
    )
    with state.lock:
        events = "\n".join(state.events[-6:])
    return Group(table, totals, Text(events, style="dim"))


def sessions_won(status: StatusReport) -> int:
    """Sessions a member's status says it took: claims won, and new sessions of
    its held buckets served at once (by its claim machine, or by its kernel,
    which counts the SYNs and first datagrams it handed to the local stack)."""
    buckets = status.buckets
    return (
        status.counters["claims_won"]
        + status.counters.get("served_at_once", 0)
        + buckets.get("kernel_new_tcp", 0)
        + buckets.get("kernel_new_udp", 0)
    )


def plain_line(state: DemoState) -> str:
    served, total, lost, retried = counts(state)
    members = ", ".join(f"{name} {count}" for name, count in sorted(served.items()))
    elapsed = time.monotonic() - state.started
    return f"{elapsed:5.1f}s requests {total} lost {lost} retried {retried} | {members}"


def summarize(state: DemoState, cluster: list[LabMember], console: Console) -> int:
    with state.lock:
        results = list(state.results)
    served, total, lost, retried = counts(state)
    by_kind = Counter(result["kind"] for result in results)
    console.print()
    console.print("[bold]summary[/]")
    console.print(f"  requests sent: {total} (HTTP {by_kind['http']}, DNS {by_kind['dns']})")
    unexplained = []
    # Each answered request is one session its member won. A failed attempt
    # may also have been won, by a member that then answered too late.
    failed_attempts = sum(len(result["errors"]) for result in results)
    for member in cluster:
        count = served.get(member.name, 0)
        if member.name == state.killed:
            console.print(f"  served by {member.name} (killed): {count}")
            continue
        status = state.statuses.get(member.name)
        won = None if status is None else sessions_won(status)
        console.print(
            f"  served by {member.name}: {count}, won {won} sessions per its status "
            "(claims won, and new sessions of its buckets served at once)"
        )
        if won is None or not count <= won <= count + failed_attempts:
            unexplained.append(f"{member.name} served {count} but won {won}")
    if unexplained:
        console.print(f"  [red]status differs from the clients: {'; '.join(unexplained)}[/]")
    else:
        console.print("  status counters match the clients")
    console.print(f"  answered after one retry: {retried}")
    console.print(f"  lost: {lost}", style="bold red" if lost else "bold green")
    if state.killed_at is not None:
        after = [result for result in results if result["started"] >= state.killed_at]
        window = [result for result in after if result["started"] < state.killed_at + 5.0]
        slowest = max((result["latency"] for result in window), default=0.0)
        console.print(
            f"  failover: {state.killed} killed at {state.killed_at - state.started:.1f}s; "
            f"{len(after)} requests after it, {sum(not r['ok'] for r in after)} lost; the slowest "
            f"request in the next 5s took {slowest:.2f}s (failover gap)"
        )
        assert state.killed is not None
        # Its kernel goes on serving new sessions of its buckets until their
        # lease (half of member_timeout) runs out, then never again.
        lease_over = state.killed_at + ClaimSettings().member_timeout / 2 + LEASE_MARGIN
        late = [result for result in after if result["started"] >= lease_over and result["ok"]]
        if any(result["member"] == state.killed for result in late):
            console.print(f"  [red]{state.killed} answered after its buckets' lease ran out[/]")
            return 1
    if lost:
        failures = [result for result in results if not result["ok"]][:3]
        console.print(f"  first failures: {failures}")
        return 1
    if total == 0:
        console.print("  [red]the clients sent nothing[/]")
        return 1
    if unexplained:
        return 1
    console.print("[bold green]every request was answered[/]")
    return 0
