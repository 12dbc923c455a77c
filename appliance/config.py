"""The appliance's configuration: one table of keys, read from TOML and flags.

Every key is declared once in `KEYS` with its type, default and meaning. The
TOML file takes the same keys as the flags; flags override the file. The
README's configuration reference is generated from `KEYS`
(`appliance-ctl config-reference`), and a test keeps the two in step.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError
from protocols.bucket_hash import cluster_seed
from protocols.buckets import BucketSettings
from protocols.claim_machine import ClaimSettings, SettingsError
from protocols.numbers import DEFAULT_CLAIM_PROTOCOL

# The protocol's defaults live in ClaimSettings; the keys repeat none of them.
PROTOCOL = ClaimSettings()
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def _interface(key: str, value: object) -> str:
    if not isinstance(value, str) or not INTERFACE_NAME.match(value) or value in (".", ".."):
        raise ConfigError(f"{key}: {value!r} is not an interface name (1 to 15 characters)")
    return value


def _cluster_ip(key: str, value: object) -> IPv4Address:
    try:
        address = ip_address(str(value))
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an IP address") from None
    if not isinstance(address, IPv4Address):
        raise ConfigError(f"{key}: {value} is IPv6; this release serves IPv4 cluster addresses")
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise ConfigError(f"{key}: {value} cannot be a cluster address (use a unicast address)")
    return address


def _number(low: float, high: float = math.inf) -> Callable[[str, object], float]:
    def check(key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: {value!r} is not a number")
        if not low <= value <= high or not math.isfinite(value):
            bounds = f"at least {low}" if high == math.inf else f"between {low} and {high}"
            raise ConfigError(f"{key}: {value} is out of range; it must be {bounds}")
        return float(value)

    return check


def _integer(low: int, high: int) -> Callable[[str, object], int]:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} is not a whole number")
        if not low <= value <= high:
            raise ConfigError(f"{key}: {value} is out of range; it must be {low} to {high}")
        return value

    return check


def _choice(*choices: str) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return str(value)

    return check


def _optional_path(key: str, value: object) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: {value!r} is not a file path")
    return Path(value)


def _listen_address(key: str, value: object) -> str | None:
    if value in (None, ""):
        return None
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT (for example 127.0.0.1:9150)")
    return str(value)


def _socket_name(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 100:
        raise ConfigError(f"{key}: {value!r} is not a socket name (@abstract or a path)")
    return value


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not true or false")
    return value


@dataclass(frozen=True)
class Key:
    name: str
    default: object
    check: Callable[[str, object], Any]
    meaning: str
    flag: bool = False  # also a command-line flag of `run`


KEYS: tuple[Key, ...] = (
    Key("cluster_ip", None, _cluster_ip, "The shared address (required).", flag=True),
    Key("interface", "eth0", _interface, "The NIC on the shared segment.", flag=True),
    Key("bridge", "br0", _interface, "The bridge that joins the NIC and the TAP.", flag=True),
    Key(
        "weight",
        1.0,
        _number(0.0, 1000.0),
        "Relative share of new sessions; 2 takes twice the share of 1, 0 takes none.",
        flag=True,
    ),
    Key(
        "key_file",
        None,
        _optional_path,
        "File holding the claim key (16 bytes or more). With it, claims carry a keyed "
        "tag and replays are refused; every member needs the same key.",
        flag=True,
    ),
    Key(
        "load_aware",
        True,
        _boolean,
        "Scale the weight down by the load average per CPU, so busy members take fewer.",
    ),
    Key(
        "cluster_mac_mode",
        "unicast",
        _choice("unicast", "multicast"),
        "unicast: a locally administered MAC that switches flood as unknown unicast. "
        "multicast: for switches that do not flood unknown unicast.",
    ),
    Key(
        "claim_protocol",
        DEFAULT_CLAIM_PROTOCOL,
        _integer(1, 254),
        "IP protocol number of claim packets.",
    ),
    Key("tap_name", "apl-tap0", _interface, "The TAP device the appliance reads the segment from."),
    Key("tun_name", "apl-tun0", _interface, "The TUN device that carries the cluster IP."),
    Key(
        "offloads",
        True,
        _boolean,
        "Read and write GSO super-frames (IFF_VNET_HDR, TSO): far fewer packets per byte.",
    ),
    Key(
        "fast_path",
        "auto",
        _choice("auto", "on", "off"),
        "The kernel fast path: an nftables table hands decided sessions to the local stack "
        "and drops others' in the kernel, so Python sees only what it must decide. auto: "
        "when nftables works (one log line says which path runs); on: refuse to start "
        "without it; off: every packet through the TUN device.",
        flag=True,
    ),
    Key(
        "kernel_set_size",
        65536,
        _integer(16, 10_000_000),
        "Most sessions in each kernel set of the fast path; while the owned set is full, "
        "new sessions are served on the TUN path.",
    ),
    Key(
        "buckets",
        1024,
        _integer(0, 2048),
        "Buckets the session space is cut into. A member that holds a bucket serves its new "
        "sessions at once, with no claim round (on the fast path, in the kernel); every "
        "member must use the same number. 0: claim every session on its own.",
    ),
    Key(
        "control_socket",
        "@appliance",
        _socket_name,
        "Control socket of status, sessions and drain; @name is an abstract socket, "
        "private to the network namespace.",
    ),
    Key(
        "metrics_listen",
        None,
        _listen_address,
        "HOST:PORT of a Prometheus endpoint, for example 127.0.0.1:9150; off when empty.",
        flag=True,
    ),
    Key(
        "log_format",
        "plain",
        _choice("plain", "json"),
        "Log lines on stderr: plain or json.",
        flag=True,
    ),
    Key(
        "log_level",
        "info",
        _choice("debug", "info", "warning", "error"),
        "Least severe level logged.",
    ),
    Key(
        "guard_ms",
        PROTOCOL.guard * 1000,
        _number(0.1, 1000.0),
        "Shortest wait before a claim is decided, for claims from members not heard yet; "
        "more than twice the segment's one-way delay.",
    ),
    Key(
        "ack_timeout_ms",
        PROTOCOL.ack_timeout * 1000,
        _number(0.1, 10000.0),
        "Longest wait for every live member to acknowledge a claim (decided sooner once all "
        "have); more than the worst round trip to a busy member. At least guard_ms. (A "
        "message more than 10 ms out of order counts as lost whatever this is.)",
    ),
    Key(
        "claim_step_ms",
        PROTOCOL.claim_step * 1000,
        _number(0.0, 1000.0),
        "Extra claim delay per rank for backup claimers.",
    ),
    Key("hello_interval", PROTOCOL.hello_interval, _number(0.05, 60.0), "Seconds between hellos."),
    Key(
        "member_timeout",
        PROTOCOL.member_timeout,
        _number(0.1, 600.0),
        "Seconds without a message before a member is gone.",
    ),
    Key(
        "join_grace",
        PROTOCOL.join_grace,
        _number(0.0, 600.0),
        "Seconds a new member claims no unseen UDP flows.",
    ),
    Key(
        "handshake_timeout",
        PROTOCOL.handshake_timeout,
        _number(0.1),
        "Seconds to forget a TCP session never acknowledged.",
    ),
    Key(
        "tcp_idle_timeout",
        PROTOCOL.tcp_idle_timeout,
        _number(1.0),
        "Seconds to forget an idle TCP session.",
    ),
    Key(
        "udp_idle_timeout",
        PROTOCOL.udp_idle_timeout,
        _number(0.1),
        "Seconds to forget an idle UDP flow.",
    ),
    Key(
        "fin_timeout",
        PROTOCOL.fin_timeout,
        _number(0.1),
        "Seconds to keep a TCP session after the client's FIN.",
    ),
    Key(
        "max_sessions",
        PROTOCOL.max_sessions,
        _integer(16, 10_000_000),
        "Most sessions tracked at once.",
    ),
    Key(
        "max_queued_packets",
        PROTOCOL.max_queued_packets,
        _integer(1, 1_000_000),
        "Most packets waiting for claims.",
    ),
    Key(
        "max_queued_bytes",
        PROTOCOL.max_queued_bytes,
        _integer(65536, 2**31),
        "Most bytes waiting for claims.",
    ),
    Key(
        "max_queued_per_session",
        PROTOCOL.max_queued_per_session,
        _integer(1, 1024),
        "Most packets waiting per session.",
    ),
)

KEYS_BY_NAME = {key.name: key for key in KEYS}


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def claim_settings(self) -> ClaimSettings:
        try:
            return ClaimSettings(
                guard=self.values["guard_ms"] / 1000,
                ack_timeout=self.values["ack_timeout_ms"] / 1000,
                claim_step=self.values["claim_step_ms"] / 1000,
                max_claim_delay=3 * self.values["claim_step_ms"] / 1000,
                hello_interval=self.values["hello_interval"],
                member_timeout=self.values["member_timeout"],
                join_grace=self.values["join_grace"],
                handshake_timeout=self.values["handshake_timeout"],
                tcp_idle_timeout=self.values["tcp_idle_timeout"],
                udp_idle_timeout=self.values["udp_idle_timeout"],
                fin_timeout=self.values["fin_timeout"],
                max_sessions=self.values["max_sessions"],
                max_queued_packets=self.values["max_queued_packets"],
                max_queued_bytes=self.values["max_queued_bytes"],
                max_queued_per_session=self.values["max_queued_per_session"],
            )
        except SettingsError as error:
            raise ConfigError(str(error)) from None

    def bucket_settings(self, key: bytes | None) -> BucketSettings | None:
        """The bucket rule's settings, None with buckets = 0. The lease stays
        well inside member_timeout: a member that stops running loses its
        buckets before its peers give up on it and take them."""
        count = self.values["buckets"]
        if not count:
            return None
        settings = BucketSettings(
            count=count,
            seed=cluster_seed(self.cluster_ip.packed, key),
            lease=self.values["member_timeout"] / 2,
            udp_transition=self.values["udp_idle_timeout"],
        )
        if settings.lease + self.values["hello_interval"] >= self.values["member_timeout"]:
            raise ConfigError(
                f"member_timeout ({self.values['member_timeout']}) must exceed twice "
                f"hello_interval ({self.values['hello_interval']}): a member's buckets are a "
                "lease of half member_timeout, renewed with every hello"
            )
        return settings

    def claim_key(self) -> bytes | None:
        path: Path | None = self.values["key_file"]
        if path is None:
            return None
        try:
            key = path.read_bytes().strip()
        except OSError as error:
            raise ConfigError(f"key_file: cannot read {path}: {error.strerror}") from None
        if len(key) < 16:
            raise ConfigError(
                f"key_file: {path} holds {len(key)} bytes; a claim key needs at least 16 "
                "(for example: head -c 32 /dev/urandom | base64 > FILE)"
            )
        return key


def load_config(file: Path | None, overrides: Mapping[str, object]) -> Config:
    """Defaults, then the TOML file, then flags (`overrides`, None meaning unset)."""
    raw: dict[str, object] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except OSError as error:
            raise ConfigError(f"cannot read config file {file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {file} is not valid TOML: {error}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {file} is not UTF-8 text") from None
        unknown = sorted(set(raw) - KEYS_BY_NAME.keys())
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in {file}; see `appliance-ctl config-reference`"
            )
    raw.update({name: value for name, value in overrides.items() if value is not None})
    values: dict[str, Any] = {}
    for key in KEYS:
        if key.name in raw:
            values[key.name] = key.check(key.name, raw[key.name])
        else:
            values[key.name] = key.default
    if values["cluster_ip"] is None:
        raise ConfigError(
            "cluster_ip is required: give --cluster-ip ADDR or set it in the config file"
        )
    names = ("tap_name", "tun_name", "bridge", "interface")
    if len({values[name] for name in names}) < len(names):
        raise ConfigError("tap_name, tun_name, bridge and interface must all differ")
    config = Config(values)
    config.claim_settings()  # validates the protocol settings as a whole
    return config


def reference_table() -> str:
    """The configuration reference, as a Markdown table."""
    lines = ["| key | default | flag | meaning |", "| --- | --- | --- | --- |"]
    for key in KEYS:
        default: object = key.default
        if key.name == "cluster_ip":
            default = "(required)"
        elif default is None:
            default = "(none)"
        elif isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, str):
            default = f'"{default}"'
        flag = f"`--{key.name.replace('_', '-')}`" if key.flag else ""
        lines.append(f"| `{key.name}` | {default} | {flag} | {key.meaning} |")
    return "\n".join(lines)
