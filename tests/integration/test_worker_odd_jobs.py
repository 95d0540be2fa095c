"""farm.Worker given what a client or a job function may hand it that is not plain text: a
unique key that is not UTF-8, an exception whose text cannot be sent as it is. The job ends
with an answer, and the worker serves on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import farm
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.serving import serving, working


def _unique_bytes(job: Any) -> bytes:
    return job.unique.encode("utf-8", "surrogateescape")


def test_a_unique_key_that_is_not_utf8_reaches_the_function_and_the_worker_serves_on(
    any_server, peer_factory: Callable[[str], Peer]
) -> None:
    # PHP's GearmanClient and the gearman CLI send whatever bytes they are given as the
    # unique key (a raw digest, a Latin-1 name); decoding it strictly raised out of work(),
    # the worker died and the job went to the next worker, to kill it too.
    with serving(any_server.addr, {"unique": _unique_bytes}):
        client = peer_factory(any_server.addr)
        client.send(T.SUBMIT_JOB, b"unique", b"\xff\xfe-key", b"x")
        handle = client.expect(T.JOB_CREATED).args[0]
        assert tuple(client.expect(T.WORK_COMPLETE).args) == (handle, b"\xff\xfe-key")
        with farm.Client(any_server.addr) as c:
            assert c.call("unique", b"y", unique="next", timeout=10) == b"next"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


def _raise_surrogates(job: Any) -> bytes:
    raise ValueError(b"no file \xff".decode("utf-8", "surrogateescape"))  # os.fsdecode's kind


def _raise_unprintable(job: Any) -> bytes:
    raise _Unprintable()


@pytest.mark.parametrize(
    ("function", "text"),
    [
        (_raise_surrogates, "ValueError: no file \\udcff"),
        (_raise_unprintable, "_Unprintable: <exception str() failed>"),  # as traceback says
    ],
)
def test_an_exception_whose_text_cannot_be_sent_as_it_is_still_ends_the_job(
    farm_server, function: Callable[[Any], bytes], text: str
) -> None:
    # Its text was encoded strictly, or str() called bare, in the worker's own handler:
    # the error raised out of work(), the worker died and the client waited on.
    functions = {"raises": function, "echo": lambda job: job.data}
    with serving(farm_server.addr, functions), farm.Client(farm_server.addr) as c:
        with pytest.raises(farm.JobException) as raised:
            c.call("raises", b"x", timeout=10)
        assert raised.value.text == text
        assert c.call("echo", b"still here", timeout=10) == b"still here"


def test_a_job_that_changes_what_its_worker_serves_ends_once(any_server) -> None:
    # unregister_all() then register() from inside a job sent RESET_ABILITIES before the
    # job's answer: both servers put a job whose worker resets back in its queue, so its
    # WORK_COMPLETE was dropped and the client waited for a worker that no longer came.
    worker = farm.Worker(any_server.addr)

    def switch(job: Any) -> bytes:
        worker.unregister_all()
        worker.register("after", lambda job: b"after " + job.data)
        return b"switched"

    worker.register("before", switch)
    with working(worker), farm.Client(any_server.addr) as c:
        assert c.call("before", b"x", timeout=10) == b"switched"
        assert c.call("after", b"y", timeout=10) == b"after y"


def test_a_function_name_that_is_not_utf8_is_served_by_its_bytes(any_server) -> None:
    # A job's function reaches a job as os.fsdecode gives it (b"f\xff" as "f\udcff"), and
    # farm's clients send such a name as its bytes; registering it killed work()'s thread
    # with UnicodeEncodeError ("surrogates not allowed"), and its jobs waited for ever.
    name = b"f\xff".decode("utf-8", "surrogateescape")
    fns = {name: lambda job: job.function.encode("utf-8", "surrogateescape")}
    with serving(any_server.addr, fns), farm.Client(any_server.addr) as c:
        assert c.call(name, b"x", timeout=10) == b"f\xff"
    worker = farm.Worker(any_server.addr)
    with pytest.raises(ValueError, match="no byte"):
        worker.register("\ud800", _unique_bytes)  # a surrogate that stands for no byte


def test_a_function_name_spelled_with_surrogates_for_utf8_bytes_is_served(any_server) -> None:
    # "\udcc3\udca9" stands for the bytes of "é": register() sent CAN_DO with those bytes,
    # jobs came as "é" (how job.function decodes them) and failed with LookupError "this
    # worker has no function 'é'". It is registered under the name its jobs come by.
    spelled = b"\xc3\xa9".decode("ascii", "surrogateescape")
    assert spelled == "\udcc3\udca9"
    worker = farm.Worker(any_server.addr)
    worker.register(spelled, lambda job: job.function)
    with working(worker), farm.Client(any_server.addr) as c:
        assert c.call("é", b"x", timeout=10) == "é".encode()
        assert c.call(spelled, b"x", timeout=10) == "é".encode()  # the same bytes
    worker.unregister(spelled)  # under either spelling: it is the one function
    with pytest.raises(KeyError):
        worker.unregister("é")
