"""The demo's clients: HTTP and DNS at a steady rate, one JSON line per request.

    python -m lab.loadgen --cluster-ip 10.77.0.10 --duration 20

Run inside the client namespace. Every HTTP request uses a new TCP connection
and every DNS query a UDP source port not used before in the run, so each is a
new session for the cluster (the kernel's random choice would repeat ports
within minutes, and a repeated port is the same UDP flow, served by its owner
without a new claim). A request that fails is retried once on a new session, as real
clients do; only a request whose retry also fails counts as lost.
"""

from __future__ import annotations

import argparse
import errno
import json
import secrets
import socket
import struct
import sys
import time

import trio

CONNECT_TIMEOUT = 2.9  # one SYN retransmission (after 1 s) fits, a second (after 3 s) does not
REQUEST_TIMEOUT = 3.0
DNS_TIMEOUT = 1.0
DNS_NAME = "whoami.cluster"


def dns_query(query_id: int, name: str = DNS_NAME) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x10\x00\x01"


def txt_answer(response: bytes, query_id: int) -> str | None:
    """The first TXT string of a response to `query_id`, if it is one."""
    if len(response) < 12 or struct.unpack_from("!H", response)[0] != query_id:
        return None
    marker = response.rfind(b"\x00\x10\x00\x01")  # the answer's TYPE TXT, CLASS IN
    if marker < 0 or marker + 11 > len(response):
        return None
    length = response[marker + 10]
    text = response[marker + 11 : marker + 11 + length]
    return text.decode(errors="replace") or None


async def http_once(cluster_ip: str, path: str) -> str:
    with trio.fail_after(CONNECT_TIMEOUT):
        stream = await trio.open_tcp_stream(cluster_ip, 80)
    async with stream:
        with trio.fail_after(REQUEST_TIMEOUT):
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: cluster\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"answer {head[:40]!r}")
    return body.decode(errors="replace").strip()


class SourcePorts:
    """UDP source ports in turn from a random start, each once per lap of the range."""

    FIRST, LAST = 20000, 59999

    def __init__(self) -> None:
        self._next = self.FIRST + secrets.randbelow(self.LAST - self.FIRST + 1)

    def take(self) -> int:
        port = self._next
        self._next = self.FIRST if port == self.LAST else port + 1
        return port


async def bind_unused(sock: trio.socket.SocketType, ports: SourcePorts) -> None:
    for _ in range(100):
        try:
            await sock.bind(("0.0.0.0", ports.take()))
            return
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no free UDP source port")


async def dns_once(cluster_ip: str, ports: SourcePorts) -> str:
    query_id = secrets.randbelow(65536)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await bind_unused(sock, ports)  # a new source port: a new flow
        await sock.sendto(dns_query(query_id), (cluster_ip, 53))
        with trio.fail_after(DNS_TIMEOUT):
            while True:
                response = await sock.recv(2048)
                answer = txt_answer(response, query_id)
                if answer is not None:
                    return answer


async def one_request(
    kind: str, number: int, cluster_ip: str, run: str, ports: SourcePorts
) -> None:
    started = time.monotonic()
    errors = []
    for attempt in range(2):
        try:
            if kind == "http":
                member = await http_once(cluster_ip, f"/demo-{run}-{number}-{attempt}")
            else:
                member = await dns_once(cluster_ip, ports)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as error:
            errors.append(
                type(error).__name__ if isinstance(error, trio.TooSlowError) else str(error)
            )
            continue
        emit(kind, number, started, ok=True, member=member, retries=attempt, errors=errors)
        return
    emit(kind, number, started, ok=False, member=None, retries=1, errors=errors)


def emit(
    kind: str,
    number: int,
    started: float,
    *,
    ok: bool,
    member: str | None,
    retries: int,
    errors: list[str],
) -> None:
    line = {
        "kind": kind,
        "number": number,
        "started": round(started, 4),
        "latency": round(time.monotonic() - started, 4),
        "ok": ok,
        "member": member,
        "retries": retries,
        "errors": errors,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def generate(cluster_ip: str, duration: float, http_rate: float, dns_rate: float) -> None:
    run = secrets.token_hex(4)
    ports = SourcePorts()
    deadline = time.monotonic() + duration

    async def ticker(kind: str, rate: float, nursery: trio.Nursery) -> None:
        number = 0
        while time.monotonic() < deadline:
            nursery.start_soon(one_request, kind, number, cluster_ip, run, ports)
            number += 1
            await trio.sleep(1.0 / rate)

    async with trio.open_nursery() as nursery:
        if http_rate > 0:
            nursery.start_soon(ticker, "http", http_rate, nursery)
        if dns_rate > 0:
            nursery.start_soon(ticker, "dns", dns_rate, nursery)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster-ip", required=True)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--http-rate", type=float, default=30.0, help="requests per second")
    parser.add_argument("--dns-rate", type=float, default=20.0, help="queries per second")
    arguments = parser.parse_args()
    try:
        trio.run(
            generate,
            arguments.cluster_ip,
            arguments.duration,
            arguments.http_rate,
            arguments.dns_rate,
        )
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
