"""The control socket: `appliance-ctl status`, `sessions`, `drain` and `undrain`.

One JSON object per line each way over a Unix stream socket. The handler
returns a typed report (appliance.operations.status), which this module
writes as JSON, or raises UserError, which the client gets as {"error": ...}
and prints as one line.

The default name is abstract (`@appliance`), and abstract sockets belong to a
network namespace, so one daemon per namespace never collides with another.
Binding it also makes sure only one daemon runs in a namespace.

Anyone in the namespace may read status; changing state (drain) needs root or
the daemon's own user, checked with SO_PEERCRED.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any, Protocol

import trio

from appliance.errors import UserError

log = logging.getLogger(__name__)

MAX_REQUEST = 65536
MAX_CLIENTS = 32  # at once; more wait in the listen backlog
CLIENT_TIMEOUT = 2.0
READ_ONLY = frozenset({"status", "sessions"})


class Reply(Protocol):
    """A typed answer to a command: a status report or a sessions listing."""

    def to_json(self) -> dict[str, Any]: ...


Handler = Callable[[dict[str, Any]], Reply]


def socket_address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


class ControlServer:
    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self._handler = handler
        self._socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._made_file = False  # a path socket this server bound, to remove on close

    async def bind(self) -> None:
        """Claim the socket name; fails if a daemon already runs in this namespace."""
        address = socket_address(self.name)
        if not self.name.startswith("@"):
            _remove_stale_socket(self.name)
        try:
            await self._socket.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(
                    f"another appliance daemon already runs in this network namespace "
                    f"(control socket {self.name} is taken); stop it first"
                ) from None
            raise UserError(f"cannot bind control socket {self.name}: {error.strerror}") from None
        self._made_file = not self.name.startswith("@")
        self._socket.listen(16)

    def close(self) -> None:
        """Close the socket, and remove its file if this server bound it."""
        self._socket.close()
        if self._made_file:
            self._made_file = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        slots = trio.Semaphore(MAX_CLIENTS)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    await slots.acquire()
                    try:
                        connection, _ = await self._socket.accept()
                    except OSError as error:
                        # Out of descriptors, or a client gone before accept:
                        # wait a little and go on, as trio.serve_listeners does.
                        slots.release()
                        log.warning("control socket: accept failed: %s", error.strerror)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._serve_client, connection, slots)
        finally:
            self.close()

    async def _serve_client(
        self, connection: trio.socket.SocketType, slots: trio.Semaphore
    ) -> None:
        """One request, one answer. A client's trouble never reaches the daemon."""
        stream = trio.SocketStream(connection)
        try:
            async with stream:
                _, uid, _ = struct.unpack(
                    "3i",
                    connection.getsockopt(
                        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
                    ),
                )
                data = b""
                with trio.move_on_after(CLIENT_TIMEOUT):
                    while b"\n" not in data and len(data) < MAX_REQUEST:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        data += chunk
                response = self._respond(data, uid)
                await stream.send_all(json.dumps(response).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            log.debug("control client went away: %s", error)
        finally:
            slots.release()

    def _respond(self, data: bytes, uid: int) -> dict[str, Any]:
        try:
            request = json.loads(data.split(b"\n", 1)[0])
        except (ValueError, UnicodeDecodeError):
            return {"error": "the request is not a JSON object on one line"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"error": 'the request needs a "command"'}
        if request["command"] not in READ_ONLY and uid not in (0, os.geteuid()):
            return {"error": f"{request['command']} needs root or the daemon's user"}
        try:
            return self._handler(request).to_json()
        except UserError as error:  # the request's fault: the client prints it
            return {"error": str(error)}
        except Exception:
            log.exception("control command %r failed", request["command"])
            return {"error": f"{request['command']} failed inside the daemon; see its log"}


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a daemon that died; never any other file."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise UserError(
                f"control_socket: {path} exists and is not a socket; choose another path"
            )
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except FileNotFoundError:
        return
    except ConnectionRefusedError:
        os.unlink(path)  # a socket file left by a daemon that died
    except OSError:
        return
    finally:
        probe.close()


def control_request(name: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the daemon of this network namespace; UserError if none runs."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(socket_address(name))
        except (FileNotFoundError, ConnectionRefusedError):
            raise UserError(
                f"no appliance daemon runs in this network namespace (control socket {name}); "
                "start one with `appliance-ctl run`"
            ) from None
        except PermissionError:
            raise UserError(f"no permission to use control socket {name}") from None
        client.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise UserError(f"the daemon did not answer on {name} within {timeout:g}s") from None
    except OSError as error:
        raise UserError(f"control socket {name}: {error.strerror}") from None
    finally:
        client.close()
    try:
        response = json.loads(data)
    except ValueError:
        raise UserError(f"the daemon sent an unreadable answer on {name}") from None
    if not isinstance(response, dict):
        raise UserError(f"the daemon sent an unreadable answer on {name}")
    if "error" in response:
        raise UserError(str(response["error"]))
    return response
