"""The bounded session table of one member, with lazy timers.

It owns the records and the bookkeeping (counts by state, the timer heap,
eviction order) but no protocol rules: `protocols.claim_machine` decides what
happens to a session, and a session changes phase only through `move`, by the
table in `protocols.session_lifecycle`. Nothing here reads a clock; deadlines
are plain floats.

Timers are lazy: a session has at most one live entry in the heap (its
`timer_at`); entries whose deadline no longer matches are skipped when they
surface. Idle expiry is not rescheduled on every packet: when an expiry
surfaces, the machine recomputes it from `last_seen` and reschedules if the
session was active since.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterator
from enum import Enum
from typing import NamedTuple, Protocol

from protocols.session_key import SessionKey
from protocols.session_lifecycle import (
    CLOSING_PHASES,
    SERVED_HERE,
    UNDECIDED,
    Event,
    Phase,
    next_phase,
)


class SessionState(Enum):
    """A coarse view of the phase, for counts, status and eviction."""

    PENDING = "pending"  # a claim is being decided; packets wait in the queue
    OWNED = "owned"  # this member serves it: packets go to the local kernel
    FOREIGN = "foreign"  # another member serves it (or nobody yet): packets are dropped
    CLOSING = "closing"  # the client sent FIN or RST: kept for fin_timeout, then forgotten

    # Enum's own __hash__ is Python code that hashes the name; members are
    # singletons, so identity will do, at C speed (the table counts by state).
    __hash__ = object.__hash__


PENDING = SessionState.PENDING
OWNED = SessionState.OWNED
FOREIGN = SessionState.FOREIGN
CLOSING = SessionState.CLOSING

NO_MEMBER = -1

STATE_OF_PHASE = {
    phase: (
        PENDING
        if phase in UNDECIDED
        else CLOSING
        if phase in CLOSING_PHASES
        else OWNED
        if phase in SERVED_HERE
        else FOREIGN
    )
    for phase in Phase
}


class QueuedPacket(NamedTuple):
    packet: object  # what the shell handed in (a TAP frame); given back unchanged
    size: int


class HeardClaim(NamedTuple):
    """A rival's claim heard for a session already decided here."""

    member_id: int
    score: float
    at: float


class Session:
    """One session as this member sees it."""

    __slots__ = (
        "acknowledged_by",
        "answered_at",
        "best_asserted",
        "best_heard_at",
        "best_member",
        "best_score",
        "claim_at",
        "claim_counter",
        "claimed_at",
        "decide_at",
        "established",
        "key",
        "last_seen",
        "mine",
        "my_score",
        "next_assertion_at",
        "phase",
        "queue",
        "queued_bytes",
        "repeat_base",
        "repeat_index",
        "repeat_plan",
        "rival_claim",
        "started",
        "state",
        "syn_sequence",
        "timer_at",
        "won_at",
    )

    def __init__(self, key: SessionKey, phase: Phase, now: float) -> None:
        self.key = key
        # The phase is the truth; `state` and `mine` follow it (SessionTable.move
        # keeps them in step) because the per-packet path reads them.
        self.phase = phase
        self.state = STATE_OF_PHASE[phase]
        self.mine = phase in SERVED_HERE
        self.started = now
        self.last_seen = now
        # The best bid heard for it, (best_score, best_member): this member's
        # own once it won, else the best claim or assertion heard (NO_MEMBER
        # when none was); `best_asserted` once that bid was an assertion, that
        # is, an owner's and not only a claimer's.
        self.best_member = NO_MEMBER
        self.best_score = -1.0
        self.best_asserted = False
        self.best_heard_at = now
        # This member's own bid.
        self.my_score = 0.0
        self.claim_counter = 0  # the counter of this member's claim message
        self.claimed_at = 0.0
        self.acknowledged_by: set[int] | None = None  # who acknowledged our pending claim
        # The last claim heard for this key once it was decided: a claim for a
        # new connection on a reused port.
        self.rival_claim: HeardClaim | None = None
        self.claim_at: float | None = None  # WAITING: when this member's turn comes
        self.decide_at: float | None = None  # CLAIMING: when the claim is decided
        self.won_at: float | None = None
        # Repeated assertions: at repeat_base + each offset of repeat_plan.
        self.next_assertion_at: float | None = None
        self.repeat_base = 0.0
        self.repeat_plan: tuple[float, ...] = ()
        self.repeat_index = 0
        self.answered_at = -1.0  # when this member last answered a rival for it
        # TCP: the client's initial sequence number, and whether the client has
        # acknowledged (handshake done). UDP flows count as established at once.
        self.syn_sequence = 0
        self.established = False
        self.queue: deque[QueuedPacket] = deque()
        self.queued_bytes = 0
        self.timer_at: float | None = None

    @property
    def owner(self) -> int:
        """Who serves it as far as this member knows: itself once it won, else
        the best bid heard (NO_MEMBER if none)."""
        return self.best_member

    def __repr__(self) -> str:
        return f"<Session {self.key} {self.phase.value} best={self.best_member:x}>"


class TableListener(Protocol):
    """Told of every session that enters the table, changes phase or leaves it:
    how the shell keeps state outside the process (the kernel's sets) in step."""

    def entered(self, session: Session) -> None: ...

    def moved(self, session: Session, before: Phase) -> None: ...

    def left(self, session: Session) -> None: ...

    def asserted(self, session: Session) -> None:
        """An owner's assertion was heard for a session this member does not serve."""


class SessionTable:
    """Sessions by key, bounded, with a timer heap and counts by state."""

    def __init__(self, max_sessions: int, listener: TableListener | None = None) -> None:
        self.max_sessions = max_sessions
        self.listener = listener
        self._sessions: dict[SessionKey, Session] = {}
        self._timers: list[tuple[float, int, SessionKey]] = []
        self._serial = 0
        # Sessions not yet established, oldest first: the first to evict when
        # the table is full (a SYN flood fills exactly these).
        self._unestablished: OrderedDict[SessionKey, None] = OrderedDict()
        # Sessions other members serve, oldest first: the next to evict.
        self._foreign: OrderedDict[SessionKey, None] = OrderedDict()
        self.counts = dict.fromkeys(SessionState, 0)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, key: SessionKey) -> Session | None:
        return self._sessions.get(key)

    @property
    def is_full(self) -> bool:
        return len(self._sessions) >= self.max_sessions

    def add(self, session: Session) -> None:
        assert session.key not in self._sessions and not self.is_full
        self._sessions[session.key] = session
        self.counts[session.state] += 1
        if not session.established:
            self._unestablished[session.key] = None
        self.note_ownership(session)
        if self.listener is not None:
            self.listener.entered(session)

    def oldest_unestablished(self) -> Session | None:
        for key in self._unestablished:
            return self._sessions[key]
        return None

    def oldest_foreign(self) -> Session | None:
        for key in self._foreign:
            return self._sessions[key]
        return None

    def note_ownership(self, session: Session) -> None:
        """Keep the eviction order in step with `session.mine` and its state."""
        if session.mine or session.state is PENDING:
            self._foreign.pop(session.key, None)
        elif session.key not in self._foreign:
            self._foreign[session.key] = None

    def remove(self, session: Session) -> None:
        if self._sessions.pop(session.key, None) is session:
            self.counts[session.state] -= 1
            self._unestablished.pop(session.key, None)
            self._foreign.pop(session.key, None)
            session.timer_at = None
            self._bound_timers()
            if self.listener is not None:
                self.listener.left(session)

    def move(self, session: Session, event: Event) -> None:
        """Change the session's phase by the lifecycle table; counts and
        eviction order follow."""
        before = session.phase
        phase = next_phase(before, event)
        self.counts[session.state] -= 1
        session.phase = phase
        session.state = STATE_OF_PHASE[phase]
        session.mine = phase in SERVED_HERE
        self.counts[session.state] += 1
        self.note_ownership(session)
        if self.listener is not None:
            self.listener.moved(session, before)

    def note_asserted(self, session: Session) -> None:
        if self.listener is not None:
            self.listener.asserted(session)

    def mark_established(self, session: Session) -> None:
        session.established = True
        self._unestablished.pop(session.key, None)

    def schedule(self, session: Session, at: float) -> None:
        """Wake `session` at `at`, unless it is already due to wake earlier."""
        if session.timer_at is not None and session.timer_at <= at:
            return
        session.timer_at = at
        self._serial += 1
        heapq.heappush(self._timers, (at, self._serial, session.key))
        self._bound_timers()

    @property
    def timer_limit(self) -> int:
        """Stale timer entries are dropped lazily, but never beyond this many."""
        return 4 * len(self._sessions) + 1024

    def _bound_timers(self) -> None:
        if len(self._timers) > self.timer_limit:
            self._compact()

    def _compact(self) -> None:
        self._timers = [
            (session.timer_at, index, session.key)
            for index, session in enumerate(self._sessions.values())
            if session.timer_at is not None
        ]
        heapq.heapify(self._timers)
        self._serial = len(self._timers)

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            at, _, key = timers[0]
            session = self._sessions.get(key)
            if session is not None and session.timer_at == at:
                return at
            heapq.heappop(timers)
        return None

    def pop_due(self, now: float) -> Session | None:
        """The next session whose timer is due at `now`, its timer cleared."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, key = heapq.heappop(timers)
            session = self._sessions.get(key)
            if session is not None and session.timer_at == at:
                session.timer_at = None
                return session
        return None

    @property
    def timer_entries(self) -> int:
        return len(self._timers)
