"""Both ends of an Executor call: encoding it (caller), and ``run_call`` (worker).

The supervisor serves ``farm.executor.call:run_call`` under the function
name ``farm.python`` (``DEFAULT_FUNCTION``). A job's data is a signed call::

    signed(CALL, call_id (16 bytes) | expires (8 bytes, epoch seconds, big endian)
                 | fn_size (4 bytes, little endian) | pickled fn | kind (1 byte)
                 | [setup] | body)

``call_id`` is chosen afresh by the caller for each job, and every result
names it -- ``signed(RESULT, call_id | pickled outcome)`` -- so a result made for
another call (captured, or answered by someone else) is refused by the caller
even though its signature is good. A worker runs a call only before it
expires and only once in the whole pool (``farm.executor.replay``), so a
captured call submitted again is refused unrun.

``kind`` says what ``body`` is and what comes back:

* SINGLE: ``pickle((args, kwargs))``; the job's result is
  ``signed(RESULT, call_id | pickle(outcome))``.
* CHUNK (``map`` with ``chunksize``): ``pickle([args, ...])``; the result is one
  outcome holding the list of values, as ``ProcessPoolExecutor.map`` does.
* BATCH (calls the pump packed into one job, see farm/executor/pump.py):
  ``pickle([pickled (args, kwargs), ...])``; outcomes come back in order, as
  ``signed(RESULT, call_id | pickle((first_index, [outcome, ...])))`` in WORK_DATA
  packets while the batch runs (so a long batch's early calls finish early)
  and in the WORK_COMPLETE that ends it.

The kind byte's low four bits are the kind; its high bits say which setup
sections follow it, in this order (a call of an executor without them carries
no byte more):

* INITIALIZER (0x10): ``digest (32 bytes, sha256 of the pickle) | size (4 bytes,
  little endian) | pickle((initializer, initargs))``. The worker runs
  ``initializer(*initargs)`` before the call unless the last initializer it ran
  has this digest. If it raises, the job's result is the outcome
  ``(BROKEN, exception, traceback_text)`` (for a batch: ``(0, [that])``) and the
  caller breaks the executor, as ProcessPoolExecutor breaks when a child's
  initializer fails.
* RECYCLE (0x20): ``executor_id (16 bytes) | max_tasks (4 bytes, little endian)``:
  after ``max_tasks`` jobs of that executor this worker sets
  ``recycle_requested``, which the supervised worker process
  (farm/pools/workerproc.py) reads after the job: it exits and the supervisor
  replaces it (``max_tasks_per_child``).

An outcome is ``(OK, value)`` or ``(ERROR, exception, traceback_text)``. The
signature is checked before anything is unpickled (``farm.executor.signing``);
a payload that fails it raises SignatureError, which the worker library
reports as WORK_EXCEPTION, so the client learns why. Whatever the call itself
raises (BaseException, as ProcessPoolExecutor) travels back inside a signed
result.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
import traceback
from collections.abc import Callable
from typing import Any

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
]

log = logging.getLogger("farm.executor")

DEFAULT_FUNCTION = "farm.python"
TARGET = "farm.executor.call:run_call"

SINGLE, CHUNK, BATCH = 0, 1, 2
#: The kind byte: the kind in the low bits, the setup sections that follow it in the high ones.
KIND_MASK = 0x0F
INITIALIZER, RECYCLE = 0x10, 0x20
DIGEST_SIZE = 32
#: Bytes of the id that binds a call and its results (and of an executor's id).
CALL_ID_SIZE = 16
#: BROKEN: the executor's initializer failed in the worker; the caller breaks the executor.
OK, ERROR, BROKEN = 0, 1, 2
#: The setup of an executor without initializer or max_tasks_per_child: flags and bytes.
NO_SETUP: tuple[int, bytes] = (0, b"")

#: A running batch sends the outcomes it has so far at most this often (seconds).
BATCH_FLUSH_EVERY = 0.02

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class RemoteTraceback(Exception):
    """The worker's traceback, as text: the ``__cause__`` of a call's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_signer: Signer | None = None
_guard: ReplayGuard | None = None
#: The digest of the last initializer this worker ran (None: none, or it failed).
_initialized: bytes | None = None
#: Jobs run per executor id that asked for max_tasks_per_child.
_tasks_done: dict[bytes, int] = {}
#: Why this worker should be replaced after the job in hand (max_tasks_per_child reached),
#: or None. Read by farm/pools/workerproc.py after each job; unsupervised workers ignore it.
recycle_requested: str | None = None
#: Unpickled functions by their pickled bytes: a lambda sent 10,000 times is rebuilt once.
_functions: dict[bytes, Any] = {}
_MAX_FUNCTIONS = 256


def dump(obj: Any) -> bytes:
    """Plain pickle when it works (several times faster), else cloudpickle, which sends
    lambdas, closures and classes of ``__main__`` by value."""
    try:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    except Exception:
        pass
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=_PROTOCOL)
    return data


def dump_fn(fn: Any) -> bytes:
    """The function's pickle. A function of ``__main__`` travels by value (cloudpickle): the
    worker cannot import the caller's script; one of a module travels by name."""
    if getattr(fn, "__module__", None) == "__main__":
        import cloudpickle

        data: bytes = cloudpickle.dumps(fn, protocol=_PROTOCOL)
        return data
    return dump(fn)


def dump_initializer(initializer: Callable[..., object], initargs: tuple[Any, ...]) -> bytes:
    """The pickle of ``(initializer, initargs)``: by value for a function of ``__main__``."""
    if getattr(initializer, "__module__", None) == "__main__":
        import cloudpickle

        data: bytes = cloudpickle.dumps((initializer, initargs), protocol=_PROTOCOL)
        return data
    return dump((initializer, initargs))


def encode_setup(
    initializer: bytes | None, executor_id: bytes | None = None, max_tasks: int | None = None
) -> tuple[int, bytes]:
    """An executor's setup sections, once for all its calls: the flags for the kind byte and
    the bytes after it (see the module docstring). NO_SETUP when there is nothing to say."""
    flags, data = 0, b""
    if initializer is not None:
        digest = hashlib.sha256(initializer).digest()
        flags |= INITIALIZER
        data += digest + len(initializer).to_bytes(4, "little") + initializer
    if max_tasks is not None:
        assert executor_id is not None and len(executor_id) == CALL_ID_SIZE
        flags |= RECYCLE
        data += executor_id + max_tasks.to_bytes(4, "little")
    return flags, data


def encode_call(
    signer: Signer,
    call_id: bytes,
    expires: int,
    fn_bytes: bytes,
    kind: int,
    body: bytes,
    setup: tuple[int, bytes] = NO_SETUP,
) -> bytes:
    """A signed job payload (see the module docstring)."""
    assert len(call_id) == CALL_ID_SIZE, "a call id has CALL_ID_SIZE bytes"
    head = call_id + expires.to_bytes(8, "big") + len(fn_bytes).to_bytes(4, "little")
    if setup[0]:  # an initializer or max_tasks_per_child: their sections follow the kind
        kind_byte = (kind | setup[0]).to_bytes(1, "little")
        return signer.seal(CALL, head + fn_bytes + kind_byte + setup[1] + body)
    return signer.seal(CALL, head + fn_bytes + kind.to_bytes(1, "little") + body)


def open_result(signer: Signer, call_id: bytes, message: bytes) -> memoryview:
    """The pickled outcome(s) of a result signed by this farm *for this call*; else
    SignatureError, before anything is unpickled."""
    body = signer.open(RESULT, message)
    if bytes(body[:CALL_ID_SIZE]) != call_id:
        raise SignatureError(
            "the result is signed, but for another call: refused without unpickling"
        )
    return body[CALL_ID_SIZE:]


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


def _function(fn_bytes: bytes) -> Callable[..., Any]:
    fn = _functions.get(fn_bytes)
    if fn is None:
        fn = pickle.loads(fn_bytes)
        if len(_functions) >= _MAX_FUNCTIONS:
            _functions.clear()
        _functions[fn_bytes] = fn
    return fn  # type: ignore[no-any-return]  # whatever the caller pickled: called below


def run_call(job: Any) -> bytes:
    """Worker target: check the signature, unpickle, run, and return the signed outcome."""
    signer = _worker_signer()
    signed = signer.open(CALL, job.data)  # SignatureError: nothing below runs
    call_id = bytes(signed[:CALL_ID_SIZE])
    expires = int.from_bytes(signed[CALL_ID_SIZE : CALL_ID_SIZE + 8], "big")
    _worker_guard().claim(call_id, expires, job.handle)  # SignatureError: expired or replayed
    body = signed[CALL_ID_SIZE + 8 :]
    fn_size = int.from_bytes(body[:4], "little")
    kind = body[4 + fn_size]
    start = 5 + fn_size
    if kind > KIND_MASK:  # setup sections follow: this executor's initializer, max_tasks
        start, failure = _set_up(kind, body, start)
        kind &= KIND_MASK
        if failure is not None:
            broken: Any = (0, [failure]) if kind == BATCH else failure
            return signer.seal(RESULT, call_id + _dump_outcome(broken))
    if kind == BATCH:
        return _run_batch(job, signer, call_id, bytes(body[4 : 4 + fn_size]), body[start:])
    try:
        fn = _function(bytes(body[4 : 4 + fn_size]))
        calls = pickle.loads(body[start:])
        if kind == SINGLE:
            args, kwargs = calls
            outcome: tuple[Any, ...] = (OK, fn(*args, **kwargs))
        else:
            outcome = (OK, [fn(*args) for args in calls])
    except BaseException as exc:  # as ProcessPoolExecutor: even SystemExit is the call's outcome
        outcome = (ERROR, exc, _remote_traceback(exc))
    return signer.seal(RESULT, call_id + _dump_outcome(outcome))


def _set_up(kind: int, body: memoryview, at: int) -> tuple[int, tuple[Any, ...] | None]:
    """Read the setup sections at ``at``; run the initializer if this worker's last one differs,
    and count the job against max_tasks_per_child. Returns where the body starts, and the
    BROKEN outcome when the initializer raised (the call does not run then)."""
    global _initialized, recycle_requested
    failure = None
    if kind & INITIALIZER:
        digest = bytes(body[at : at + DIGEST_SIZE])
        size = int.from_bytes(body[at + DIGEST_SIZE : at + DIGEST_SIZE + 4], "little")
        at += DIGEST_SIZE + 4
        if digest != _initialized:
            _initialized = None  # whatever it leaves behind, a failed one runs again next time
            try:
                initializer, initargs = pickle.loads(body[at : at + size])
                initializer(*initargs)
                _initialized = digest
            except BaseException as exc:  # as ProcessPoolExecutor: even SystemExit breaks it
                log.critical("Exception in initializer:", exc_info=True)
                failure = (BROKEN, exc, _remote_traceback(exc))
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


def _run_batch(
    job: Any, signer: Signer, call_id: bytes, fn_bytes: bytes, body: memoryview
) -> bytes:
    """Run a batch's calls in order; send outcomes as they pile up, the rest at the end."""
    try:
        fn: Callable[..., Any] | None = _function(fn_bytes)
        calls: list[bytes] = pickle.loads(body)
        failure: tuple[Any, ...] | None = None
    except BaseException as exc:  # the function itself cannot be rebuilt: every call says so
        fn, calls, failure = None, pickle.loads(body), (ERROR, exc, _remote_traceback(exc))
    first, outcomes = 0, []
    flush_at = time.monotonic() + BATCH_FLUSH_EVERY
    for index, call in enumerate(calls):
        if failure is not None or fn is None:
            outcomes.append(failure)
            continue
        try:
            args, kwargs = pickle.loads(call)
            outcome: tuple[Any, ...] = (OK, fn(*args, **kwargs))
        except BaseException as exc:
            outcome = (ERROR, exc, _remote_traceback(exc))
        outcomes.append(outcome)
        if index + 1 < len(calls) and time.monotonic() >= flush_at:
            job.send_data(signer.seal(RESULT, call_id + _dump_batch(first, outcomes)))
            first, outcomes = index + 1, []
            flush_at = time.monotonic() + BATCH_FLUSH_EVERY
    return signer.seal(RESULT, call_id + _dump_batch(first, outcomes))


def _remote_traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop run_call's own frame: the user's code starts below it
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return f'\n"""\n{text}"""'


def _dump_outcome(outcome: tuple[Any, ...]) -> bytes:
    """The outcome's pickle: plain pickle when it works (fast), else cloudpickle.

    As in ProcessPoolExecutor, an outcome that cannot be pickled becomes the
    call's exception: whatever pickling raised (any BaseException -- a
    ``__reduce__`` may raise SystemExit), with that traceback. The worker lives on.
    """
    try:
        return _pickle(outcome)
    except BaseException as exc:
        return pickle.dumps(_unsendable(exc, outcome), protocol=_PROTOCOL)


def _pickle(obj: Any) -> bytes:
    """Plain pickle, else cloudpickle (classes rebuilt by value); raises what they raise."""
    try:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    except Exception:
        pass  # a BaseException is no "try cloudpickle": it goes to the caller at once
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=_PROTOCOL)
    return data


def _unsendable(exc: BaseException, outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    """The outcome that replaces one that pickling failed with ``exc``: ``exc`` itself
    (ProcessPoolExecutor's rule), or a PicklingError naming it when it will not pickle
    either. A call's own exception that failed keeps its traceback in the text."""
    text = _remote_traceback(exc)
    if outcome[0] == ERROR:
        text += f"\nwhile sending the call's exception, which was:\n{outcome[2]}"
    exc.__traceback__ = None  # its frames hold the unpicklable value
    try:
        pickle.dumps(exc, protocol=_PROTOCOL)
        return (ERROR, exc, text)
    except BaseException as again:
        what = "result" if outcome[0] == OK else "exception"
        error = pickle.PicklingError(
            f"cannot pickle the call's {what}: {_describe(exc)}; nor that error: {_describe(again)}"
        )
        return (ERROR, error, text)


def _describe(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``str()`` raises."""
    try:
        text = str(exc)
    except BaseException:
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dump_batch(first: int, outcomes: list[Any]) -> bytes:
    """A batch's outcomes from ``first`` on; one that cannot be pickled becomes its error."""
    try:
        return pickle.dumps((first, outcomes), protocol=_PROTOCOL)
    except BaseException:
        pass
    kept = []
    for outcome in outcomes:
        try:
            _pickle(outcome)
            kept.append(outcome)
        except BaseException as exc:
            kept.append(_unsendable(exc, outcome))
    try:
        return _pickle((first, kept))
    except BaseException as exc:  # each pickles alone but not together: none is sent
        failure = _unsendable(exc, (OK, None))
        return pickle.dumps((first, [failure] * len(kept)), protocol=_PROTOCOL)
