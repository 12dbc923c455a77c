"""Shared pieces of the wire formats: address types, the internet checksum,
and the wrappers that turn construct's exceptions into the project's errors.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import construct

from protocols.errors import LocalProtocolError, MalformedPacket

IpAddress = IPv4Address | IPv6Address


class MacAddress(bytes):
    """Six bytes of an Ethernet address that print as aa:bb:cc:dd:ee:ff."""

    def __new__(cls, value: bytes | str) -> MacAddress:
        if isinstance(value, str):
            parts = value.split(":")
            if len(parts) != 6:
                raise LocalProtocolError(f"{value!r} is not a MAC address")
            try:
                raw = bytes(int(part, 16) for part in parts)
            except ValueError:
                raise LocalProtocolError(f"{value!r} is not a MAC address") from None
        else:
            raw = bytes(value)
        if len(raw) != 6:
            raise LocalProtocolError(f"a MAC address has 6 bytes, not {len(raw)}")
        return super().__new__(cls, raw)

    def __str__(self) -> str:
        return ":".join(f"{byte:02x}" for byte in self)

    def __repr__(self) -> str:
        return f"MacAddress('{self}')"

    @property
    def is_multicast(self) -> bool:
        return bool(self[0] & 0x01)

    @property
    def is_locally_administered(self) -> bool:
        return bool(self[0] & 0x02)


BROADCAST_MAC = MacAddress(b"\xff" * 6)
ZERO_MAC = MacAddress(b"\x00" * 6)


class _MacAdapter(construct.Adapter):  # type: ignore[misc]
    def _decode(self, obj: bytes, context: Any, path: str) -> MacAddress:
        return MacAddress(obj)

    def _encode(self, obj: bytes, context: Any, path: str) -> bytes:
        return bytes(obj)


class _Ipv4Adapter(construct.Adapter):  # type: ignore[misc]
    def _decode(self, obj: bytes, context: Any, path: str) -> IPv4Address:
        return IPv4Address(obj)

    def _encode(self, obj: IPv4Address, context: Any, path: str) -> bytes:
        return obj.packed


class _Ipv6Adapter(construct.Adapter):  # type: ignore[misc]
    def _decode(self, obj: bytes, context: Any, path: str) -> IPv6Address:
        return IPv6Address(obj)

    def _encode(self, obj: IPv6Address, context: Any, path: str) -> bytes:
        return obj.packed


MAC_ADDRESS = _MacAdapter(construct.Bytes(6))
IPV4_ADDRESS = _Ipv4Adapter(construct.Bytes(4))
IPV6_ADDRESS = _Ipv6Adapter(construct.Bytes(16))


def parse_with(declaration: Any, data: bytes, what: str, **context: Any) -> Any:
    """Parse `data` with a construct declaration; every failure is MalformedPacket."""
    try:
        return declaration.parse(data, **context)
    except construct.ConstructError as error:
        reason = str(error).splitlines()[-1] if str(error) else type(error).__name__
        raise MalformedPacket(f"malformed {what}: {reason}") from None


def build_with(declaration: Any, value: Any, what: str, **context: Any) -> bytes:
    """Build bytes with a construct declaration; every failure is LocalProtocolError."""
    try:
        return bytes(declaration.build(value, **context))
    except construct.ConstructError as error:
        reason = str(error).splitlines()[-1] if str(error) else type(error).__name__
        raise LocalProtocolError(f"cannot build {what}: {reason}") from None


def internet_checksum(*parts: bytes) -> int:
    """RFC 1071 ones' complement sum of `parts`, complemented.

    Computing it over data that already holds a correct checksum gives 0.
    """
    data = b"".join(parts)
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(source: IpAddress, destination: IpAddress, protocol: int, length: int) -> bytes:
    """The pseudo-header that TCP, UDP and ICMPv6 checksums cover."""
    if isinstance(source, IPv4Address) and isinstance(destination, IPv4Address):
        return source.packed + destination.packed + struct.pack("!BBH", 0, protocol, length)
    if isinstance(source, IPv6Address) and isinstance(destination, IPv6Address):
        return source.packed + destination.packed + struct.pack("!IxxxB", length, protocol)
    raise LocalProtocolError("pseudo-header addresses must both be IPv4 or both IPv6")


def require_range(name: str, value: int, low: int, high: int) -> None:
    """Validate a field of a dataclass being constructed by our own code."""
    if not low <= value <= high:
        raise LocalProtocolError(f"{name} must be in {low}..{high}, not {value}")


def require_length(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise LocalProtocolError(f"{name} must be {length} bytes, not {len(value)}")
