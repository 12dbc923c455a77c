"""TCP segments (RFC 9293). Options stay as bytes; MSS and friends are readable."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    Check,
    GreedyBytes,
    GreedyRange,
    Int8ub,
    Int16ub,
    Int32ub,
    Nibble,
    Pass,
    Rebuild,
    Struct,
    Switch,
    this,
)

from protocols.errors import ChecksumMismatch, LocalProtocolError, MalformedPacket
from protocols.numbers import IpProtocol, TcpFlags
from protocols.wire.common import (
    IpAddress,
    build_with,
    internet_checksum,
    parse_with,
    pseudo_header,
    require_range,
)

TCP_SEGMENT = Struct(
    "source_port" / Int16ub,
    "destination_port" / Int16ub,
    "sequence" / Int32ub,
    "acknowledgment" / Int32ub,
    "offset_reserved"
    / BitStruct(
        "data_offset" / Rebuild(Nibble, lambda ctx: 5 + len(ctx._.options) // 4),
        "reserved" / BitsInteger(4),
    ),
    "flags" / Int8ub,
    "window" / Int16ub,
    "checksum" / Int16ub,
    "urgent_pointer" / Int16ub,
    Check(this.offset_reserved.data_offset >= 5),
    "options" / Bytes(this.offset_reserved.data_offset * 4 - 20),
    "payload" / GreedyBytes,
)

# The fixed part alone, for headers quoted in ICMP errors or cut by fragmentation.
TCP_PORTS = Struct("source_port" / Int16ub, "destination_port" / Int16ub)

END_OF_OPTIONS = 0
NO_OPERATION = 1
MAXIMUM_SEGMENT_SIZE = 2
WINDOW_SCALE = 3
SACK_PERMITTED = 4
SACK = 5
TIMESTAMPS = 8

TCP_OPTION = Struct(
    "kind" / Int8ub,
    "value"
    / Switch(
        this.kind,
        {END_OF_OPTIONS: Pass, NO_OPERATION: Pass},
        default=Struct(
            "length" / Rebuild(Int8ub, lambda ctx: len(ctx.data) + 2),
            Check(this.length >= 2),
            "data" / Bytes(this.length - 2),
        ),
    ),
)
TCP_OPTIONS = GreedyRange(TCP_OPTION)


@dataclass(frozen=True, slots=True)
class TcpOption:
    kind: int
    data: bytes = b""


def parse_tcp_options(options: bytes) -> tuple[TcpOption, ...]:
    """Split an options field into options; stops at end-of-options."""
    parsed = parse_with(TCP_OPTIONS, options, "TCP options")
    consumed = 0
    result: list[TcpOption] = []
    for option in parsed:
        if option.kind in (END_OF_OPTIONS, NO_OPERATION):
            consumed += 1
            if option.kind == END_OF_OPTIONS:
                break
            continue
        consumed += option.value.length
        result.append(TcpOption(option.kind, option.value.data))
    else:
        if consumed != len(options):
            raise MalformedPacket("TCP option runs past the options field")
    return tuple(result)


def build_tcp_options(
    *,
    mss: int | None = None,
    sack_permitted: bool = False,
    timestamps: tuple[int, int] | None = None,
    window_scale: int | None = None,
) -> bytes:
    """The options of a SYN in the order Linux sends them, padded with NOPs."""
    items: list[dict[str, object]] = []
    if mss is not None:
        items.append({"kind": MAXIMUM_SEGMENT_SIZE, "value": {"data": struct.pack("!H", mss)}})
    if sack_permitted:
        items.append({"kind": SACK_PERMITTED, "value": {"data": b""}})
    if timestamps is not None:
        if not sack_permitted:
            items += [{"kind": NO_OPERATION, "value": None}] * 2
        items.append({"kind": TIMESTAMPS, "value": {"data": struct.pack("!II", *timestamps)}})
    if window_scale is not None:
        items.append({"kind": NO_OPERATION, "value": None})
        items.append({"kind": WINDOW_SCALE, "value": {"data": bytes([window_scale])}})
    raw = build_with(TCP_OPTIONS, items, "TCP options")
    if len(raw) % 4:
        raw += bytes([NO_OPERATION]) * (4 - len(raw) % 4)
    return raw


@dataclass(frozen=True, slots=True)
class TcpSegment:
    source_port: int
    destination_port: int
    sequence: int
    acknowledgment: int
    flags: TcpFlags
    window: int = 65535
    payload: bytes = b""
    options: bytes = b""
    urgent_pointer: int = 0
    reserved: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", TcpFlags(self.flags))
        require_range("source_port", self.source_port, 0, 0xFFFF)
        require_range("destination_port", self.destination_port, 0, 0xFFFF)
        require_range("sequence", self.sequence, 0, 0xFFFFFFFF)
        require_range("acknowledgment", self.acknowledgment, 0, 0xFFFFFFFF)
        require_range("window", self.window, 0, 0xFFFF)
        require_range("flags", int(self.flags), 0, 0xFF)
        if len(self.options) % 4 or len(self.options) > 40:
            raise LocalProtocolError(
                f"TCP options must be a multiple of 4 bytes and at most 40, not {len(self.options)}"
            )

    @property
    def header_length(self) -> int:
        return 20 + len(self.options)

    @property
    def mss(self) -> int | None:
        """The maximum segment size option, if the segment carries one."""
        for option in parse_tcp_options(self.options):
            if option.kind == MAXIMUM_SEGMENT_SIZE:
                if len(option.data) != 2:
                    raise MalformedPacket(f"MSS option of {len(option.data)} bytes")
                return int(struct.unpack("!H", option.data)[0])
        return None

    @classmethod
    def parse(
        cls,
        data: bytes,
        source: IpAddress,
        destination: IpAddress,
        *,
        verify_checksum: bool = True,
    ) -> TcpSegment:
        parsed = parse_with(TCP_SEGMENT, data, "TCP segment")
        if verify_checksum and internet_checksum(
            pseudo_header(source, destination, IpProtocol.TCP, len(data)), data
        ):
            raise ChecksumMismatch(f"TCP checksum {parsed.checksum:#06x} does not match")
        return cls(
            source_port=parsed.source_port,
            destination_port=parsed.destination_port,
            sequence=parsed.sequence,
            acknowledgment=parsed.acknowledgment,
            flags=TcpFlags(parsed.flags),
            window=parsed.window,
            payload=parsed.payload,
            options=parsed.options,
            urgent_pointer=parsed.urgent_pointer,
            reserved=parsed.offset_reserved.reserved,
        )

    def build(self, source: IpAddress, destination: IpAddress) -> bytes:
        raw = bytearray(
            build_with(
                TCP_SEGMENT,
                {
                    "source_port": self.source_port,
                    "destination_port": self.destination_port,
                    "sequence": self.sequence,
                    "acknowledgment": self.acknowledgment,
                    "offset_reserved": {"reserved": self.reserved},
                    "flags": int(self.flags),
                    "window": self.window,
                    "checksum": 0,
                    "urgent_pointer": self.urgent_pointer,
                    "options": self.options,
                    "payload": self.payload,
                },
                "TCP segment",
            )
        )
        checksum = internet_checksum(
            pseudo_header(source, destination, IpProtocol.TCP, len(raw)), bytes(raw)
        )
        struct.pack_into("!H", raw, 16, checksum)
        return bytes(raw)
