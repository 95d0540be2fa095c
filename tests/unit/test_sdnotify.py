"""sd_notify: datagrams to $NOTIFY_SOCKET that reach systemd, never reach worker processes,
and never hang the supervisor."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from farm.pools import sdnotify


def test_sd_notify_reaches_the_socket_and_children_never_see_it(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert sdnotify.notify("READY=1", "STATUS=ok", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    assert not sdnotify.notify("READY=1", environ={})
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/bin"}
    assert sdnotify.child_environ(env) == {"PATH": "/bin"}


def test_watchdog_pings_at_half_the_interval_and_only_for_its_pid() -> None:
    dog = sdnotify.Watchdog({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert dog.interval == 2.0
    assert sdnotify.Watchdog({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).interval is None


def test_sd_notify_never_hangs_on_a_reader_that_does_not_read(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        start = time.monotonic()
        sent = [sdnotify.notify(f"STATUS={i}", environ={"NOTIFY_SOCKET": path}, wait=0)
                for i in range(5000)]  # fmt: skip
        assert sent[0] and not sent[-1]  # the queue filled up and the rest were dropped
        # Dropping takes microseconds; a send that waited even 1 ms each would take 5 s.
        assert time.monotonic() - start < 5


def test_a_restart_is_said_as_the_unit_the_farm_runs_in() -> None:
    # Under systemd the reload said "that takes a restart (farm stop; farm up)": typed by
    # hand, that left the farm running outside its unit.
    unit = "0::/system.slice/farm.service\n"
    assert sdnotify.restart_command({}, unit) == "farm stop; farm up"
    assert sdnotify.restart_command({"NOTIFY_SOCKET": "/x"}, unit) == "farm stop; farm up"
    systemd = {"INVOCATION_ID": "8f1c"}
    assert sdnotify.restart_command(systemd, unit) == "systemctl restart farm"
    user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/farm@a.service\n"
    assert sdnotify.restart_command(systemd, user) == "systemctl --user restart farm@a"
    v1 = "4:memory:/system.slice/other.service\n1:name=systemd:/system.slice/farm2.service\n"
    assert sdnotify.restart_command(systemd, v1) == "systemctl restart farm2"
    for unknown in ("0::/\n", "", "0::/user.slice/user-1000.slice/user@1000.service\n"):
        assert sdnotify.restart_command(systemd, unknown) == "systemctl restart the farm's service"
