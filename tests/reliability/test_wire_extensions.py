"""farm's two cost-cutting options on a real server (docs/held-grab.md).

``read-accept``: a held-grab worker on the Unix socket sends no JOB_ACCEPT; at
the deadline the server asks the kernel whether the worker has read the pushed
job (SIOCOUTQ), and takes it back only if it has not. ``lazy-created``: a
client's foreground JOB_CREATED may wait for the next packet to that client
(its job's result, most often), and leaves within a few milliseconds at most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer, sleeping_worker
from tests.helpers.servers import Server, unix_farm_server

#: The server's --wake-deadline for a pushed job here (0.5 s by default): long enough
#: that a test slowed by a loaded machine still reads a pushed job in time.
DEADLINE = 1.5
PAST_DEADLINE = DEADLINE + 1


@pytest.fixture
def server() -> Iterator[Server]:
    with unix_farm_server("--wake-deadline", str(DEADLINE), prefix="farm-ext-") as srv:
        yield srv


def read_accept_worker(make: Callable[[str], Peer], srv: Server, function: str) -> Peer:
    worker = make(f"unix:{srv.unix}")
    worker.send(T.OPTION_REQ, "held-grab")
    assert worker.expect(T.OPTION_RES).args == (b"held-grab",)
    worker.send(T.OPTION_REQ, "read-accept")
    assert worker.expect(T.OPTION_RES).args == (b"read-accept",)
    worker.send(T.CAN_DO, function)
    worker.send(T.GRAB_JOB_UNIQ)  # held
    worker.send(T.ECHO_REQ, "holding")  # answered after the grab was taken in
    worker.expect(T.ECHO_RES)
    return worker


def test_a_pushed_job_the_worker_has_read_is_not_taken_back_without_job_accept(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    other = sleeping_worker(peer_factory, server, "r")
    reader = read_accept_worker(peer_factory, server, "r")  # asleep last: woken first
    client = peer_factory(server.addr)
    client.send(T.SUBMIT_JOB, "r", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    reader.expect(T.NOOP)
    assert reader.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle  # read: that is the acceptance
    assert other.nothing_within(PAST_DEADLINE), "no other worker was woken for it"
    reader.send(T.WORK_COMPLETE, handle, "done")
    assert client.expect(T.WORK_COMPLETE).args == (handle, b"done")


def test_a_pushed_job_the_worker_has_not_read_goes_to_another_worker(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    healthy = sleeping_worker(peer_factory, server, "s")
    stalled = read_accept_worker(peer_factory, server, "s")  # asleep last: woken first
    client = peer_factory(server.addr)
    client.send(T.SUBMIT_JOB, "s", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    # The stalled worker reads nothing: the assignment waits in its socket, and after
    # the deadline the job is taken back and the sleeper woken.
    healthy.expect(T.NOOP, timeout=5)
    healthy.send(T.GRAB_JOB_UNIQ)
    assert healthy.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    healthy.send(T.WORK_COMPLETE, handle, "done")
    assert client.expect(T.WORK_COMPLETE).args == (handle, b"done")
    stalled.expect(T.NOOP)
    assert stalled.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    stalled.send(T.WORK_COMPLETE, handle, "late")  # dropped: no ERROR, no second result
    stalled.send(T.ECHO_REQ, "alive")
    assert stalled.expect(T.ECHO_RES).args == (b"alive",)
    assert client.nothing_within(0.2)


def test_read_accept_is_refused_over_tcp(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    worker = peer_factory(server.addr)
    worker.send(T.OPTION_REQ, "held-grab")
    assert worker.expect(T.OPTION_RES).args == (b"held-grab",)
    worker.send(T.OPTION_REQ, "read-accept")  # the kernel tells unread bytes on Unix only
    assert worker.expect(T.ERROR).args[0] == b"UNKNOWN_OPTION"


def test_a_lazy_created_client_gets_job_created_first_and_alone_when_no_news_comes(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    client = peer_factory(server.addr)
    client.send(T.OPTION_REQ, "lazy-created")
    assert client.expect(T.OPTION_RES).args == (b"lazy-created",)
    client.send(T.SUBMIT_JOB, "nobody-serves-this", "", "x")
    # No worker: no news comes, and the JOB_CREATED leaves on its own timer.
    handle = client.expect(T.JOB_CREATED, timeout=5).args[0]
    worker = sleeping_worker(peer_factory, server, "lazy")
    client.send(T.SUBMIT_JOB, "lazy", "", "y")
    worker.expect(T.NOOP)
    worker.send(T.GRAB_JOB_UNIQ)
    second = worker.expect(T.JOB_ASSIGN_UNIQ).args[0]
    worker.send(T.WORK_COMPLETE, second, "done")
    assert client.expect(T.JOB_CREATED).args[0] == second, "still before the job's result"
    assert client.expect(T.WORK_COMPLETE).args == (second, b"done")
    assert second != handle
    client.send(T.GET_STATUS, handle)
    assert client.expect(T.STATUS_RES).args[:2] == (handle, b"1"), "the first job waits"


def test_bytes_sent_to_the_worker_after_the_push_do_not_undo_its_read(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    other = sleeping_worker(peer_factory, server, "e")
    reader = read_accept_worker(peer_factory, server, "e")  # asleep last: woken first
    client = peer_factory(server.addr)
    client.send(T.SUBMIT_JOB, "e", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    reader.expect(T.NOOP)
    assert reader.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    reader.send(T.ECHO_REQ, "unread")  # its answer waits unread in the worker's socket
    assert other.nothing_within(PAST_DEADLINE), "the job read stays with its worker"
    reader.send(T.WORK_COMPLETE, handle, "done")
    assert client.expect(T.WORK_COMPLETE).args == (handle, b"done")
    assert reader.expect(T.ECHO_RES).args == (b"unread",)
