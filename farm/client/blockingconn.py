"""The blocking Client's connections: each socket with its ``ClientSession`` (``Conn``),
all of them in one selector with failover over the servers (``Connections``).

This only moves bytes: what a reply means lives in ``farm.protocol.client``. A call
sends its submit and reads every connection until its task is done, so results of other
in-flight tasks (a ``map``) are filed on the way. Sends never block: what a socket does
not take at once waits for it to drain while replies are read, since a server stops
reading a client that does not read its replies (farm's back-pressure), and a client
blocked in a send of many large jobs would then wait on the server for ever as the
server waits on it.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection
from contextlib import suppress

from farm.client.blockingdeliver import Delivery
from farm.client.blockingsock import Conn
from farm.client.dialer import Dialer
from farm.client.serverpick import MIN_CONNECT, ServerPicker, connect_share, job_key
from farm.errors import ServerUnavailable
from farm.net import recv_now, send_now, sent_before
from farm.protocol import OPTION_FAIL_REASON, ProtocolError
from farm.protocol.client import (
    JobEnded,
    Query,
    Question,
    Reply,
    Task,
    TaskListener,
    lost_error,
    may_resubmit,
    not_again,
)

__all__ = ["Conn", "Connections"]  # Conn: farm.client.blockingsock's

#: How a forked child's copy of a connection fails the parent's tasks on it.
FORKED = "was sent by the process this one was forked from: its reply goes there"
#: The longest one select() waits; a longer timeout is waited in such steps.
MAX_SELECT = 3600.0
#: One more in each forked child: a client's connections made before then are its parent's.
_forks = 0


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class Connections(Delivery):
    """Every connection of one blocking client, in one selector: connecting (with failover
    over ``picker``'s servers), sending, reading, and what a lost server means for its tasks;
    what is read, handed on (``Delivery``)."""

    def __init__(
        self, picker: ServerPicker, connect_timeout: float | None, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__()
        self.picker = picker
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.conns: dict[str, Conn] = {}
        self.selector = selectors.DefaultSelector()
        self.closed = False
        self.dialer = Dialer()  # its connect under way is what close() cuts short
        self.forks = _forks
        self.using = threading.RLock()  # held by the thread inside the Client (farm.client.guard)
        self.open_call = False  # the call under way began before any close() (guard)
        # The deadline of the wait under way: a job resubmitted during it connects by then.
        self.deadline: float | None = None

    def check_fork(self) -> None:
        """In a child forked since the last use (gunicorn --preload, multiprocessing's
        fork): the sockets and the epoll are the parent's too. A request sent on them would
        have its reply read by whichever process reads first, so both would get the other's
        replies; and unregistering a socket from the shared epoll would unregister it for
        the parent. So the child closes its copies of the descriptors only (the parent's
        stay open, nothing is said on them), takes a selector of its own, and fails the
        parent's jobs here (their replies go to the parent); it connects anew when used."""
        if self.forks == _forks:
            return
        self.forks = _forks
        self.using, self.dialer = threading.RLock(), Dialer()  # a parent's thread may hold them
        self.undelivered.clear()  # the parent's jobs' events: its own to hand on
        conns, self.conns = self.conns, {}
        self.selector.close()  # closes the child's epoll fd; unregisters nothing
        self.selector = selectors.DefaultSelector()
        for conn in conns.values():
            conn.sock.close()
            conn.fail_tasks(FORKED)

    def out_of_step(self, conn: Conn) -> None:
        """An exception (a signal handler's: a web request's alarm, say) cut a read or a send
        of ``conn`` short: bytes read that its session never took, or a request it counts as
        sent that did not leave whole. What the server says next would be read out of step
        (a JOB_CREATED lost took the next call's for its own: that call and every later one
        waited until their timeout, for ever without one), so the connection goes now,
        quietly (the server is as it was: not marked down, nothing sent again, as its jobs
        may run), its tasks failed, and the next call connects anew."""
        if self.closed or self.conns.get(conn.addr) is not conn:
            return  # closing anyway, or gone already
        self.close_one(conn)
        conn.fail_tasks("lost its connection: an exception cut short a read or a send on it")

    def close(self) -> None:
        self.check_fork()  # closing the parent's sockets would unregister them from its epoll
        self.closed = True
        self.dialer.cut_short()  # (a signal handler's close, in the connect it interrupted)
        for conn in list(self.conns.values()):
            self.close_one(conn)
        self.selector.close()

    def cut_short(self) -> None:
        """close() from another thread while one is inside: farm.client.dialer says how."""
        self.closed = True
        self.dialer.cut_short(conn.sock for conn in list(self.conns.values()))

    def connection(self, addr: str, deadline: float | None = None) -> Conn:
        """The open connection to ``addr``, opened now if need be (OSError if it cannot),
        waiting ``connect_timeout`` at most, and not past ``deadline`` (the caller's)."""
        if self.closed and not self.open_call:  # a call begun after close(): a misuse
            raise RuntimeError("this farm.Client is closed")
        self.fail_if_closed()  # one under way (between two servers' connects): as closed
        self.check_fork()
        conn = self.conns.get(addr)
        if conn is not None:
            self.catch_up(conn)  # drops it if the server has closed it since
            conn = self.conns.get(addr)
        if conn is not None:
            if conn.session.busy or not conn.session.refused:
                return conn
            # It answered ERROR and may close next (farm does after a packet over its
            # --max-packet): a fresh connection, not a submit lost with this one.
            self.close_one(conn)
        wait = self.connect_timeout  # None (never 0): no bound but the caller's
        if deadline is not None:  # a host that is down answers none: the caller's time too
            wait = max(min(left := deadline - time.monotonic(), wait or left), MIN_CONNECT)
        sock = self.dialer.connect(addr, wait, self.tls)
        conn = Conn(addr, sock)
        conn.session.option("exceptions")  # so WORK_EXCEPTION reaches us, not just WORK_FAIL
        conn.session.option(OPTION_FAIL_REASON.decode())  # farm's server says why it failed a job
        # A signal handler's close may land anywhere here: while connect() waited, or in
        # the register (its epoll closed: ValueError). In conns only once registered, and
        # looked at again then: a close before that did not see it, one after closes it.
        try:
            self.fail_if_closed()
            self.selector.register(sock, selectors.EVENT_READ, conn)
        except (ServerUnavailable, ValueError, KeyError, OSError):  # OSError: epoll_ctl's
            sock.close()
            self.fail_if_closed()
            raise
        self.conns[addr] = conn
        try:
            self.fail_if_closed()
        except ServerUnavailable:
            self.close_one(conn)
            raise
        self.picker.mark_up(addr)
        return conn

    def submit(
        self,
        task: Task[TaskListener],
        exclude: Collection[str] = (),
        deadline: float | None = None,
        excluded_how: str = "went away",
    ) -> None:
        """Queue ``task``'s submit on the first server that takes a connection before
        ``deadline``, each connect given its share of the time left (``connect_share``);
        ``exclude``: the servers it was lost with (``not_again``), and ``excluded_how`` how."""
        # Built first: what fails there (a job past 4 GiB - 1, MemoryError) queued nothing,
        # so it is the caller's error alone, not one that closes a connection (below).
        packet = task.packet()
        tried: list[str] = []
        order = self.picker.order(job_key(task.unique, task.data), exclude)
        for at, addr in enumerate(order):
            now = time.monotonic()
            if tried and deadline is not None and deadline <= now:
                tried.append(f"{addr} (not tried: the time given ran out)")
                continue
            try:
                conn = self.connection(addr, connect_share(deadline, now, len(order) - at))
            except OSError as exc:
                self.fail_if_closed()  # the connect's error is not why the call fails
                tried.append(f"{addr} ({exc.strerror or exc})")
                self.picker.mark_down(addr, spent=time.monotonic() - now)
                continue
            try:
                conn.session.submit(task, packet)
            except BaseException:
                self.out_of_step(conn)  # queued for the wire, or awaited, but not both
                raise
            return
        tried.extend(f"{addr} ({excluded_how})" for addr in exclude)
        raise ServerUnavailable("no job server is reachable; tried " + ", ".join(tried))

    def ask(self, conn: Conn, question: Question[Reply]) -> Query[Reply]:
        """Queue ``question`` (a status, an echo) on ``conn``, as ``submit`` queues a job:
        its packet was built, so what cuts this short is an exception from outside (a signal
        handler's), which may leave the packet queued and its answer not awaited, to be
        taken for the next request's; so the connection goes (``out_of_step``)."""
        try:
            return conn.session.ask(question)
        except BaseException:
            self.out_of_step(conn)
            raise

    def pump(self, until: Callable[[], bool], deadline: float | None) -> bool:
        """Send what is queued and read replies until ``until()`` or the deadline (False)."""
        self.check_fork()
        outer, self.deadline = self.deadline, deadline
        try:
            return self._pump(until, deadline)
        finally:
            self.deadline = outer  # (a callback's call pumps inside ours)

    def _pump(self, until: Callable[[], bool], deadline: float | None) -> bool:
        select = self.selector.select
        looked = False  # past the deadline, one look at what has come (a wait of 0 reads)
        while True:
            if self.undelivered:  # left by an interrupted callback (``deliver``)
                self.deliver()
            for conn in list(self.conns.values()):
                try:
                    out = conn.session.data_to_send()
                    if out or conn.unsent:
                        self.send(conn, out)
                except BaseException:
                    self.out_of_step(conn)  # taken from the session, not all on the wire
                    raise
            if until():
                return True
            self.fail_if_closed()
            if not self.conns:
                return until()
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    if looked:
                        return False
                    looked, timeout = True, 0
                timeout = min(timeout, MAX_SELECT)  # epoll takes no more than 2**31 ms
            try:
                ready = select(timeout)
            finally:
                # A signal handler that closes us mostly comes while select() waits: the
                # retried epoll_wait finds its fd closed (EBADF), or the epoll object closed;
                # a close() from another thread wakes it with its sockets shut (cut_short).
                self.fail_if_closed()
            for key, events in ready:
                conn = key.data
                # A callback of an earlier read may have closed us (close() empties conns)
                # or dropped this one: its send raised OSError from last_words(). Or its
                # own call (a nested pump, a submit's catch_up) read what the select saw
                # here, and a recv() that waits waited past the deadline: so no waiting.
                if events & selectors.EVENT_WRITE and self.conns.get(conn.addr) is conn:
                    try:
                        self.send(conn, b"")
                    except BaseException:
                        self.out_of_step(conn)  # sent, and still in unsent: sent twice
                        raise
                if events & selectors.EVENT_READ and self.conns.get(conn.addr) is conn:
                    self.read_now(conn)

    def fail_if_closed(self) -> None:
        """Closed by a callback or a signal handler of the thread waiting in ``pump``."""
        if self.closed:
            raise ServerUnavailable("the farm.Client was closed") from None

    def send(self, conn: Conn, out: bytes) -> None:
        """Send ``out`` after what waits, as much as the socket takes now; the selector
        waits for it to take the rest (see the module docstring)."""
        if conn.unsent:
            conn.unsent += out
        data = conn.unsent or out
        try:
            sent = send_now(conn.sock, data)
        except OSError as exc:
            # What never left stays in ``unsent``, for ``drop`` to tell a submit not written
            # whole from one the server may have read (through TLS some records may have
            # gone before the error: all of ``data`` left unsent took such a one for
            # unwritten, sent again elsewhere, run twice).
            conn.keep_unsent(data, sent_before(exc))
            if isinstance(exc, ssl.SSLError):
                self.drop(conn, f"ended the TLS session ({exc.reason or exc})")
            else:
                self.last_words(conn)
            return
        conn.keep_unsent(data, sent)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.unsent else 0)
        if events != conn.events:
            conn.events = events
            self.selector.modify(conn.sock, events, conn)

    def catch_up(self, conn: Conn) -> None:
        """Read and file what a connection holds, without waiting, and drop it if the server
        closed it (restarted): a peek that saw only a late reply (a timed-out ``call``'s)
        took a closed connection for alive, and through TLS (no peek) a busy one went unseen:
        the next job failed with the dead socket. At most twice its buffer's worth, in bytes
        (a server sending on is alive; one sending without end held the call for ever): a TLS
        read is one record, and a close behind many small ones went unseen when reads counted."""
        left = 2 * conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        while left > 0 and self.conns.get(conn.addr) is conn:
            left -= self.read_now(conn) or left  # None: nothing more; 0: its end, dropped

    def read_now(self, conn: Conn) -> int | None:
        """Read and file what ``conn`` holds, without waiting: its bytes (0: its end); None:
        it holds nothing."""
        try:
            data = recv_now(conn.sock)
            events = conn.session.receive(data) if data else None
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None  # nothing more (or not a whole TLS record yet): it has not closed
        except ssl.SSLError as exc:
            self.drop(conn, f"ended the TLS session ({exc.reason or exc})")
            return None
        except OSError:
            data, events = b"", None
        except ProtocolError as exc:  # not a job server (a web server's port), or a broken one
            self.drop(conn, f"broke the protocol: {exc}")
            return len(data)
        except BaseException:
            self.out_of_step(conn)  # bytes read that the session may not have taken whole
            raise
        if events is None:  # its end
            self.drop(conn, conn.why_closed())
            return 0
        conn.answered = True
        self.undelivered.extend((conn.addr, event) for event in events)
        self.deliver()
        return len(data)

    def last_words(self, conn: Conn) -> None:
        """A send failed: the server may have said why before it closed (an ERROR such as
        ARGUMENT_TOO_LARGE for a job over its --max-packet), and that is the error of the
        request it refused; read what it sent, then drop the connection."""
        if isinstance(conn.sock, ssl.SSLSocket):  # no reading past a broken TLS session
            self.drop(conn)
            return
        while self.conns.get(conn.addr) is conn:
            if self.read_now(conn) is None:  # the end of what is readable
                self.drop(conn, conn.why_closed())

    def close_one(self, conn: Conn) -> None:
        if self.conns.get(conn.addr) is conn:
            del self.conns[conn.addr]
            with suppress(KeyError, ValueError):
                self.selector.unregister(conn.sock)
        with self.dialer.lock:  # not between another thread's cut_short and its shutdown
            conn.sock.close()

    def drop(self, conn: Conn, why: str = "went away") -> None:
        """The server went away: resubmit what may be (unique key, once), fail the rest."""
        self.close_one(conn)
        self.fail_if_closed()  # no: close() from another thread shut it down (cut_short)
        self.picker.mark_down(conn.addr)
        # What the socket never took: a submit in it was not written whole, created nothing.
        for task in conn.session.connection_lost(why, len(conn.unsent)):
            skip = not_again(task, conn.addr)
            # No server left to try (one server, or all cut its submit short): the loss is
            # the error, as AsyncClient's, not "no job server is reachable".
            if may_resubmit(task) and any(a not in skip for a in self.picker.servers):
                try:
                    # The pump's deadline bounds the resubmit only while it is ahead: one
                    # passed (its last look, or another task's wait) left it 50 ms.
                    ahead = self.deadline is not None and self.deadline > time.monotonic()
                    until = self.deadline if ahead else None
                    self.submit(task, exclude=skip, deadline=until, excluded_how=why)
                    continue
                except ServerUnavailable as exc:
                    # A submit cut short says first that it created nothing, as AsyncClient's.
                    cut = task.unwritten and f"{lost_error(conn.addr, task, why)}; then {exc}"
                    task.error = ServerUnavailable(cut) if cut else exc
            else:
                task.error = lost_error(conn.addr, task, why)
            task.done = True
            if task.owner is not None:
                task.owner.task_event(JobEnded(task=task))
