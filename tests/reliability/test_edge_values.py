"""Values at the edge of what the wire can carry get an answer, never a silent close.

Each case here was found by an adversarial run against farm: a huge CAN_DO_TIMEOUT
or epoch closed the connection without an ERROR, CAN_DO_TIMEOUT -1 failed jobs at
once, a late answer from a worker whose job had timed out got an ERROR that
Perl's Gearman::Worker dies on, and function names had no size limit.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server

HUGE = "1" + "0" * 400


def sync(peer: Peer) -> None:
    """Everything sent before has been handled (the server answers in order)."""
    peer.send(T.ECHO_REQ, "sync")
    peer.expect(T.ECHO_RES)


def submit(peer: Peer, function: str, data: bytes = b"x") -> bytes:
    peer.send(T.SUBMIT_JOB, function, "", data)
    return bytes(peer.expect(T.JOB_CREATED).args[0])


@pytest.mark.parametrize("timeout", [HUGE, "99999999999"], ids=["huge", "11-digits"])
def test_a_can_do_timeout_past_the_limit_gets_an_error_and_the_connection_goes_on(
    farm_server: Server, peer_factory: Callable[[str], Peer], timeout: str
) -> None:
    # It got the ERROR, then a close that took the worker's running job from it (requeued,
    # its answer lost); a timeout that is no number got the ERROR alone.
    w, c = peer_factory(farm_server.addr), peer_factory(farm_server.addr)
    w.send(T.CAN_DO, "g")
    sync(w)
    h = submit(c, "g")
    w.send(T.GRAB_JOB_UNIQ)
    assert w.expect(T.JOB_ASSIGN_UNIQ).args[0] == h
    w.send(T.CAN_DO_TIMEOUT, "f", timeout)
    err = w.expect(T.ERROR)
    assert err.args == (
        b"INVALID_COMMAND",
        f"CAN_DO_TIMEOUT is more than {p.MAX_TIMEOUT} s".encode(),
    )
    w.send(T.WORK_COMPLETE, h, "done")  # the connection goes on, its job with it
    assert c.expect(T.WORK_COMPLETE).args == (h, b"done")
    submit(c, "f")
    w.send(T.GRAB_JOB_UNIQ)
    w.expect(T.NO_JOB)  # f was not registered


def test_a_refused_can_do_timeout_leaves_an_earlier_registration_as_it_was(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # The docs said a refused one leaves the function unregistered: true only the first
    # time. An ERROR changes nothing: f registered before serves on, with its 1 s timeout.
    w, c = peer_factory(farm_server.addr), peer_factory(farm_server.addr)
    w.send(T.CAN_DO_TIMEOUT, "f", "1")
    w.send(T.CAN_DO_TIMEOUT, "f", "99999999999")
    assert w.expect(T.ERROR).args[0] == b"INVALID_COMMAND"
    h = submit(c, "f")
    w.send(T.GRAB_JOB_UNIQ)
    assert w.expect(T.JOB_ASSIGN_UNIQ).args[0] == h, "f is still registered"
    assert c.expect(T.WORK_FAIL, timeout=5).args == (h,), "its 1 s timeout still runs"


def test_a_can_do_timeout_of_5000_digits_gets_an_error_not_an_internal_error(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # Past Python's 4,300 digits int() raises ValueError: read by a pattern and then int(),
    # it came out of the handler, and the connection was closed as an internal error, with
    # no ERROR and a traceback in the log for each such packet, which any local user may
    # send. It is refused as any timeout past the limit is.
    w = peer_factory(farm_server.addr)
    w.send(T.CAN_DO_TIMEOUT, "f", "9" * 5000)
    err = w.expect(T.ERROR)
    assert err.args[0] == b"INVALID_COMMAND" and b"more than" in err.args[1]
    sync(w)  # and the connection goes on
    zeros = peer_factory(farm_server.addr)  # a small number behind 5,000 zeros is taken
    zeros.send(T.CAN_DO_TIMEOUT, "f", "0" * 5000 + "5")
    sync(zeros)


@pytest.mark.parametrize("epoch", [HUGE, str(p.MAX_EPOCH + 1), "-5"], ids=["huge", "2**40+1", "-5"])
def test_an_epoch_out_of_range_gets_an_error_and_the_connection_goes_on(
    farm_server: Server, peer_factory: Callable[[str], Peer], epoch: str
) -> None:
    # It got the ERROR, then a close that failed the client's other jobs in flight on the
    # connection (gearmand takes -5 and runs the job at once); an epoch that is not a
    # number got the ERROR alone. Out of range is refused the same way now.
    w, c = peer_factory(farm_server.addr), peer_factory(farm_server.addr)
    w.send(T.CAN_DO, "f")
    sync(w)
    h = submit(c, "f", b"before")  # foreground: it dies with the connection
    c.send(T.SUBMIT_JOB_EPOCH, "f", "", epoch, "x")
    assert c.expect(T.ERROR).args == (b"INVALID_COMMAND", b"epoch is out of range")
    sync(c)  # the connection goes on
    w.send(T.GRAB_JOB_UNIQ)
    assert w.expect(T.JOB_ASSIGN_UNIQ).args[0] == h, "the earlier job is still there"
    w.send(T.WORK_COMPLETE, h, "done")
    assert c.expect(T.WORK_COMPLETE).args == (h, b"done")
    w.send(T.GRAB_JOB_UNIQ)
    w.expect(T.NO_JOB)  # no job was made of the refused submit


def test_a_negative_can_do_timeout_means_no_timeout(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    w, c = peer_factory(farm_server.addr), peer_factory(farm_server.addr)
    w.send(T.CAN_DO_TIMEOUT, "f", "-1")
    sync(w)
    h = submit(c, "f")
    w.send(T.GRAB_JOB_UNIQ)
    assert w.expect(T.JOB_ASSIGN_UNIQ).args[0] == h
    assert c.nothing_within(1.5), "the job was not failed by a timeout of -1"
    w.send(T.WORK_COMPLETE, h, "done")
    assert c.expect(T.WORK_COMPLETE).args == (h, b"done")


def timed_out_in_hand(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> tuple[Peer, Peer, bytes]:
    """A worker (registered with a 1 s CAN_DO_TIMEOUT) holding a job that timed out in its
    hands, the client whose job failed so, and the job's handle."""
    w, c = peer_factory(farm_server.addr), peer_factory(farm_server.addr)
    w.send(T.CAN_DO_TIMEOUT, "slow", "1")
    sync(w)
    h = submit(c, "slow")
    w.send(T.GRAB_JOB_UNIQ)
    assert w.expect(T.JOB_ASSIGN_UNIQ).args[0] == h
    assert c.expect(T.WORK_FAIL, timeout=10).args == (h,)
    return w, c, h


def test_a_late_answer_for_a_timed_out_job_is_dropped_quietly(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    w, c, h = timed_out_in_hand(farm_server, peer_factory)
    w.send(T.WORK_STATUS, h, "1", "2")
    w.send(T.WORK_COMPLETE, h, "too late")
    sync(w)  # no ERROR came before the echo: both were dropped
    assert c.nothing_within(0.3), "the client hears nothing more of its failed job"
    # A handle this connection never held still gets gearmand's ERROR.
    w.send(T.WORK_COMPLETE, "H:nowhere:1", "x")
    assert w.expect(T.ERROR).args[0] == b"JOB_NOT_FOUND"


def test_function_names_are_limited_like_gearmand(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    long = "f" * (p.MAX_FUNCTION + 1)
    w, c = peer_factory(farm_server.addr), peer_factory(farm_server.addr)
    w.send(T.CAN_DO, long)
    assert w.expect(T.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
    c.send(T.SUBMIT_JOB_BG, long, "", "x")
    assert c.expect(T.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
    c.send(T.SUBMIT_REDUCE_JOB, "f", "", long, "", "x")
    assert c.expect(T.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
    assert len(submit(c, "f" * p.MAX_FUNCTION)) > 0, "512 bytes is still fine"


def test_a_late_exception_and_fail_pair_for_a_timed_out_job_are_both_dropped(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # Perl's Gearman::Worker answers a job that died with WORK_EXCEPTION, then WORK_FAIL,
    # and dies on an ERROR. Late, the exception used up the job's timed-out entry, and the
    # WORK_FAIL got ERROR JOB_NOT_FOUND: a job that timed out cost a Perl worker.
    farm_server = start_farm_server(unix=unix_sock)
    try:
        pair_dropped(farm_server, peer_factory)
    finally:
        farm_server.stop()


def pair_dropped(farm_server: Server, peer_factory: Callable[[str], Peer]) -> None:
    w, c, h = timed_out_in_hand(farm_server, peer_factory)
    w.send(T.WORK_EXCEPTION, h, "boom")
    w.send(T.WORK_FAIL, h)
    sync(w)  # no ERROR came before the echo: both were dropped
    assert c.nothing_within(0.3), "the client hears nothing more of its failed job"
    # One run's pair counts one job ended (admin `peers`' jobs), not two.
    admin = peer_factory(f"unix:{farm_server.unix}")
    ip, port = w.sock.getsockname()[:2]
    row = next(r for r in admin.admin("peers").splitlines() if r.startswith(f"tcp:{ip}:{port}\t"))
    assert row.split("\t")[2] == "1", row
    # The next job's lone WORK_FAIL, and a handle never held, are answered as ever.
    w.send(T.WORK_FAIL, h)
    assert w.expect(T.ERROR).args[0] == b"JOB_NOT_FOUND"
