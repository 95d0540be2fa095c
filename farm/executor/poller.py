"""The pump's readiness loop: epoll, plus what ``selectors`` cannot do, mute a socket.

``Pump.wait_here`` lets the thread that waits for a result read the reply itself
while the pump thread sleeps. For that the pump thread must not be woken by the
same reply: the waiting thread mutes the connections in the pump's epoll
(``epoll_ctl`` with no events, which a thread asleep in ``epoll_wait`` on that
epoll honours at once) and restores them when it is done. ``selectors`` refuses
an empty event mask, hence this small class. Where there is no epoll (not
Linux), a ``selectors`` loop stands in and ``can_mute`` is False: results are
then always delivered by the pump thread.
"""

from __future__ import annotations

import select
import selectors
from typing import Any

__all__ = ["Poller", "READ", "WRITE"]

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

_EPOLL = hasattr(select, "epoll")


class Poller:
    """fd → data, events in ``READ``/``WRITE`` terms; ``select`` gives ``(data, mask)``."""

    can_mute = _EPOLL

    def __init__(self) -> None:
        self._data: dict[int, Any] = {}
        if _EPOLL:
            self._epoll = select.epoll()
        else:  # pragma: no cover (Linux has epoll)
            self._selector = selectors.DefaultSelector()

    def register(self, fd: int, events: int, data: Any) -> None:
        self._data[fd] = data
        if _EPOLL:
            self._epoll.register(fd, _to_epoll(events))
        else:  # pragma: no cover
            self._selector.register(fd, events, data)

    def modify(self, fd: int, events: int, data: Any) -> None:
        self._data[fd] = data
        if _EPOLL:
            self._epoll.modify(fd, _to_epoll(events))
        else:  # pragma: no cover
            self._selector.modify(fd, events, data)

    def mute(self, fd: int) -> None:
        """No events for ``fd`` until the next ``modify`` (hang-ups and errors still wake)."""
        self._epoll.modify(fd, 0)

    def unregister(self, fd: int) -> None:
        self._data.pop(fd, None)
        if _EPOLL:
            self._epoll.unregister(fd)
        else:  # pragma: no cover
            self._selector.unregister(fd)

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if not _EPOLL:  # pragma: no cover
            return [(key.data, mask) for key, mask in self._selector.select(timeout)]
        try:
            ready = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            return []
        out = []
        for fd, ev in ready:
            if fd not in self._data:
                continue  # unregistered by another turn
            mask = 0
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                mask |= READ
            if ev & (select.EPOLLOUT | select.EPOLLERR):
                mask |= WRITE
            out.append((self._data[fd], mask))
        return out

    def close(self) -> None:
        if _EPOLL:
            self._epoll.close()
        else:  # pragma: no cover
            self._selector.close()


def _to_epoll(events: int) -> int:
    return (select.EPOLLIN if events & READ else 0) | (select.EPOLLOUT if events & WRITE else 0)
