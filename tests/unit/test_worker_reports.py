"""What a worker process tells the supervisor over its report pipe, read in whatever pieces
the pipe delivers."""

from __future__ import annotations

from farm.pools.slots import ProcState, WorkerProcess


def test_reports_survive_torn_reads() -> None:
    p = WorkerProcess(1, "f", 0, 0, -1, (), started=100.0)
    p.feed(b'{"ev": "ready"}\n{"ev": "job", "ha')
    assert p.state == "idle"
    p.feed(b'ndle": "H:x:1"}\n')
    assert p.state == "busy" and p.handle == "H:x:1" and p.busy_since is not None
    p.feed(b'{"ev": "done", "jobs": 7, "rss": 1024}\n')
    assert (p.state, p.jobs_done, p.rss, p.busy_since) == ("idle", 7, 1024, None)
    p.state = ProcState.DRAINING
    p.feed(b'{"ev": "done", "jobs": 8, "rss": 1}\n')
    assert p.state == "draining" and p.ordered
