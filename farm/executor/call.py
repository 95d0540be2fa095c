"""The worker side of ``farm.Executor``: the generic function that runs pickled calls.

The supervisor serves ``farm.executor.call:run_call`` under the function
name ``farm.python`` (``DEFAULT_FUNCTION``). A job's data is a signed call::

    signed(CALL, fn_size (4 bytes, little endian) | pickled fn | pickled (kind, calls))

``kind`` is SINGLE (``calls`` is one ``(args, kwargs)``; the result is the
value) or CHUNK (``calls`` is a list of ``args`` tuples; the result is the
list of values, as ``ProcessPoolExecutor.map`` does with ``chunksize``). The
job's result is ``signed(RESULT, pickle((OK, value)))`` or
``signed(RESULT, pickle((ERROR, exception, traceback_text)))``.

The signature is checked before anything is unpickled (``farm.executor.signing``); a
payload that fails it raises SignatureError, which the worker library reports
as WORK_EXCEPTION, so the client learns why. Whatever the call itself raises
(BaseException, as ProcessPoolExecutor) travels back inside a signed result.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

from farm.executor.signing import CALL, RESULT, Signer, load_key

__all__ = [
    "DEFAULT_FUNCTION",
    "TARGET",
    "SINGLE",
    "CHUNK",
    "OK",
    "ERROR",
    "run_call",
    "encode_call",
    "dump_fn",
    "RemoteTraceback",
]

DEFAULT_FUNCTION = "farm.python"
TARGET = "farm.executor.call:run_call"

SINGLE, CHUNK = 0, 1
OK, ERROR = 0, 1


class RemoteTraceback(Exception):
    """The worker's traceback, as text: the ``__cause__`` of a call's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_signer: Signer | None = None
#: Unpickled functions by their pickled bytes: a lambda sent 10,000 times is rebuilt once.
_functions: dict[bytes, Any] = {}
_MAX_FUNCTIONS = 256


def dump_fn(fn: Any) -> bytes:
    """The function's pickle: cloudpickle, so lambdas, closures and __main__ functions travel."""
    import cloudpickle

    data: bytes = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def encode_call(signer: Signer, fn_bytes: bytes, kind: int, calls: Any) -> bytes:
    """A signed job payload (see the module docstring)."""
    import cloudpickle

    body = cloudpickle.dumps((kind, calls), protocol=pickle.HIGHEST_PROTOCOL)
    return signer.seal(CALL, len(fn_bytes).to_bytes(4, "little") + fn_bytes + body)


def _worker_signer() -> Signer:
    global _signer
    if _signer is None:
        _signer = Signer(load_key())  # $FARM_KEY_FILE, created if missing
    return _signer


def run_call(job: Any) -> bytes:
    """Worker target: check the signature, unpickle, run, and return the signed outcome."""
    signer = _worker_signer()
    body = signer.open(CALL, job.data)  # SignatureError: nothing below runs
    try:
        fn_size = int.from_bytes(body[:4], "little")
        fn_bytes = bytes(body[4 : 4 + fn_size])
        fn = _functions.get(fn_bytes)
        if fn is None:
            fn = pickle.loads(fn_bytes)
            if len(_functions) >= _MAX_FUNCTIONS:
                _functions.clear()
            _functions[fn_bytes] = fn
        kind, calls = pickle.loads(body[4 + fn_size :])
        if kind == SINGLE:
            args, kwargs = calls
            outcome: tuple[Any, ...] = (OK, fn(*args, **kwargs))
        else:
            outcome = (OK, [fn(*args) for args in calls])
    except BaseException as exc:  # as ProcessPoolExecutor: even SystemExit is the call's outcome
        outcome = (ERROR, exc, _remote_traceback(exc))
    return signer.seal(RESULT, _dump_outcome(outcome))


def _remote_traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop run_call's own frame: the user's code starts below it
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return f'\n"""\n{text}"""'


def _dump_outcome(outcome: tuple[Any, ...]) -> bytes:
    """Plain pickle when it works (fast); cloudpickle for classes rebuilt by value.

    A result that cannot be pickled at all becomes the error saying so.
    """
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    import cloudpickle

    try:
        data: bytes = cloudpickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        return data
    except Exception as exc:
        what = "result" if outcome[0] == OK else f"exception {outcome[1]!r}"
        error = pickle.PicklingError(f"cannot pickle the call's {what}: {exc}")
        text = outcome[2] if outcome[0] == ERROR else ""
        return pickle.dumps((ERROR, error, text), protocol=pickle.HIGHEST_PROTOCOL)
