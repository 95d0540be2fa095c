"""The worker's end of an Executor call: ``run_call``, and the worker's state across calls.

The supervisor serves ``farm.executor.call:run_call`` under the function
name ``farm.python`` (``DEFAULT_FUNCTION``). ``run_call`` checks a job's
signature and that its call is neither expired nor replayed (``farm.executor.replay``)
before it unpickles anything, runs the executor's initializer when this worker's
last one differs, counts jobs for ``max_tasks_per_child``, runs the call (or a
batch of calls), and returns the signed outcome. The format of calls and
results, and the caller's end of it, is farm/executor/payload.py; its names are
re-exported here, where tests and older code import them.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from typing import Any

from farm import forkedchild
from farm.executor import functions, initstate, nesting, spill
from farm.executor.batchflush import Outgoing
from farm.executor.functions import UNIMPORTABLE
from farm.executor.outcomes import (
    dump_batch,
    dump_outcome,
    raised,
    remote_traceback,
    remove_if_unsent,
    send_part,
)
from farm.executor.payload import (
    ARG_CHUNK,
    ARG_CHUNK_BATCH,
    BATCH,
    BROKEN,
    CALL_ID_SIZE,
    CHUNK,
    CHUNK_KINDS,
    DIGEST_SIZE,
    ERROR,
    INIT_ENDS,
    INIT_NEWS,
    INIT_STARTS,
    INITIALIZER,
    KIND_MASK,
    NO_SETUP,
    OK,
    RECYCLE,
    SINGLE,
    SPILLED,
    RemoteTraceback,
    dump,
    dump_fn,
    dump_initializer,
    encode_call,
    encode_setup,
    open_result,
)
from farm.executor.replay import ReplayGuard
from farm.executor.signing import CALL, RESULT, SignatureError, Signer, load_key

__all__ = [
    "DEFAULT_FUNCTION",
    "TARGET",
    "SINGLE",
    "CHUNK",
    "BATCH",
    "OK",
    "ERROR",
    "run_call",
    "encode_call",
    "open_result",
    "CALL_ID_SIZE",
    "BROKEN",
    "NO_SETUP",
    "encode_setup",
    "dump",
    "dump_fn",
    "dump_initializer",
    "RemoteTraceback",
    "recycle_requested",
    "UNIMPORTABLE",
]

log = logging.getLogger("farm.executor")

DEFAULT_FUNCTION = "farm.python"
TARGET = "farm.executor.call:run_call"


_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: The kind of the calls each batch kind carries.
_BATCHED = {BATCH: SINGLE} | {batch: chunk for chunk, batch in CHUNK_KINDS.items()}


_signer: Signer | None = None
_guard: ReplayGuard | None = None
#: The digest of the last initializer this worker ran (None: none, or it failed).
_initialized: bytes | None = None
#: Jobs run per executor id that asked for max_tasks_per_child.
_tasks_done: dict[bytes, int] = {}
#: Why this worker should be replaced after the job in hand (max_tasks_per_child reached),
#: or None. Read by farm/pools/workerproc.py after each job; unsupervised workers ignore it.
recycle_requested: str | None = None
#: Where this worker writes large results, and its limit (farm.executor.spill).
_spill: spill.SpillSettings | None = None


def _worker_guard() -> ReplayGuard:
    global _guard
    if _guard is None:
        _guard = ReplayGuard()  # beside the key file, shared by the pool
    return _guard


def _worker_signer() -> Signer:
    global _signer
    if _signer is None:
        _signer = Signer(load_key())  # $FARM_KEY_FILE, created if missing
    return _signer


def _function(fn_bytes: bytes, initialized: bool) -> Callable[..., Any]:
    """The call's function, kept (farm.executor.functions); after this executor's
    initializer, given what it left (farm.executor.initstate)."""
    fn = functions.load(fn_bytes, _initialized if initialized else None)
    if initialized:
        initstate.give(fn)
    return fn


#: Past any expiry a caller sets (its clock plus CALL_TTL), by millions of years. The layouts
#: before the expiry have pickle bytes where it is read, which read as 2**56 and more.
_LATEST_EXPIRY = 2**48


def _check_layout(signed: memoryview) -> None:
    """SignatureError for a call laid out as another farm version lays them out, under the
    same header (a call id, then an expiry, came in on 2 December 2026): read as this
    layout, an older caller's call failed with whatever its pickle's bytes gave
    (``IndexError``, "this call already ran"), never saying why."""
    at = CALL_ID_SIZE + 8  # the function's size, then its pickle
    fn_size = int.from_bytes(signed[at : at + 4], "little")
    if (
        len(signed) <= at + 4 + fn_size  # no kind byte after the function
        or int.from_bytes(signed[CALL_ID_SIZE:at], "big") >= _LATEST_EXPIRY
        or signed[at + 4] != pickle.PROTO[0]
    ):
        raise SignatureError(
            "this call is laid out as another farm version lays them out (a caller of an"
            " older farm?): run the same farm on callers and workers; refused unrun"
        )


def run_call(job: Any) -> bytes:
    """Worker target: check the signature, unpickle, run, and return the signed outcome."""
    started = time.monotonic()  # the server's timeout runs from JOB_ASSIGN (the batch budget)
    forks = forkedchild.forks  # a child the call forks exits with its own status (below)
    nesting.serving = getattr(job, "function", None)  # an Executor sending here warns (nesting)
    signer = _worker_signer()
    signed = signer.open(CALL, job.data)  # SignatureError: nothing below runs
    _check_layout(signed)
    call_id = bytes(signed[:CALL_ID_SIZE])
    expires = int.from_bytes(signed[CALL_ID_SIZE : CALL_ID_SIZE + 8], "big")
    _worker_guard().claim(call_id, expires, job.handle)  # SignatureError: expired or replayed
    body = signed[CALL_ID_SIZE + 8 :]
    fn_size = int.from_bytes(body[:4], "little")
    kind = body[4 + fn_size]
    start = 5 + fn_size
    calls_data: Any = None
    initialized = kind & INITIALIZER
    if kind > KIND_MASK:  # setup sections follow: this executor's initializer, max_tasks
        start, failure = _set_up(kind, body, start, job, signer, call_id)
        spilled = kind & SPILLED
        kind &= KIND_MASK
        if failure is not None:
            broken: Any = (0, [failure]) if kind in _BATCHED else failure
            return signer.seal(RESULT, call_id + dump_outcome(broken))
        if spilled:  # the pickle is in a file: checked against the signed reference first
            try:
                calls_data = spill.read(body[start:])
            except spill.SpillRefused as exc:
                log.error("%s", exc)
                refused = (ERROR, exc, remote_traceback(exc))
                return _seal_result(job, signer, call_id, dump_outcome(refused))
    if calls_data is None:
        calls_data = body[start:]
    if kind > ARG_CHUNK_BATCH:  # a caller newer than this worker: say so, run nothing
        unknown = TypeError(f"call kind {kind} is unknown to this worker: upgrade the farm")
        return _seal_result(job, signer, call_id, dump_outcome((ERROR, unknown, "")))
    if kind in _BATCHED:
        fn_bytes = bytes(body[4 : 4 + fn_size])
        return _run_batch(
            job, signer, call_id, fn_bytes, calls_data, _BATCHED[kind], bool(initialized), started
        )
    try:
        fn_bytes = bytes(body[4 : 4 + fn_size])
        fn = functions.for_call(_function(fn_bytes, bool(initialized)), fn_bytes)
        calls = functions.unpickle(calls_data)
        del calls_data  # a large argument's bytes: not kept while the call runs
        outcome: tuple[Any, ...] = (OK, _apply(fn, kind, calls))
    except BaseException as exc:  # as ProcessPoolExecutor: even SystemExit is the call's outcome
        forkedchild.leave_if_forked(forks, job.handle, exc)
        outcome = raised(exc)
    else:  # a child returned: it exits before it pickles (or spills) a result of its own
        forkedchild.leave_if_forked(forks, job.handle, None)
    return _seal_result(job, signer, call_id, dump_outcome(outcome))


def _seal_result(
    job: Any,
    signer: Signer,
    call_id: bytes,
    pickled: bytes,
    count: int | None = None,
    first: int = 0,
) -> bytes:
    """The signed result; a pickle over SPILL_THRESHOLD goes to a spill file and its reference
    travels instead. Past the limit, or when the file cannot be written, the outcome (each
    of a batch's ``count`` outcomes from ``first``) becomes that error."""
    if len(pickled) <= spill.SPILL_THRESHOLD:
        return signer.seal(RESULT, call_id + pickled)
    try:
        reference = spill.write(_spill_settings(), pickled, "r", spill.result_tag(call_id))
    except (spill.SpillError, OSError) as exc:
        del pickled
        log.error("cannot send a large result: %s", exc)
        text = remote_traceback(exc)
        if isinstance(exc, OSError):
            exc = spill.SpillError(f"cannot write the call's result to a spill file: {exc}")
        failure = (ERROR, exc, text)
        replaced: Any = failure if count is None else (first, [failure] * count)
        return signer.seal(RESULT, call_id + pickle.dumps(replaced, protocol=_PROTOCOL))
    remove_if_unsent(job, reference)
    return signer.seal(RESULT, call_id + spill.RESULT_MARK + reference)


def _spill_settings() -> spill.SpillSettings:
    global _spill
    if _spill is None:
        _spill = spill.worker_settings()
    return _spill


def _teller(job: Any, signer: Signer, call_id: bytes, kind: int) -> Callable[[bytes], None]:
    """How the initializer's news reach the caller (payload.INIT_NEWS): a signed mark in a
    WORK_DATA, which the worker writes before it goes on, so that a crash in the
    initializer leaves the start told; nothing for a caller that did not ask."""
    send = getattr(job, "send_data", None)
    if not kind & INIT_NEWS or send is None:
        return lambda mark: None
    return lambda mark: send(signer.seal(RESULT, call_id + mark))


def _set_up(
    kind: int, body: memoryview, at: int, job: Any, signer: Signer, call_id: bytes
) -> tuple[int, tuple[Any, ...] | None]:
    """Read the setup sections at ``at``; run the initializer if this worker's last one differs
    (telling the caller as it starts and ends: ``_teller``), and count the job against
    max_tasks_per_child. Returns where the body starts, and the BROKEN outcome when the
    initializer raised (the call does not run then)."""
    global _initialized, recycle_requested
    failure = None
    if kind & INITIALIZER:
        digest = bytes(body[at : at + DIGEST_SIZE])
        size = int.from_bytes(body[at + DIGEST_SIZE : at + DIGEST_SIZE + 4], "little")
        at += DIGEST_SIZE + 4
        if digest != _initialized:
            _initialized = None  # whatever it leaves behind, a failed one runs again next time
            initstate.forget()
            tell = _teller(job, signer, call_id, kind)  # here: most calls find theirs run
            tell(INIT_STARTS)
            try:
                initializer, initargs = functions.unpickle(body[at : at + size], "the initializer")
                initstate.run(initializer, initargs)
                _initialized = digest
            except BaseException as exc:  # as ProcessPoolExecutor: even SystemExit breaks it
                log.critical("Exception in initializer:", exc_info=True)
                failure = (BROKEN, exc, remote_traceback(exc))
                exc.__traceback__ = None  # its frames, the initializer's state: not kept (raised)
            else:
                tell(INIT_ENDS)
        at += size
    if kind & RECYCLE:
        executor_id = bytes(body[at : at + CALL_ID_SIZE])
        max_tasks = int.from_bytes(body[at + CALL_ID_SIZE : at + CALL_ID_SIZE + 4], "little")
        at += CALL_ID_SIZE + 4
        if len(_tasks_done) >= 4096 and executor_id not in _tasks_done:
            _tasks_done.clear()
        done = _tasks_done[executor_id] = _tasks_done.get(executor_id, 0) + 1
        if done >= max_tasks:
            recycle_requested = (
                f"max_tasks_per_child {max_tasks} of executor {executor_id.hex()[:8]} reached"
            )
    return at, failure


def _apply(fn: Callable[..., Any], kind: int, calls: Any) -> Any:
    """Run one unpickled call body of ``kind``: a SINGLE's ``(args, kwargs)``, or a chunk's
    list of argument tuples (CHUNK) or of plain arguments (ARG_CHUNK), whose value is the
    list of the calls' values. Comprehensions, not ``builtins.map``: map takes a
    StopIteration out of ``fn`` for its input's end, and the chunk's later values were
    lost; here it is the chunk's exception, as in the pool's ``_process_chunk``."""
    if kind == SINGLE:
        args, kwargs = calls
        return fn(*args, **kwargs)
    if kind == ARG_CHUNK:
        return [fn(arg) for arg in calls]
    return [fn(*args) for args in calls]


def _run_batch(
    job: Any,
    signer: Signer,
    call_id: bytes,
    fn_bytes: bytes,
    body: memoryview,
    kind: int,
    initialized: bool,
    started: float,
) -> bytes:
    """Run a batch's calls (or chunks of calls: ``kind`` CHUNK or ARG_CHUNK, else SINGLE)
    in order; send outcomes as they pile up, the rest at the end. ``started``: when the job
    came (an initializer's first run, a spilled body's read count against its timeout)."""
    forks = forkedchild.forks
    try:
        fn: Callable[..., Any] | None = _function(fn_bytes, initialized)
        calls: list[bytes] = pickle.loads(body)
        failure: tuple[Any, ...] | None = None
    except BaseException as exc:  # the function itself cannot be rebuilt: every call says so
        fn, calls, failure = None, pickle.loads(body), (ERROR, exc, remote_traceback(exc))
    # Under a pool's timeout the job must end in time, though its calls are short: the
    # calls that would run past 3/4 of it are left unrun, and the caller sends them again
    # (those after a call still running then, as soon as it is: batchflush.Outgoing.cut_due).
    budget = 0.75 * job.timeout if getattr(job, "timeout", None) else None
    outgoing = Outgoing(
        lambda first, outcomes: send_part(job, _seal_batch, signer, call_id, first, outcomes),
        lambda first, count, pickled: send_part(
            job, _seal_result, signer, call_id, pickled, count, first
        ),
        len(calls),
        spill.SPILL_THRESHOLD,
        None if budget is None else started + budget,
    )  # outcomes as they leave: farm.executor.batchflush
    longest = 0.0
    try:
        for index, call in enumerate(calls):
            if failure is not None or fn is None:
                outgoing.add(index, failure)
                continue
            if budget is not None:
                began = time.monotonic()
                late = began - started + longest > budget
                if index and (late or not outgoing.may_start(index)):
                    break  # fewer outcomes than calls: the rest did not run (flight.complete)
            try:
                args = functions.unpickle(call)
                outcome: tuple[Any, ...] = (
                    OK,
                    _apply(functions.for_call(fn, fn_bytes), kind, args),
                )
            except BaseException as exc:
                forkedchild.leave_if_forked(forks, job.handle, exc)  # as in run_call
                outcome = raised(exc)
            else:  # a child that returned ran the batch's other calls again, and sent outcomes
                forkedchild.leave_if_forked(forks, job.handle, None)
            if budget is not None:
                longest = max(longest, time.monotonic() - began)
            outgoing.add(index, outcome)
    finally:
        first, outcomes = outgoing.finish()  # no part leaves after the answer
    return _seal_batch(job, signer, call_id, first, outcomes)


def _seal_batch(job: Any, signer: Signer, call_id: bytes, first: int, outcomes: list[Any]) -> bytes:
    """The signed outcomes of a batch from ``first`` on. When their pickle together is over
    the spill limit, each goes alone (all but the last as WORK_DATA here): the limit is one
    call's, and batching is the executor's doing, so only a call whose own outcome is over
    it fails."""
    pickled = dump_batch(first, outcomes)
    big = len(pickled) > spill.SPILL_THRESHOLD  # the limit is at least that: no look below
    if len(outcomes) > 1 and big and len(pickled) > _spill_settings().max_bytes:
        del pickled
        for index, outcome in enumerate(outcomes[:-1], first):
            alone = dump_batch(index, [outcome])
            send_part(job, _seal_result, signer, call_id, alone, 1, index)
        first, outcomes = first + len(outcomes) - 1, outcomes[-1:]
        pickled = dump_batch(first, outcomes)
    return _seal_result(job, signer, call_id, pickled, len(outcomes), first)
