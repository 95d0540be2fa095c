"""kill -9 of the supervisor while background jobs pour in: its server stops with it
(keeping the store), a new `farm up` replays, and every created job runs."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import psutil
import pytest

from tests.helpers.crashes import submit_until_killed
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import wait_connectable
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

RECORDER = """
[functions.r]
target = "tests.helpers.crashy:record"
workers = 1
"""


class _Victim:
    """What submit_until_killed kills: the supervisor, not the server it talks to."""

    def __init__(self, up: FarmUp) -> None:
        self.addr = up.addr
        self.proc = up.proc


def test_supervisor_kill_9_loses_no_created_job(tmp_path: Path) -> None:
    done_file = tmp_path / "done.txt"
    up = FarmUp(tmp_path, RECORDER, start=False, extra_env={"FARM_TEST_RECORD": str(done_file)})
    up.config.write_text(
        up.config.read_text().replace('store = "none"', f'store = "{tmp_path / "queue.db"}"')
    )
    todo = [f"job-{i}" for i in range(3000)]
    created: set[str] = set()
    try:
        up.start()
        up.expect_notify("READY=1")
        server = next(row["pid"] for row in up.ps() if row["function"] == "server")
        kill_after = random.Random(7).randrange(200, 2000)
        n = submit_until_killed(_Victim(up), todo, kill_after)
        assert up.proc.wait(10) == -signal.SIGKILL
        created.update(todo[:n])
        todo = todo[n:]
        assert todo, "every submit was answered before the kill landed"
        # The orphaned server must not linger holding the port and the store.
        psutil.wait_procs([psutil.Process(server)], timeout=10)
        assert not psutil.pid_exists(server) or psutil.Process(server).status() == "zombie"

        up.messages.clear()  # the first run's READY=1 must not count
        up.start()
        up.expect_notify("READY=1")
        wait_connectable(up.addr, up.proc)
        created.update(todo[: submit_until_killed(_Victim(up), todo, None)])
        assert len(created) == 3000

        def all_ran() -> bool:
            return done_file.exists() and created <= set(done_file.read_text().split())

        wait_for("every created job to run", all_ran, timeout=60)
    finally:
        up.stop()
