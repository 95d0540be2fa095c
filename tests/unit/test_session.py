"""farm.protocol.client, bytes in and no sockets: replies matched in order, WORK_* by handle."""

from __future__ import annotations

import pytest

from farm.errors import JobException, JobFailed, ServerError
from farm.protocol import Decoder, ProtocolError, copies, encode_res
from farm.protocol import PacketType as PT
from farm.protocol.client import (
    ClientSession,
    JobCreated,
    JobData,
    JobEnded,
    JobProgress,
    JobStatus,
    JobWarning,
    ServerErrorNotice,
    Task,
)


def sent(session: ClientSession) -> list[tuple[int, tuple[bytes, ...]]]:
    return [(p.type, p.args) for p in Decoder().feed(session.data_to_send())]  # type: ignore[union-attr]


def test_submit_frames_the_packet_for_priority_and_background() -> None:
    s = ClientSession("a:1")
    s.submit(Task("rev", b"abc", unique="u", priority="high"))
    s.submit(Task("rev", b"x", priority="low", background=True))
    s.submit(Task("rev", b"y", when=1700000000, background=True))
    assert sent(s) == [
        (PT.SUBMIT_JOB_HIGH, (b"rev", b"u", b"abc")),
        (PT.SUBMIT_JOB_LOW_BG, (b"rev", b"", b"x")),
        (PT.SUBMIT_JOB_EPOCH, (b"rev", b"", b"1700000000", b"y")),
    ]
    assert s.data_to_send() == b""


def test_job_created_goes_to_submits_in_order_and_results_by_handle() -> None:
    s = ClientSession("a:1")
    t1, t2 = Task("f", b"1"), Task("f", b"2")
    s.submit(t1)
    s.submit(t2)
    events = s.receive(encode_res(PT.JOB_CREATED, b"H:1") + encode_res(PT.JOB_CREATED, b"H:2"))
    assert [e.task for e in events] == [t1, t2] and all(type(e) is JobCreated for e in events)
    assert (t1.handle, t2.handle) == ("H:1", "H:2")
    # results arrive in any order
    s.receive(encode_res(PT.WORK_COMPLETE, b"H:2", b"two"))
    assert t2.done and t2.result == b"two" and not t1.done
    s.receive(encode_res(PT.WORK_COMPLETE, b"H:1", b"one"))
    assert t1.result == b"one" and not s.busy


def test_a_submit_no_byte_of_which_left_is_withdrawn_and_owes_no_answer() -> None:
    s = ClientSession("a:1")
    t1, t2 = Task("f", b"1"), Task("f", b"2")
    s.submit(t1)
    s.submit(t2)
    unsent = bytearray(s.data_to_send()[5:])  # the socket took 5 bytes of t1's packet
    assert not s.withdraw(t1, unsent), "t1 is not the last request"
    whole = len(unsent)
    assert s.withdraw(t2, unsent)
    assert len(unsent) < whole and not s.withdraw(t2, unsent)
    assert not s.withdraw(t1, unsent[:3]), "part of t1 left: it stays"
    events = s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    assert [e.task for e in events] == [t1], "the next answer is t1's, not the withdrawn one's"


def test_data_to_send_with_a_limit_hands_out_whole_requests_oldest_first() -> None:
    s = ClientSession("a:1")
    tasks = [Task("f", bytes([65 + i]) * 100) for i in range(3)]
    for t in tasks:
        s.submit(t)
    size = s.queued // 3
    first = s.data_to_send(size + 10)
    assert len(first) == size and s.queued == 2 * size, "one whole request, not a part"
    assert len(s.data_to_send(1)) == size, "at least one request, however small the limit"
    assert [p.args[2] for p in Decoder().feed(s.data_to_send(10_000))] == [b"C" * 100]  # type: ignore[union-attr]
    assert s.queued == 0


def test_a_queued_request_is_withdrawn_from_the_middle_and_owes_no_answer() -> None:
    s = ClientSession("a:1")
    t1, t2, t3 = Task("f", b"1"), Task("f", b"2"), Task("f", b"3")
    s.submit(t1)
    s.data_to_send()  # t1 left
    echo = s.echo(b"ping")
    s.submit(t2)
    s.submit(t3)
    assert not s.withdraw_queued(t1), "t1 left already"
    assert s.withdraw_queued(t2)
    assert not s.withdraw_queued(t2)
    assert sent(s) == [(PT.ECHO_REQ, (b"ping",)), (PT.SUBMIT_JOB, (b"f", b"", b"3"))]
    events = s.receive(
        encode_res(PT.JOB_CREATED, b"H:1")
        + encode_res(PT.ECHO_RES, b"ping")
        + encode_res(PT.JOB_CREATED, b"H:3")
    )
    assert [e.task for e in events] == [t1, t3] and echo.result == b"ping"
    assert t2.handle is None


def test_background_task_is_done_at_job_created() -> None:
    s = ClientSession()
    t = Task("f", b"", background=True)
    s.submit(t)
    s.receive(encode_res(PT.JOB_CREATED, b"H:9"))
    assert t.done and t.handle == "H:9" and not s.busy


def test_progress_data_warning_exception_and_fail() -> None:
    s = ClientSession()
    t, u = Task("f", b""), Task("g", b"")
    s.submit(t)
    s.submit(u)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1") + encode_res(PT.JOB_CREATED, b"H:2"))
    events = s.receive(
        encode_res(PT.WORK_STATUS, b"H:1", b"3", b"10")
        + encode_res(PT.WORK_DATA, b"H:1", b"chunk")
        + encode_res(PT.WORK_WARNING, b"H:1", b"careful")
        + encode_res(PT.WORK_EXCEPTION, b"H:1", b"ValueError: bad input")
        + encode_res(PT.WORK_FAIL, b"H:2")
    )
    assert events[0] == JobProgress(task=t, numerator=3, denominator=10)
    assert events[1] == JobData(task=t, data=b"chunk")
    assert events[2] == JobWarning(task=t, data=b"careful")
    assert type(events[3]) is JobEnded and isinstance(t.error, JobException)
    assert t.error.text == "ValueError: bad input"
    assert isinstance(u.error, JobFailed) and u.done


def test_coalesced_submits_on_one_connection_both_get_the_result_once() -> None:
    s = ClientSession()
    a, b = Task("f", b"x", unique="k"), Task("f", b"y", unique="k")
    s.submit(a)
    s.submit(b)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1") * 2)
    ended = s.receive(encode_res(PT.WORK_COMPLETE, b"H:1", b"r") * 2)  # gearmand sends one each
    assert [e.task for e in ended] == [a, b] and a.result == b.result == b"r"


def test_queries_are_answered_in_order_with_errors_in_place() -> None:
    s = ClientSession()
    opt = s.option("exceptions")
    echo = s.echo(b"hi")
    st = s.get_status("H:1")
    t = Task("f", b"")
    s.submit(t)
    su = s.get_status_unique("u")
    s.receive(
        encode_res(PT.OPTION_RES, b"exceptions")
        + encode_res(PT.ECHO_RES, b"hi")
        + encode_res(PT.STATUS_RES, b"H:1", b"1", b"0", b"2", b"5")
        + encode_res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")
        + encode_res(PT.STATUS_RES_UNIQUE, b"u", b"1", b"1", b"0", b"0", b"2")
    )
    assert opt.result == "exceptions" and echo.result == b"hi"
    assert st.result.status == JobStatus(True, False, 2, 5)  # type: ignore[union-attr]
    assert isinstance(t.error, ServerError) and t.error.code == "QUEUE_ERROR" and t.done
    assert su.result.status == JobStatus(True, True, 0, 0)  # type: ignore[union-attr]


def test_a_job_handle_that_is_not_utf8_keeps_its_bytes() -> None:
    """A handle is the server's opaque bytes (gearmand's holds its host name): one that is
    not UTF-8 raised UnicodeDecodeError out of the client's call, as no farm error does."""
    s = ClientSession()
    t = Task("f", b"")
    s.submit(t)
    s.receive(encode_res(PT.JOB_CREATED, b"H:\xff:1"))
    s.data_to_send()
    s.get_status(t.handle or "")
    assert sent(s) == [(PT.GET_STATUS, (b"H:\xff:1",))]  # the bytes it came as
    s.receive(encode_res(PT.WORK_STATUS, b"H:\xff:1", b"1", b"2"))
    s.receive(encode_res(PT.STATUS_RES, b"H:\xff:1", b"1", b"1", b"1", b"2"))
    s.receive(encode_res(PT.WORK_COMPLETE, b"H:\xff:1", b"done"))
    assert t.done and t.result == b"done"


def test_unsolicited_error_is_an_event_and_a_mismatched_reply_a_protocol_error() -> None:
    s = ClientSession()
    assert s.receive(encode_res(PT.ERROR, b"X", b"y")) == [ServerErrorNotice(code="X", text="y")]
    s.echo(b"a")
    with pytest.raises(ProtocolError):
        s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    with pytest.raises(ProtocolError):
        ClientSession().receive(encode_res(PT.NOOP))


def test_a_mismatched_reply_names_the_request_it_answered_in_its_error() -> None:
    # These texts reach users (a server that broke the protocol): they said
    # "<farm.protocol.tasks.Query object at 0x...>" and "a reply of type 16".
    s = ClientSession()
    s.echo(b"a")
    with pytest.raises(
        ProtocolError,
        match="^JOB_CREATED arrived where the answer to"
        r" <Query awaiting ECHO_RES> was due$",
    ):
        s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    s = ClientSession()
    s.get_status_unique("k")
    with pytest.raises(
        ProtocolError,
        match=r"^ECHO_RES arrived where the answer to"
        r" <Query awaiting STATUS_RES_UNIQUE> was due$",
    ):
        s.receive(encode_res(PT.ECHO_RES, b"a"))


def test_abandoned_task_drops_later_packets() -> None:
    s = ClientSession()
    t = Task("f", b"")
    s.submit(t)
    s.abandon(t)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    assert s.receive(encode_res(PT.WORK_COMPLETE, b"H:1", b"late")) == []
    assert not t.done and not s.busy


def test_bytes_split_anywhere_decode_the_same() -> None:
    wire = encode_res(PT.JOB_CREATED, b"H:1") + encode_res(PT.WORK_COMPLETE, b"H:1", b"res\0ult")
    for cut in range(len(wire)):
        s = ClientSession()
        t = Task("f", b"")
        s.submit(t)
        s.receive(wire[:cut])
        s.receive(wire[cut:])
        assert t.result == b"res\0ult"


def test_a_job_joined_twice_gives_each_task_each_packet_once() -> None:
    """Two submits of one unique on one connection share a handle; the server (farm and
    gearmand alike) sends every packet once per submit, and each task hears one copy."""
    s = ClientSession()
    a, b = Task("f", b"x", unique="k"), Task("f", b"x", unique="k")
    s.submit(a)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    first = s.receive(encode_res(PT.WORK_DATA, b"H:1", b"d1"))  # before b joined: a's alone
    assert [(type(e).__name__, e.task) for e in first] == [("JobData", a)]
    s.submit(b)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    twice = (
        encode_res(PT.WORK_DATA, b"H:1", b"d2") * 2
        + encode_res(PT.WORK_STATUS, b"H:1", b"1", b"2") * 2
    )
    events = s.receive(twice)
    assert sorted((type(e).__name__, id(e.task)) for e in events) == sorted(
        [("JobData", id(a)), ("JobData", id(b)), ("JobProgress", id(a)), ("JobProgress", id(b))]
    )
    ended = s.receive(encode_res(PT.WORK_COMPLETE, b"H:1", b"R") * 2)
    assert {id(e.task) for e in ended} == {id(a), id(b)} and len(ended) == 2
    assert a.result == b.result == b"R" and not s.busy


def test_a_task_given_up_keeps_its_copies_of_the_jobs_packets_from_the_others() -> None:
    """call(unique=k, timeout=...) gave up; a second call with k joins the same job on the
    same connection. The server sends each packet once per submit, abandoned or not: the
    second task must hear each packet once, not twice (review of the change)."""
    s = ClientSession()
    a, b = Task("f", b"x", unique="k"), Task("f", b"x", unique="k")
    s.submit(a)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    s.abandon(a)
    s.submit(b)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    events = s.receive(encode_res(PT.WORK_DATA, b"H:1", b"d") * 2)
    assert [(type(e).__name__, e.task) for e in events] == [("JobData", b)]
    ended = s.receive(encode_res(PT.WORK_COMPLETE, b"H:1", b"R") * 2)
    assert [e.task for e in ended] == [b] and b.result == b"R" and not a.done
    # Given up before its JOB_CREATED: the same.
    c, d = Task("f", b"x", unique="j"), Task("f", b"x", unique="j")
    s.submit(c)
    s.abandon(c)
    s.submit(d)
    s.receive(encode_res(PT.JOB_CREATED, b"H:2") * 2)
    events = s.receive(encode_res(PT.WORK_STATUS, b"H:2", b"1", b"2") * 2)
    assert [e.task for e in events] == [d]


def test_a_task_that_joins_late_hears_each_later_packet_once() -> None:
    """Counts differ by when a task joined: a retry after a timeout (packets came meanwhile
    for the abandoned one), a third task joining after three rounds. Each later packet
    reaches each live task once (review of the change)."""
    s = ClientSession()
    a = Task("f", b"x", unique="k")
    s.submit(a)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    s.abandon(a)
    s.receive(encode_res(PT.WORK_DATA, b"H:1", b"d0") * 3)  # three rounds of one copy
    b = Task("f", b"x", unique="k")
    s.submit(b)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    events = s.receive(
        encode_res(PT.WORK_DATA, b"H:1", b"d1") * 2 + encode_res(PT.WORK_DATA, b"H:1", b"d2") * 2
    )
    assert [(e.task, e.data) for e in events] == [(b, b"d1"), (b, b"d2")]
    c, d, e = (Task("g", b"x", unique="j") for _ in range(3))
    for task in (c, d):
        s.submit(task)
        s.receive(encode_res(PT.JOB_CREATED, b"H:2"))
    s.receive(encode_res(PT.WORK_DATA, b"H:2", b"r") * 6)  # three rounds of two copies
    s.submit(e)
    s.receive(encode_res(PT.JOB_CREATED, b"H:2"))
    got = s.receive(encode_res(PT.WORK_DATA, b"H:2", b"late") * 3)
    assert sorted(id(ev.task) for ev in got) == sorted(map(id, (c, d, e)))


def test_given_up_submits_are_remembered_for_the_newest_jobs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long-lived client's calls that timed out on jobs that never end each kept their
    task until the connection closed. Now a count per job is kept, for MAX_SILENT jobs, the
    oldest forgotten first; a retry on a kept job's key still hears each packet once."""
    monkeypatch.setattr(copies, "MAX_SILENT", 3)
    s = ClientSession()
    for n in range(5):
        given_up = Task("f", b"x", unique=f"k{n}")
        s.submit(given_up)
        if n % 2:
            s.abandon(given_up)  # before its JOB_CREATED
        s.receive(encode_res(PT.JOB_CREATED, b"H:%d" % n))
        s.abandon(given_up)
    assert list(s._copies._silent) == ["H:2", "H:3", "H:4"]
    retry = Task("f", b"x", unique="k2")
    s.submit(retry)
    s.receive(encode_res(PT.JOB_CREATED, b"H:2"))
    events = s.receive(encode_res(PT.WORK_DATA, b"H:2", b"d") * 2)
    assert [(e.task, e.data) for e in events] == [(retry, b"d")]
    assert s.receive(encode_res(PT.WORK_COMPLETE, b"H:0", b"late")) == []
    s.connection_lost()
    assert not s._copies._silent


def test_a_call_on_a_forgotten_given_up_jobs_key_hears_its_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_SILENT, what docs/client.md says is lost: a call on the key of a job whose
    given-up submit was forgotten hears each packet once more per such submit."""
    monkeypatch.setattr(copies, "MAX_SILENT", 1)
    s = ClientSession()
    for n in range(2):
        given_up = Task("f", b"x", unique=f"k{n}")
        s.submit(given_up)
        s.receive(encode_res(PT.JOB_CREATED, b"H:%d" % n))
        s.abandon(given_up)
    assert list(s._copies._silent) == ["H:1"]  # H:0's given-up submit forgotten
    retry = Task("f", b"x", unique="k0")
    s.submit(retry)
    s.receive(encode_res(PT.JOB_CREATED, b"H:0"))
    events = s.receive(encode_res(PT.WORK_DATA, b"H:0", b"d") * 2)
    assert [(e.task, e.data) for e in events] == [(retry, b"d"), (retry, b"d")]


def test_a_reply_over_the_limit_fails_its_job_and_the_stream_goes_on() -> None:
    # gearmand passes on a worker's result of any size; past what a client reads (64 MiB;
    # 1 KiB here) the client dropped the connection and failed every job on it as "went
    # away" (a unique-keyed one was sent again, to run again). Now that job fails, its
    # body is read past in pieces and never buffered, and the next packets decode.
    s = ClientSession("a:1")
    s._decoder.max_packet = 1024
    big, small = Task("big", b""), Task("small", b"")
    s.submit(big)
    s.submit(small)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1") + encode_res(PT.JOB_CREATED, b"H:2"))
    wire = encode_res(PT.WORK_COMPLETE, b"H:1", b"x" * 5000)
    wire += encode_res(PT.WORK_DATA, b"H:1", b"late")  # a later packet of the failed job
    wire += encode_res(PT.WORK_COMPLETE, b"H:2", b"fine")
    events: list[object] = []
    for at in range(0, len(wire), 700):
        events += s.receive(wire[at : at + 700])
        assert s._decoder.buffered < 1024, "the oversized body is not buffered"
    assert [(type(e), e.task) for e in events] == [(JobEnded, big), (JobEnded, small)]  # type: ignore[attr-defined]
    assert isinstance(big.error, JobException) and "WORK_COMPLETE of 5004 bytes" in str(big.error)
    assert small.result == b"fine" and not s.busy
    # One that names no job (an ECHO_RES) still breaks the connection, as before.
    s.echo(b"")
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        s.receive(encode_res(PT.ECHO_RES, b"y" * 2000))
