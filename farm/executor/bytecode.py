"""Which Python made a by-value pickle: a guard ahead of its code, read before it is loaded.

A pickle made by value (cloudpickle: a lambda, a closure, a function or class of the
caller's script, ``byvalue.by_value``) carries code objects, and bytecode is only valid
for the Python that made it: a 3.13 caller's lambda, run by a 3.11 worker, crashed the
worker (SIGSEGV) at each retry of the job, and the caller got ``WorkerLost``. So each
by-value pickle farm makes (the caller's functions, initializers and arguments, a worker's
results) that holds a code object starts with a guard naming its maker's bytecode,
``importlib.util.MAGIC_NUMBER`` (which changes whenever the bytecode does, betas included),
and its Python version, for the error (``dump``). A reader refuses a guard that names
another magic before it unpickles anything (``check``: ``PythonVersionMismatch``). A pickle
by reference has none and costs nothing; nor has one by value without code (data plain
pickle does not take, as a dict's keys view, or a call that spells ``__main__``), which
every Python reads, as its plain pickle does: a function the workers import by name, with
such arguments, runs across versions (docs/executor.md).

The guard is pickle opcodes of the stdlib alone, the same from every Python, in front of
cloudpickle's stream, which keeps its own PROTO and frames; it uses no memo, so the stream's
memo indices stay its own. It reads::

    PROTO 4
    float({magic: "3.13"}.get(importlib.util.MAGIC_NUMBER, MESSAGE))  POP

where the key (``SHORT_BINBYTES``, 4 bytes) is the maker's magic at ``MAGIC_AT``. So the
data stays one pickle, and whatever unpickles it runs the guard before it builds any code:
on the maker's bytecode ``float("3.13")`` is dropped; on another it raises ``ValueError:
could not convert string to float: 'farm: ...'``, the message saying why. That is what a
worker of an older farm, which knows no guard, does with a newer caller's call: the call
runs where the Python matches (a rolling restart goes on), and fails cleanly where it does
not, instead of crashing the worker. A reader that knows the guard compares its magic
first (``check``: a slice compared, once per distinct function, since workers keep them)
and raises the clear error. An older caller sends no guard: its pickles load as before,
unchecked, and a version mismatch there still crashes the worker that runs its code.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Callable
from typing import Any

from farm.errors import PythonVersionMismatch

__all__ = ["MAGIC_AT", "guard", "dump", "check", "by_value"]

#: The guard up to the maker's magic: float and dict.get, an empty dict, a 4-byte key.
_HEAD = (
    b"\x80\x04"  # PROTO 4: the oldest that reads dotted names (dict.get)
    b"\x8c\x08builtins\x8c\x05float\x93"  # STACK_GLOBAL builtins.float
    b"\x8c\x08builtins\x8c\x08dict.get\x93"  # STACK_GLOBAL builtins.dict.get
    b"}C\x04"  # EMPTY_DICT, SHORT_BINBYTES of 4 bytes: the magic follows
)
#: Where the maker's magic is, in a guarded pickle.
MAGIC_AT = len(_HEAD)
_MAGIC_SIZE = 4
#: After the magic and the version (SHORT_BINUNICODE, then SETITEM): this Python's magic,
#: the message (BINUNICODE), the calls, and the result dropped.
_CURRENT = b"s\x8c\x0eimportlib.util\x8c\x0cMAGIC_NUMBER\x93"
_TAIL = b"\x87R\x85R0"  # TUPLE3 REDUCE (dict.get), TUPLE1 REDUCE (float), POP

_guard: bytes | None = None
_made_for = b""


def _version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def guard() -> bytes:
    """The guard to write in front of a by-value pickle made by this Python."""
    global _guard, _made_for
    magic = importlib.util.MAGIC_NUMBER
    if _guard is None or _made_for != magic:  # read each time: a test claims another
        version = _version().encode()
        # Short: each pickle of code carries it (each batched call's own arguments too).
        message = (
            f"farm: this pickle holds code made by Python {_version()}, which this Python"
            f" cannot run: use one Python version (docs/executor.md)"
        ).encode()
        _guard = (
            _HEAD
            + magic
            + b"\x8c"
            + len(version).to_bytes(1, "little")
            + version
            + _CURRENT
            + b"X"
            + len(message).to_bytes(4, "little")
            + message
            + _TAIL
        )
        _made_for = magic
    return _guard


def dump(pickler: Callable[..., Any], obj: Any, protocol: int) -> bytes:
    """``obj`` pickled by value by ``pickler`` (payload's cloudpickle Pickler), the guard in
    front when it pickled a code object (its ``holds_code``, set by its code reducer). Only
    code is bound to a Python's bytecode: by-value data with none (a dict's keys view, which
    plain pickle does not take; a call's arguments that spell ``__main__``, payload.dump_call)
    runs on every Python, as its plain pickle would, so it carries no guard."""
    out = io.BytesIO()
    out.write(head := guard())  # ahead of the stream, which only its end shows to need it
    made = pickler(out, protocol=protocol)
    made.dump(obj)
    if made.holds_code:
        return out.getvalue()
    return out.getbuffer()[len(head) :].tobytes()  # the rarer case pays the copy


def by_value(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is a by-value pickle (code in it), guarded as ``dump`` makes one."""
    return data[:MAGIC_AT] == _HEAD


def check(
    data: bytes | bytearray | memoryview,
    what: str = "this call's function or an argument",
    in_worker: bool = True,
) -> None:
    """PythonVersionMismatch when ``data`` is a by-value pickle that another Python's
    bytecode made, before anything of it is unpickled; nothing for any other pickle.
    ``what`` names the data in the error; ``in_worker``: read by a worker (else by the
    caller, a result)."""
    if data[:MAGIC_AT] != _HEAD:
        return  # by reference (plain pickle), or an older caller's, which has no guard
    magic = bytes(data[MAGIC_AT : MAGIC_AT + _MAGIC_SIZE])
    if magic == importlib.util.MAGIC_NUMBER:
        return
    at = MAGIC_AT + _MAGIC_SIZE + 2  # past SHORT_BINUNICODE and the version's length
    maker = bytes(data[at : at + data[at - 1]]).decode(errors="replace")
    here, farms = ("worker", _version()) if in_worker else ("caller", maker)
    raise PythonVersionMismatch(
        f"{what} holds code pickled by value (a lambda, a closure, a function or class"
        f" of a script) by Python {maker} (bytecode magic {magic.hex()}), and this {here}"
        f" runs Python {_version()} (magic {importlib.util.MAGIC_NUMBER.hex()}): bytecode"
        f" is only valid for the Python minor version that made it, so it was refused"
        f" unloaded. Run the caller on the farm's Python ({farms}), or send functions the"
        f" workers import by name (docs/executor.md)"
    )
