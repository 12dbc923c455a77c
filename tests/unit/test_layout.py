"""The house rules that a refactor could break silently.

- The product (`appliance/`, `protocols/`) never imports the lab, the tools or
  the tests, and the wheel of `pip install .` carries neither the lab nor its
  dependencies.
- `protocols/` stays pure: no I/O library, no clock.
- `appliance-ctl demo` on a host without the lab says how to get it.
- The one IPv4 header layout in `protocols.numbers` agrees with the construct
  declaration in `protocols.wire.ipv4`.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from appliance.cli import main
from protocols.numbers import IPV4_CHECKSUM_OFFSET, IPV4_HEADER, IPV4_HEADER_LENGTH, IpProtocol
from protocols.wire.ipv4 import Ipv4Packet

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> dict[str, set[str]]:
    """Top-level names imported by each file of `package`, absolute imports only."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_product_imports_no_lab_tool_or_test() -> None:
    for package in ("appliance", "protocols"):
        for path, names in imported_modules(package).items():
            outside = names & {"lab", "tools", "tests", "rich"}
            if path == "appliance/cli.py":
                # `appliance-ctl demo` imports the lab if it is installed, and
                # says how to install it if not.
                outside -= {"lab"}
            assert not outside, f"{path} imports {sorted(outside)}"


def test_protocols_does_no_io_and_reads_no_clock() -> None:
    forbidden = {"trio", "socket", "pyroute2", "pytun", "time", "os", "subprocess", "asyncio"}
    for path, names in imported_modules("protocols").items():
        assert not names & forbidden, f"{path} imports {sorted(names & forbidden)}"


def test_the_product_wheel_holds_no_lab() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(included) == ["appliance*", "protocols*"]
    dependencies = " ".join(project["project"]["dependencies"])
    assert "rich" not in dependencies
    lab = tomllib.loads((ROOT / "lab" / "pyproject.toml").read_text())
    assert lab["tool"]["setuptools"]["packages"] == ["lab"]


def test_ipv4_header_layout_agrees_with_the_declaration() -> None:
    packet = Ipv4Packet(
        IPv4Address("10.77.0.11"),
        IPv4Address("10.77.0.10"),
        IpProtocol.UDP,
        payload=b"12345678",
        ttl=7,
        identification=0x1234,
    )
    raw = packet.build()
    fields = IPV4_HEADER.unpack_from(raw)
    assert IPV4_HEADER.size == IPV4_HEADER_LENGTH == 20
    version_ihl, _, total_length, identification, _, ttl, protocol, checksum = fields[:8]
    assert (version_ihl, total_length, identification, ttl, protocol) == (
        0x45,
        len(raw),
        0x1234,
        7,
        IpProtocol.UDP,
    )
    assert int.from_bytes(raw[IPV4_CHECKSUM_OFFSET : IPV4_CHECKSUM_OFFSET + 2], "big") == checksum
    assert fields[8:] == (packet.source.packed, packet.destination.packed)


def test_the_demo_without_the_lab_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As on a host with only `pip install .`: the lab cannot be imported.
    monkeypatch.setitem(sys.modules, "lab", None)
    monkeypatch.setitem(sys.modules, "lab.demo", None)
    with pytest.raises(SystemExit) as stopped:
        main(["demo"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "pip install ./lab" in error
    assert len(error.strip().splitlines()) == 1
