"""Which of a connection's tasks hears each copy of a job's news: ``Copies``, a part of
``ClientSession`` (farm.protocol.client; split off along this seam).

The server (farm, gearmand) sends each WORK_DATA, WORK_STATUS, WARNING and end of a job
once per submit that joined it, so a connection that submitted one unique twice gets two
copies of each: each goes to the task that has heard least, so that each hears it once. A
submit whose caller gave up (``call(timeout=)``, ``abandon``) still has its copies sent:
they are counted here and dropped, so that a later call on the same key does not hear
each packet twice. What is kept of a given-up submit is a count under its job's handle,
not its task, and of at most MAX_SILENT jobs, the oldest forgotten first: a long-lived
client's calls that timed out on jobs that never end (no worker serves them) each kept
their task, 3.5 MB per 10,000.
"""

from __future__ import annotations

from typing import Any

from farm.protocol.tasks import Task

__all__ = ["Copies", "MAX_SILENT"]

#: Jobs of a connection whose given-up submits are remembered. Past it, the oldest is
#: forgotten: were its key called again on this connection, the new task would hear that
#: job's news once more per given-up submit (each WORK_DATA twice for one: d0, d0, d1, d1),
#: as against an older farm server; its late news with no call on it is dropped all the
#: same. A job remembered costs about 100 bytes here (its handle and a count: 29 bytes
#: more than the handle, measured), so 65,536 of them are some 6.5 MB, reached only by a
#: client with that many given-up jobs that never end, each held queued by the server until
#: the connection closes (at 512 bytes a job at least there, --max-queued-bytes: 32 MiB).
#: 1,024 was passed by a batch of a few thousand such calls, well within what a server holds.
MAX_SILENT = 65536


class Copies:
    """The count of copies each task of a job joined more than once has heard."""

    __slots__ = ("_heard", "_silent")

    def __init__(self) -> None:
        # Per handle: how many copies each task heard, a task by its id(), a given-up
        # submit by its slot (-1, -2, ...: ids are never negative).
        self._heard: dict[str, dict[int, int]] = {}
        # Per handle: how many of its submits were given up, oldest job first.
        self._silent: dict[str, int] = {}

    def created(self, handle: str, task: Task[Any]) -> None:
        """``task``'s submit joined the job ``handle`` (its JOB_CREATED): between rounds of
        copies, at the count the others are at. A task given up before it is one silent
        submit more."""
        heard = self._heard.get(handle)
        if task.abandoned:
            slot = self._add_silent(handle)
            if heard:
                heard[slot] = max(heard.values())
        elif heard:
            heard[id(task)] = max(heard.values())

    def given_up(self, handle: str, task: Task[Any]) -> None:
        """``task`` of the job ``handle`` was given up: its copies still come, and are
        counted under a slot of their own; the task is not kept."""
        slot = self._add_silent(handle)
        heard = self._heard.get(handle)
        if heard is not None:
            heard[slot] = heard.pop(id(task), 0)

    def hearers(self, handle: str, tasks: list[Task[Any]]) -> list[Task[Any]]:
        """The task (of ``tasks``, the job's live ones) this copy is for: none where it is a
        given-up submit's."""
        silent = self._silent.get(handle, 0)
        if not tasks or (len(tasks) < 2 and not silent):
            # None live: nothing hears it, and the counts stay level (a round's copies come
            # together, never split by another submit's JOB_CREATED).
            return tasks
        heard = self._heard.setdefault(handle, {})
        keys = [*map(id, tasks), *range(-1, -silent - 1, -1)]
        key = min(keys, key=lambda k: heard.get(k, 0))
        heard[key] = heard.get(key, 0) + 1
        return [task for task in tasks if id(task) == key]  # [] for a given-up submit's

    def ended(self, handle: str) -> None:
        """The job ended: nothing more of it comes (its later copies of the end find none)."""
        self._heard.pop(handle, None)
        self._silent.pop(handle, None)

    def clear(self) -> None:
        self._heard.clear()
        self._silent.clear()

    def _add_silent(self, handle: str) -> int:
        """One given-up submit more of ``handle``, its job moved to the newest; its slot."""
        silent = self._silent
        count = silent.pop(handle, 0) + 1
        silent[handle] = count
        while len(silent) > MAX_SILENT:
            oldest = next(iter(silent))
            del silent[oldest]
            heard = self._heard.get(oldest)
            if heard is not None:  # its live tasks' counts stay; the given-up ones' go
                for key in [k for k in heard if k < 0]:
                    del heard[key]
        return -count
