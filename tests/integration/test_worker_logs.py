"""What a farm.Worker logs when its functions raise: enough to act on, never a flood."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

import farm
from tests.helpers.serving import serving, working


def _check_size(job: Any) -> bytes:
    if len(job.data) > 3:
        raise ValueError("payload too large")  # the same line for every bad input
    if job.data == b"key":
        raise KeyError(job.data)  # another kind
    return job.data


def test_a_function_raising_the_same_way_job_after_job_logs_a_traceback_a_while(
    farm_server, caplog: pytest.LogCaptureFixture
) -> None:
    # Any local user can send the farm's functions bad input by the thousand: a traceback
    # each flooded the journal, whose rate limit then drops the lines that matter.
    caplog.set_level(logging.WARNING, logger="farm.worker")
    with serving(farm_server.addr, {"check": _check_size}), farm.Client(farm_server.addr) as c:
        for _ in range(30):
            with pytest.raises(farm.JobException, match="ValueError"):
                c.call("check", b"too large", timeout=10)
        with pytest.raises(farm.JobException, match="KeyError"):
            c.call("check", b"key", timeout=10)
        assert c.call("check", b"ok", timeout=10) == b"ok"
    lines = [r for r in caplog.records if r.name == "farm.worker"]
    assert [r.exc_info[0] for r in lines if r.exc_info] == [ValueError, KeyError], [
        r.getMessage() for r in lines
    ]
    assert all(r.getMessage().startswith("job check H:") for r in lines)
    assert {r.__dict__.get("function") for r in lines} == {"check"}  # farm.logs' fields


def test_a_job_abandoned_names_its_job_and_function_as_a_raise_does(
    farm_server, caplog: pytest.LogCaptureFixture
) -> None:
    # kill_rss_mb's watchdog fails the job in hand with Worker.abandon: its line named the
    # job in its text only, so `jq 'select(.job == H)'` did not find why that job failed.
    caplog.set_level(logging.WARNING, logger="farm.worker")
    handles = []

    def give_up(job: Any) -> bytes:
        handles.append(job.handle)
        assert worker.abandon(job, "RSS 900 MiB over kill_rss_mb 512; worker exits")
        return b"never sent"

    with (
        serving(farm_server.addr, {"give_up": give_up}) as worker,
        farm.Client(farm_server.addr) as c,
        pytest.raises(farm.JobFailed),
    ):
        c.call("give_up", b"x", timeout=10)
    (line,) = [r for r in caplog.records if "kill_rss_mb" in r.getMessage()]
    assert (line.__dict__.get("job"), line.__dict__.get("function")) == (handles[0], "give_up")


def test_a_job_abandoned_tells_its_client_why_before_it_fails(farm_server) -> None:
    # WORK_FAIL alone tells a client nothing: a job failed past kill_rss_mb was, to its
    # client, one whose worker died or overran its timeout. The reason comes first, as a
    # WORK_WARNING (a farm.Executor's WorkerLost names it).
    why = "RSS 900 MiB over kill_rss_mb 512; worker exits"

    def give_up(job: Any) -> bytes:
        assert worker.abandon(job, why)
        return b"never sent"

    warned: list[bytes] = []
    with (
        serving(farm_server.addr, {"give_up": give_up}) as worker,
        farm.Client(farm_server.addr) as c,
        pytest.raises(farm.JobFailed),
    ):
        c.call("give_up", b"x", timeout=10, on_warning=warned.append)
    assert warned == [why.encode() + b"\n"]  # a line: the gearman CLI prints it raw


def test_a_job_gearmand_took_back_past_its_timeout_is_said_once_a_run_naming_it(
    gearmand, caplog: pytest.LogCaptureFixture
) -> None:
    # gearmand requeues a job past its function's timeout (CAN_DO_TIMEOUT), tells the client
    # nothing and hands it out again; each late packet of the run it took back got an ERROR
    # JOB_NOT_FOUND, logged as a bare "job server ...: JOB_NOT_FOUND Job does not exist on
    # server" apiece, naming neither the job nor its function.
    caplog.set_level(logging.WARNING, logger="farm.worker")
    runs: list[str] = []

    def slow(job: Any) -> bytes:
        runs.append(job.handle)
        if len(runs) > 1:
            return b"on time"
        time.sleep(1.8)  # past its 1 s timeout: gearmand took it back meanwhile
        for _ in range(3):
            job.send_data(b"late")
        return b"late"

    worker = farm.Worker(gearmand.addr)
    worker.register("slow", slow, timeout=1)
    with working(worker), farm.Client(gearmand.addr) as c:
        assert c.call("slow", b"x", timeout=20) == b"on time"  # its second run's
    assert runs == [runs[0]] * 2
    lines = [r for r in caplog.records if r.name == "farm.worker"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (line,) = lines
    assert (line.__dict__.get("job"), line.__dict__.get("function")) == (runs[0], "slow")
    assert "no longer holds it" in line.getMessage() and "took the job back" in line.getMessage()
