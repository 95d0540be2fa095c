"""``Client.map``: many jobs pipelined over the client's connections (libgearman's task set).

Up to ``limit`` tasks are in flight; each finished task is filed (by the
client's reader) on this task set's queue, and results are yielded in payload
order or as they finish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from farm.checks import as_bytes
from farm.session import Task

if TYPE_CHECKING:
    from farm.client import Client

__all__ = ["task_set"]


def task_set(
    client: Client, function: str, payloads: Iterator[Any], limit: int, ordered: bool, priority: str
) -> Iterator[bytes]:
    ended: deque[Task] = deque()
    in_flight = 0
    next_index = 0
    next_out = 0
    held: dict[int, Task] = {}
    exhausted = False
    while True:
        while not exhausted and in_flight < limit:
            try:
                data = next(payloads)
            except StopIteration:
                exhausted = True
                break
            task = Task(function, as_bytes(data), priority=priority)
            task.tag = (ended, next_index)
            next_index += 1
            in_flight += 1
            client._submit_task(task)
        if not in_flight:
            return
        client._pump(lambda: bool(ended), None)
        while ended:
            task = ended.popleft()
            in_flight -= 1
            if not ordered:
                yield _outcome(task)
                continue
            held[task.tag[1]] = task  # type: ignore[index]
            while next_out in held:
                done = held.pop(next_out)
                next_out += 1
                yield _outcome(done)


def _outcome(task: Task) -> bytes:
    if task.error is not None:
        raise task.error
    return task.result  # type: ignore[return-value]
