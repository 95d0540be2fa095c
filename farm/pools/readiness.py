"""What the supervisor tells systemd on each turn of its loop: READY=1 once the job
server and every slot's worker serve, STATUS= when it changes, the watchdog's ping.

A mixin of :class:`farm.supervisor.Supervisor`; the notify protocol itself is
farm.pools.sdnotify.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from farm.config import Config
from farm.pools import sdnotify

if TYPE_CHECKING:
    from farm.pools.localserver import LocalServer
    from farm.pools.slots import Slot

__all__ = ["Readiness"]

log = logging.getLogger("farm.supervisor")

#: Seconds of start each sign of the replay's progress gives (EXTEND_TIMEOUT_USEC is a
#: deadline from its receipt, not an addition): many times the server's half second between
#: two lines, so a busy host's slow turn does not end the start.
EXTEND_START = 15.0


class Readiness:
    """A mixin of the Supervisor: its notify step."""

    config: Config
    slots: dict[str, list[Slot]]
    server: LocalServer
    watchdog: sdnotify.Watchdog
    ready_sent: bool  # READY=1 is sent once
    extended_at: float  # when systemd's start timeout was last extended
    last_status: str  # the STATUS= sent last: sent again only when it changes
    # Provided by Strays (farm.pools.strays): the workers and detached processes left.
    drain_left: Callable[[], tuple[int, int, list[float]]]

    def notify_systemd(self) -> None:
        """The watchdog's ping; READY=1 once all is up; STATUS= when it has changed."""
        self.watchdog.ping()
        slots = [s for pool in self.slots.values() for s in pool]
        up = sum(1 for s in slots if s.proc and s.proc.state.serving)
        failing = sum(1 for s in slots if s.failing)
        server_up = self.server.ready or not self.config.local_server
        now = time.monotonic()
        ready_wait = self.config.supervisor.ready_wait
        if not self.ready_sent:
            self.extend_start(now)
        # A worker that does not serve ready_wait after its start (a command worker whose
        # server is down or whose wrapper's child holds the connection, a module that hangs
        # at import) counts as started: else it held READY=1 back until systemd's start
        # timeout killed the farm, in a restart loop with nothing said.
        unseen = [
            s.proc
            for s in slots
            if s.proc and not s.proc.state.serving and now - s.proc.started >= ready_wait
        ]
        all_up = all(
            s.failing or (s.proc and s.proc.state.serving) for s in slots if s.proc not in unseen
        )
        if not self.ready_sent and server_up and all_up:
            self.ready_sent = True
            sdnotify.notify("READY=1")
            log.info("ready: %d workers up, %d failing", up, failing)
            for proc in unseen:
                log.warning(
                    "worker %s (pid %d) %s after %gs; READY=1 sent without it",
                    proc.name,
                    proc.pid,
                    (proc.misregistered or "has not connected to the job server")
                    if proc.command
                    else "has not loaded its target (hanging at import?)",
                    ready_wait,
                )
        status = f"{up}/{len(slots)} workers up" + (f", {failing} failing" if failing else "")
        if unseen:
            status += f", {len(unseen)} not connected"
        if not server_up:  # workers look up beside a dead server: no job reaches them
            status = f"job server not ready; {status}"
        self.send_status(status)

    def notify_stopping(self) -> None:
        """While the farm drains to stop: the watchdog's ping, and STATUS= with the workers
        left (`systemctl status` read the last "N/N workers up" through the whole drain)."""
        self.watchdog.ping()
        left, detached, _ = self.drain_left()
        status = f"stopping: {left} worker{'s' if left != 1 else ''} draining"
        if detached:  # what workers detached: stopped too before the farm ends
            status += f", {detached} detached process{'es' if detached != 1 else ''}"
        self.send_status(status)

    def send_status(self, status: str) -> None:
        """STATUS=, only when it changed (the loop turns many times a second)."""
        if status != self.last_status:
            self.last_status = status
            sdnotify.notify(f"STATUS={status}", wait=0)

    def extend_start(self, now: float) -> None:
        """EXTEND_TIMEOUT_USEC while the job server replays its store and says it goes on
        (farm.server.process.ReplayProgress), at most once a second: 1.28 M jobs took 40 s of the
        unit's TimeoutStartSec=60. Only on progress: a server that hangs is not extended."""
        if self.server.progressed_at > self.extended_at and now - self.extended_at >= 1.0:
            self.extended_at = now
            sdnotify.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_START * 1e6)}", wait=0)
