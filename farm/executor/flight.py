"""Calls and jobs in flight: how waiting calls become jobs, and outcomes become futures.

The pump (farm/executor/pump.py) moves bytes; what it moves is decided here.
A ``WorkItem`` is one call and its future. ``take`` picks the calls of the next
job; a ``Flight`` is that job's calls with the fresh id its results must name,
and makes the signed payload. ``complete`` and ``partial`` turn the job's replies
into outcomes and settle each call's future; ``fail_broken`` fails what a broken
pump leaves.

Batching: when more calls wait than the window has room for, consecutive
calls of the same function travel as one job (``BATCH``, farm/executor/call.py),
so tiny calls stop paying a job each -- a packet, a queue entry and a wake-up
at the server, a grab at the worker. Each call keeps its own future, resolved
as its outcome arrives (WORK_DATA while the batch runs, WORK_COMPLETE at its
end). If the batch's worker dies, the server runs the job again on another
worker (``job_retries``); calls whose outcome already arrived stay resolved
(their second outcome is dropped, but they did run twice), the others resolve
from the rerun or, when the retries run out, fail with ``WorkerLost``. Under a pool's
timeout a worker gives back the calls it will not start (``Flight.cut``): they leave the
job, and the pump sends them again.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures._base import RUNNING, BrokenExecutor
from typing import Any, NamedTuple

from farm.errors import FarmError, JobError, JobFailed, PythonVersionMismatch, WorkerLost
from farm.executor import bytecode, spill
from farm.executor.callids import new_call_id
from farm.executor.cellsource import with_cell_lines
from farm.executor.initnews import InitializerFailed, InitWatch
from farm.executor.payload import (
    BATCH,
    BROKEN,
    CALL_ID_SIZE,
    CHUNK_KINDS,
    OK,
    SINGLE,
    RemoteTraceback,
    describe,
    encode_call,
    open_result,
)
from farm.executor.signing import HEADER, SignatureError, Signer
from farm.protocol.client import Task, last_warning

__all__ = [
    "MAX_BATCH",
    "CALL_TTL",
    "BrokenFarmExecutor",
    "InitializerFailed",
    "Call",
    "WorkItem",
    "Flight",
    "take",
    "complete",
    "partial",
    "flight_of",
    "fail_broken",
]

log = logging.getLogger("farm.executor")

#: Most calls one batch carries.
MAX_BATCH = 64
#: Most bytes of pickled calls one batch carries (the first call of a job goes regardless).
BATCH_BYTES = 1 << 20
#: Seconds a sent call stays valid: a worker refuses it after that (and any replay of it).
#: Every call run is remembered until then (farm/executor/replay.py): six hours of claims
#: are 260 MB of shared memory at a sustained 1,000 jobs a second (26 MB at 100). The
#: executor stamps a call when it sends it to the server, not while it waits in the
#: executor, and keeps few jobs on the server; the server's retry of a job whose worker
#: died is refused past it too.
CALL_TTL = 6 * 3600


class BrokenFarmExecutor(FarmError, BrokenExecutor):
    """The executor's pump thread failed: every call it had not finished fails with this, and
    so does every later ``submit`` (as ``BrokenProcessPool`` for ProcessPoolExecutor)."""


class Call(NamedTuple):
    """A call as the caller's thread encoded it: the pickled function, its kind and body."""

    fn: bytes
    kind: int  # SINGLE, CHUNK or ARG_CHUNK (the pump batches them: BATCH, *_BATCH)
    body: bytes


class WorkItem:
    """A call waiting for, or on, the farm: its future and what it asks."""

    __slots__ = ("future", "call")

    def __init__(self, future: Future[Any], call: Call) -> None:
        self.future = future
        self.call = call


class Flight:
    """The calls one job carries (one, or a batch), and the id its results must name."""

    __slots__ = ("items", "call_id", "init", "was_cut")

    def __init__(self, items: list[WorkItem]) -> None:
        self.items = items
        self.call_id = new_call_id()  # fresh: binds results, stops replays
        self.init = InitWatch()  # the initializer's news: workers lost in it break the pump
        self.was_cut = False  # its worker gave back calls of the batch (``cut``)

    @property
    def batched(self) -> bool:
        """Several calls in one job (BATCH): outcomes come back with their index."""
        return len(self.items) > 1 or self.was_cut

    def cut(self, at: int) -> list[WorkItem]:
        """The worker will not start the calls from index ``at`` on: they leave this job
        (its end, or its worker's death, no longer settles them). Returns those to send
        again."""
        given = self.items[at:] if at > 0 else []
        if given:
            self.was_cut = True
            del self.items[at:]
        return [item for item in given if not item.future.done()]

    def payload(self, signer: Signer, ttl: float, setup: tuple[int, bytes]) -> bytes:
        """The job's signed data: the one call, or the batch, valid for ``ttl`` seconds."""
        call = self.items[0].call
        expires = int(time.time() + ttl)
        if not self.batched:
            return encode_call(signer, self.call_id, expires, call.fn, call.kind, call.body, setup)
        body = pickle.dumps([item.call.body for item in self.items], pickle.HIGHEST_PROTOCOL)
        kind = BATCH if call.kind == SINGLE else CHUNK_KINDS[call.kind]
        return encode_call(signer, self.call_id, expires, call.fn, kind, body, setup)

    def fail(self, error: BaseException) -> None:
        """Fail each of its calls not settled yet with ``error``."""
        for item in self.items:
            if not item.future.done():
                item.future.set_exception(error)


def take(
    pending: deque[WorkItem], items: list[WorkItem], max_batch: int, window: int
) -> list[WorkItem]:
    """The next job's calls, into ``items``: one, or a batch of one function's calls
    when many wait. Each call is in ``items`` from the moment it leaves the deque.

    A batch of calls spreads what waits over twice ``window`` (the workers the jobs
    spread over), so that every worker still gets several jobs and the last ones end
    close together. A batch of chunks takes a 1/``window`` share of what waits (guided
    self-scheduling): sizes fall geometrically as the queue drains, so the last jobs
    are single chunks and end close together, while a map of many small chunks costs
    a few jobs rather than dozens.
    """
    try:
        first = pending.popleft()
    except IndexError:  # emptied since the caller looked (shutdown's cancel_futures)
        return items
    items.append(first)
    if not _start(first):
        items.pop()
        return items
    kind = first.call.kind
    if kind != SINGLE and kind not in CHUNK_KINDS:
        return items  # a spilled call travels alone
    # Measured in one run (bench: 20,000 tiny calls in chunks of 500, 2 workers): a
    # quarter of this share per job ran at 0.71x multiprocessing.Pool's rate, half at
    # 0.91x, the whole share at 1.00x (chunks of 50: 1.13x, 1.58x, 1.78x); chunks of
    # 1 ms, 5 ms and 20 ms calls ran within 1% of each other and of the pool with all three.
    size = min(max_batch, len(pending) // ((2 * window) if kind == SINGLE else window) + 1)
    fn = first.call.fn
    budget = BATCH_BYTES - len(first.call.body)
    while len(items) < size:
        try:
            nxt = pending[0]
        except IndexError:  # emptied (shutdown's cancel_futures may take them meanwhile)
            break
        if nxt.call.kind != kind or nxt.call.fn != fn or len(nxt.call.body) > budget:
            break
        try:
            got = pending.popleft()
        except IndexError:
            break
        if got is not nxt:  # another thread took nxt between the two looks: not ours
            pending.appendleft(got)
            break
        budget -= len(got.call.body)
        items.append(got)
        if not _start(got):
            items.pop()
    return items


def _start(item: WorkItem) -> bool:
    """Mark the call running (False: it was cancelled while it waited). A call a batch left
    unrun comes back running, and stays so."""
    # RUNNING is read without the future's lock (running() takes it): only its pump
    # settles a running call, and cancel() leaves it running.
    return item.future._state == RUNNING or item.future.set_running_or_notify_cancel()


#: The size of a WORK_DATA that tells of the initializer (payload.INIT_NEWS); outcomes, a
#: pickle of several bytes, are never that short.
_NEWS_SIZE = HEADER + CALL_ID_SIZE + 1


def partial(task: Task[Flight], signer: Signer, data: bytes) -> list[WorkItem]:
    """WORK_DATA: the initializer's news (InitializerFailed breaks the pump), the outcomes
    of the calls a batch finished so far, or (no outcomes) the index from which its worker
    under a pool's timeout gives its calls back (farm.executor.batchflush).
    Returns the calls to send again."""
    flight = flight_of(task)
    if len(data) == _NEWS_SIZE:
        _initializer_news(task, flight, signer, data)
    elif flight.batched:
        return _resolve_batch(task, flight, signer, data)
    return []


def _initializer_news(task: Task[Flight], flight: Flight, signer: Signer, data: bytes) -> None:
    """A worker starts or ended the executor's initializer for this job (initnews.InitWatch
    says when workers lost in it break the executor)."""
    try:
        mark = bytes(open_result(signer, flight.call_id, data))
    except SignatureError as exc:  # as for a batch's part that fails its check
        flight.fail(exc)
        return
    flight.init.heard(mark, str(task.handle))


def complete(task: Task[Flight], signer: Signer) -> list[WorkItem]:
    """The job ended: settle every call it carried (InitializerFailed breaks the pump: the
    initializer raised, or a second worker died in it).
    Returns the calls of a batch its worker left unrun, to send again."""
    flight = flight_of(task)
    error = task.error
    if error is not None:
        if type(error) is JobFailed:  # no exception came first: the worker is gone
            flight.init.lost(str(task.handle))  # the second worker lost in the initializer
            # A worker past kill_rss_mb says so first (the session keeps its last warning,
            # without its newline), quoted with JobFailed's hedge: it may be an earlier
            # try's, the server's retries unseen here. Else WORK_FAIL alone says no more,
            # and the farm's log names the cause (kill_rss_mb among them: a likely one for
            # a call on large data, that a caller thinks not of, from a worker older than
            # this).
            error = WorkerLost(
                f"{error}; the call's outcome is unknown"  # the server said why: its timeout
                if error.reason
                else f"job {task.handle} failed; {last_warning(error.warning)};"
                " the call's outcome is unknown"
                if error.warning
                else f"the worker running job {task.handle} died (a crash, the OOM killer),"
                " passed its pool's kill_rss_mb, or overran its timeout (the farm's log says"
                " which); the call's outcome is unknown"
            )
        flight.fail(error)
        return []
    if flight.batched:
        # A worker under a pool timeout runs a batch's first calls only (call._run_batch):
        # the answer's index is the first it left (a cut), and the rest go again. A batch
        # that settled none of the calls it kept is broken, and says so.
        again = _resolve_batch(task, flight, signer, task.result or b"")
        unrun = [item for item in flight.items if not item.future.done()]
        if unrun and len(unrun) == len(flight.items):
            for item in unrun:
                item.future.set_exception(JobError(f"job {task.handle} lost this call"))
            return again
        return again + unrun
    return _complete_one(task, flight, signer)


def _complete_one(task: Task[Flight], flight: Flight, signer: Signer) -> list[WorkItem]:
    try:
        outcome = _open(task, flight, signer, task.result or b"")
    except Exception as exc:
        flight.items[0].future.set_exception(exc)
        return []
    _settle(flight.items[0].future, outcome)
    return []


def _resolve_batch(
    task: Task[Flight], flight: Flight, signer: Signer, data: bytes
) -> list[WorkItem]:
    """Settle the calls whose outcomes ``data`` holds; returns the calls given back (cut)."""
    try:
        first, outcomes = _open(task, flight, signer, data)
    except Exception as exc:
        flight.fail(exc)
        return []
    if not outcomes:
        return flight.cut(first)
    for item, outcome in zip(flight.items[first:], outcomes, strict=False):
        if not item.future.done():  # a rerun after a worker died repeats early outcomes
            _settle(item.future, outcome)
    return []


def _open(task: Task[Flight], flight: Flight, signer: Signer, data: bytes) -> Any:
    """Verify and unpickle a result; SignatureError, PythonVersionMismatch (code a worker
    pickled by value on another Python: farm.executor.bytecode), or JobError when it will
    not load.

    Whatever unpickling raises -- even SystemExit from a ``__reduce__`` -- is the
    failure of this job's calls only: the pump lives on. (ProcessPoolExecutor breaks
    instead, because it cannot tell whose result its pipe held; here the job says.)
    """
    try:
        body: Any = open_result(signer, flight.call_id, data)
        if body[:1] == spill.RESULT_MARK:  # a large result, in a file the worker wrote
            reference = body[1:]
            try:
                body = spill.read(reference)  # SpillRefused before anything is unpickled
            finally:
                spill.remove(reference)  # the caller deletes a result file once read
        # A batch's results travel in one pickle: the call whose result held code may be
        # another of the batch than this one, so say that it is the batch's.
        what = "a result of this call's batch (calls sent in one job, their results together)"
        bytecode.check(body, what if flight.batched else "the call's result", in_worker=False)
        return pickle.loads(body)
    except (SignatureError, PythonVersionMismatch):
        raise
    except BaseException as exc:
        why = f"cannot unpickle the result of job {task.handle}: {describe(exc)}"
        raise JobError(why) from exc


def _settle(future: Future[Any], outcome: tuple[Any, ...]) -> None:
    """Resolve a call's future from its outcome: (OK, value) or (ERROR, exc, traceback);
    (BROKEN, exc, traceback) raises InitializerFailed, which breaks the pump."""
    if outcome[0] == OK:
        future.set_result(outcome[1])
        return
    raised, text = outcome[1], outcome[2]
    try:
        shown = with_cell_lines(text)  # a notebook cell's lines
    except Exception:  # linecache is every tool's to fill: a shape it missed costs the lines,
        shown = text  # never this pump thread (every call in flight would fail with it)
    raised.__cause__ = RemoteTraceback(shown)
    if outcome[0] == BROKEN:
        raise InitializerFailed(raised)
    future.set_exception(raised)


def flight_of(task: Task[Flight]) -> Flight:
    """The calls a task was made for (every task the pump submits has them)."""
    flight = task.owner
    assert flight is not None, f"{task!r} was not submitted by the pump"
    return flight


def fail_broken(items: list[WorkItem], why: str, cause: BaseException | None) -> None:
    """Fail each call not settled yet with BrokenFarmExecutor (a cancelled one stays so).

    A done-callback that raises (even SystemExit) cannot stop the others from failing.
    """
    for item in items:
        future = item.future
        try:
            if future.done():
                continue
            if not future.running() and not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            error = BrokenFarmExecutor(why)
            error.__cause__ = cause
            future.set_exception(error)
        except BaseException:
            log.exception("farm executor: failing a call of the broken pump")
