"""What the blocking client reads, handed to the listeners of its tasks (``Delivery``, a
mixin of ``farm.client.blockingconn.Connections``): in order, through a queue that a callback
cut short (Ctrl-C, a signal handler's exception) leaves whole for the next wait."""

from __future__ import annotations

import logging
from collections import deque

__all__ = ["Delivery"]

log = logging.getLogger("farm.client")


class Delivery:
    """A mixin of ``Connections``: the events its reads gave, handed on one at a time."""

    def __init__(self) -> None:
        # Events read and not yet handed to their listeners (``deliver``), with their server.
        self.undelivered: deque[tuple[str, object]] = deque()

    def deliver(self) -> None:
        """Hand the events read but not yet handed on to their tasks' listeners, in order.
        Through a queue, one taken off at a time: a callback that uses this client reads
        again (a submit's catch-up, a nested pump), and what that read brings is handed on
        after the rest of this read, not before (a job's data out of order, its end before
        its last data); and a callback that raises KeyboardInterrupt (Ctrl-C) leaves the rest
        here for the next pump (dropped, another job's end waited until its timeout)."""
        while self.undelivered:
            self.hand_on(*self.undelivered.popleft())

    def hand_on(self, addr: str, event: object) -> None:
        """One event to its task's listener."""
        task = getattr(event, "task", None)
        if task is None:  # e.g. an ERROR the server sent unasked: nothing waits on it
            log.warning("farm.Client: %r from %s", event, addr)
            return
        if task.owner is None:
            return
        try:
            task.owner.task_event(event)
        except Exception:
            # The rest of this read's events (other jobs' endings) must still be filed.
            log.exception("farm.Client: a progress callback raised")
