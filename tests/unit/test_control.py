"""The control socket's file: made on bind, removed on close, never someone else's."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import UserError
from appliance.operations.control import ControlServer


def no_commands(request: dict[str, object]) -> dict[str, object]:
    return {}


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
