"""The admin text protocol, byte for byte as gearmand 1.1.20 prints it: status,
prioritystatus, workers and show jobs. The commands that change the queue are in
test_server_admin_queue.py, the connection itself (pipelining, binary mixed in) in
test_server_admin_connection.py.

``any_server`` tests compare exact bytes (modulo fds, pids, versions and
handles, which are normalised or built from what the server told us);
``farm_server`` tests pin farm's fixes of gearmand bugs (docs/gearmand-probes.md).
"""

from __future__ import annotations

import re

from farm.protocol import PacketType as T
from tests.helpers import admintext
from tests.helpers.admintext import lines, submit, sync, worker
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
admin_factory = admintext.admin_factory

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
