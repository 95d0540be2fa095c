"""Many deadlines of one length behind one timer: wake-ups, pushes, lazy replies, timeouts.

Every job handed to a sleeping worker starts a deadline (--wake-deadline: come and
grab, or accept the pushed job, within half a second by default), and nearly every
one of them is met. A loop timer per deadline cost a timer handle, a closure and a
cancel (or a late, idle firing) per job; here a deadline is one dict entry, and
one timer serves them all. All deadlines of one ``Deadlines`` have the same
length, so the dict's insertion order is their order of expiry: the timer is
armed for the first one only, and meeting a deadline is a dict pop. The timer is
not cancelled when the last deadline is met: it fires once, idle, at most once
per length, instead of a cancel and a new timer per job.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Generic, TypeVar

from farm.server.queues import INERT_TIMER, Timer

__all__ = ["Deadlines"]

K = TypeVar("K")
V = TypeVar("V")

#: The loop's timers are in milliseconds: one may fire this much before its time.
RESOLUTION = 0.001
#: A timer this late (seconds) came round after the loop stood still (the server stopped,
#: its VM paused, its host starved it of CPU): what the peers sent meanwhile waits unread,
#: and uvloop runs due timers before it polls. Judged first, a worker's WORK_COMPLETE sent
#: in time lay unread while its job was failed as past its timeout, and the result dropped.
LATE = 0.1

CallLater = Callable[[float, Callable[[], None]], Timer]


class Deadlines(Generic[K, V]):
    """Deadlines of ``length`` seconds, at most one per key; ``on_due(key, value)`` is
    called for each one that is not discarded in time. Without ``call_later`` (a server
    driven by hand, as in tests) none ever fires, as with any timer of such a server."""

    __slots__ = ("length", "on_due", "call_later", "entries", "timer", "deferred")

    def __init__(
        self, length: float, on_due: Callable[[K, V], None], call_later: CallLater | None
    ) -> None:
        self.length = length
        self.on_due = on_due
        self.call_later = call_later
        self.entries: dict[K, tuple[float, V]] = {}
        self.timer: Timer | None = None
        self.deferred = False  # a late firing put off by one turn of the loop (LATE)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def add(self, key: K, value: V) -> None:
        """Start ``key``'s deadline now (a running one for the same key is replaced)."""
        entries = self.entries
        if key in entries:
            del entries[key]  # to the end: its deadline is now the latest
        entries[key] = (monotonic() + self.length, value)
        if self.timer is None and self.call_later is not None:
            self.timer = self.call_later(self.length, self._fire)

    def discard(self, key: K) -> None:
        """``key`` met its deadline (or no longer has one)."""
        self.entries.pop(key, None)

    def value(self, key: K) -> V | None:
        """The value of ``key``'s deadline, if it has one."""
        entry = self.entries.get(key)
        return None if entry is None else entry[1]

    def pop(self, key: K) -> V | None:
        """Drop ``key``'s deadline, if any, and return its value."""
        entry = self.entries.pop(key, None)
        return None if entry is None else entry[1]

    def _fire(self) -> None:
        entries = self.entries
        now = monotonic()
        if entries and not self.deferred and self.call_later is not None:
            first = entries[next(iter(entries))][0]
            if now - first > LATE:  # the loop stood still: read what came first, once
                self.deferred = True
                self.timer = self.call_later(RESOLUTION, self._fire)  # after the next poll
                return
        self.deferred = False
        # While the callbacks run, ``add`` must not arm a timer of the full length: the
        # deadlines already waiting are due sooner. The timer is armed after them.
        self.timer = INERT_TIMER
        try:
            while entries:
                key = next(iter(entries))
                due, value = entries[key]
                if due > now + RESOLUTION:
                    break
                del entries[key]
                self.on_due(key, value)  # may add or discard deadlines
        finally:
            # Armed again even when a callback raised: the deadlines after it still count.
            self.timer = None
            if entries and self.call_later is not None:
                first = entries[next(iter(entries))][0]
                self.timer = self.call_later(max(0.0, first - monotonic()), self._fire)
