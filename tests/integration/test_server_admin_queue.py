"""The admin commands that change the queue, byte for byte as gearmand 1.1.20 prints them:
cancel job, maxqueue, create function and drop function.

``any_server`` tests compare exact bytes (modulo fds, pids, versions and
handles, which are normalised or built from what the server told us);
``farm_server`` tests pin farm's fixes of gearmand bugs (docs/gearmand-probes.md).
"""

from __future__ import annotations

import pytest

from farm.protocol import PacketType as T
from tests.helpers import admintext
from tests.helpers.admintext import submit, sync, worker
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
admin_factory = admintext.admin_factory

# -- cancel job ----------------------------------------------------------------


def test_cancel_unknown_job(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"cancel job H:nowhere:1\n") == b"ERR UNKNOWN_JOB\r\n"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        # gearmand splits at spaces only, and a line that ends in one has a last, empty,
        # word: `cancel job ` names the empty handle, which no job has.
        (b"cancel job \n", b"ERR UNKNOWN_JOB\r\n"),
        (b"cancel job \r\n", b"ERR UNKNOWN_JOB\r\n"),
        (b"CANCEL JOB  \n", b"ERR UNKNOWN_JOB\r\n"),
        (b"cancel job\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
        (b"cancel job\t\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
        (b"cancel job\tH:x:1\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
        (b"cancel foo\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
        # three words or more that are not `cancel job H`: an error, not an unknown command
        (b"cancel foo bar\n", b"ERR UNKNOWN_ERROR\r\n"),
        (b"cancel jobs H:x:1\n", b"ERR UNKNOWN_ERROR\r\n"),
        (b"cancel job H:x:1 \n", b"ERR UNKNOWN_ERROR\r\n"),
    ],
)
def test_cancel_reads_its_words_as_gearmand_does(any_server, admin_factory, line, reply):
    assert admin_factory(any_server).line(line) == reply


def test_cancel_job_with_a_word_more_leaves_the_job(any_server, admin_factory, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f")
    a = admin_factory(any_server)
    assert a.line(b"cancel job " + h + b" \n") == b"ERR UNKNOWN_ERROR\r\n"
    assert a.listing(b"show jobs\n") == h + b"\t0\t0\t0\n.\n"
    assert c.nothing_within(0.1)


def test_cancel_queued_foreground_job(any_server, admin_factory, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f")
    a = admin_factory(any_server)
    assert a.line(b"cancel job " + h + b"\n") == b"OK\r\n"
    assert c.expect(T.WORK_FAIL).args[0].rstrip(b"\0") == h
    w = worker(peer_factory, any_server, "f")
    w.send(T.GRAB_JOB)
    w.expect(T.NO_JOB)


def test_cancel_queued_background_job(any_server, admin_factory, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f", ptype=T.SUBMIT_JOB_BG)
    a = admin_factory(any_server)
    assert a.line(b"cancel job " + h + b"\n") == b"OK\r\n"
    w = worker(peer_factory, any_server, "f")
    w.send(T.GRAB_JOB)
    w.expect(T.NO_JOB)


def test_cancel_running_job_fails_its_client_now(any_server, admin_factory, peer_factory):
    """gearadmin --cancel-job on a running job: OK, and its client hears WORK_FAIL at once
    (the worker runs on; gearmand still forwards its answer later, farm drops it)."""
    c = peer_factory(any_server.addr)
    h = submit(c, "f")
    w = worker(peer_factory, any_server, "f")
    w.send(T.GRAB_JOB)
    assert w.expect(T.JOB_ASSIGN).args[0] == h
    a = admin_factory(any_server)
    assert a.line(b"cancel job " + h + b"\n") == b"OK\r\n"
    assert c.expect(T.WORK_FAIL).args[0].rstrip(b"\0") == h
    w.send(T.WORK_COMPLETE, h, b"late")
    w.send(T.GRAB_JOB)
    w.expect(T.NO_JOB)  # it ran once and is not run again


def test_a_cancelled_running_job_is_not_run_again(farm_server, admin_factory, peer_factory):
    c = peer_factory(farm_server.addr)
    h = submit(c, "f", b"x", b"u1", T.SUBMIT_JOB_BG)
    w = worker(peer_factory, farm_server, "f")
    w.send(T.GRAB_JOB)
    assert w.expect(T.JOB_ASSIGN).args[0] == h
    a = admin_factory(farm_server)
    assert a.line(b"cancel job " + h + b"\n") == b"OK\r\n"
    again = submit(c, "f", b"x", b"u1", T.SUBMIT_JOB_BG)  # a new job, not the cancelled one
    assert again != h
    w.close()  # its worker dies: a cancelled job is forgotten, not requeued
    wait_for("the job gone", lambda: h not in a.listing(b"show jobs\n"))
    other = worker(peer_factory, farm_server, "f")
    other.send(T.GRAB_JOB)
    assert other.expect(T.JOB_ASSIGN).args[0] == again
    other.send(T.GRAB_JOB)
    other.expect(T.NO_JOB)


def test_cancel_removes_job_from_status(farm_server, admin_factory, peer_factory):
    # farm removes it at once; gearmand keeps counting it (IGNORED) until a grab.
    c = peer_factory(farm_server.addr)
    h = submit(c, "f", ptype=T.SUBMIT_JOB_BG)
    a = admin_factory(farm_server)
    assert a.line(b"cancel job " + h + b"\n") == b"OK\r\n"
    assert a.listing(b"show jobs\n") == b".\n"
    assert a.listing(b"status\n") in (b".\n", b"f\t0\t0\t0\n.\n")
    assert a.line(b"cancel job " + h + b"\n") == b"ERR UNKNOWN_JOB\r\n"


# -- maxqueue ------------------------------------------------------------------


def test_maxqueue_total(any_server, admin_factory, peer_factory):
    worker(peer_factory, any_server, "m")  # gearmand only limits existing functions
    a = admin_factory(any_server)
    assert a.line(b"maxqueue m 2\n") == b"OK\r\n"
    c = peer_factory(any_server.addr)
    submit(c, "m", b"1")
    submit(c, "m", b"2")
    for ptype in (T.SUBMIT_JOB, T.SUBMIT_JOB_HIGH, T.SUBMIT_JOB_BG, T.SUBMIT_JOB_LOW_BG):
        c.send(ptype, "m", "", "3")
        err = c.expect(T.ERROR)
        assert err.args[0] == b"QUEUE_ERROR", err.args
    assert a.listing(b"status\n") == b"m\t2\t0\t1\n.\n"
    assert a.line(b"maxqueue m\n") == b"OK\r\n"  # back to unlimited
    submit(c, "m", b"4")
    assert a.line(b"maxqueue m 0\n") == b"OK\r\n"  # 0 is unlimited too
    submit(c, "m", b"5")
    assert a.listing(b"status\n") == b"m\t4\t0\t1\n.\n"


def test_maxqueue_per_priority(any_server, admin_factory, peer_factory):
    worker(peer_factory, any_server, "n")
    a = admin_factory(any_server)
    assert a.line(b"maxqueue n 1 0 2\n") == b"OK\r\n"
    c = peer_factory(any_server.addr)
    submit(c, "n", ptype=T.SUBMIT_JOB_HIGH)
    c.send(T.SUBMIT_JOB_HIGH, "n", "", "h2")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
    submit(c, "n", ptype=T.SUBMIT_JOB_LOW)
    for _ in range(3):
        submit(c, "n")  # NORMAL: 0 = unlimited
    # Each priority's limit is compared with the function's total (5 jobs): a LOW is refused.
    c.send(T.SUBMIT_JOB_LOW, "n", "", "l2")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"


def test_maxqueue_with_two_sizes_bounds_high_and_normal_and_leaves_low(
    any_server, admin_factory, peer_factory
):
    """As gearmand: `maxqueue F H N` sets HIGH and NORMAL, and LOW (not given) is unlimited;
    only `maxqueue F N` applies one size to every priority (farm took `1 2` as `1` for all)."""
    worker(peer_factory, any_server, "two")
    a = admin_factory(any_server)
    assert a.line(b"maxqueue two 1 2\n") == b"OK\r\n"
    c = peer_factory(any_server.addr)
    submit(c, "two", ptype=T.SUBMIT_JOB_HIGH)
    c.send(T.SUBMIT_JOB_HIGH, "two", "", "h2")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
    submit(c, "two")  # NORMAL: 2 allowed, 1 job so far
    c.send(T.SUBMIT_JOB, "two", "", "n2")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
    for _ in range(3):
        submit(c, "two", ptype=T.SUBMIT_JOB_LOW)  # LOW: no limit


def test_maxqueue_counts_running_jobs_too(any_server, admin_factory, peer_factory):
    """As gearmand: `maxqueue F 1` with one job running refuses the next (a cap some use
    to run one job of F at a time)."""
    w = worker(peer_factory, any_server, "run1")
    a = admin_factory(any_server)
    assert a.line(b"maxqueue run1 1\n") == b"OK\r\n"
    c = peer_factory(any_server.addr)
    h = submit(c, "run1", b"a")
    w.send(T.GRAB_JOB)
    assert w.expect(T.JOB_ASSIGN).args[0] == h  # running, nothing queued
    c.send(T.SUBMIT_JOB, "run1", "", "b")
    assert c.expect(T.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")
    w.send(T.WORK_COMPLETE, h, b"")
    assert c.expect(T.WORK_COMPLETE).args[0] == h
    submit(c, "run1", b"c")  # the job ended: room again


def test_maxqueue_reads_its_sizes_as_atoi_does(any_server, admin_factory, peer_factory):
    """As gearmand, which reads each size with atoi: its leading digits (`2x` is 2, `1.9`
    is 1), and 0, no limit, when there are none (`x`); farm answered INVALID_ARGUMENTS."""
    worker(peer_factory, any_server, "ato")
    a = admin_factory(any_server)
    c = peer_factory(any_server.addr)
    assert a.line(b"maxqueue ato 2x\n") == b"OK\r\n"
    submit(c, "ato")
    submit(c, "ato")
    c.send(T.SUBMIT_JOB, "ato", "", "3")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
    assert a.line(b"maxqueue ato x\n") == b"OK\r\n"  # no limit
    submit(c, "ato")
    assert a.line(b"maxqueue ato " + b"9" * 5000 + b"\n") == b"OK\r\n"  # past int()'s digits
    submit(c, "ato")
    assert a.line(b"maxqueue ato 1.9 x +2\n") == b"OK\r\n"  # HIGH 1, NORMAL none, LOW 2
    c.send(T.SUBMIT_JOB_HIGH, "ato", "", "h")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
    submit(c, "ato")
    c.send(T.SUBMIT_JOB_LOW, "ato", "", "l")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"


def test_queue_error_text(any_server, admin_factory, peer_factory):
    worker(peer_factory, any_server, "m")
    a = admin_factory(any_server)
    assert a.line(b"maxqueue m 1\n") == b"OK\r\n"
    c = peer_factory(any_server.addr)
    submit(c, "m")
    c.send(T.SUBMIT_JOB, "m", "", "x")
    assert c.expect(T.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")
    sync(c)


def test_maxqueue_without_function(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"maxqueue\n") == (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
        b"maxqueue\r\n"
    )


# -- create / drop function ----------------------------------------------------


def test_create_function(farm_server, admin_factory):
    # gearmand 1.1.20 creates a function with an empty name (bug); farm creates it.
    a = admin_factory(farm_server)
    assert a.line(b"create function f\n") == b"OK\r\n"
    assert a.listing(b"status\n") == b"f\t0\t0\t0\n.\n"
    assert a.listing(b"prioritystatus\n") == b"f\t0\t0\t0\t0\n.\n"
    assert a.line(b"drop function f\n") == b"OK\r\n"
    assert a.listing(b"status\n") == b".\n"


def test_create_function_answers_ok(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"create function f\n") == b"OK\r\n"
    assert a.line(b"create function\n") == (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"
    )


def test_drop_function(any_server, admin_factory, peer_factory):
    a = admin_factory(any_server)
    assert a.line(b"drop function nope\n") == b"ERR function not found\r\n"
    c = peer_factory(any_server.addr)
    h = submit(c, "q")
    w = worker(peer_factory, any_server, "q")
    w.send(T.GRAB_JOB)
    w.expect(T.JOB_ASSIGN)
    assert a.line(b"drop function q\n") == (
        b"ERR there are still connected workers or executing clients\r\n"
    )
    w.send(T.WORK_COMPLETE, h, b"r")
    c.expect(T.WORK_COMPLETE)
    w.close()
    wait_for("the worker's close", lambda: a.listing(b"status\n") == b"q\t0\t0\t0\n.\n")
    assert a.line(b"drop function q\n") == b"OK\r\n"
    assert a.listing(b"status\n") == b".\n"
    assert a.line(b"drop function q\n") == b"ERR function not found\r\n"
    assert a.line(b"drop function\n") == (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+drop\r\n"
    )
