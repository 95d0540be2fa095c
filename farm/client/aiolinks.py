"""``AsyncLinks``, a mixin of ``farm.AsyncClient``: its connections to the job servers --
one connect per server however many coroutines ask, a client used again on a new event
loop, a unique-keyed job lost with its server sent once to another, and a task given up
(a server that had not answered its submit tried last)."""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

from farm.client.aioconn import ServerConnection, Waiter, closed_error
from farm.client.serverpick import MIN_CONNECT, STAGGER, ServerPicker, connect_share, job_key
from farm.errors import ServerUnavailable
from farm.net import keep_alive, parse_address, tls_refused
from farm.protocol import OPTION_FAIL_REASON
from farm.protocol.client import Question, Task, lost_error, not_again

__all__ = ["AsyncLinks"]

R = TypeVar("R")


class AsyncLinks:
    """The connection half of ``AsyncClient`` (see the module docstring)."""

    _conns: dict[str, ServerConnection]
    _connecting: dict[str, asyncio.Future[ServerConnection]]
    _picker: ServerPicker
    _closed: bool
    _loop_end: AsyncGenerator[None, None] | None
    _loop: asyncio.AbstractEventLoop | None  # the loop of the connections held, if any
    connect_timeout: float | None  # None: each connect waits as long as the kernel's
    tls: ssl.SSLContext | None

    def _resubmit(self, task: Task[Waiter], lost_conn: ServerConnection) -> None:
        """The rule of farm.protocol.client.may_resubmit, asynchronously: another server, once."""
        lost = lost_conn.addr
        self._picker.mark_down(lost)

        async def again() -> None:
            skip = not_again(task, lost)  # and those that cut it short before: one pass
            for addr in self._picker.order(job_key(task.unique, task.data), exclude=skip):
                try:
                    conn = await self._connect(addr)
                except ServerUnavailable:
                    continue
                except RuntimeError:  # close() came meanwhile (or another loop took it)
                    break
                if not task.abandoned:  # its caller gave up meanwhile: nothing to send
                    try:
                        conn.submit(task, task.packet())
                    except BaseException:  # cut short: its connection goes (conn.submit)
                        if not conn.session.holds(task):  # else it fails with it
                            lost_conn.end_lost(task, lost_error(conn.addr, task, conn.lost_how))
                        raise
                return
            if self._closed:
                lost_conn.end_lost(task, closed_error())
            else:
                lost_conn.end_lost(task, lost_error(lost, task, lost_conn.lost_how))

        asyncio.ensure_future(again())

    async def _first(
        self,
        addrs: list[str],
        question: Question[R],
        final: Callable[[R], bool],
    ) -> R:
        """As farm.Client asks (farm.client.statusask): the next server when the one before
        failed, answered what is not ``final`` ("unknown"), or has not answered within
        STAGGER. The first final answer, else the last; ServerUnavailable when none answered
        ("unknown" from nobody would read as "finished")."""

        async def ask(addr: str) -> R:
            conn = await self._connect(addr)
            return await conn.ask(question)

        status, errors, at = None, [], 0
        asking: dict[asyncio.Future[R], int] = {}  # each ask, by its place in addrs
        try:
            while at < len(addrs) or asking:
                if at < len(addrs):
                    asking[asyncio.ensure_future(ask(addrs[at]))] = at
                    at += 1
                wait = STAGGER if at < len(addrs) else None
                done, _ = await asyncio.wait(asking, timeout=wait, return_when="FIRST_COMPLETED")
                for future in sorted(done, key=asking.__getitem__):
                    del asking[future]
                    try:
                        answer = future.result()
                    except ServerUnavailable as exc:
                        if self._closed:  # close() came meanwhile: no other server is asked
                            raise
                        errors.append(str(exc))
                        continue
                    if final(answer):
                        return answer
                    status = answer
        finally:
            for future in asking:  # (one that ends in error anyway: its error taken)
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
                future.cancel()
        if status is None:
            raise ServerUnavailable("no job server answered; tried " + "; ".join(errors))
        return status

    async def _any_connection(
        self, unique: str | bytes, deadline: float | None = None
    ) -> ServerConnection:
        """A connection for a job placed by ``unique``, made before ``deadline`` (loop time:
        a call's own timeout), each connect given its share of the time left."""
        errors: list[str] = []
        paused = [addr for addr, conn in self._conns.items() if conn.writing_paused]
        order = self._picker.order(unique, busy=paused)
        for at, addr in enumerate(order):
            now = asyncio.get_running_loop().time()
            if errors and deadline is not None and deadline <= now:
                errors.append(f"{addr} (not tried: the time given ran out)")
                continue
            try:
                return await self._connect(addr, connect_share(deadline, now, len(order) - at))
            except ServerUnavailable as exc:
                if self._closed:  # close() ended the connect: no other server is tried
                    raise
                errors.append(str(exc))
        raise ServerUnavailable("no job server is reachable; tried " + ", ".join(errors))

    async def _connect(self, addr: str, deadline: float | None = None) -> ServerConnection:
        if self._closed:
            raise RuntimeError("this farm.AsyncClient is closed")
        # Before anything of another loop is touched: a connect under way on a live loop
        # (no connection made yet) was awaited from this one, and asyncio said "got Future
        # attached to a different loop" after the future had been handled from two threads.
        self._refuse_another_loop()
        conn = self._conns.get(addr)
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            # The loop the connections are on, whichever server this one asks for: a loop
            # that reaches only server B must not take A's connection of a loop now gone
            # for its own, nor keep that loop's _loop_end for its own end.
            # Used again after its loop ended (an asyncio.run() per step, a loop per test):
            # that loop's connections and jobs are gone with it (_on_loop_end closed them),
            # and this one connects anew.
            self._conns.clear()
            self._connecting.clear()
            self._loop_end = None
            self._loop = None
            conn = None
        # A connection the server closed while the loop did not read is seen here, before
        # a request goes onto it (docs/client.md); a new one is made then, as for one gone.
        if conn is not None and not await conn.closed_unseen():
            if self._closed:  # close() came while the loop read what was left
                raise RuntimeError("this farm.AsyncClient is closed")
            return conn
        pending = self._connecting.get(addr)
        if pending is not None and pending.get_loop() is not asyncio.get_running_loop():
            # A closed loop's (a live one's was refused above), closed with the connect
            # under way and its tasks not cancelled: it never ends, and awaited from here
            # every call to this server raised asyncio's "attached to a different loop".
            pending = None
        if pending is None:  # one connect per server, however many coroutines ask
            pending = asyncio.ensure_future(self._open(addr))
            self._connecting[addr] = pending
            pending.add_done_callback(lambda done: self._connected(addr, done))
        loop = asyncio.get_running_loop()
        # A host that is down answers no connect: a call's timeout bounds it too. The
        # connect goes on for the others waiting on it, up to connect_timeout.
        left = None if deadline is None else max(deadline - loop.time(), MIN_CONNECT)
        try:  # (not asyncio.wait_for, which may drop a cancel: AsyncClient._outcome)
            async with asyncio.timeout(left):
                return await asyncio.shield(pending)
        except TimeoutError:
            self._picker.mark_down(addr, spent=left or 0.0)
            raise ServerUnavailable(f"{addr} (timed out)") from None
        except asyncio.CancelledError:
            # close() cancelled the connect (its callers fail as closed, at once, not after
            # connect_timeout), unless this caller was cancelled itself.
            current = asyncio.current_task()
            if pending.cancelled() and (current is None or not current.cancelling()):
                raise closed_error() from None
            raise

    def _connected(self, addr: str, done: asyncio.Future[ServerConnection]) -> None:
        """A connect ended: the next one starts anew. Its error is taken here, as every
        caller may have given up on it (a call's timeout) and asyncio would log it as
        never retrieved; each caller still waiting raises it."""
        self._connecting.pop(addr, None)
        if not done.cancelled():
            done.exception()

    def _refuse_another_loop(self) -> None:
        """RuntimeError when a live event loop other than the running one holds connections
        (or connects): asyncio's transports and futures are not thread-safe, so they are
        used only on the loop they belong to."""
        running = asyncio.get_running_loop()
        loops = [conn.loop for conn in self._conns.values()]
        loops += [pending.get_loop() for pending in self._connecting.values()]
        if any(loop is not running and not loop.is_closed() for loop in loops):
            raise RuntimeError(
                "this farm.AsyncClient is in use on another event loop: make one per loop"
            )

    async def _open(self, addr: str) -> ServerConnection:
        loop = asyncio.get_running_loop()
        target, began = parse_address(addr), loop.time()
        try:
            if target.kind == "unix":
                opening = loop.create_unix_connection(
                    lambda: ServerConnection(addr, loop), target.path
                )
            else:
                opening = loop.create_connection(
                    lambda: ServerConnection(addr, loop),
                    target.host,
                    target.port,
                    ssl=self.tls,
                    server_hostname=target.host if self.tls is not None else None,
                )
            # wait_for(..., None) waits as long as the connect takes, as farm.Client's None.
            transport, conn = await asyncio.wait_for(opening, self.connect_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError too: a refused certificate
            self._picker.mark_down(addr, spent=loop.time() - began)
            if isinstance(exc, ssl.SSLError):
                exc = tls_refused(exc)
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ServerUnavailable(f"{addr} ({why})") from None
        if self._closed:  # close() came while this connected: nothing may go out on it
            transport.close()
            raise closed_error()
        # A server whose host died or whose network was cut sends no FIN nor RST: with no
        # keepalive a call to it waited for ever, as an idle worker did (farm.net). The
        # transport's socket, under TLS too; a Unix socket is left as it is.
        try:
            sock = transport.get_extra_info("socket")  # None where a loop's has none
            if sock is not None:
                keep_alive(sock)
            conn.session.option("exceptions")  # WORK_EXCEPTION reaches us, not just WORK_FAIL
            conn.session.option(OPTION_FAIL_REASON.decode())  # why farm's server failed a job
        except BaseException:  # a signal handler's: the connection, held by none, goes
            transport.abort()
            raise
        # Weakly, as the loop holds the protocol while it reads: a client its user dropped
        # unclosed is freed then, not when the loop ends (its connections close with it).
        conn.resubmit = weakref.WeakMethod(self._resubmit)
        conn.send_soon()
        self._conns[addr] = conn
        self._picker.mark_up(addr)
        if self._loop_end is None:
            self._loop = loop
            self._loop_end = _on_loop_end(loop, self._conns, weakref.ref(self))
            await self._loop_end.asend(None)
        return conn

    def _cancel_connects(self) -> None:
        """``close()``: the connects under way end now; their callers fail as closed."""
        for pending in list(self._connecting.values()):
            if not pending.get_loop().is_closed():
                pending.cancel()

    def _close_transports(self, which: Callable[[ServerConnection], bool]) -> None:
        _close_transports(self._conns, which)

    def _give_up(self, task: Task[Waiter]) -> bool:
        """``abandon``: whether the submit had left (False: taken back, or on no connection)."""
        conn = self._conns.get(task.server or "")
        sent = conn is not None and conn.give_up(task)
        task.abandoned = True  # no connection (a resubmit under way): it is not sent on
        return sent

    def _cancelled(self, task: Task[Waiter], waiter: Waiter) -> None:
        """A call's, a stream's or a foreground submit's caller was cancelled: ``task`` is
        given up (taken back while unsent; once sent, the server may create its job, which
        runs on), and its server, where the submit had left unanswered, may be tried last
        (``_not_created``)."""
        if self._give_up(task):
            self._not_created(task, waiter)

    def _not_created(self, task: Task[Waiter], waiter: Waiter) -> None:
        """Its caller was cancelled (``asyncio.timeout()``, ``wait_for()``, a map stopped)
        while waiting for ``task``, whose submit left: a server that has not said JOB_CREATED
        within STAGGER (a live one answers in milliseconds) is tried last for a while, as
        after a call's own ``timeout``. Not marked, a hung server ahead of a live one took
        every other call and submit for ever, and an ordered map never yielded."""
        if task.handle is not None or task.done or task.server is None:
            return
        if asyncio.get_running_loop().time() - waiter.since >= STAGGER:
            self._picker.mark_down(task.server)


async def _on_loop_end(
    loop: asyncio.AbstractEventLoop,
    conns: dict[str, ServerConnection],
    client: weakref.ref[AsyncLinks],
) -> AsyncGenerator[None, None]:
    """Closes ``loop``'s connections of ``conns`` (a client's) as the loop ends. Once a
    loop is closed nothing can close its transports (their close runs on it), and uvloop
    warns of them in its close() already; but asyncio.run() and asyncio.Runner
    (pytest-asyncio, anyio, IsolatedAsyncioTestCase) call loop.shutdown_asyncgens() before
    that, which acloses every async generator still suspended on the loop, as this one is
    from the first connection on it. A loop closed without that leaves them to the garbage
    collector. The client is held weakly (as a method, the generator's frame held it in a
    cycle that only the collector broke, resurrected by asyncio's finalizer): a client its
    user dropped unclosed goes at once, and asyncio's finalizer acloses this on the loop,
    which closes its connections."""
    try:
        yield
    finally:
        owner = client()
        if owner is not None:  # the next loop's first connection starts its own
            owner._loop_end = owner._loop = None
        _close_transports(conns, lambda conn: conn.loop is loop)


def _close_transports(
    conns: dict[str, ServerConnection], which: Callable[[ServerConnection], bool]
) -> None:
    """Close the connections ``which`` picks; their calls fail as closed by the client,
    and none is sent again."""
    for addr, conn in list(conns.items()):
        if not which(conn):
            continue
        del conns[addr]
        transport = conn.transport
        if transport is None:
            continue
        conn.closed_by_client = True
        if transport.get_write_buffer_size():
            # Bytes the server has not taken (it stopped reading): close() would wait
            # for them to leave before connection_lost, and our callers with it. They
            # are told of the close now, and none of it is sent.
            transport.abort()
        else:
            transport.close()
