"""systemd's notify protocol (sd_notify(3)), spoken directly: READY, STATUS,
WATCHDOG and STOPPING datagrams to $NOTIFY_SOCKET.

Without $NOTIFY_SOCKET (not started by systemd) every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ) if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        watchdog = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        wanted = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(watchdog) / 1e6 / 2 if watchdog.isdigit() and wanted else None
        )

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> None:
        if self._socket is None or self._address is None:
            return
        message = "\n".join(fields).encode()
        with contextlib.suppress(OSError):  # systemd went away; nothing useful to do
            self._socket.sendto(message, self._address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
