"""The control socket: its file made on bind, removed on close, never someone
else's; typed reports carried as JSON; the daemon's refusals as one line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.cli import main
from appliance.errors import UserError
from appliance.operations.control import ControlServer, Handler, Reply, control_request
from appliance.operations.status import StatusReport
from tests.unit.test_status import SAMPLE_JSON, sample_report


def no_commands(request: dict[str, Any]) -> Reply:
    raise UserError("no commands here")


async def test_a_path_socket_is_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(str(path), no_commands)
    await server.bind()
    assert path.is_socket()
    server.close()
    assert not path.exists()


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = ControlServer(str(path), no_commands)
    await dead.bind()
    dead._socket.close()  # the daemon died: its file stays, nobody listens
    assert path.is_socket()
    server = ControlServer(str(path), no_commands)
    await server.bind()
    server.close()
    assert not path.exists()


async def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text('cluster_ip = "10.0.0.1"\n')
    server = ControlServer(str(path), no_commands)
    with pytest.raises(UserError, match="exists and is not a socket"):
        await server.bind()
    server.close()
    assert path.read_text() == 'cluster_ip = "10.0.0.1"\n'


class OldAnswer:
    """The status as a daemon of another version sends it: no "frames"."""

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in SAMPLE_JSON.items() if key != "frames"}


def commands(request: dict[str, Any]) -> Reply:
    command = request["command"]
    if command == "status":
        return sample_report()
    if command == "refused":
        raise UserError("the daemon is still starting")
    raise RuntimeError("a bug")


def old_commands(request: dict[str, Any]) -> Reply:
    return OldAnswer()


@asynccontextmanager
async def serving(path: Path, handler: Handler) -> AsyncIterator[str]:
    server = ControlServer(str(path), handler)
    await server.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield str(path)
        nursery.cancel_scope.cancel()


async def ask(path: str, command: str) -> dict[str, Any]:
    return await trio.to_thread.run_sync(control_request, path, {"command": command})


async def test_a_typed_report_crosses_the_socket_as_json(tmp_path: Path) -> None:
    async with serving(tmp_path / "control.sock", commands) as path:
        answer = await ask(path, "status")
    assert answer == SAMPLE_JSON
    assert StatusReport.from_json(answer) == sample_report()


async def test_a_refusal_reaches_the_client_as_its_user_error(tmp_path: Path) -> None:
    async with serving(tmp_path / "control.sock", commands) as path:
        with pytest.raises(UserError, match=r"^the daemon is still starting$"):
            await ask(path, "refused")
        with pytest.raises(UserError, match="failed inside the daemon; see its log"):
            await ask(path, "crash")


async def test_status_json_prints_the_documented_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(tmp_path / "control.sock", commands) as path:
        with pytest.raises(SystemExit) as exited:
            await trio.to_thread.run_sync(main, ["status", "--json", "--control-socket", path])
    assert exited.value.code == 0
    assert json.loads(capsys.readouterr().out) == SAMPLE_JSON


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["drain"]])
async def test_a_daemon_of_another_version_gets_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    async with serving(tmp_path / "control.sock", old_commands) as path:
        with pytest.raises(SystemExit) as exited:
            await trio.to_thread.run_sync(main, [*command, "--control-socket", path])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "frames is missing" in error and "another version" in error
