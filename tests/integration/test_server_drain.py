"""farm's admin `peers` and `drain` (docs/server.md): which process is which worker
connection, what it holds, and handing it no more jobs while its job in hand runs on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

UID = os.geteuid()  # admin `claim`'s claimant: the server's own user

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def srv(tmp_path) -> Iterator[Server]:
    server = start_farm_server(unix=str(tmp_path / "farm.sock"))
    yield server
    server.stop()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.close()


def connect(srv: Server, made: list[Peer], *, unix: bool = False) -> Peer:
    peer = Peer(f"unix:{srv.unix}" if unix else srv.addr)
    made.append(peer)
    return peer


def holding_a_job(srv: Server, made: list[Peer], client: Peer) -> tuple[Peer, bytes]:
    """A new worker connection for "f", holding the job ``client`` submits for it now, and
    that job's handle."""
    worker = connect(srv, made)
    worker.send(T.CAN_DO, "f")
    client.send(T.SUBMIT_JOB, "f", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == handle
    return worker, handle


def sync(peer: Peer) -> None:
    peer.send(T.ECHO_REQ, b"sync")
    assert peer.expect(T.ECHO_RES).args == (b"sync",)


def listing(admin: Peer) -> list[list[str]]:
    reply = admin.admin("peers")
    assert reply.endswith(".\n"), reply
    return [line.split("\t") for line in reply[:-2].splitlines()]


def test_peers_names_the_process_and_the_job_in_hand(srv, peers) -> None:
    admin = connect(srv, peers, unix=True)
    unix_worker = connect(srv, peers, unix=True)
    unix_worker.send(T.SET_CLIENT_ID, "farm:w#0:0")
    unix_worker.send(T.CAN_DO, "f")
    sync(unix_worker)
    tcp_worker = connect(srv, peers)
    tcp_worker.send(T.CAN_DO, "f")
    tcp_worker.send(T.CAN_DO, "g h")  # a name may hold a space: the fields are tab-separated
    sync(tcp_worker)
    ip, port = tcp_worker.sock.getsockname()[:2]
    rows = {row[0]: row for row in listing(admin)}
    assert rows[f"pid:{os.getpid()}"][2:] == ["0", "0", "-", "-", "-", "farm:w#0:0", "0", "f"]
    assert rows[f"tcp:{ip}:{port}"][2:] == ["0", "0", "-", "-", "-", "-", "0", "g h", "f"]
    assert len(rows) == 2  # the admin connection is not a worker

    client = connect(srv, peers)
    client.send(T.SUBMIT_JOB, "f", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    tcp_worker.send(T.GRAB_JOB)
    assigned = tcp_worker.recv()
    if assigned.type == T.NO_JOB:  # the Unix worker is the one asked below
        tcp_worker, assigned = unix_worker, None
        tcp_worker.send(T.GRAB_JOB)
        assigned = tcp_worker.expect(T.JOB_ASSIGN)
    assert assigned.args[0] == handle
    busy = [r for r in listing(admin) if r[4] != "-"]
    assert len(busy) == 1 and busy[0][4:6] == [handle.decode(), "f"] and float(busy[0][6]) >= 0
    tcp_worker.send(T.WORK_COMPLETE, handle, "done")
    assert client.expect(T.WORK_COMPLETE).args == (handle, b"done")
    sync(tcp_worker)
    done = [r for r in listing(admin) if r[2] == "1"]
    assert len(done) == 1 and done[0][4] == "-"


def test_peers_says_whether_a_worker_asked_for_jobs_since_its_last_new_function(srv, peers) -> None:
    # The supervisor names a command worker that registered other names than its pool's
    # once it asks for jobs with them: a look between two CAN_DOs (a slow init after the
    # first) failed a `farm reload` while the worker served a second later.
    admin = connect(srv, peers, unix=True)
    worker = connect(srv, peers, unix=True)

    def asked() -> str:
        (row,) = [r for r in listing(admin) if r[0] == f"pid:{os.getpid()}"]
        return row[8]

    worker.send(T.CAN_DO, "helper")
    sync(worker)
    assert asked() == "0"
    worker.send(T.PRE_SLEEP)
    sync(worker)
    assert asked() == "1"
    worker.send(T.CAN_DO, "helper")  # again: nothing new
    worker.send(T.CAN_DO_TIMEOUT, "helper", "5")
    sync(worker)
    assert asked() == "1"
    worker.send(T.CAN_DO_TIMEOUT, "f", "5")
    sync(worker)
    assert asked() == "0"
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.NO_JOB)
    assert asked() == "1"
    worker.send(T.CAN_DO, "g")
    sync(worker)
    assert asked() == "0"


def test_a_drained_worker_finishes_its_job_and_gets_no_more(srv, peers) -> None:
    admin = connect(srv, peers, unix=True)
    old = connect(srv, peers)
    old.send(T.CAN_DO, "f")
    client = connect(srv, peers)
    client.send(T.SUBMIT_JOB, "f", "", "first")
    first = client.expect(T.JOB_CREATED).args[0]
    old.send(T.GRAB_JOB)
    assert old.expect(T.JOB_ASSIGN).args[0] == first
    port = old.sock.getsockname()[1]

    assert admin.admin(f"drain tcp:{port}") == "OK 1\r\n"
    assert [r[3] for r in listing(admin)] == ["1"]
    client.send(T.SUBMIT_JOB, "f", "", "second")
    second = client.expect(T.JOB_CREATED).args[0]
    old.send(T.GRAB_JOB)
    assert old.expect(T.NO_JOB)
    old.send(T.PRE_SLEEP)
    assert old.nothing_within(0.3)  # a job waits, and it is not woken for it

    # its job in hand runs to its end, answered as any other
    old.send(T.WORK_COMPLETE, first, "1")
    assert client.expect(T.WORK_COMPLETE).args == (first, b"1")

    new = connect(srv, peers)
    new.send(T.CAN_DO, "f")
    new.send(T.GRAB_JOB)
    assert new.expect(T.JOB_ASSIGN).args[0] == second
    assert old.nothing_within(0.2)
    row = next(r for r in listing(admin) if r[0].endswith(f":{port}"))
    assert row[2:5] == ["1", "1", "-"]


def test_draining_a_woken_worker_wakes_another(srv, peers) -> None:
    admin = connect(srv, peers, unix=True)
    a, b = connect(srv, peers), connect(srv, peers)
    for w in (a, b):
        w.send(T.CAN_DO, "f")
        w.send(T.PRE_SLEEP)
        sync(w)
    client = connect(srv, peers)
    client.send(T.SUBMIT_JOB_BG, "f", "", "x")
    client.expect(T.JOB_CREATED)
    woken, other = (a, b) if not a.nothing_within(0.3) else (b, a)
    woken.expect(T.NOOP)
    port = woken.sock.getsockname()[1]
    assert admin.admin(f"drain tcp:127.0.0.1:{port} pid:1") == "OK 1\r\n"
    other.expect(T.NOOP)  # at once, not after the wake deadline of the first
    woken.send(T.GRAB_JOB)
    woken.expect(T.NO_JOB)
    other.send(T.GRAB_JOB)
    other.expect(T.JOB_ASSIGN)


def test_drain_answers(srv, peers) -> None:
    admin = connect(srv, peers, unix=True)
    assert admin.admin("drain pid:1") == "OK 0\r\n"  # nobody connected as it: nothing to do
    assert admin.admin("drain").startswith("ERR INVALID_ARGUMENTS")
    assert admin.admin("drain 1234").startswith("ERR INVALID_ARGUMENTS")
    for odd in ("pid:" + "9" * 5000, "fd:\u00b2", "tcp:127.0.0.1:" + "9" * 5000):
        assert admin.admin(f"drain {odd}").startswith("ERR INVALID_ARGUMENTS"), odd
    assert admin.admin("peers") == ".\n"


def test_peers_and_drain_are_refused_over_tcp(srv, peers) -> None:
    # farm server runs --tcp-admin full by default (as gearmand): these are refused anyway
    admin = connect(srv, peers)
    denied = (
        "ERR PERMISSION_DENIED this+command+is+accepted+only+on+the+Unix+socket+(farm+admin)\r\n"
    )
    assert admin.admin("peers") == denied
    assert admin.admin("drain pid:1") == denied
    assert admin.admin("DRAIN tcp:1") == denied


def test_a_worker_its_supervisor_kills_leaves_no_poison_job(tmp_path, peers) -> None:
    # The supervisor says `killing` before it kills a worker past its drain's grace (farm
    # stop, a scale-down). The death still counts (--job-retries 1 is at most once), but
    # the job is not listed as a poison job, as one whose worker died unasked is; a worker
    # that was only drained and then died is no different from any other.
    srv = start_farm_server("--job-retries", "1", unix=str(tmp_path / "farm.sock"))
    try:
        admin = connect(srv, peers, unix=True)
        client = connect(srv, peers)
        poisoned = []
        for how in ("killing", "drain", None):
            worker, handle = holding_a_job(srv, peers, client)
            if how is not None:
                port = worker.sock.getsockname()[1]
                assert admin.admin(f"{how} tcp:{port}") == "OK 1\r\n"
            if how != "killing":
                poisoned.append(handle.decode())
            worker.close()  # as a SIGKILL closes it
            assert client.expect(T.WORK_FAIL).args == (handle,), "run at most once"
        listed = admin.admin("show poison jobs")[:-2].splitlines()
        assert sorted(line.split("\t")[0] for line in listed) == sorted(poisoned), listed
        assert admin.admin("killing").startswith("ERR INVALID_ARGUMENTS")
        tcp_admin = connect(srv, peers)
        assert tcp_admin.admin("killing pid:1").startswith("ERR PERMISSION_DENIED")
    finally:
        srv.stop()


def ends_jobs(client: Peer, worker: Peer, *texts: str) -> None:
    """``worker`` registers "f" and ends one job of ``client``'s per text, each in turn."""
    worker.send(T.CAN_DO, "f")
    for text in texts:
        client.send(T.SUBMIT_JOB, "f", "", text)
        handle = client.expect(T.JOB_CREATED).args[0]
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == handle
        worker.send(T.WORK_COMPLETE, handle, "ok")
        assert client.expect(T.WORK_COMPLETE).args == (handle, b"ok")


def test_served_counts_a_workers_jobs_after_its_connection_closed(srv, peers) -> None:
    # A command worker that stops itself after N jobs (PHP's exit(0)) closes its connection
    # as it exits: `peers` lists it no more by the time its supervisor reaps it, which read
    # its exit as a crash after "0 jobs". `served` counts the connections closed lately too.
    admin = connect(srv, peers, unix=True)
    client = connect(srv, peers)
    worker = connect(srv, peers)
    ends_jobs(client, worker, "a", "b")
    name = f"tcp:127.0.0.1:{worker.sock.getsockname()[1]}"
    assert admin.admin(f"served {name}") == "OK 2 0\r\n"  # open: named, so watched
    worker.close()
    wait_for("its connection gone", lambda: name not in admin.admin("peers"))
    assert admin.admin(f"served {name} pid:1") == "OK 2 0\r\n"  # closed
    assert admin.admin("served tcp:1") == "OK 0 0\r\n"
    assert admin.admin("served").startswith("ERR INVALID_ARGUMENTS")
    assert connect(srv, peers).admin(f"served {name}").startswith("ERR PERMISSION_DENIED")


def test_served_keeps_the_ends_its_supervisor_named_alone_and_a_job_held_as_it_closed(
    srv, peers
) -> None:
    # Any local user's short TCP connections, each ending a job, pushed a pool worker's end
    # out of the ones kept before its supervisor asked; and a worker that exited 0 holding a
    # job read as one that stopped itself cleanly (a recycle), its job retried.
    admin = connect(srv, peers, unix=True)
    client = connect(srv, peers)

    def worker_with_a_job(finish: bool) -> tuple[Peer, str]:
        worker, handle = holding_a_job(srv, peers, client)
        if finish:
            worker.send(T.WORK_COMPLETE, handle, "ok")
            assert client.expect(T.WORK_COMPLETE).args == (handle, b"ok")
        return worker, f"tcp:127.0.0.1:{worker.sock.getsockname()[1]}"

    stranger, stranger_name = worker_with_a_job(finish=True)
    assert f"{stranger_name}\t" in admin.admin("peers")  # the whole listing names nobody
    stranger.close()
    wait_for("its connection gone", lambda: stranger_name not in admin.admin("peers"))
    assert admin.admin(f"served {stranger_name}") == "OK 0 0\r\n"

    holder, name = worker_with_a_job(finish=False)
    assert f"{name}\t" in admin.admin(f"peers {name}")  # its supervisor names it
    holder.close()
    wait_for("its connection gone", lambda: name not in admin.admin("peers"))
    assert admin.admin(f"served {name}") == "OK 0 1\r\n"


def test_claim_hands_an_unnamed_end_of_a_function_once(srv, peers) -> None:
    # `gearman -w -c 2` with a backlog: its process ended its 2 jobs and left before its
    # supervisor named its connection; its supervisor claims it by the pool's functions.
    admin = connect(srv, peers, unix=True)
    client = connect(srv, peers)
    worker = connect(srv, peers)
    ends_jobs(client, worker, "a", "b")
    name = f"tcp:127.0.0.1:{worker.sock.getsockname()[1]}"
    worker.close()
    wait_for("its connection gone", lambda: name not in admin.admin("peers"))
    assert admin.admin(f"claim 10 {UID} g") == "OK 0\r\n"  # another pool's function
    assert connect(srv, peers).admin(f"claim 10 {UID} f").startswith("ERR PERMISSION_DENIED")
    assert admin.admin(f"claim 10 {UID} g f") == "OK 2\r\n"
    assert admin.admin(f"claim 10 {UID} f") == "OK 0\r\n"  # claimed once
    assert admin.admin(f"claim 10 {UID}").startswith("ERR INVALID_ARGUMENTS")
    assert admin.admin(f"claim x {UID} f").startswith("ERR INVALID_ARGUMENTS")
    assert admin.admin("claim 10 me f").startswith("ERR INVALID_ARGUMENTS")  # no user id


@pytest.mark.skipif(os.geteuid() != 0, reason="connects as another user: needs root")
def test_claim_never_hands_a_unix_end_of_another_user() -> None:
    # SO_PEERCRED tells who made a Unix-socket connection: another local user's worker of
    # the same function is no process of the claimant's pool, whatever its timing.
    shared = Path(tempfile.mkdtemp())  # pytest's tmp_path is under a 0700 directory
    shared.chmod(0o711)
    server = start_farm_server("--unix-mode", "666", unix=str(shared / "farm.sock"))
    made: list[Peer] = []
    try:
        admin = connect(server, made, unix=True)
        client = connect(server, made)
        os.seteuid(65534)  # nobody, for its connect alone (SO_PEERCRED: the connect's)
        try:
            stranger = connect(server, made, unix=True)
        finally:
            os.seteuid(0)
        ends_jobs(client, stranger, "x")
        stranger.close()
        wait_for("its connection gone", lambda: "\tf" not in admin.admin("peers"))
        # Nor may another user claim (the uid it names is its word): it took the end it
        # named, or the farm's own, and the farm's quick worker then counted a crash.
        os.seteuid(65534)
        try:
            nobody = connect(server, made, unix=True)
        finally:
            os.seteuid(0)
        assert nobody.admin("claim 10 65534 f").startswith("ERR PERMISSION_DENIED")
        assert admin.admin(f"claim 10 {UID} f") == "OK 0\r\n"
        assert admin.admin("claim 10 65534 f") == "OK 1\r\n"  # a pool run as that user's
    finally:
        for peer in made:
            peer.close()
        server.stop()
        shutil.rmtree(shared)
