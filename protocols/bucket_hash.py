"""Which bucket a session falls in: the kernel's `jhash`, computed in Python.

The fast path cuts the session space into buckets and lets each member's
kernel serve the buckets it holds (see protocols.buckets). The kernel computes
a session's bucket with the nftables expression

    jhash ip saddr . th sport mod BUCKETS seed SEED

which is Linux's `jhash()` (Bob Jenkins' lookup3, include/linux/jhash.h) over
the concatenation's registers, scaled to the bucket count with
`reciprocal_scale` (a multiply and a shift, not a remainder). The claim
machine must agree with it bit for bit for a session its kernel passed up, so
this module does the same arithmetic on the same bytes: the client address,
then the client port in a register of its own (two bytes and two zero bytes of
padding). A lab test checks it against the kernel's own verdicts.
"""

from __future__ import annotations

import hashlib

_MASK = 0xFFFFFFFF
_JHASH_INITVAL = 0xDEADBEEF


def _rol(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def jhash(data: bytes, seed: int) -> int:
    """Linux's jhash(data, len(data), seed), words read little-endian as on x86."""
    length = len(data)
    a = b = c = (_JHASH_INITVAL + length + seed) & _MASK
    offset = 0
    while length > 12:
        a = (a + int.from_bytes(data[offset : offset + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[offset + 4 : offset + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[offset + 8 : offset + 12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        length -= 12
        offset += 12
    if length == 0:
        return c
    tail = data[offset:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    return _final(a, b, c)


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _MASK) ^ _rol(c, 4)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rol(a, 6)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rol(b, 8)
    b = (b + a) & _MASK
    a = ((a - c) & _MASK) ^ _rol(c, 16)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rol(a, 19)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rol(b, 4)
    b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol(b, 14)) & _MASK
    a ^= c
    a = (a - _rol(c, 11)) & _MASK
    b ^= a
    b = (b - _rol(a, 25)) & _MASK
    c ^= b
    c = (c - _rol(b, 16)) & _MASK
    a ^= c
    a = (a - _rol(c, 4)) & _MASK
    b ^= a
    b = (b - _rol(a, 14)) & _MASK
    c ^= b
    c = (c - _rol(b, 24)) & _MASK
    return c


def bucket_key(client_address: bytes, client_port: int) -> bytes:
    """The registers `ip saddr . th sport` fill: the address, then the port padded to 32 bits."""
    return client_address + client_port.to_bytes(2, "big") + b"\0\0"


def bucket_of(client_address: bytes, client_port: int, buckets: int, seed: int) -> int:
    """The bucket the kernel puts this client address and port in."""
    hashed = jhash(bucket_key(client_address, client_port), seed)
    return (hashed * buckets) >> 32  # the kernel's reciprocal_scale


def cluster_seed(cluster_address: bytes, key: bytes | None = None) -> int:
    """The jhash seed every member of one cluster uses: from the cluster
    address and, when one is set, the claim key (so that someone without the
    key cannot tell which client ports land on which member)."""
    digest = hashlib.blake2b(cluster_address, key=key or b"", digest_size=4).digest()
    return int.from_bytes(digest, "big")
