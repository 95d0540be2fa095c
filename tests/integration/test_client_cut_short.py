"""A blocking call that an exception from a signal handler cuts short as it reads the server's
reply or sends its request: a web request's time limit (an alarm whose handler raises), with
the app's one client used again by the next request. The client stays in step with its
server: the next call gets its own result.

The handler runs on SIGUSR1, sent to the main thread from a profile hook as the read or the
send begins, so it lands there every time. Not SIGALRM: pytest-timeout's method here is
``signal``, whose handler and timer a test's own would replace."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

import farm
import farm.protocol.codec
from farm.protocol.tasks import Task
from tests.helpers.cutshort import (
    ERRORS,
    UNBUILDABLE,
    held,
    signal_as_queued,
    unbuildable_packets,
)
from tests.helpers.servers import Server
from tests.helpers.serving import reverse, serving

# Where the exception lands: the session taking the bytes read (the JOB_CREATED first), or
# the send of the bytes taken from the session for the wire (the SUBMIT_JOB).
WHERE = {
    "read": ("receive", "farm/protocol/client.py"),
    "send": ("send", "farm/client/blockingconn.py"),
}


class TimeLimit(Exception):
    """What the request's alarm raises."""


def _time_limit(signum: int, frame: FrameType | None) -> None:
    raise TimeLimit


@pytest.mark.timeout(60)
@pytest.mark.parametrize("at", sorted(WHERE))
def test_a_call_cut_short_by_a_signal_handler_leaves_the_next_calls_their_results(
    farm_server: Server, at: str
) -> None:
    # read: the JOB_CREATED read was lost to the session, which took the next call's for
    # the given-up call's; send: the submit never left, and the session awaited its answer
    # all the same. Either way every later call on the client waited for a JOB_CREATED
    # already taken: Timeout at its timeout, and for ever without one. (Cut in a read of a
    # large result, the next call failed: "job server ... broke the protocol".)
    name, path = WHERE[at]
    shots: list[str] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        ours = code.co_name == name and code.co_filename.endswith(path)
        if event == "call" and not shots and ours:
            shots.append(name)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, _time_limit)
    try:
        with serving(farm_server.addr, {"reverse": reverse}):
            client = farm.Client(farm_server.addr)
            assert client.call("reverse", b"warm", timeout=10) == b"mraw"
            sys.setprofile(hook)
            try:
                with pytest.raises(TimeLimit):
                    client.call("reverse", b"cut short", timeout=10)
            finally:
                sys.setprofile(None)
            assert shots == [name]
            for data in (b"next request", b"the one after"):
                assert client.call("reverse", data, timeout=5) == data[::-1]
            client.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)


# A question (echo, status) or a submit cut short as its request is queued: after its packet
# went into the session's bytes for the wire, before the session awaits its answer.
ASKS: dict[str, Callable[[farm.Client, Task[Any]], object]] = {
    "echo": lambda client, task: client.echo(b"one"),
    "status of a task": lambda client, task: client.status(task),
    "status by handle": lambda client, task: client.status(task.handle or ""),
    "status by key": lambda client, task: client.status_unique(KEY),
    "submit": lambda client, task: client.submit("nobody", background=True),
}
KEY = "cut-short-key"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ask", sorted(ASKS))
def test_a_request_cut_short_as_it_is_queued_leaves_the_next_calls_their_answers(
    farm_server: Server, ask: str
) -> None:
    # A question's packet queued and its answer not awaited: the echo after it was answered
    # with the cut one's bytes (b"one"); after a status, an echo took the STATUS_RES for its
    # own, a protocol break it waited out: "did not answer within 5s".
    shots: list[str] = []
    hook = signal_as_queued(shots, ask)

    previous = signal.signal(signal.SIGUSR1, _time_limit)
    try:
        client = farm.Client(farm_server.addr, timeout=5)
        task = client.submit("nobody", background=True, unique=KEY)  # the connection made
        sys.setprofile(hook)
        try:
            with pytest.raises(TimeLimit):
                ASKS[ask](client, task)
        finally:
            sys.setprofile(None)
        assert shots == [ask]
        for data in (b"two", b"three"):
            assert client.echo(data) == data
        assert client.status_unique(KEY).known
        client.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "error",
    ERRORS,
    ids=["struct.error", "MemoryError", "UnicodeEncodeError"],
)
def test_a_submit_whose_packet_cannot_be_built_leaves_the_connections_other_jobs(
    farm_server: Server, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    # Raised as the packet was built, before anything was queued, it closed the connection
    # all the same: the job held on it failed, "ServerUnavailable: job held ... lost its
    # connection: an exception cut short a read or a send on it".
    unbuildable_packets(monkeypatch, error)
    release = threading.Event()
    with serving(farm_server.addr, {"held": held(release)}):
        client = farm.Client(farm_server.addr, timeout=10)
        first = client.submit("held")
        try:
            with pytest.raises(error):
                client.call(UNBUILDABLE, b"x")
        finally:
            release.set()
        assert client.wait(first) == b"held"
        client.close()


@pytest.mark.timeout(60)
def test_a_job_too_large_for_a_packet_is_a_value_error_that_leaves_the_connection(
    farm_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # struct.error ("'I' format requires 0 <= number <= 4294967295") for a payload of 4 GiB,
    # and the connection closed with its other jobs. The limit made small here: 4 GiB is
    # not allocated (tests/unit/test_protocol.py tries the real one).
    monkeypatch.setattr(farm.protocol.codec, "MAX_BODY", 1000, raising=False)
    release = threading.Event()
    with serving(farm_server.addr, {"held": held(release)}):
        client = farm.Client(farm_server.addr, timeout=10)
        first = client.submit("held")
        try:
            with pytest.raises(ValueError, match=r"SUBMIT_JOB_BG.* 1009 bytes"):
                client.submit("nobody", b"x" * 1000, background=True, unique="k")
        finally:
            release.set()
        assert client.wait(first) == b"held"
        client.close()
