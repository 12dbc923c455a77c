"""The project's protocol errors, split by who caused them (as h11 does).

`RemoteProtocolError` means bytes from the wire were not acceptable: a
malformed or truncated packet, a bad checksum, an unknown claim version.
`LocalProtocolError` means our own code asked for something impossible, such
as building a header with a port number above 65535.
"""


class ProtocolError(Exception):
    """Base of every error the protocols package raises on purpose."""


class RemoteProtocolError(ProtocolError):
    """Bytes from the wire that this member cannot accept."""


class MalformedPacket(RemoteProtocolError):
    """A packet that does not follow its wire format."""


class ChecksumMismatch(MalformedPacket):
    """A packet whose checksum does not match its contents."""


class UnsupportedVersion(RemoteProtocolError):
    """A claim message of a version this member does not speak."""


class UnknownMessageType(RemoteProtocolError):
    """A claim message of a type this member does not know."""


class AuthenticationFailure(RemoteProtocolError):
    """A claim message without a valid tag, or a replay, while a key is set."""


class LocalProtocolError(ProtocolError):
    """A value our own code tried to build that the wire format cannot carry."""
