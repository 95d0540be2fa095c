"""The admin text protocol, byte for byte as gearmand 1.1.20 prints it.

``any_server`` tests compare exact bytes (modulo fds, pids, versions and
handles, which are normalised or built from what the server told us);
``farm_server`` tests pin farm's fixes of gearmand bugs (docs/gearmand-probes.md).
"""

from __future__ import annotations

import re
import socket

import pytest

from farm.protocol import PacketType as T
from farm.protocol import encode_req
from farm.version import __version__
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, connect, start_farm_server
from tests.helpers.waiting import wait_for

# -- helpers -------------------------------------------------------------------


class Admin:
    """A raw admin connection that returns replies as exact bytes."""

    def __init__(self, srv: Server) -> None:
        self.sock = connect(srv.addr, timeout=10)
        self.buf = b""

    def _read_until(self, done) -> bytes:
        while not done(self.buf):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; got {self.buf!r}")
            self.buf += data
        return self.buf

    def line(self, cmd: bytes) -> bytes:
        """A one-line reply (OK ..., ERR ...)."""
        self.sock.sendall(cmd)
        self._read_until(lambda b: b"\n" in b)
        reply, _, self.buf = self.buf.partition(b"\n")
        return reply + b"\n"

    def listing(self, cmd: bytes) -> bytes:
        """A list reply ending in a `.` line."""
        self.sock.sendall(cmd)
        self._read_until(lambda b: b == b".\n" or b"\n.\n" in b or b.startswith(b"ERR"))
        if self.buf.startswith(b".\n"):
            reply, self.buf = b".\n", self.buf[2:]
            return reply
        if self.buf.startswith(b"ERR"):
            return self.line(b"")
        idx = self.buf.index(b"\n.\n") + 3
        reply, self.buf = self.buf[:idx], self.buf[idx:]
        return reply

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def admin_factory():
    conns: list[Admin] = []

    def make(srv: Server) -> Admin:
        a = Admin(srv)
        conns.append(a)
        return a

    yield make
    for a in conns:
        a.close()


def sync(peer: Peer) -> None:
    peer.send(T.ECHO_REQ, b"sync")
    assert peer.expect(T.ECHO_RES).args == (b"sync",)


def submit(c: Peer, func: str, data: bytes = b"x", unique: bytes = b"", ptype=T.SUBMIT_JOB):
    c.send(ptype, func, unique, data)
    return c.expect(T.JOB_CREATED).args[0]


def worker(peer_factory, srv: Server, *funcs: str, client_id: str | None = None) -> Peer:
    w = peer_factory(srv.addr)
    if client_id is not None:
        w.send(T.SET_CLIENT_ID, client_id)
    for f in funcs:
        w.send(T.CAN_DO, f)
    sync(w)
    return w


def lines(listing: bytes) -> list[bytes]:
    assert listing.endswith(b".\n"), listing
    return listing[:-2].split(b"\n")[:-1] if listing != b".\n" else []


# -- status / prioritystatus ---------------------------------------------------


def test_status_empty(any_server, admin_factory):
    assert admin_factory(any_server).listing(b"status\n") == b".\n"


def test_status_counts(any_server, admin_factory, peer_factory):
    a = admin_factory(any_server)
    c = peer_factory(any_server.addr)
    submit(c, "f")
    assert a.listing(b"status\n") == b"f\t1\t0\t0\n.\n"
    w = worker(peer_factory, any_server, "f")
    assert a.listing(b"status\n") == b"f\t1\t0\t1\n.\n"
    w.send(T.GRAB_JOB)
    h = w.expect(T.JOB_ASSIGN).args[0]
    assert a.listing(b"status\n") == b"f\t1\t1\t1\n.\n"
    submit(c, "f")
    submit(c, "g")
    assert sorted(lines(a.listing(b"status\n"))) == [b"f\t2\t1\t1", b"g\t1\t0\t0"]
    w.send(T.WORK_COMPLETE, h, b"r")
    c.expect(T.WORK_COMPLETE)
    assert sorted(lines(a.listing(b"status\n"))) == [b"f\t1\t0\t1", b"g\t1\t0\t0"]


def test_status_line_endings_and_case(any_server, admin_factory, peer_factory):
    a = admin_factory(any_server)
    submit(peer_factory(any_server.addr), "f")
    assert a.listing(b"status\r\n") == b"f\t1\t0\t0\n.\n"
    assert a.listing(b"STATUS\n") == b"f\t1\t0\t0\n.\n"
    assert a.listing(b"status extra words\n") == b"f\t1\t0\t0\n.\n"


def test_prioritystatus(any_server, admin_factory, peer_factory):
    a = admin_factory(any_server)
    c = peer_factory(any_server.addr)
    assert a.listing(b"prioritystatus\n") == b".\n"
    submit(c, "f", ptype=T.SUBMIT_JOB_HIGH)
    submit(c, "f", ptype=T.SUBMIT_JOB_LOW_BG)
    submit(c, "f", ptype=T.SUBMIT_JOB_LOW)
    submit(c, "f")
    assert a.listing(b"prioritystatus\n") == b"f\t1\t1\t2\t0\n.\n"
    w = worker(peer_factory, any_server, "f")
    w.send(T.GRAB_JOB)
    w.expect(T.JOB_ASSIGN)
    # queued only: the running HIGH job is no longer counted
    assert a.listing(b"prioritystatus\n") == b"f\t0\t1\t2\t1\n.\n"


# -- workers -------------------------------------------------------------------

WORKER_LINE = re.compile(rb"^\d+ 127\.0\.0\.1 (.+?) :((?: \S+)*)$")


def test_workers(any_server, admin_factory, peer_factory):
    worker(peer_factory, any_server, "f", "g", client_id="wid")
    worker(peer_factory, any_server, "h")
    plain = peer_factory(any_server.addr)
    sync(plain)
    a = admin_factory(any_server)
    rows = lines(a.listing(b"workers\n"))
    # every connection, the admin one included
    assert len(rows) == 4, rows
    parsed = []
    for row in rows:
        m = WORKER_LINE.match(row)
        assert m, row
        parsed.append((m.group(1), sorted(m.group(2).split())))
    assert sorted(parsed) == sorted(
        [(b"wid", [b"f", b"g"]), (b"-", [b"h"]), (b"-", []), (b"-", [])]
    )
    # a connection without functions ends in " :" with no trailing space
    assert sum(1 for r in rows if r.endswith(b" - :")) == 2
    fds = [int(r.split(b" ")[0]) for r in rows]
    assert len(set(fds)) == 4


def test_workers_reflects_cant_do_and_client_id(any_server, admin_factory, peer_factory):
    w = worker(peer_factory, any_server, "f", "g")
    w.send(T.CANT_DO, "f")
    w.send(T.SET_CLIENT_ID, "later")
    sync(w)
    rows = lines(admin_factory(any_server).listing(b"workers\n"))
    assert [r for r in rows if b" later " in r and r.endswith(b" : g")], rows


# -- show jobs / show unique jobs ----------------------------------------------


def test_show_jobs(any_server, admin_factory, peer_factory):
    a = admin_factory(any_server)
    assert a.listing(b"show jobs\n") == b".\n"
    c = peer_factory(any_server.addr)
    h = submit(c, "f", unique=b"u1")
    assert a.listing(b"show jobs\n") == h + b"\t0\t0\t0\n.\n"
    w = worker(peer_factory, any_server, "f")
    w.send(T.GRAB_JOB)
    w.expect(T.JOB_ASSIGN)
    assert a.listing(b"show jobs\n") == h + b"\t0\t0\t0\n.\n", "a running job is still listed"
    w.close()
    # gearmand handles the close on its own thread: grab only once the job is back.
    wait_for("the job back in the queue", lambda: b"f\t1\t0\t0\n" in a.listing(b"status\n"))
    w2 = worker(peer_factory, any_server, "f")
    w2.send(T.GRAB_JOB)
    assert w2.expect(T.JOB_ASSIGN).args[0] == h
    assert a.listing(b"show jobs\n") == h + b"\t1\t0\t0\n.\n", "RETRIES counts the lost worker"
    # python-gearman expects exactly four tab-separated fields
    assert all(len(r.split(b"\t")) == 4 for r in lines(a.listing(b"show jobs\n")))


def test_show_jobs_marks_a_job_that_a_background_submit_joined(
    any_server, admin_factory, peer_factory
):
    """gearmand's fourth field is whether the job went to its queue store, where a background
    submit that joins a foreground job puts nothing: it shows 0, and gearmand drops the job
    with that foreground client. farm makes the job background then (stored, it outlives the
    client: test_background_job_not_cancelled_by_joined_foreground_client) and shows 1. A
    background job that a foreground submit joins shows 1 in both."""
    a = admin_factory(any_server)
    fg, bg = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(fg, "f", unique=b"u1")
    assert submit(bg, "f", unique=b"u1", ptype=T.SUBMIT_JOB_BG) == h
    joined = b"1" if any_server.kind == "farm" else b"0"
    assert a.listing(b"show jobs\n") == h + b"\t0\t0\t" + joined + b"\n.\n"
    h2 = submit(bg, "g", unique=b"u2", ptype=T.SUBMIT_JOB_BG)
    assert submit(fg, "g", unique=b"u2") == h2
    assert h2 + b"\t0\t0\t1\n" in a.listing(b"show jobs\n")


def test_show_jobs_marks_a_running_job_whose_client_left_ignored(
    any_server, admin_factory, peer_factory
):
    """IGNORED, the third field, is 1 for a running foreground job that no client waits for
    any more (its result will be dropped); farm showed 0 for every job."""
    a = admin_factory(any_server)
    left, stays = peer_factory(any_server.addr), peer_factory(any_server.addr)
    orphan, waited = submit(left, "f", b"a"), submit(stays, "f", b"b")
    background = submit(stays, "f", b"c", ptype=T.SUBMIT_JOB_BG)
    for _ in range(3):
        w = worker(peer_factory, any_server, "f")
        w.send(T.GRAB_JOB)
        w.expect(T.JOB_ASSIGN)
    left.close()
    expected = {orphan + b"\t0\t1\t0", waited + b"\t0\t0\t0", background + b"\t0\t0\t1"}
    wait_for(
        "the left client's job marked", lambda: set(lines(a.listing(b"show jobs\n"))) == expected
    )


def test_show_unique_jobs(any_server, admin_factory, peer_factory):
    a = admin_factory(any_server)
    assert a.listing(b"show unique jobs\n") == b".\n"
    c = peer_factory(any_server.addr)
    submit(c, "f", unique=b"u1")
    assert a.listing(b"show unique jobs\n") == b"u1\n.\n"
    submit(c, "f", unique=b"u1")  # coalesced: still one line
    submit(c, "g", unique=b"u2")
    assert sorted(lines(a.listing(b"show unique jobs\n"))) == [b"u1", b"u2"]


def test_show_unique_jobs_keeps_each_key_on_its_line(farm_server, admin_factory, peer_factory):
    """farm's own: a key with a newline, or a key that is ".", printed as it came (as
    gearmand does), ended the listing early, and its rest was read as the next reply."""
    a = admin_factory(farm_server)
    c = peer_factory(farm_server.addr)
    for unique in (b"a\n.\nb", b".", b"t\tu\r", b"plain"):
        submit(c, "f", unique=unique)
    listed = lines(a.listing(b"show unique jobs\n"))
    assert sorted(listed) == [b"\\x2e", b"a\\x0a.\\x0ab", b"plain", b"t\\x09u\\x0d"]
    assert a.listing(b"status\n") == b"f\t4\t0\t0\n.\n", "the next reply is its own"


def test_show_unknown(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"show foo\n") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert a.line(b"show\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"


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


# -- getpid / version / verbose ------------------------------------------------


def test_getpid(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"getpid\n") == b"OK %d\n" % any_server.proc.pid


def test_version(any_server, admin_factory):
    reply = admin_factory(any_server).line(b"version\n")
    assert re.fullmatch(rb"OK [0-9][0-9A-Za-z.+~-]*\n", reply), reply
    assert admin_factory(any_server).line(b"VERSION\n") == reply


def test_verbose(any_server, admin_factory):
    reply = admin_factory(any_server).line(b"verbose\n")
    assert re.fullmatch(rb"OK (FATAL|ALERT|CRITICAL|ERROR|WARNING|NOTICE|INFO|DEBUG)\n", reply)


# -- unknown commands, pipelining, mixing with binary --------------------------


def test_unknown_command(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"bogus\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
    assert a.line(b"bogus two words\r\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
    assert a.line(b"\n") == b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    # (gearmand also rejects "  status" with leading blanks; PROTOCOL.md leaves
    # that open, and farm accepts it, so it is not pinned here)
    assert a.listing(b"status\n") == b".\n", "the connection still works"


def test_an_error_names_the_command_as_it_was_typed(any_server, admin_factory):
    """gearmand's errors end with the command's word as the line gave it (commands are
    case-insensitive); farm's gave it in lower case, so `MAXQUEUE` was answered about
    `maxqueue`."""
    a = admin_factory(any_server)
    incomplete = b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
    for line, reply in (
        (b"MAXQUEUE\n", incomplete + b"MAXQUEUE\r\n"),
        (b"Create Function\r\n", incomplete + b"Create\r\n"),
        (b"DROP\n", incomplete + b"DROP\r\n"),
        (b"Cancel Job\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandCancel\r\n"),
        (b"SHOW\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandSHOW\r\n"),
        (b"BoGuS\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandBoGuS\r\n"),
    ):
        assert a.line(line) == reply, line


def test_a_line_ends_at_a_nul(any_server, admin_factory):
    """gearmand reads an admin line as a C string: what follows a NUL is not there
    (`version\\0junk` is `version`). farm read the NUL and the rest as part of the word,
    answered UNKNOWN_COMMAND, and wrote the NUL back inside its error line."""
    a = admin_factory(any_server)
    assert a.line(b"version\0junk\n").startswith(b"OK ")
    unknown = b"ERR UNKNOWN_COMMAND Unknown+server+command"
    assert a.line(b"x\0\r\n") == unknown + b"x\r\n"
    assert a.line(b"\xff\xfe\0\0garbage\n") == unknown + b"\xff\xfe\r\n"
    assert a.listing(b"status\0 extra\n") == b".\n"


def test_commands_before_a_half_close_are_answered_farm(farm_server):
    """`printf 'status\\nversion\\n' | nc -N`: the commands, then the peer's side shut down.
    farm answers them, then closes; gearmand 1.1.20 closes answering nothing (its bug:
    docs/gearmand-probes.md). A line left unfinished at the close is not a command."""
    sock = connect(farm_server.addr)
    sock.sendall(b"status\nversion\r\nstat")
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    got = b""
    while data := sock.recv(65536):
        got += data
    sock.close()
    assert got == b".\nOK %s\n" % __version__.encode()


def test_pipelined_commands(any_server, admin_factory):
    a = admin_factory(any_server)
    a.sock.sendall(b"status\nversion\ngetpid\nbogus\n")
    expected_tail = b"OK %d\nERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n" % (
        any_server.proc.pid
    )
    a._read_until(lambda b: b.endswith(expected_tail))
    assert a.buf.startswith(b".\nOK ")
    assert a.buf.count(b"\n") == 4


def test_binary_and_text_alternate(any_server):
    s = connect(any_server.addr)
    try:
        s.sendall(encode_req(T.ECHO_REQ, b"hi") + b"status\n" + encode_req(T.ECHO_REQ, b"yo"))
        expected = b"\0RES\0\0\0\x11\0\0\0\x02hi" + b".\n" + b"\0RES\0\0\0\x11\0\0\0\x02yo"
        buf = b""
        s.settimeout(5)
        while len(buf) < len(expected):
            data = s.recv(65536)
            if not data:
                break
            buf += data
        assert buf == expected
    finally:
        s.close()


def test_admin_connection_survives_binary_errors(any_server, admin_factory):
    a = admin_factory(any_server)
    a.sock.sendall(encode_req(T.NOOP))
    a._read_until(lambda b: len(b) >= 12)
    assert a.buf.startswith(b"\0RES\0\0\0\x13")
    a.buf = a.buf[12 + int.from_bytes(a.buf[8:12], "big") :]
    assert a.listing(b"status\n") == b".\n"


def test_admin_on_unix_socket(tmp_path):
    path = str(tmp_path / "farm.sock")
    srv = start_farm_server(unix=path)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"version\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += s.recv(1024)
        assert buf.startswith(b"OK ")
        s.close()
    finally:
        srv.stop()


def test_a_function_name_that_is_not_utf8_is_shown_and_named_as_its_bytes(
    any_server, admin_factory, peer_factory
):
    """gearmand prints names as the bytes they are; farm printed U+FFFD for each byte that
    was not UTF-8, and `maxqueue` could not name such a function."""
    w = worker(peer_factory, any_server, "x")
    w.send(T.CAN_DO, b"\xff\xfe")
    sync(w)
    a = admin_factory(any_server)
    assert b"\xff\xfe\t0\t0\t1\n" in a.listing(b"status\n")
    assert a.line(b"maxqueue \xff\xfe 1\n") == b"OK\r\n"
    c = peer_factory(any_server.addr)
    submit(c, b"\xff\xfe")  # type: ignore[arg-type]  # the wire takes bytes
    c.send(T.SUBMIT_JOB, b"\xff\xfe", b"", b"second")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
