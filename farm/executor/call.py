"""Both ends of an Executor call: encoding it (caller), and ``run_call`` (worker).

The supervisor serves ``farm.executor.call:run_call`` under the function
name ``farm.python`` (``DEFAULT_FUNCTION``). A job's data is a signed call::

    signed(CALL, call_id (16 bytes) | expires (8 bytes, epoch seconds, big endian)
                 | fn_size (4 bytes, little endian) | pickled fn | kind (1 byte) | body)

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

An outcome is ``(OK, value)`` or ``(ERROR, exception, traceback_text)``. The
signature is checked before anything is unpickled (``farm.executor.signing``);
a payload that fails it raises SignatureError, which the worker library
reports as WORK_EXCEPTION, so the client learns why. Whatever the call itself
raises (BaseException, as ProcessPoolExecutor) travels back inside a signed
result.
"""

from __future__ import annotations

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
    "dump",
    "dump_fn",
    "RemoteTraceback",
]

DEFAULT_FUNCTION = "farm.python"
TARGET = "farm.executor.call:run_call"

SINGLE, CHUNK, BATCH = 0, 1, 2
#: Bytes of the id that binds a call and its results.
CALL_ID_SIZE = 16
OK, ERROR = 0, 1

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


def encode_call(
    signer: Signer, call_id: bytes, expires: int, fn_bytes: bytes, kind: int, body: bytes
) -> bytes:
    """A signed job payload (see the module docstring)."""
    assert len(call_id) == CALL_ID_SIZE, "a call id has CALL_ID_SIZE bytes"
    head = call_id + expires.to_bytes(8, "big") + len(fn_bytes).to_bytes(4, "little")
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
    if kind == BATCH:
        return _run_batch(job, signer, call_id, bytes(body[4 : 4 + fn_size]), body[5 + fn_size :])
    try:
        fn = _function(bytes(body[4 : 4 + fn_size]))
        calls = pickle.loads(body[5 + fn_size :])
        if kind == SINGLE:
            args, kwargs = calls
            outcome: tuple[Any, ...] = (OK, fn(*args, **kwargs))
        else:
            outcome = (OK, [fn(*args) for args in calls])
    except BaseException as exc:  # as ProcessPoolExecutor: even SystemExit is the call's outcome
        outcome = (ERROR, exc, _remote_traceback(exc))
    return signer.seal(RESULT, call_id + _dump_outcome(outcome))


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
