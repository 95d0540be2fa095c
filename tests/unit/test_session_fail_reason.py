"""farm.protocol.client and OPTION_REQ fail-reason (docs/held-grab.md), bytes in: a
WORK_FAIL's reason is read once the server agreed, a stray NUL of gearmand's is no reason,
and the option's ERROR (gearmand's UNKNOWN_OPTION) is no refusal of the connection."""

from __future__ import annotations

from farm.errors import JobFailed, ServerError
from farm.protocol import OPTION_FAIL_REASON, encode_res
from farm.protocol import PacketType as PT
from farm.protocol.client import ClientSession, Task
from farm.protocol.codec import frame_res


def created(s: ClientSession, handle: bytes = b"H:1") -> Task[None]:
    task: Task[None] = Task("f", b"x")
    s.submit(task)
    s.receive(encode_res(PT.JOB_CREATED, handle))
    return task


def test_a_reason_the_server_agreed_to_give_is_in_the_error() -> None:
    s = ClientSession("a:1")
    s.option(OPTION_FAIL_REASON.decode())
    s.receive(encode_res(PT.OPTION_RES, OPTION_FAIL_REASON))
    task = created(s)
    s.receive(frame_res(PT.WORK_FAIL, b"H:1", b"it ran past its worker's timeout of 2 s"))
    assert isinstance(task.error, JobFailed) and task.done
    assert task.error.reason == "it ran past its worker's timeout of 2 s"
    assert str(task.error) == (
        "job H:1 (f) failed: the server failed it: it ran past its worker's timeout of 2 s"
    )
    plain = created(s, b"H:2")  # a worker's own WORK_FAIL: the handle alone
    s.receive(encode_res(PT.WORK_FAIL, b"H:2"))
    assert isinstance(plain.error, JobFailed) and plain.error.reason is None


def test_without_the_option_what_follows_a_nul_is_no_reason() -> None:
    # gearmand's WORK_FAIL to a client that did not ask for exceptions has a stray NUL
    # after the handle (docs/gearmand-probes.md): the job is still the handle's.
    s = ClientSession("a:1")
    task = created(s)
    s.receive(frame_res(PT.WORK_FAIL, b"H:1", b""))  # as gearmand frames it
    assert isinstance(task.error, JobFailed) and task.done
    assert task.error.reason is None and "the server failed it:" not in str(task.error)


def test_the_options_error_is_no_refusal_but_a_submits_is() -> None:
    s = ClientSession("a:1")
    option = s.option(OPTION_FAIL_REASON.decode())
    s.receive(encode_res(PT.ERROR, b"UNKNOWN_OPTION", b"Server does not recognize given option"))
    assert isinstance(option.error, ServerError) and option.done
    assert not s.refused and not s.fail_reason
    task: Task[None] = Task("f", b"x")
    s.submit(task)
    s.receive(encode_res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full"))
    assert isinstance(task.error, ServerError) and s.refused
