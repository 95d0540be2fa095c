"""The server's Prometheus metrics, from a real server, real jobs and a real scrape.

Each counter is driven by the protocol event it counts (a completion, a
WORK_FAIL, an exception, a worker dying mid-job, a CAN_DO_TIMEOUT) and read
back through ``--metrics``' HTTP endpoint and the admin command ``metrics``,
parsed with prometheus_client's own parser; promtool checks the exposition.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.scraping import fresh_metrics
from tests.helpers.servers import free_port, start_farm_server
from tests.helpers.waiting import wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def run_one(
    client: Peer, worker: Peer, function: str, answer: Callable[[bytes], None], priority: int
) -> bytes:
    submit = {0: T.SUBMIT_JOB_HIGH, 1: T.SUBMIT_JOB, 2: T.SUBMIT_JOB_LOW}[priority]
    client.send(submit, function, "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == handle
    answer(handle)
    return handle


@pytest.mark.timeout(60)
def test_counters_gauges_and_histograms_follow_the_jobs(
    peer_factory: Callable[[str], Peer],
) -> None:
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    try:
        client = peer_factory(srv.addr)
        client.send(T.OPTION_REQ, "exceptions")
        client.expect(T.OPTION_RES)
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "f")
        for priority in (0, 1, 1):
            run_one(client, worker, "f", lambda h: worker.send(T.WORK_COMPLETE, h, "ok"), priority)
            client.expect(T.WORK_COMPLETE)
        run_one(client, worker, "f", lambda h: worker.send(T.WORK_FAIL, h), 2)
        client.expect(T.WORK_FAIL)
        run_one(client, worker, "f", lambda h: worker.send(T.WORK_EXCEPTION, h, "E: boom"), 1)
        client.expect(T.WORK_EXCEPTION)
        # A worker dies holding a job: it is retried, and then completed by another.
        doomed = peer_factory(srv.addr)
        doomed.send(T.CAN_DO, "f")
        run_one(client, doomed, "f", lambda h: doomed.sock.close(), 1)
        wait_for(
            "the dead worker's job to be queued again",
            lambda: "f\t1\t0\t1\n" in admin_query(srv.addr, "status", timeout=10),
        )
        worker.send(T.GRAB_JOB)
        handle = worker.expect(T.JOB_ASSIGN).args[0]
        worker.send(T.WORK_COMPLETE, handle, "second try")
        client.expect(T.WORK_COMPLETE)
        # A job that outruns its CAN_DO_TIMEOUT.
        slow = peer_factory(srv.addr)
        slow.send(T.CAN_DO_TIMEOUT, "t", "1")
        run_one(client, slow, "t", lambda h: None, 1)
        client.expect(T.WORK_FAIL, timeout=10)
        client.send(T.SUBMIT_JOB_BG, "waiting", "", "queued")
        client.expect(T.JOB_CREATED)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = reply.read().decode()
        assert value(text, "farm_jobs_submitted_total", function="f", priority="high") == 1
        assert value(text, "farm_jobs_submitted_total", function="f", priority="normal") == 4
        assert value(text, "farm_jobs_submitted_total", function="f", priority="low") == 1
        assert value(text, "farm_jobs_completed_total", function="f", priority="high") == 1
        assert value(text, "farm_jobs_completed_total", function="f", priority="normal") == 3
        assert value(text, "farm_jobs_failed_total", function="f", priority="low") == 1
        assert value(text, "farm_jobs_exceptions_total", function="f", priority="normal") == 1
        assert value(text, "farm_jobs_retried_total", function="f", priority="normal") == 1
        assert value(text, "farm_jobs_timed_out_total", function="t", priority="normal") == 1
        assert value(text, "farm_jobs_failed_total", function="t", priority="normal") == 1
        # Nobody serves "waiting": it is counted under "other", never by its own name.
        assert value(text, "farm_jobs_queued", function="other", priority="normal") == 1
        assert ("farm_jobs_queued", (("function", "waiting"), ("priority", "normal"))) not in (
            samples(text)
        )
        assert value(text, "farm_workers", function="f") == 1
        # Six jobs ran to an answer on f (the dead worker's try has none): six run times.
        assert value(text, "farm_job_run_seconds_count", function="f") == 6
        assert value(text, "farm_job_queue_wait_seconds_count", function="f") == 7
        assert value(text, "farm_server_connections", kind="worker") == 2
        assert value(text, "farm_server_received_bytes_total") > 0
        assert value(text, "farm_server_uptime_seconds") > 0

        # The same numbers through the admin protocol (what farm up's supervisor scrapes).
        reply_text = fresh_metrics(srv.addr)
        assert value(reply_text, "farm_jobs_completed_total", function="f", priority="normal") == 3
        promtool = shutil.which("promtool")
        if promtool is None and os.environ.get("FARM_REQUIRE_INTEROP"):
            pytest.fail("promtool is missing (Debian package prometheus; make deps-test)")
        if promtool:
            check = subprocess.run(
                [promtool, "check", "metrics"], input=text.encode(), capture_output=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_functions_nobody_serves_are_summed_under_other(
    peer_factory: Callable[[str], Peer],
) -> None:
    """Bounded label sets: a client inventing function names adds no series."""
    srv = start_farm_server()
    try:
        client = peer_factory(srv.addr)
        for n in range(20):
            client.send(T.SUBMIT_JOB_BG, f"made-up-{n}", "", "x")
            client.expect(T.JOB_CREATED)
        client.send(T.SUBMIT_JOB_LOW_BG, "served", "", "x")
        client.expect(T.JOB_CREATED)
        text = fresh_metrics(srv.addr)
        functions = {s[1][0][1] for s in samples(text) if s[0] == "farm_jobs_submitted_total"}
        assert functions == {"other"}
        assert value(text, "farm_jobs_submitted_total", function="other", priority="normal") == 20
        assert value(text, "farm_jobs_queued", function="other", priority="low") == 1

        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "served")
        worker.send(T.GRAB_JOB)
        worker.expect(T.JOB_ASSIGN)
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_submitted_total", function="served", priority="low") == 1
        assert value(text, "farm_jobs_running", function="served") == 1
        # other keeps what "served" counted up to this scrape, the first to show its name
        # (a counter never drops): its submit, and the wait of the grab before the scrape.
        assert value(text, "farm_jobs_submitted_total", function="other", priority="low") == 1
        assert value(text, "farm_jobs_submitted_total", function="other", priority="normal") == 20
        assert value(text, "farm_job_queue_wait_seconds_count", function="served") == 1
        assert value(text, "farm_job_queue_wait_seconds_count", function="other") == 1
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_submitted_total", function="other", priority="low") == 1
        # Its worker goes (a pool recycling): it keeps its name, its job is queued again.
        worker.sock.close()
        wait_for(
            "the job to be queued again",
            lambda: (
                value(
                    fresh_metrics(srv.addr),
                    "farm_jobs_retried_total",
                    function="served",
                    priority="low",
                )
                == 1
            ),
        )
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_queued", function="served", priority="low") == 1
        assert value(text, "farm_workers", function="served") == 0
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_other_keeps_what_a_dropped_function_counted(peer_factory: Callable[[str], Peer]) -> None:
    """`drop function` of a function summed under other: other's counters must not drop (a
    reset to Prometheus), and the drop's failures are counted there."""
    srv = start_farm_server()
    try:
        client = peer_factory(srv.addr)
        for _ in range(3):
            client.send(T.SUBMIT_JOB_BG, "nobody", "", "x")
            client.expect(T.JOB_CREATED)
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_submitted_total", function="other", priority="normal") == 3
        assert admin_query(srv.addr, "drop function nobody", timeout=10) == "OK\r\n"
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_submitted_total", function="other", priority="normal") == 3
        assert value(text, "farm_jobs_failed_total", function="other", priority="normal") == 3
        assert value(text, "farm_jobs_queued", function="other", priority="normal") == 0
    finally:
        srv.stop()


def refused_count(client: Peer, ptype: int, function: str, data: str, times: int) -> int:
    """Submit ``times`` jobs; how many the server refused with QUEUE_ERROR."""
    refused = 0
    for _ in range(times):
        client.send(ptype, function, "", data)
        reply = client.recv()
        if reply.type == T.ERROR:
            assert reply.args[0] == b"QUEUE_ERROR"
            refused += 1
        else:
            assert reply.type == T.JOB_CREATED
    return refused


@pytest.mark.timeout(60)
def test_submits_refused_for_a_full_queue_are_counted_by_reason(
    peer_factory: Callable[[str], Peer],
) -> None:
    """QUEUE_ERROR for a maxqueue reached, or for --max-queued-bytes, was counted nowhere: an
    SRE could not alert on clients being turned away."""
    # TCP peers may hold 3/4 of it, 3,000 bytes: a job of 1,000 bytes of data holds 1,519.
    srv = start_farm_server("--max-queued-bytes", "4000")
    try:
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "mq")  # labelled by its name from now on
        assert admin_query(srv.addr, "maxqueue mq 2", timeout=10) == "OK\r\n"
        client = peer_factory(srv.addr)
        assert refused_count(client, T.SUBMIT_JOB_BG, "mq", "x", 5) == 3
        # Two mq jobs hold 1,030 bytes: one big job fits beside them, a second does not.
        assert refused_count(client, T.SUBMIT_JOB_LOW_BG, "nobody", "y" * 1000, 3) == 2
        text = fresh_metrics(srv.addr)
        refused = {
            (s[1][0][1], s[1][1][1], s[1][2][1]): n
            for s, n in samples(text).items()
            if s[0] == "farm_jobs_refused_total"
        }
        # Every function, priority and reason is shown, at 0 until it counts; max_functions
        # only under other (test_refusal_reasons).
        assert len(refused) == 2 * 3 * 3 + 3
        assert {k: n for k, n in refused.items() if n} == {
            ("mq", "normal", "maxqueue"): 3,
            ("other", "low", "bytes"): 2,
        }
        # Refused submits are not jobs.
        assert value(text, "farm_jobs_submitted_total", function="mq", priority="normal") == 2
        assert value(text, "farm_jobs_submitted_total", function="other", priority="low") == 1
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run(
                [promtool, "check", "metrics"], input=text.encode(), capture_output=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_running_job_cancelled_counts_as_failed_not_as_its_late_answer(
    peer_factory: Callable[[str], Peer],
) -> None:
    """`cancel job` fails a running job's clients at once: the metrics counted the worker's
    later answer instead (completed, mostly), where docs/monitoring.md says failed."""
    srv = start_farm_server()
    try:
        client = peer_factory(srv.addr)
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "f")
        handle = run_one(client, worker, "f", lambda h: None, 0)
        assert admin_query(srv.addr, f"cancel job {handle.decode()}", timeout=10) == "OK\r\n"
        client.expect(T.WORK_FAIL)
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_failed_total", function="f", priority="high") == 1
        assert value(text, "farm_jobs_running", function="f") == 0
        worker.send(T.WORK_COMPLETE, handle, "late")  # dropped: the job has ended
        worker.send(T.GRAB_JOB)
        worker.expect(T.NO_JOB)  # no ERROR before it
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_failed_total", function="f", priority="high") == 1
        assert value(text, "farm_jobs_completed_total", function="f", priority="high") == 0
        assert value(text, "farm_job_run_seconds_count", function="f") == 0  # no answer
        # The worker runs on as before.
        run_one(client, worker, "f", lambda h: worker.send(T.WORK_COMPLETE, h, "ok"), 0)
        client.expect(T.WORK_COMPLETE)
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_completed_total", function="f", priority="high") == 1
        assert value(text, "farm_jobs_failed_total", function="f", priority="high") == 1
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_foreground_job_whose_clients_left_is_counted_dropped(
    peer_factory: Callable[[str], Peer],
) -> None:
    """A foreground job nobody waits on any more is dropped (as gearmand does): it was
    counted submitted and never again, so submitted less the ends drifted from the queue."""
    srv = start_farm_server()
    try:
        queued = peer_factory(srv.addr)
        queued.send(T.SUBMIT_JOB, "crev", "", "abc")  # no worker for it
        queued.expect(T.JOB_CREATED)
        # One already running when its client leaves: its worker dies too, so nobody would
        # ever see it end (were its worker to answer, it would count that answer).
        running = peer_factory(srv.addr)
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "r")
        run_one(running, worker, "r", lambda h: None, 2)
        queued.close()
        running.close()

        def dropped(function: str, priority: str) -> float:
            text = fresh_metrics(srv.addr)
            return value(text, "farm_jobs_dropped_total", function=function, priority=priority)

        wait_for("the queued job dropped", lambda: dropped("other", "normal") == 1)
        assert dropped("r", "low") == 0  # it runs on
        worker.sock.close()
        wait_for("the running job dropped", lambda: dropped("r", "low") == 1)
        text = fresh_metrics(srv.addr)
        assert value(text, "farm_jobs_submitted_total", function="other", priority="normal") == 1
        assert value(text, "farm_jobs_queued", function="other", priority="normal") == 0
        assert value(text, "farm_jobs_queued", function="r", priority="low") == 0
        assert value(text, "farm_jobs_running", function="r") == 0
        for field in ("completed", "failed", "exceptions", "retried"):
            assert value(text, f"farm_jobs_{field}_total", function="r", priority="low") == 0
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_jobs_held_for_their_epoch_are_queued_and_scheduled(
    peer_factory: Callable[[str], Peer],
) -> None:
    # FarmQueueBackingUp subtracts them: nobody may take them yet, so none moving is no news.
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    try:
        worker = peer_factory(srv.addr)  # a function nobody serves is summed under "other"
        worker.send(T.CAN_DO, "later")
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB_EPOCH, "later", "", str(int(time.time()) + 3600), "x")
        client.expect(T.JOB_CREATED)
        client.send(T.SUBMIT_JOB_BG, "later", "", "now")
        client.expect(T.JOB_CREATED)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert value(text, "farm_jobs_queued", function="later", priority="normal") == 2
        assert value(text, "farm_jobs_scheduled", function="later", priority="normal") == 1
        assert value(text, "farm_jobs_scheduled", function="later", priority="high") == 0
    finally:
        srv.stop()
