"""systemd's notify protocol against a real datagram socket."""

import socket
from pathlib import Path

from appliance.host.notify import Notifier


def receiver(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    return sock


def test_ready_status_watchdog_and_stopping_reach_the_socket(tmp_path: Path) -> None:
    sock = receiver(tmp_path / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"})
    assert notifier.enabled and notifier.watchdog_interval == 2.0
    notifier.ready("serving 192.0.2.10")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 192.0.2.10"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.status("draining")
    assert sock.recv(4096) == b"STATUS=draining"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_socket_names_work() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0appliance-notify-test")
    sock.settimeout(2)
    Notifier({"NOTIFY_SOCKET": "@appliance-notify-test"}).ready("ok")
    assert sock.recv(4096).startswith(b"READY=1")


def test_without_systemd_nothing_happens() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("ignored")  # no socket, no error


def test_the_watchdog_is_for_another_process() -> None:
    notifier = Notifier(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    )
    assert notifier.watchdog_interval is None
    notifier.ready("the socket is gone: no error either")
