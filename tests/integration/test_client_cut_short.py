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
from types import FrameType
from typing import Any

import pytest

import farm
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
