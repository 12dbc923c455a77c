"""A session's lifecycle on one member, as data: phase x event -> phase.

Every change of a session's phase goes through `next_phase`, and the table
below is the whole of it, as h11 keeps its connection states in one table.
What does not fit a table stays code in the claim machine: which bid is
higher (score, then member id), when a claim is decided (rule 3 of
docs/claim-rule.md) and when an acknowledgement counts (protocols.peers).

A session is created in WAITING (this member may claim it) or FOREIGN (it
may not, or a claim or assertion for it was heard first), or in OWNED when
the claim machine re-learns a session its kernel kept serving while no
daemon ran (`ClaimMachine.adopt`), and is forgotten
from any phase (idle or FIN timeout, a client's RST while claiming, eviction
from a full table, its owner gone): forgetting is removal from the table, not
a phase.
"""

from __future__ import annotations

from enum import Enum

from protocols.errors import LocalProtocolError


class Phase(Enum):
    WAITING = "waiting"  # a backup's claim waits for its turn; packets queued
    CLAIMING = "claiming"  # this member's claim is out; packets queued until decided
    OWNED = "owned"  # this member serves it: packets go to the local kernel
    FOREIGN = "foreign"  # another member serves it (or none may): packets dropped
    OWNED_CLOSING = "owned, closing"  # served here; the client sent FIN or RST
    FOREIGN_CLOSING = "foreign, closing"  # served elsewhere; the client sent FIN or RST

    # Enum's own __hash__ is Python code that hashes the name; members are
    # singletons, so identity will do, at C speed.
    __hash__ = object.__hash__


class Event(Enum):
    TURN = "turn"  # this member's claim delay ran out and it may still claim: it claims
    DECLINE = "decline"  # at its turn it may no longer claim (draining, port closed)
    WIN = "win"  # the claim is decided and no higher bid or assertion was heard
    LOSE = "lose"  # a higher bid or an assertion was heard (before or after claiming)
    CLIENT_CLOSE = "client close"  # the client sent FIN or RST
    YIELD = "yield"  # another owner asserted it with a higher bid: a conflict, resolved

    __hash__ = object.__hash__


TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    Phase.WAITING: {
        Event.TURN: Phase.CLAIMING,
        Event.DECLINE: Phase.FOREIGN,
        Event.LOSE: Phase.FOREIGN,  # someone claimed first: stay silent
    },
    Phase.CLAIMING: {
        Event.WIN: Phase.OWNED,
        Event.LOSE: Phase.FOREIGN,
    },
    Phase.OWNED: {
        Event.CLIENT_CLOSE: Phase.OWNED_CLOSING,
        Event.YIELD: Phase.FOREIGN,
    },
    Phase.FOREIGN: {
        Event.CLIENT_CLOSE: Phase.FOREIGN_CLOSING,
    },
    Phase.OWNED_CLOSING: {
        Event.YIELD: Phase.FOREIGN_CLOSING,
    },
    Phase.FOREIGN_CLOSING: {},
}

# The phases in which this member injects the session's packets.
SERVED_HERE = frozenset({Phase.OWNED, Phase.OWNED_CLOSING})
# The phases that hold queued packets while a claim is decided.
UNDECIDED = frozenset({Phase.WAITING, Phase.CLAIMING})
CLOSING_PHASES = frozenset({Phase.OWNED_CLOSING, Phase.FOREIGN_CLOSING})


def next_phase(phase: Phase, event: Event) -> Phase:
    """The phase after `event`; an event the table does not allow is our bug."""
    try:
        return TRANSITIONS[phase][event]
    except KeyError:
        raise LocalProtocolError(f"no transition from {phase.value} on {event.value}") from None
