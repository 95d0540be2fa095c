"""A farm.Worker whose write of a job's news an exception from a signal handler cuts short:
the job's own time limit (an alarm its code set, whose handler raises), landing as
``job.send_data`` hands a large chunk to the socket. The worker stays in step with its
server: what it sends next is not read as the rest of the chunk.

The worker runs in the main thread (where signal handlers run), the client in another.
As in test_client_cut_short.py: SIGUSR1 from a profile hook, not SIGALRM (pytest-timeout's)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import pytest

import farm
from farm.worker import Job, Worker
from tests.helpers.servers import Server
from tests.helpers.serving import reverse

BIG = b"d" * (8 << 20)  # more than the socket takes at once: its write is cut in two


class TimeLimit(Exception):
    """What the job's alarm raises."""


def _time_limit(signum: int, frame: FrameType | None) -> None:
    raise TimeLimit


# Where the job's alarm lands: as the socket has taken part of the chunk, before the
# worker notes how much (fixed); or as it waits for the socket to take the rest, held in
# order (in step before: the job's answer goes after that rest).
WHERE = {
    "sent": ("send_now", "farm/sockio.py"),
    "waiting": ("wait_writable", "farm/workerwire.py"),
    # The whole chunk taken and noted: not in doubt, the connection kept (dropped, the
    # job ran again and its caller got its data twice).
    "noted": ("_push_the_grab", "farm/workerlinks.py"),
    # The same, as _write_locked returns (a return checks no signal in CPython 3.11-3.13;
    # under a trace or profile function it does): noted there, not by its caller.
    "returned": ("_write_locked", "farm/workerlinks.py"),
}
SMALL = b"d" * 1000  # taken at once


@pytest.mark.timeout(90)
@pytest.mark.parametrize("at", sorted(WHERE))
def test_a_jobs_news_cut_short_by_its_own_alarm_leaves_the_worker_in_step(
    farm_server: Server, at: str
) -> None:
    # The job's alarm lands as the socket has taken part of its WORK_DATA, before the
    # worker notes how much: the rest was dropped, and the job's WORK_EXCEPTION (it
    # failed, by its alarm) went out after the half packet. The server read it, and what
    # came after it, as the data's rest: the call timed out, and so did the next, the
    # worker's grabs read as data too.
    shots: list[int] = []
    main = threading.main_thread().ident or 0

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if shots or not code.co_filename.endswith(WHERE[at][1]) or code.co_name != WHERE[at][0]:
            return
        if at in ("waiting", "noted") and event == "call":  # the rest held / all noted
            shots.append(0)
        elif at == "sent" and event == "return" and isinstance(arg, int) and arg < len(BIG):
            shots.append(arg)  # part of it taken, not yet noted
        elif at == "returned" and event == "return" and arg is None:
            shots.append(0)
        else:
            return
        signal.pthread_kill(main, signal.SIGUSR1)

    def big_news(job: Job) -> bytes:
        # Its own time limit, set as it runs (as a job sets its alarm): what it raises
        # fails the job, and the worker serves on.
        previous = signal.signal(signal.SIGUSR1, _time_limit)
        sys.setprofile(hook)
        try:
            job.send_data(news)
        finally:
            sys.setprofile(None)
            signal.signal(signal.SIGUSR1, previous)
        return b"all sent"

    news = SMALL if at in ("noted", "returned") else BIG
    worker = Worker(farm_server.addr)
    worker.register("big-news", big_news)
    worker.register("reverse", reverse)
    seen: dict[str, object] = {}

    def calls() -> None:
        try:
            with farm.Client(farm_server.addr) as client:
                got: list[int] = []
                try:
                    seen["cut"] = client.call(
                        "big-news", timeout=20, on_data=lambda d: got.append(len(d))
                    )
                except farm.FarmError as exc:
                    seen["cut"] = exc
                seen["data"] = got
                seen["next"] = [client.call("reverse", d, timeout=10) for d in (b"ab", b"cd")]
        except BaseException as exc:
            seen["next"] = exc
        finally:
            worker.stop()

    client = threading.Thread(target=calls, daemon=True)
    client.start()
    worker.work()
    client.join(30)
    worker.close()
    assert shots, "the write was not cut in two"
    assert seen["next"] == [b"ba", b"dc"], seen["next"]
    assert seen["data"] == [len(news)], seen["data"]  # whole, once
    if at == "sent":  # run again (its server took it back as the connection dropped)
        assert seen["cut"] == b"all sent", seen["cut"]
    else:  # failed by its alarm, its answer after the whole chunk
        assert isinstance(seen["cut"], farm.JobException), seen["cut"]
        assert "TimeLimit" in str(seen["cut"])


@pytest.mark.timeout(60)
def test_an_exit_as_an_answer_goes_out_still_lets_it_go(farm_server: Server) -> None:
    # A SIGTERM handler's sys.exit (a handler of the program's: it ends work()) that lands
    # as the loop's write begins, before anything was taken from the session: that
    # connection is not in doubt, and the job's WORK_COMPLETE leaves as work() ends. Were
    # every write an exception cut short dropped, it was lost, and the job ran again.
    shots: list[str] = []
    main = threading.main_thread().ident or 0

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        ours = code.co_name == "data_to_send" and code.co_filename.endswith(
            "farm/protocol/worker.py"
        )
        if event == "call" and ours and not shots:
            shots.append(code.co_name)
            signal.pthread_kill(main, signal.SIGUSR1)

    def answer(job: Job) -> bytes:
        sys.setprofile(hook)  # on until work() ends: its answer's write comes next
        return b"done"

    def leave(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    worker = Worker(farm_server.addr)
    worker.register("answer", answer)
    seen: list[object] = []

    def call() -> None:
        with farm.Client(farm_server.addr) as client:
            try:
                seen.append(client.call("answer", timeout=20))
            except farm.FarmError as exc:
                seen.append(exc)

    previous = signal.signal(signal.SIGUSR1, leave)
    caller = threading.Thread(target=call, daemon=True)
    try:
        caller.start()
        with pytest.raises(SystemExit):
            worker.work()
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR1, previous)
    caller.join(30)
    worker.close()
    assert shots == ["data_to_send"]
    assert seen == [b"done"]
