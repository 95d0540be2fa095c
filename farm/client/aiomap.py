"""``AsyncClient.map``'s running of many calls: at most so many at once, results in order
or as they finish, the rest given up (cancelled) when one fails or the caller stops."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any

__all__ = ["run_calls"]


async def run_calls(
    calls: Iterator[Coroutine[Any, Any, bytes]], max_in_flight: int, ordered: bool
) -> AsyncGenerator[bytes, None]:
    """Run ``calls`` (made as taken: a payload's error is raised at its turn), at most
    ``max_in_flight`` at once, yielding their results in order (``ordered``) or as they
    finish. A failed call raises its error where its result would come; the calls still
    in flight are then cancelled, as they are when the caller stops iterating."""
    running: dict[asyncio.Future[bytes], int] = {}
    held: dict[int, asyncio.Future[bytes]] = {}
    given = taken = 0
    try:
        while True:
            # Made here, not before: a payload's error is raised at its turn, the calls
            # before it in this batch not started yet, and given up unsent.
            for call in itertools.islice(calls, max_in_flight - len(running)):
                running[asyncio.ensure_future(call)] = given
                given += 1
            if not running:
                return
            ended, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(ended, key=running.__getitem__):
                index = running.pop(future)
                if not ordered:
                    yield future.result()
                else:
                    held[index] = future
            while taken in held:
                yield held.pop(taken).result()
                taken += 1
    finally:
        for future in running:
            future.cancel()  # a cancelled call gives its job up
        for future in held.values():
            future.exception()  # not to be logged as "never retrieved" at exit
