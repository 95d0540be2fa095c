"""farm.Worker against servers and jobs that misbehave: refusals logged in one line, a job
too large for it, a server that hangs up at once or does not answer, a function name that
cannot be sent, a job whose server went away before its answer (Job.unsent)."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Any

import pytest

import farm
from farm.net import AddressError
from tests.helpers.heldjob import HeldJob
from tests.helpers.servers import start_farm_server, unix_farm_server
from tests.helpers.serving import reverse, serving, working
from tests.helpers.stalled import unanswered_listener
from tests.helpers.waiting import wait_for


def test_refusals_are_logged_in_one_line_a_while_not_a_traceback_each(
    farm_server, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone who reaches the server may send a farm.python worker unsigned calls by the
    # thousand: each refusal logged with its traceback flooded the journal.
    from farm.executor.signing import SignatureError

    def refuse(job: Any) -> bytes:
        raise SignatureError("a payload without a valid signature: refused")

    caplog.set_level("WARNING", logger="farm.worker")
    with serving(farm_server.addr, {"refuses": refuse}), farm.Client(farm_server.addr) as c:
        for _ in range(20):
            with pytest.raises(farm.JobException, match="SignatureError"):
                c.call("refuses", b"junk", timeout=10)
    lines = [r for r in caplog.records if r.name == "farm.worker"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "refused" in lines[0].getMessage() and lines[0].exc_info is None


@pytest.mark.timeout(120)
def test_a_job_too_large_for_the_worker_fails_once_not_forever(
    gearmand, caplog: pytest.LogCaptureFixture
) -> None:
    # gearmand takes a job over farm's 64 MiB packet limit; the worker refused its
    # JOB_ASSIGN, reconnected and was handed the same job again, some 13 times a second.
    caplog.set_level("WARNING", logger="farm.worker")
    with (
        serving(gearmand.addr, {"size": lambda j: str(len(j.data))}),
        farm.Client(gearmand.addr) as c,
    ):
        with pytest.raises(farm.JobFailed) as failed:
            c.call("size", b"a" * (65 << 20), timeout=60)
        # Why, in a warning before its WORK_FAIL: the error blamed the function's raising
        # ("the worker's log has the traceback"), which never ran.
        assert failed.value.warning is not None, str(failed.value)
        assert "too large for this worker, not run" in failed.value.warning
        assert re.search(
            rf"of 68157\d\d\d bytes exceeds the limit of {64 << 20}", failed.value.warning
        )
        assert c.call("size", b"ok", timeout=10) == b"2", "the worker serves on"
    refused = [r for r in caplog.records if "too large for this worker" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert refused[0].getMessage().startswith("job H:"), "named as every log line names a job"


def test_a_server_that_hangs_up_at_once_is_retried_with_backoff_not_in_a_spin() -> None:
    # docs/client.md: 50 ms doubling to 5 s. Without it a worker whose server closes each
    # connection (full, or dying as it starts) reconnects in a tight loop, a core's worth.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[float] = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(time.monotonic())
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    worker = farm.Worker(f"127.0.0.1:{listener.getsockname()[1]}")
    worker.register("f", lambda job: b"")
    serving_thread = threading.Thread(target=worker.work, daemon=True)
    serving_thread.start()
    try:
        wait_for("five connections", lambda: len(accepted) >= 5, timeout=20)
    finally:
        worker.stop()
        serving_thread.join(10)
        listener.close()
    gaps = [b - a for a, b in zip(accepted, accepted[1:], strict=False)][:4]
    # 50, 100, 200, 400 ms: each at least the one before (scheduling only adds to them)
    assert gaps[3] >= 0.35 and sum(gaps) >= 0.7, gaps


def test_a_server_that_does_not_answer_holds_no_jobs_of_the_others(any_server) -> None:
    # A worker of two servers, one of them accepting no connection (its backlog full): each
    # connect to it blocked the whole loop for connect_timeout, and the other's jobs waited.
    with unanswered_listener() as hung:
        servers = [hung, any_server.addr]
        fns = {"reverse": reverse}
        with serving(servers, fns, connect_timeout=120), farm.Client(any_server.addr) as c:
            for data in (b"ab", b"cd", b"ef"):
                assert c.call("reverse", data, timeout=30) == data[::-1]


@pytest.mark.timeout(20)
def test_a_name_that_cannot_be_sent_raises_its_own_error_not_the_cleanups() -> None:
    # The connection was closed in work()'s cleanup before the selector knew it: a KeyError
    # ("<socket ...> is not registered") hid why the worker could not start.
    with socket.socket() as listener:  # connect() completes in its backlog: enough here
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        worker = farm.Worker(f"127.0.0.1:{listener.getsockname()[1]}")
        # register() refuses such a name now (c8107cc); put it in the table past it, so
        # that work() itself fails at the CAN_DO as it connects, and its cleanup runs.
        worker._functions["\ud800"] = reverse  # a surrogate that stands for no byte
        worker._timeouts["\ud800"] = None
        with pytest.raises(UnicodeEncodeError):
            worker.work(stop_after=1)
        worker.close()


@pytest.mark.timeout(60)
def test_a_job_whose_server_went_away_before_its_answer_runs_its_unsent() -> None:
    # Job.unsent: what a function left for its client to clean up (farm.Executor's large
    # result file) goes when the answer cannot leave, where it waited for a sweep. Over a
    # Unix socket, as farm.* workers connect: the answer's write fails there.
    hold = HeldJob()

    with unix_farm_server() as srv:
        where = f"unix:{srv.unix}"
        with farm.Client(where) as client, serving(where, {"hold": hold}):
            hold.answered_then_lost(client, srv.proc)
            assert hold.ran.wait(10), "the lost job's unsent never ran"


@pytest.mark.timeout(60)
def test_an_unsent_that_calls_the_worker_does_not_hang_it() -> None:
    # Job.unsent ran while the worker's send lock was held (the answer's failed write):
    # a hook that registered a function, or did anything else that takes the lock, hung.
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    workers: list[farm.Worker] = []

    def hold(job: Any) -> bytes:
        def unsent() -> None:
            workers[0].register("other", reverse)  # documented safe from any thread
            done.set()

        job.unsent = unsent
        started.set()
        assert release.wait(30)
        return b"done"

    with unix_farm_server() as srv:
        where = f"unix:{srv.unix}"
        worker = farm.Worker(where)
        workers.append(worker)
        worker.register("hold", hold)
        thread = threading.Thread(target=worker.work, daemon=True)
        thread.start()
        try:
            with farm.Client(where) as client:
                client.submit("hold", b"lost", background=True)
            assert started.wait(30)
            srv.proc.kill()
            srv.proc.wait()
            release.set()
            assert done.wait(10), "the unsent's register() waited on the worker's lock"
        finally:
            worker.stop()
            thread.join(10)
            worker.close()


@pytest.mark.timeout(60)
def test_a_job_whose_tcp_server_was_killed_runs_its_unsent() -> None:
    # Over TCP a write to a killed server succeeds (its reset comes back later), so the
    # answer seemed to leave and the hook never ran: the worker looks for the server's
    # end of stream before it writes an answer with a hook.
    hold = HeldJob()

    srv = start_farm_server()
    try:
        with farm.Client(srv.addr) as client, serving(srv.addr, {"hold": hold}):
            hold.answered_then_lost(client, srv.proc)
            assert hold.ran.wait(10), "the lost job's unsent never ran (TCP)"
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


@pytest.mark.timeout(60)
def test_send_data_to_a_killed_tcp_server_says_nobody_listens() -> None:
    # A write to a killed TCP server succeeds, so send_data said True and a batch part's
    # file left job.unsent, orphaned until the sweep: it looks for the end of stream first.
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    said: list[bool] = []

    def hold(job: Any) -> bytes:
        said.append(job.send_data(b"while it listens"))
        started.set()
        assert release.wait(30)
        said.append(job.send_data(b"part"))
        done.set()
        return b"done"

    srv = start_farm_server()
    try:
        with farm.Client(srv.addr) as client, serving(srv.addr, {"hold": hold}):
            client.submit("hold", b"lost", background=True)
            assert started.wait(30)
            srv.proc.kill()
            srv.proc.wait()  # reaped: its end of stream is on the worker's socket
            release.set()
            assert done.wait(10)
            assert said == [True, False], said
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def test_a_host_name_getaddrinfo_cannot_encode_is_refused_when_the_worker_is_made() -> None:
    # A label of 64 letters parsed (ASCII) but IDNA, the connect's encoding, refused it: the
    # worker's thread died of a UnicodeError traceback (`farm worker`: exit 1), then, that
    # caught, it logged "unreachable ... retrying" for ever. No connect can work: the
    # address is refused as it is read (farm.hostnames), with one server or with several
    # (whose connects run in threads of their own).
    host = "a" * 64 + ".example"
    for servers in ([f"{host}:1"], ["127.0.0.1:1", f"{host}:1"]):
        with pytest.raises(AddressError, match="a label of 64 characters, over DNS's 63"):
            farm.Worker(servers)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("grace", [0.0, 1.0])
def test_a_lost_server_is_a_warning_past_the_workers_outage_grace_only(
    caplog: pytest.LogCaptureFixture, grace: float
) -> None:
    # A supervised worker (grace: its supervisor restarts the server, and says so) warned
    # twice at each restart, "closed the connection" and "unreachable": 74 warnings for one
    # event on 37 workers. Within its grace it says them at INFO, and warns if the server
    # stays gone past it; a worker of no supervisor (grace 0) warns at once, as it did.
    caplog.set_level("INFO", logger="farm.worker")
    srv = start_farm_server()
    try:
        worker = farm.Worker(srv.addr)
        worker.outage_grace = grace
        worker.register("rev", reverse)
        with farm.Client(srv.addr) as client, working(worker):
            assert client.call("rev", b"ab", timeout=10) == b"ba"  # connected and serving
            srv.proc.kill()
            srv.proc.wait()
            lost_at = time.monotonic()

            def warnings() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.levelno >= logging.WARNING]

            (first, *_) = wait_for("the worker's warning", warnings, timeout=20)
            warned_at = time.monotonic()
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "farm.worker"]
    if grace == 0:
        assert "reconnecting" in first.getMessage(), said  # at once, as before
        return
    assert warned_at - lost_at >= grace, said
    before = said[: said.index((first.levelname, first.getMessage()))]
    assert before and {level for level, _ in before} == {"INFO"}, said
    assert any("reconnecting" in line for _, line in before), said
    assert re.search(r"unreachable for \d+s \(", first.getMessage()), said


@pytest.mark.timeout(60)
def test_a_hung_server_is_a_warning_within_the_outage_grace_too(
    farm_server, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that leaves a grab unanswered is dropped and connected again at once (its
    # kernel takes the connection): no outage to outlast, so the drop itself is the warning.
    caplog.set_level("INFO", logger="farm.worker")
    with socket.socket() as hung:  # connect() completes in its backlog; nothing answers
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        servers = [f"127.0.0.1:{hung.getsockname()[1]}", farm_server.addr]
        worker = farm.Worker(servers, connect_timeout=0.5)
        worker.outage_grace = 30.0
        worker.register("rev", reverse)
        with working(worker):
            wait_for(
                "the hung server's warning",
                lambda: [
                    r
                    for r in caplog.records
                    if r.levelno == logging.WARNING and "did not answer a grab" in r.getMessage()
                ],
                timeout=15,
            )
