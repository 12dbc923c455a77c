"""Weighted rendezvous scores: who should serve a session.

Every member scores every session with `weight / -ln(u)`, where `u` in (0, 1)
is a hash of the session and the member. The highest score wins. For any set of
members the winner is member i with probability weight_i / sum(weights)
(Schindelhauer and Schomaker's weighted rendezvous hashing), and adding or
removing a member only moves the sessions that member wins or would win.

Scores are exact float64 values carried in claims, so members compare the same
numbers whatever their platform; only the ranking used for claim delays is
computed locally from the weights peers announce.
"""

from __future__ import annotations

import hashlib
import math
import struct

from protocols.session_key import SessionKey

_KEY = struct.Struct("!BHH")
_MEMBER = struct.Struct("!Q")
_TWO_53 = float(2**53)


def session_digest_input(key: SessionKey) -> bytes:
    """The bytes of a session key that the score hashes."""
    return (
        _KEY.pack(key.transport, key.client_port, key.cluster_port)
        + key.client_address
        + key.cluster_address
    )


def rendezvous_score(session_bytes: bytes, member_id: int, weight: float) -> float:
    """The score of one member for one session (see session_digest_input)."""
    if weight <= 0:
        return 0.0
    digest = hashlib.blake2b(session_bytes + _MEMBER.pack(member_id), digest_size=8).digest()
    # 53 bits fit a double exactly, so `unit` is strictly inside (0, 1) and the
    # logarithm is never 0 (with 64 bits, the largest digests round to 1.0).
    unit = ((int.from_bytes(digest, "big") >> 11) + 0.5) / _TWO_53
    return weight / -math.log(unit)


def effective_weight(weight: float, load: float) -> float:
    """A member's configured weight, scaled down as its load rises.

    `load` is 0 when idle and about 1 when every CPU is busy (load average per
    CPU); a member at load 1 takes about half the sessions it would take idle.
    """
    return weight / (1.0 + max(0.0, load))
