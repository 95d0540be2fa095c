"""The format of an Executor call and its result, and the caller's end: encode, open.

The worker's end is ``run_call`` in farm/executor/call.py; a job's data is a
signed call::

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
* BATCH (calls the pump packed into one job, see farm/executor/flight.py):
  ``pickle([pickled (args, kwargs), ...])``; outcomes come back in order, as
  ``signed(RESULT, call_id | pickle((first_index, [outcome, ...])))`` in WORK_DATA
  packets while the batch runs (so a long batch's early calls finish early)
  and in the WORK_COMPLETE that ends it.
* CHUNK_BATCH: a BATCH of CHUNKs (``map`` with ``chunksize``, many chunks
  waiting): ``pickle([pickled [args, ...], ...])``; each chunk's outcome is the
  list of its values, as for a CHUNK, and they come back as a BATCH's do.
* ARG_CHUNK, ARG_CHUNK_BATCH: a CHUNK, a CHUNK_BATCH, of ``map`` over one
  iterable: each chunk is ``pickle([arg, ...])``, the one argument of each call
  rather than a tuple of them (as ``multiprocessing.Pool.map`` sends its chunks).
  A list of plain values pickles and unpickles two to three times as fast as a
  list of 1-tuples, and the caller skips building the tuples.

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
* INIT_NEWS (0x80, no section of its own, set with INITIALIZER): the worker tells the
  caller when it runs the initializer, in WORK_DATA packets ``signed(RESULT, call_id |
  mark)``: INIT_STARTS ("I") before it, INIT_ENDS ("E") once it returned. A worker that
  dies in between (``os._exit``, a signal, a segfault) reports nothing itself: the
  caller, holding a start with no end when the job fails or starts again on another
  worker (the server's retry), counts a death in the initializer, and at the job's
  second breaks the executor as for a raising initializer (initnews.py). (A
  worker older than the flag ignores it and sends no news; a caller older than it never
  sets it, so no worker sends a batch's caller data it cannot read.)
* SPILLED (0x40, no section of its own): ``body`` is a reference to a file in the spill
  directory holding the pickle (farm/executor/spill.py); a result whose pickle
  is in a file is ``signed(RESULT, call_id | "S" | reference)``.
* RECYCLE (0x20): ``executor_id (16 bytes) | max_tasks (4 bytes, little endian)``:
  after ``max_tasks`` jobs of that executor this worker sets
  ``recycle_requested``, which the supervised worker process
  (farm/pools/workerproc.py) reads after the job: it exits and the supervisor
  replaces it (``max_tasks_per_child``).

An outcome is ``(OK, value)`` or ``(ERROR, exception, traceback_text)``. The
signature is checked before anything is unpickled (``farm.executor.signing``);
a payload that fails it raises SignatureError, which the worker library
reports as WORK_EXCEPTION, so the client learns why (on farm's server; on
one that does not answer OPTION_REQ work-exception, gearmand, as WORK_FAIL:
the caller then sees WorkerLost, and the worker's log has the reason). Whatever the call itself
raises (BaseException, as ProcessPoolExecutor) travels back inside a signed result.

A pickle made by value that holds code (a lambda, a script's function or class, in a call or
a result) starts with a guard naming the bytecode that made it, read before it is unpickled
(farm/executor/bytecode.py: another Python's is refused; how older farms meet it).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterable
from typing import Any

from farm.executor import unpicklable
from farm.executor.byvalue import by_value as _by_value
from farm.executor.signing import CALL, RESULT, SignatureError, Signer

__all__ = [
    "SINGLE",
    "CHUNK",
    "BATCH",
    "CHUNK_BATCH",
    "ARG_CHUNK",
    "ARG_CHUNK_BATCH",
    "CHUNK_KINDS",
    "OK",
    "ERROR",
    "BROKEN",
    "CALL_ID_SIZE",
    "NO_SETUP",
    "SPILLED",
    "INIT_NEWS",
    "INIT_STARTS",
    "INIT_ENDS",
    "RemoteTraceback",
    "describe",
    "dump",
    "dump_fn",
    "dump_args",
    "note_chunk",
    "dump_initializer",
    "encode_setup",
    "encode_call",
    "open_result",
]

SINGLE, CHUNK, BATCH, CHUNK_BATCH, ARG_CHUNK, ARG_CHUNK_BATCH = 0, 1, 2, 3, 4, 5
#: The kinds whose calls are chunks, and the kind of a batch of each (farm/executor/flight.py).
CHUNK_KINDS = {CHUNK: CHUNK_BATCH, ARG_CHUNK: ARG_CHUNK_BATCH}
#: The kind byte: the kind in the low bits, the setup sections that follow it in the high ones.
KIND_MASK = 0x0F
INITIALIZER, RECYCLE = 0x10, 0x20
#: With INITIALIZER: the worker sends INIT_STARTS and INIT_ENDS around the initializer.
INIT_NEWS = 0x80
INIT_STARTS, INIT_ENDS = b"I", b"E"
#: The body is a reference to a spill file (farm.executor.spill), not the pickle itself.
SPILLED = 0x40
DIGEST_SIZE = 32
#: Bytes of the id that binds a call and its results (and of an executor's id).
CALL_ID_SIZE = 16
#: BROKEN: the executor's initializer failed in the worker; the caller breaks the executor.
OK, ERROR, BROKEN = 0, 1, 2
#: The setup of an executor without initializer or max_tasks_per_child: flags and bytes.
NO_SETUP: tuple[int, bytes] = (0, b"")

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class RemoteTraceback(Exception):
    """The worker's traceback, as text: the ``__cause__`` of a call's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def describe(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``str()`` raises."""
    try:
        text = str(exc)
    except BaseException:
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def dump(obj: Any) -> bytes:
    """Plain pickle when it works (several times faster), else cloudpickle, which sends
    lambdas, closures and classes of ``__main__`` by value; raises what they raise.
    The worker pickles outcomes with it; the caller its calls with ``dump_call``.
    A RecursionError (an object too deep) is raised as it is, as in the pool: cloudpickle
    writes it no better, and raised its own PicklingError in its place."""
    try:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    except RecursionError:
        raise
    except Exception:
        pass  # a BaseException is no "try cloudpickle": it goes to the caller at once
    return _by_value(obj)


def dump_call(obj: Any) -> bytes:
    """What the caller sends (a call's function, arguments, initializer): as ``dump``, but
    by value (cloudpickle) when plain pickle would name anything of ``__main__`` -- an
    instance of a class the script defines, ``functools.partial`` of one of its functions.
    The worker's ``__main__`` is not the caller's script, so such a name would not resolve
    there. (Not for the worker's outcomes: their ``__main__`` names are the caller's own.)
    A RecursionError is raised as it is, as ``dump`` raises it."""
    try:
        data = pickle.dumps(obj, protocol=_PROTOCOL)
    except RecursionError:
        raise
    except Exception:
        data = b""  # unpicklable by name: by value below, or what cloudpickle raises
    else:
        if b"__main__" not in data:  # a false alarm (data that spells it) costs only speed
            return data
    return _by_value(obj)


def dump_fn(fn: Any) -> bytes:
    """The function's pickle: by value for one of ``__main__`` (``dump_call``), by name for
    one of a module. One that will not pickle says why in a note (``unpicklable``): a global
    it uses (a lock, a connection), or what in its instance."""
    try:
        return dump_call(fn)
    except Exception as exc:
        unpicklable.note_fn(exc, fn, _by_value)
        raise


def dump_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A SINGLE call's body (``dump_call``); arguments that will not pickle say which, in a
    note (``unpicklable``)."""
    try:
        return dump_call((args, kwargs))
    except Exception as exc:
        unpicklable.note_args(exc, args, kwargs, dump_call)
        raise


def note_chunk(exc: Exception, chunk: list[Any], kind: int, first: int) -> None:
    """Say in a note on ``exc`` (raised pickling a map's ``chunk`` of ``kind``, whose first
    call is the map's call ``first``) which call's argument will not pickle."""
    calls = [(arg,) for arg in chunk] if kind in (ARG_CHUNK, ARG_CHUNK_BATCH) else chunk
    for at, args in enumerate(calls):
        unpicklable.note_args(exc, args, {}, dump_call, f"the map's call {first + at} (from 0)")
        if getattr(exc, "__notes__", None):
            return


def note_tasks(exc: BaseException, tasks: Iterable[tuple[Any, Any, Any]]) -> None:
    """Say in a note on ``exc`` (raised pickling a batch of ``(function, args, kwargs)``
    tasks sent as one function: joblib's) what in which task will not pickle, as a call of
    the task's own function would: the batch's own notes never name the user's code."""
    before = len(getattr(exc, "__notes__", ()))
    for at, (fn, args, kwargs) in enumerate(tasks):
        unpicklable.note_fn(exc, fn, _by_value)
        if len(getattr(exc, "__notes__", ())) == before:
            unpicklable.note_args(exc, tuple(args), dict(kwargs), dump_call, f"task {at}")
        if len(getattr(exc, "__notes__", ())) > before:
            return


def dump_initializer(initializer: Callable[..., object], initargs: tuple[Any, ...]) -> bytes:
    """The pickle of ``(initializer, initargs)``: by value for a function of ``__main__``."""
    return dump_call((initializer, initargs))


def encode_setup(
    initializer: bytes | None, executor_id: bytes | None = None, max_tasks: int | None = None
) -> tuple[int, bytes]:
    """An executor's setup sections, once for all its calls: the flags for the kind byte and
    the bytes after it (see the module docstring). NO_SETUP when there is nothing to say."""
    flags, data = 0, b""
    if initializer is not None:
        digest = hashlib.sha256(initializer).digest()
        flags |= INITIALIZER | INIT_NEWS
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
