"""kill_rss_mb is a hard ceiling while a job runs: the job that grows past it fails once
(WORK_FAIL, never retried on another worker), its worker exits, and the slot is back at once."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from farm.client import Client
from farm.client.admin import admin_query
from farm.errors import JobFailed
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

# A fresh worker is ~25 MiB: max_rss_mb 60 does not recycle it after a small job, and the
# job below passes kill_rss_mb 150 within a fraction of a second, long before its 600 MB.
HOG = """
import time

MARKER = {marker!r}

def hog(job):
    with open(MARKER, "a") as f:  # one line per start: a retry would show as a second one
        f.write(job.text + "\\n")
    if job.text != "grow":
        return b"small"
    chunks = []
    for _ in range(60):  # 10 MB at a time, every page touched (non-zero bytes)
        chunks.append(bytearray(b"\\x01") * (10 * 2**20))
        time.sleep(0.01)
    return b"grew to %d MB untouched" % (10 * len(chunks))
"""

POOL = """
[functions.hog]
target = "rsshog:hog"
workers = 1
max_rss_mb = 60
kill_rss_mb = 150
"""


def test_a_job_past_kill_rss_mb_fails_once_and_its_worker_is_replaced(tmp_path: Path) -> None:
    marker = tmp_path / "runs.txt"
    (tmp_path / "rsshog.py").write_text(textwrap.dedent(HOG.format(marker=str(marker))))
    up = FarmUp(tmp_path, POOL)  # tmp_path is on the workers' PYTHONPATH
    try:
        up.expect_notify("READY=1")
        (first,) = up.wait_idle({"hog": 1})
        client = Client(up.addr)
        try:
            task = client.submit("hog", "grow")
            with pytest.raises(JobFailed):
                client.wait(task, timeout=30)

            def replaced() -> list[dict]:
                return [
                    r
                    for r in up.workers("hog", "idle")
                    if r["pid"] != first["pid"] and r["restarts"] == 1
                ]

            (second,) = wait_for("the slot's new worker", replaced, timeout=15)
            assert second["cpu"] == first["cpu"]
            # The replacement serves; had the server requeued the failed job, it would run
            # first (it is older) and be in the marker below, or still queued or running.
            assert client.call("hog", "small", timeout=15) == b"small"
        finally:
            client.close()
        assert marker.read_text().splitlines() == ["grow", "small"]
        status = admin_query(up.addr, "status")
        (row,) = [r.split("\t") for r in status.splitlines() if r.startswith("hog\t")]
        assert row[1:3] == ["0", "0"], status  # nothing of it queued or running
        assert [r["pid"] for r in up.workers("hog")] == [second["pid"]]  # not killed again
        log = up.read_log()
        assert re.search(
            rf"ERROR job {re.escape(task.handle or '')} failed: "
            r"RSS \d+ MiB over kill_rss_mb 150; worker exits",
            log,
        ), log
        assert f"killed: RSS over kill_rss_mb; job {task.handle} failed; restarting now" in log
        assert "crashed" not in log and "recycled" not in log, log
    finally:
        assert up.stop() == 0
