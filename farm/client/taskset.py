"""``Client.map``: many jobs pipelined over the client's connections (libgearman's task set).

Up to ``limit`` tasks are in flight; the task set is the listener of each of
its tasks, so the client's reader files every ended task here, and results are
yielded in payload order or as they finish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import Any

from farm.errors import Timeout
from farm.protocol.checks import as_bytes
from farm.protocol.client import JobEnded, Task, TaskEvent, TaskListener

__all__ = ["task_set"]


class _Ended:
    """Listener of a task set's tasks: collects the ended ones for the generator."""

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: deque[Task[TaskListener]] = deque()

    def task_event(self, event: TaskEvent) -> None:
        if type(event) is JobEnded:
            self.tasks.append(event.task)


def task_set(
    function: str,
    payloads: Iterator[Any],
    *,
    submit: Callable[[Task[TaskListener]], None],
    pump: Callable[[Callable[[], bool]], bool],
    abandon: Callable[[Task[TaskListener]], None],
    silent: Callable[[Task[TaskListener]], None],
    timeout: float | None,
    limit: int,
    ordered: bool,
    priority: str,
) -> Generator[bytes, None, None]:
    """Submit through ``submit``, read through ``pump(until)`` (False: ``timeout`` ran out,
    and Timeout is raised); yield each result. Tasks still in flight when it ends early are
    given up through ``abandon``; at a Timeout, those not even created are first handed to
    ``silent`` (their server did not answer: the client tries it last for a while)."""
    ended = _Ended()
    index_of: dict[Task[TaskListener], int] = {}
    in_flight = 0
    next_index = 0
    next_out = 0
    held: dict[int, Task[TaskListener]] = {}
    exhausted = False
    try:
        while True:
            while not exhausted and in_flight < limit:
                try:
                    data = next(payloads)
                except StopIteration:
                    exhausted = True
                    break
                # Named by its place: those taken before it in this batch are not sent yet.
                payload = as_bytes(data, f"map payload {next_index}")
                task: Task[TaskListener] = Task(function, payload, priority=priority)
                task.owner = ended
                index_of[task] = next_index
                next_index += 1
                in_flight += 1
                submit(task)
            if not in_flight:
                return
            if not pump(lambda: bool(ended.tasks)):
                unmade = [t for t in index_of if t.handle is None]
                for task in unmade:
                    silent(task)
                quiet = sorted({t.server for t in unmade if t.server})
                said = f" ({', '.join(quiet)} did not even create its jobs)" if quiet else ""
                raise Timeout(f"map of {function}: no job ended within {timeout}s{said}")
            while ended.tasks:
                task = ended.tasks.popleft()
                in_flight -= 1
                if not ordered:
                    index_of.pop(task, None)
                    yield _outcome(task)
                    continue
                held[index_of.pop(task)] = task
                while next_out in held:
                    done = held.pop(next_out)
                    next_out += 1
                    yield _outcome(done)
    finally:
        # Left early (a break, a job's error raised, a timeout): the jobs still in flight
        # are given up, so the client keeps nothing of them once they end.
        for task in index_of:
            if not task.done:
                abandon(task)


def _outcome(task: Task[Any]) -> bytes:
    if task.error is not None:
        raise task.error
    assert task.result is not None  # an ended task without an error has its result
    return task.result
