"""The blocking worker's links to its job servers: connecting (a worker of several servers
connects in a thread per attempt, so that a server that does not answer holds no jobs of
the others), writing (bounded: a server that takes none of what waits for ``connect_timeout``
is dropped, ``_write_rest``; one whose write an exception cut short, dropped too), and what
a lost server means. The socket itself (its peer gone, parting from a server) is
farm.workerwire's; the loop's timers (a grab left unanswered, a long sleep) are
farm.workertimers'. A mixin of ``farm.worker.Worker``,
which owns the selector, the job in hand and the loop."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from farm.net import Dial, connect, keep_alive, send_now
from farm.protocol.worker import WorkerSession
from farm.workerwire import peer_gone, wait_writable

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_FIRST",
    "ServerLink",
    "WorkerLinks",
    "run_unsent",
]

log = logging.getLogger("farm.worker")

#: Reconnect delays after a server is lost or refuses: first, then doubling up to the cap.
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 5.0
#: The most seconds a grab's deadline waits past its last byte for the server to read what
#: the buffers held ahead of it (``_push_the_grab``), however slow its pace was.
BACKLOG_CAP = 30.0


@dataclass(slots=True)
class ServerLink:
    """One job server of a worker: its session, socket and reconnect state."""

    addr: str
    session: WorkerSession
    sock: socket.socket | None = None
    retry_at: float = 0.0
    backoff: float = BACKOFF_FIRST
    dial: Dial | None = None  # a connect in its own thread (a worker of several servers)
    asleep_since: float | None = None  # when its session was seen asleep (workertimers)
    heard: bool = False  # bytes read on this connection (a TLS server's refusal comes first)
    silent: bool = False  # dropped for leaving a grab unanswered; not heard from since
    # An outage's start (monotonic), until the server talks sense again (a connect is not
    # enough), and whether it was said: at INFO (within the worker's outage_grace), a warning.
    down_since: float | None = None
    noted: bool = False
    warned: bool = False
    # The answered job's Job.unsent while its answer waits to be written: run if the
    # connection is lost first (Worker._run sets it, _flush_locked clears it).
    unsent: Callable[[], None] | None = None
    # Bytes taken from the session that the server has not taken yet (a large answer, a
    # server slow to read or hung): only their front is ever written, under the send lock,
    # so that writes from several threads never interleave within a packet.
    pending: bytearray | None = None
    writing: bool = False  # a send under way whose count is not noted yet (_flush_locked)
    settled: bool = False  # what this flush took from the session is noted: no doubt left
    took_at: float = 0.0  # when the server last took some of them (monotonic)
    # A write the buffers stopped: when, what they took at once, what the server took at
    # its pace since; and, once all left, when it will likely have read the buffers' worth
    # too (``_push_the_grab``: a grab behind them waits on that before it can be answered).
    stalled_at: float = 0.0
    burst: int = 0
    paced: int = 0
    read_by: float = 0.0


class WorkerLinks:
    """The connection half of ``Worker`` (see the module docstring)."""

    _servers: list[ServerLink]
    _selector: selectors.BaseSelector | None
    _grabbing: ServerLink | None
    _grab_deadline: float | None
    _stopping: bool
    _send_lock: threading.Lock
    _unsent_due: list[Callable[[], None]]  # lost while the lock was held: run after it
    connect_timeout: float
    outage_grace: float
    tls: ssl.SSLContext | None
    _wake: Callable[[], None]

    def _reconnect_due(self, now: float) -> None:
        selector = self._selector
        assert selector is not None, "only work() reconnects, and it owns the selector"
        for server in self._servers:
            if server.sock is not None or self._stopping:
                continue
            outcome: socket.socket | OSError
            if server.dial is not None:  # connecting in its own thread
                if server.dial.outcome is None:
                    continue
                outcome, server.dial = server.dial.outcome, None
            elif server.retry_at > now:
                continue
            elif len(self._servers) > 1:
                # A server that does not answer must not hold the jobs of the others for
                # connect_timeout at each retry: its connect runs in a thread of its own.
                server.dial = Dial(server.addr, self.connect_timeout, self.tls, self._wake)
                continue
            else:
                try:
                    outcome = connect(server.addr, self.connect_timeout, self.tls)
                except OSError as exc:
                    outcome = exc
            if isinstance(outcome, OSError):
                self._unreachable(server, outcome)
                continue
            sock = outcome
            server.sock = sock  # its outage (and backoff) ends once it talks sense: _back
            server.heard = False
            selector.register(sock, selectors.EVENT_READ, server)  # before anything may raise
            keep_alive(sock)
            # Under the lock, as the read is (Worker._read): register() and unregister() from
            # another thread change the abilities and echoes that connected() starts anew;
            # unlocked, a reconnect beside them raised "dictionary changed size during
            # iteration" in work(), or sent no CAN_DO for a function registered mid-way.
            with self._send_lock:
                server.session.connected(asleep=server.silent)

    def _back(self, server: ServerLink) -> None:
        """A server lost or unreachable talks sense again (bytes read that parse): only now
        is its outage over. A connect is not enough: a server at its --max-connections
        takes each one and closes it, and a worker that called each connect the outage's
        end, within its outage_grace, never warned."""
        if server.warned or server.noted:
            log.info("job server %s is back", server.addr)
        server.down_since, server.noted, server.warned = None, False, False

    def _unreachable(self, server: ServerLink, why: OSError) -> None:
        """A connect failed: said once an outage, at INFO within ``outage_grace`` (a server
        its supervisor restarts), a warning past it; retried after the backoff."""
        now = time.monotonic()
        down = _outage(server, now)
        if server.warned:
            pass
        elif down < self.outage_grace:
            if not server.noted:
                log.info("job server %s unreachable (%s); retrying", server.addr, why)
                server.noted = True
        else:
            lasted = f" for {down:.0f}s" if self.outage_grace else ""
            log.warning("job server %s unreachable%s (%s); retrying", server.addr, lasted, why)
            server.warned = True
        _retry_later(server, now)

    def _flush(self, server: ServerLink) -> None:
        with self._send_lock:
            rest = self._flush_locked(server)
        if rest is not None:
            self._write_rest(server, rest)
        self._run_unsent_due()

    def _flush_locked(self, server: ServerLink) -> socket.socket | None:
        """Write what the session holds, as much as the server takes now (the send lock
        held). What it does not take waits in ``server.pending``: then its socket is
        returned, for the caller to write the rest with ``_write_rest`` once it has
        released the lock. A connection lost so leaves its job's unsent in
        ``_unsent_due``: the caller runs it once the lock is released, as the hook may call
        the worker (register(), abandon()), which takes the lock.

        Never a blocking write: one to a hung server whose buffers were full waited for
        ever, holding the lock (register() from another thread), the other servers' jobs
        and stop(). A write that fits, any answer but a large one, is one send() (over TLS,
        with the socket made non-blocking around it: ``sockio.send_now``), no poll."""
        held, settled, server.settled = -1, False, False
        try:
            held = server.session.queued
            rest = self._write_locked(server)
            settled = True  # noted: an exception from here on leaves it in step
            if server.sock is not None:
                self._push_the_grab(server)
            return rest
        except BaseException:
            # Not the socket's error (that is handled): a signal handler's exception (a
            # job's own alarm as its news goes out, a SIGTERM handler's exit). Bytes taken
            # from the session, or a send whose count was not noted, may have left in part:
            # what went next was read as their rest, and the server was out of step (the
            # job's answer lost in its data, then every grab). Such a connection goes, and
            # its job with it (the server takes it back); one cut before anything was taken
            # is kept, its answer still to go (``work()`` ending writes it).
            doubt = server.writing or not server.settled and 0 <= server.session.queued < held
            if not settled and doubt and server.sock is not None:
                why = "was dropped: an exception cut short a write on it"
                self._lost(server, why, locked=True)
            raise
        finally:
            server.writing = False

    def _write_locked(self, server: ServerLink) -> socket.socket | None:
        """``_flush_locked``'s write; ``server.writing`` while what it sends is not noted.
        Nothing is called after the noting (``_push_the_grab`` is the caller's): a signal
        handler's exception there took a write noted whole for one in doubt, and the
        connection was dropped, the job run again and its data sent twice."""
        out: bytes | bytearray = server.session.data_to_send()
        sock = server.sock
        if sock is None:
            return None
        if server.pending:  # behind what waits: the stream's order is the packets'
            server.pending += out
            out = server.pending
        elif not out:
            return None
        if server.unsent is not None and peer_gone(sock):
            # Over TCP a write to a server that was killed succeeds (its reset comes
            # back later) and the answer would seem to have left: its end of stream,
            # already here, says it cannot.
            self._lost(server, "closed the connection before an answer left", locked=True)
            return None
        server.writing = True  # until what left is noted (``_flush_locked``)
        try:
            sent = send_now(sock, out)
        except OSError as exc:
            self._lost(server, f"write failed: {exc}", locked=True)
            return None
        now = time.monotonic()
        if sent:
            server.took_at = now
        if out is server.pending:
            server.paced += sent
        if sent == len(out):
            if out is server.pending and now > server.stalled_at and server.paced:
                # Read at the pace it took the rest: the buffers' worth still ahead of
                # what left last, up to BACKLOG_CAP seconds of it.
                backlog = server.burst * (now - server.stalled_at) / server.paced
                server.read_by = now + min(backlog, BACKLOG_CAP)
            server.pending = None
            server.unsent = None  # the answer left
            server.writing, server.settled = False, True
            return None
        if out is server.pending:
            del server.pending[:sent]  # from the front: no copy of the rest
        else:
            server.pending = bytearray(memoryview(out)[sent:])
            server.stalled_at, server.burst, server.paced = now, sent, 0
        server.writing, server.settled = False, True
        return sock

    def _push_the_grab(self, server: ServerLink) -> None:
        """A grab to ``server`` queued behind a large answer (or sent just after one) has
        its deadline run from when the server could answer it: from the last byte it took,
        and past that by the time it likely takes to read what the buffers held ahead of
        the grab, at the pace it read the rest. Run from when it was queued, a slow server
        that takes our bytes, however slowly, was dropped as hung."""
        if self._grabbing is server and self._grab_deadline is not None:
            since = max(server.took_at, server.read_by)
            self._grab_deadline = max(self._grab_deadline, since + self.connect_timeout)

    def _write_rest(self, server: ServerLink, sock: socket.socket) -> bool:
        """Write what ``_flush_locked`` left waiting on ``sock``, the send lock held only to
        write, not while the server's buffers are full: another thread's register(),
        abandon() or job news goes on meanwhile (its bytes join the end of what waits). A
        server that takes none of it for ``connect_timeout`` is hung (SIGSTOPped, or a
        host that answers nothing): dropped as for a grab it leaves unanswered (its
        answer's unsent runs, and it is connected again asleep). Whether all of it left
        on ``sock`` (False: that connection lost, here or by another thread)."""
        bound = self.connect_timeout
        deadline = time.monotonic() + bound
        while True:
            wait_writable(sock, deadline - time.monotonic())
            with self._send_lock:
                if server.sock is not sock:
                    return False
                if self._flush_locked(server) is None:  # all of it taken, or the link lost
                    return server.sock is sock
                # Bounded while it takes none: a slow server's large answer is not hung.
                deadline = max(deadline, server.took_at + bound)
                if time.monotonic() >= deadline:
                    server.silent = True
                    why = f"took no byte of what waits to be sent within {bound:g}s"
                    self._lost(server, why, locked=True)
                    return False

    def _run_unsent_due(self) -> None:
        """The unsent hooks of answers lost under the send lock, now that it is not held."""
        while True:
            try:  # no look first: another thread's call may take the last between the two
                unsent = self._unsent_due.pop(0)
            except IndexError:
                return
            run_unsent(unsent)

    def _close(self, server: ServerLink) -> None:
        if server.sock is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):  # never registered: it raised first
                self._selector.unregister(server.sock)
        server.sock.close()
        server.sock = None
        server.pending = None  # that connection's: nobody reads it now
        server.read_by = 0.0  # nor its buffers: a grab on the next one waits on nothing

    def _lost(self, server: ServerLink, why: str, *, locked: bool = False) -> None:
        """The connection is gone; ``locked``: the send lock is held, so the answered
        job's unsent waits in ``_unsent_due`` for the lock's release."""
        # Within the grace, its end is news (INFO); it warns if the server is not back in
        # time, here too if it takes each reconnect and closes it (once an outage, as
        # _unreachable). Not a hung server (silent): its kernel takes each reconnect, and
        # only this says it. No grace: a warning each time, as ever.
        now = time.monotonic()
        down = _outage(server, now)
        if server.silent or self.outage_grace <= 0:
            log.warning("job server %s %s; reconnecting", server.addr, why)
        elif down < self.outage_grace or server.warned:
            log.info("job server %s %s; reconnecting", server.addr, why)
        else:
            log.warning("job server %s %s; reconnecting (out for %.0fs)", server.addr, why, down)
            server.warned = True
        self._close(server)
        if locked:
            server.session.connection_lost()
        else:
            with self._send_lock:  # as connected(): what register() changes is reset here
                server.session.connection_lost()
        unsent, server.unsent = server.unsent, None
        if unsent is not None:
            self._unsent_due.append(unsent)
        if self._grabbing is server:
            self._grabbing = self._grab_deadline = None
        _retry_later(server, now)
        if not locked:  # last: the hook may call the worker, which finds this link's end
            self._run_unsent_due()


def _outage(server: ServerLink, now: float) -> float:
    """How long ``server`` has been out, its outage begun now if it was not yet."""
    if server.down_since is None:
        server.down_since = now
    return now - server.down_since


def _retry_later(server: ServerLink, now: float) -> None:
    """The next connect after the backoff, which doubles up to BACKOFF_CAP."""
    server.retry_at = now + server.backoff
    server.backoff = min(server.backoff * 2, BACKOFF_CAP)


def run_unsent(unsent: Callable[[], None]) -> None:
    """A job's ``unsent`` (its answer could not leave); what it raises is logged, as the
    worker serves on."""
    try:
        unsent()
    except Exception:
        log.exception("cleaning up after a job whose answer could not be sent")
