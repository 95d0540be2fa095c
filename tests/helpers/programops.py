"""The operations of tests/helpers/programs.py's programs of executor calls, and how an
outcome (a value, an exception, a cancel) is written down so that two executors' runs
compare."""

from __future__ import annotations

from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Submit:
    kind: str
    x: int
    keyword: bool = False  # x given as a keyword argument
    lock_argument: bool = False  # an argument that cannot be pickled


@dataclass(frozen=True)
class Map:
    xs: tuple[int, ...]  # act1's arguments, or act's second iterable when kinds are given
    kinds: tuple[str, ...] | None = None  # map(act, kinds, xs)
    chunksize: int = 1
    timeout: float | None = None
    buffersize: int | None = None
    take: int | None = None  # values asked for before the iterator is dropped (None: all)
    generator: bool = False  # xs read from a generator (one iterable only)
    raise_at: int | None = None  # the generator raises instead of giving this item


@dataclass(frozen=True)
class Settle:
    which: int  # a future, by its index modulo the count


@dataclass(frozen=True)
class Cancel:
    which: int  # a future submitted while Blocked, by its index among them


@dataclass(frozen=True)
class AsCompleted:
    which: tuple[int, ...]


@dataclass(frozen=True)
class Wait:
    which: tuple[int, ...]
    when: str  # a key of WHEN


@dataclass(frozen=True)
class Shutdown:
    wait: bool
    cancel_futures: bool


@dataclass(frozen=True)
class Blocked:
    """``ops`` run while both workers wait at a gate; it opens after them."""

    ops: tuple[Op, ...]


Op = Submit | Map | Settle | Cancel | AsCompleted | Wait | Shutdown | Blocked


class SourceError(Exception):
    """What a map's generator raises (Map.raise_at)."""


def described(exc: BaseException) -> tuple[Any, ...]:
    """An exception as it can be compared: type, message, cause (a remote traceback is one
    kind, whatever its class), and notes (farm's own, "farm: ...", are documented extras)."""
    cause = exc.__cause__
    cause_kind = None if cause is None else type(cause).__name__.lstrip("_")
    notes = tuple(n for n in getattr(exc, "__notes__", ()) if not n.startswith("farm:"))
    return ("raised", type(exc).__qualname__, str(exc), cause_kind, notes)


def value(v: object) -> object:
    return ("bytes", len(v), v[:1]) if isinstance(v, bytes) else v


def outcome(future: Future[Any], timeout: float = 60) -> tuple[Any, ...]:
    try:
        exc = future.exception(timeout)
    except CancelledError:
        return ("cancelled",)
    return described(exc) if exc is not None else ("value", value(future.result()))
