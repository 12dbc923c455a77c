"""Authentication of claim messages: a keyed tag and replay protection.

With a key, every message ends with a 16-byte truncated HMAC-SHA256 of the
rest of the message, and each sender's counters are accepted at most once
within a sliding window (as IPsec's anti-replay window does). Without a key,
messages are accepted as they are and tags, if any, are ignored.

Known limit: a member id forgotten after `max_senders` newer members were
heard has no window left, so a replay of its old messages would be accepted.
Member ids are random per start, so such a replay can only name a member
that is long gone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from protocols.errors import AuthenticationFailure, LocalProtocolError
from protocols.wire.claim import TAG_LENGTH, ClaimMessage, decode_message, encode_message

REPLAY_WINDOW = 64
MIN_KEY_LENGTH = 16


class ReplayWindow:
    """Accepts each counter of one sender once; counters far behind are refused."""

    __slots__ = ("_highest", "_seen")

    def __init__(self) -> None:
        self._highest = -1
        self._seen = 0  # bit i set: counter (highest - i) was accepted

    def accept(self, counter: int) -> bool:
        if counter > self._highest:
            shift = counter - self._highest
            self._seen = ((self._seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._highest = counter
            return True
        age = self._highest - counter
        if age >= REPLAY_WINDOW or self._seen >> age & 1:
            return False
        self._seen |= 1 << age
        return True


class ClaimAuthenticator:
    """Seals outgoing messages and opens incoming ones."""

    def __init__(self, key: bytes | None, *, max_senders: int = 1024) -> None:
        if key is not None and len(key) < MIN_KEY_LENGTH:
            raise LocalProtocolError(
                f"the claim key must be at least {MIN_KEY_LENGTH} bytes, not {len(key)}"
            )
        self._key = key
        self._max_senders = max_senders
        self._windows: OrderedDict[int, ReplayWindow] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _tag(self, signed: bytes) -> bytes:
        assert self._key is not None
        return hmac.new(self._key, signed, hashlib.sha256).digest()[:TAG_LENGTH]

    def seal(self, message: ClaimMessage) -> bytes:
        if self._key is None:
            return encode_message(message)
        signed = encode_message(message, authenticated=True)
        return signed + self._tag(signed)

    def open(self, data: bytes) -> ClaimMessage:
        """Decode and check one message.

        Raises AuthenticationFailure for a missing or wrong tag or a replay,
        and the other RemoteProtocolErrors for malformed messages.
        """
        message, signed_length, tag = decode_message(data)
        if self._key is None:
            return message
        if tag is None:
            raise AuthenticationFailure(
                f"unauthenticated claim message from member {message.member_id:016x}"
            )
        if not hmac.compare_digest(tag, self._tag(bytes(data[:signed_length]))):
            raise AuthenticationFailure(
                f"claim message from member {message.member_id:016x} has a wrong tag"
            )
        window = self._windows.get(message.member_id)
        if window is None:
            window = self._windows[message.member_id] = ReplayWindow()
            if len(self._windows) > self._max_senders:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(message.member_id)
        if not window.accept(message.counter):
            raise AuthenticationFailure(
                f"replayed claim message {message.counter} from member {message.member_id:016x}"
            )
        return message
