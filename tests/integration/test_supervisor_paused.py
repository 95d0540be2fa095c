"""A supervisor that got no CPU for a while (SIGSTOP here; a VM paused, a starved host):
what its workers said meanwhile is read before it judges them by the clock."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from farm.client.admin import admin_query
from tests.helpers.gate import second_worker_booting
from tests.helpers.servers import stop_process
from tests.helpers.waiting import wait_for

BOOT_TIMEOUT = 2


def _registered(addr: str, function: str) -> int:
    """How many of the server's worker connections registered ``function``."""
    lines = admin_query(addr, "workers", timeout=5).splitlines()
    return sum(function in line.partition(":")[2].split() for line in lines)


def test_a_worker_that_booted_while_the_supervisor_was_stopped_is_not_killed_as_hung(
    tmp_path: Path,
) -> None:
    """Its "ready" waited unread on its report pipe; resumed past boot_timeout, the
    supervisor judged the boot before it read its pipes: a worker that had loaded its target
    and served was killed as "failed to boot (hanging at import?)", its slot backed off."""
    up, gate = second_worker_booting(tmp_path, BOOT_TIMEOUT)
    try:
        stop_process(up.proc.pid)
        try:
            gate.touch()  # it loads its target, says so, and serves
            wait_for("it to serve", lambda: _registered(up.addr, "gated") == 2, timeout=30)
            time.sleep(BOOT_TIMEOUT + 0.5)  # the pause: its boot_timeout passes in it
        finally:
            up.signal(signal.SIGCONT)
        up.wait_idle({"gated": 2})
        assert "failed to boot" not in up.read_log(), up.read_log()
        assert [r["restarts"] for r in up.workers("gated")] == [0, 0]
    finally:
        assert up.stop() == 0
