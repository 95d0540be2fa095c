"""farm.Executor and several job servers, real ones and hung ones: the pool size it asks
them for, and the connections its pump holds on them."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

import farm
from farm.client.admin import admin_query, function_workers
from farm.executor.signing import ensure_key
from farm.protocol import PacketType as T
from farm.protocol.admin import parse_status
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server, start_like, unix_farm_server
from tests.helpers.waiting import wait_for

#: The pool's workers on the answering server: a count no default (the cores) gives here.
WORKERS = 3


@pytest.fixture
def key(tmp_path: Path) -> str:
    return str(ensure_key(tmp_path / "executor.key"))


@pytest.fixture
def server() -> Iterator[Server]:
    # The Unix socket too: only there may the server's user register farm.* functions.
    with unix_farm_server(prefix="farm-exsrv-") as srv:
        yield srv


def hung_listeners(stack: ExitStack, count: int) -> list[str]:
    """Servers that hang: the kernel accepts the connection, nobody ever reads or answers."""
    listeners = [stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(count)]
    return [f"127.0.0.1:{listener.getsockname()[1]}" for listener in listeners]


@contextmanager
def fake_admin(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A listener whose every connection, once it sent its command, is ``answer``ed in a
    thread of its own (told by the event to stop); its address. What it does is the client's
    rule under test: a real server answers too soon, and at no chosen time."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(1024)  # the command, sent in one piece
                answer(conn, stop)
            except OSError:
                pass  # the client gave up on it

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # shut down: the test is over
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()


def answering_after(delay: float, workers: int) -> Callable[[socket.socket, threading.Event], None]:
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(delay)
        conn.sendall(f"farm.python\t0\t0\t{workers}\n.\n".encode())

    return answer


def trickling(conn: socket.socket, stop: threading.Event) -> None:
    """A line of a listing every 50 ms, and never its end: each read gets something."""
    while not stop.wait(0.05):
        conn.sendall(b"farm.python\t0\t0\t1\n")


def pool_workers(make: Callable[[str], Peer], srv: Server, count: int) -> None:
    for _ in range(count):
        worker = make(f"unix:{srv.unix}")
        worker.send(T.CAN_DO, "farm.python")
        worker.send(T.ECHO_REQ, "registered")  # answered once CAN_DO was taken in
        worker.expect(T.ECHO_RES)


@pytest.mark.serial  # measures the constructor's time: tests beside it would take their part
@pytest.mark.timeout(60)
def test_hung_servers_ahead_of_the_answering_one_are_not_waited_for_in_turn(
    server: Server, key: str, peer_factory: Callable[[str], Peer]
) -> None:
    # Asked in turn, each hung server ahead of the answering one held the constructor for
    # the whole 1 s wait: six of them, 6 s. Staggered, each is left unanswered for 0.25 s
    # before the next is asked, and the answer counts once the last hung one gave up:
    # 5 x 0.25 + 1 = 2.25 s (all at once, 1 s).
    pool_workers(peer_factory, server, WORKERS)
    with ExitStack() as stack:
        servers = [*hung_listeners(stack, 6), server.addr]
        began = time.monotonic()
        ex = farm.Executor(servers=servers, key_file=key)
        took = time.monotonic() - began
        ex.shutdown()
    assert ex._max_workers == WORKERS  # the first server that answers is the one counted
    # No event to wait on here: the constructor's time itself is what is tested. 4 s is
    # 1.75 s over the staggered wait, and 2 s short of the six waits in a row.
    assert took < 4.0, f"the constructor took {took:.2f}s"


@pytest.mark.timeout(60)
def test_the_first_server_that_answers_is_counted_not_the_quickest(
    server: Server, farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    pool_workers(peer_factory, server, WORKERS)
    # The first answers after 0.6 s, the second is asked at 0.25 s and answers at once:
    # the count is still the first's, as when they were asked in turn.
    with fake_admin(answering_after(0.6, workers=5)) as slow:
        assert function_workers([slow, farm_server.addr], "farm.python", timeout=5) == 5
    with ExitStack() as stack:
        hung = hung_listeners(stack, 1)
        assert (
            function_workers([*hung, farm_server.addr, server.addr], "farm.python", timeout=1) == 0
        )
        assert (
            function_workers([*hung, server.addr, farm_server.addr], "farm.python", timeout=1)
            == WORKERS
        )
        assert function_workers(hung, "farm.python", timeout=0.2) is None


@pytest.mark.timeout(60)
def test_a_server_after_one_that_answered_is_never_asked(farm_server: Server) -> None:
    # Asked all at once, every server got a connection and sent its whole status listing
    # (which can be large) while the first answered in a millisecond. The stagger here is
    # long, so that a slow answer on a loaded machine does not rightly ask the second.
    with socket.create_server(("127.0.0.1", 0)) as second:
        port = second.getsockname()[1]
        asked = function_workers(
            [farm_server.addr, f"127.0.0.1:{port}"], "farm.python", timeout=5, stagger=10
        )
        assert asked == 0
        # A connect waits in the listener's accept queue, readable: none came, nor comes.
        assert select.select([second], [], [], 0.5)[0] == []


@pytest.mark.timeout(60)
def test_the_servers_still_asked_are_closed_once_the_answer_is_known() -> None:
    # The first answers once the second (hung) was asked; then the second's connection is
    # closed, not left open for its whole timeout. The first waits for the second's
    # command, not a set time, so a late thread on a loaded machine changes nothing.
    heard, closed = threading.Event(), threading.Event()

    def hang(conn: socket.socket, stop: threading.Event) -> None:
        heard.set()  # its command came: it was asked
        conn.settimeout(5)  # a timeout here: still open, 25 s short of its own
        if conn.recv(1) == b"":
            closed.set()

    def first(conn: socket.socket, stop: threading.Event) -> None:
        heard.wait(30)
        conn.sendall(b"farm.python\t0\t0\t5\n.\n")

    with fake_admin(hang) as hung, fake_admin(first) as slow:
        assert function_workers([slow, hung], "farm.python", timeout=30) == 5
        assert closed.wait(10), "the second server's connection was left open"


@pytest.mark.timeout(20)
def test_a_server_that_trickles_its_reply_is_given_up_at_the_deadline() -> None:
    # Each read got a line within the timeout, and the listing never ended: the Executor's
    # constructor waited for ever.
    with fake_admin(trickling) as trickler:
        began = time.monotonic()
        assert function_workers([trickler], "farm.python", timeout=0.5) is None
        took = time.monotonic() - began
    assert took < 5, f"function_workers took {took:.2f}s"


def connections(srv: Server) -> int:
    """The connections ``srv`` lists in ``workers``, less the one asking."""
    return len(admin_query(srv.addr, "workers").splitlines()) - 2  # the asker's, and "."


def queued(srv: Server) -> int:
    rows = parse_status(admin_query(srv.addr, "status"))
    return sum(row.total for row in rows if row.function == "farm.python")


def closed(caplog: pytest.LogCaptureFixture, srv: Server) -> list[logging.LogRecord]:
    """The executor's records of ``srv`` closing its connection: read as a close, or met by
    a write the pump had not made yet when the server went (its hello, on a loaded host)."""
    said = {f"job server {srv.addr} {how}" for how in ("closed the connection", "write failed")}
    return [record for record in caplog.records if record.getMessage() in said]


@pytest.mark.timeout(60)
def test_a_connect_no_call_took_yet_is_watched_for_the_server_going(
    farm_server: Server, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The first call connects to both servers, each in a thread, and goes out on the first
    # that connects. The other's socket was left with its connect, unwatched, until a call
    # came for that server: a restart of it meanwhile went unseen, and that call was sent
    # on the dead socket and failed (ServerUnavailable: write failed, may have run).
    other = start_farm_server()
    ex = farm.Executor(8, servers=[farm_server.addr, other.addr], key_file=key)
    try:
        with caplog.at_level("INFO", logger="farm.executor"):
            first = ex.submit(abs, -1)  # no worker: it stays queued on its server
            wait_for("both connects", lambda: connections(farm_server) == connections(other) == 1)
            # Both may open in one pump turn, before the server read the call's SUBMIT.
            wait_for("the call queued", lambda: queued(farm_server) + queued(other) == 1)
            busy, idle = (farm_server, other) if queued(farm_server) else (other, farm_server)
            assert queued(busy) == 1 and queued(idle) == 0
            idle.stop()
            wait_for(f"the executor to see {idle.addr} go", lambda: closed(caplog, idle))
            # A connection that held no call going is a routine restart, no warning.
            assert {record.levelname for record in closed(caplog, idle)} == {"INFO"}
            back = start_like(idle, port=idle.port)
            try:
                calls = [ex.submit(abs, -n) for n in range(2, 8)]
                wait_for("the calls on the servers", lambda: queued(busy) + queued(back) == 7)
                assert not [call for call in [first, *calls] if call.done()]
                busy.stop()  # with calls on it: they fail, and that is a warning
                wait_for(f"the executor to see {busy.addr} go", lambda: closed(caplog, busy))
                assert {record.levelname for record in closed(caplog, busy)} == {"WARNING"}
            finally:
                back.stop()
    finally:
        ex.shutdown(wait=False, cancel_futures=True)  # no worker runs its calls
        other.stop()


@pytest.mark.timeout(60)
def test_a_call_on_a_connection_reset_before_its_server_answered_fails_unconfirmed(
    key: str, tmp_path: Path
) -> None:
    # A job server killed -9 still has its listening socket for a moment, and a reconnect
    # made at once lands in its backlog, to be reset as it goes. The call sent there fails
    # with ServerUnavailable "not confirmed": the executor cannot tell a call its server
    # never read from one it read and answered (the reply still unread when the reset is
    # seen), and one sent again could run twice, under a new call id the workers' replay
    # guard does not know (44e837b resent such calls, and was reverted for it). `dying` is
    # that listening socket: it takes the connection into its backlog and never accepts it.
    path = tmp_path / "gearman.sock"
    dying = socket.socket(socket.AF_UNIX)
    dying.bind(str(path))
    dying.listen(8)
    ex = farm.Executor(1, servers=f"unix:{path}", key_file=key, connect_timeout=30)
    try:
        call = ex.submit(abs, -1)
        wait_for("the call sent", lambda: call.running() or call.done())
        dying.close()  # resets the connection in its backlog
        with pytest.raises(farm.ServerUnavailable, match="not confirmed"):
            call.result(timeout=20)  # not 30 s of waiting for a server
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        dying.close()


@pytest.mark.timeout(60)
def test_a_function_name_that_is_not_utf8_is_counted_by_its_bytes(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # The listing was decoded with "replace" and compared as text: "r\udcff" (the byte
    # \xff, as os.fsdecode and the library keep it) never equalled the listed "r\ufffd",
    # so an Executor for it warned "no worker serves" and sized itself to cpu_count.
    worker = peer_factory(farm_server.addr)
    worker.send(T.CAN_DO, b"r\xff")
    worker.send(T.ECHO_REQ, "registered")
    worker.expect(T.ECHO_RES)
    assert function_workers([farm_server.addr], "r\udcff", timeout=5) == 1
    assert function_workers([farm_server.addr], "r\udcfe", timeout=5) == 0  # not any such
