"""A command worker's start: which servers it holds connections to, and when it serves.

A command worker says nothing to the supervisor, so it is ``starting`` until it holds a
TCP connection to one of its servers (psutil, its process tree: a wrapper's worker
counts) and, where the local server can tell, registered one of its pool's functions
there (CommandJobs.serving_commands, from the server's admin ``peers``); then ``running``.

One whose connections all go to remote servers (``[supervisor] servers``) runs once it
connects, its registration not checked: ``peers`` is farm's own command, answered only on
the local server's Unix socket (it names every peer's process and job); gearmand has
nothing like it, and its ``workers`` listing names a connection by its IP alone, so one
host's workers cannot be told apart there; and the supervisor's loop must not wait on a
remote server's answer. Connected counts, as systemd counts a started service
(``Type=simple``); `farm ps` says ``running (not checked)``.

A mixin of :class:`farm.supervisor.Supervisor`.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import time
from collections.abc import Callable

import psutil

from farm.config import Config
from farm.net import parse_address
from farm.pools.proctree import processes
from farm.pools.slots import ProcState, WorkerProcess

__all__ = ["CommandStart", "Link", "server_links", "to_this_host", "LATE_POLL"]

log = logging.getLogger("farm.supervisor")

#: A command worker whose connections psutil may not read counts as running after this long.
UNSEEN_READY_AFTER = 1.0
#: Seconds a command worker seen connected to remote servers alone is given to connect to
#: the local one as well before it counts as serving them alone (registration not checked).
REMOTE_SETTLE = 1.0
#: A command worker not serving [supervisor] ready_wait after its start (`yes` as a
#: command, a wrong server) is looked at this often, not every POLL: 50 looks a second at its
#: sockets cost ~15% of a core for as long as it ran (then with psutil's scan of every
#: process for its tree; each look still reads the host's TCP table, /proc/PID/net/tcp).
LATE_POLL = 1.0


class Link(enum.Enum):
    """Which kind of server a command worker's connection reaches."""

    LOCAL = "local"  # the local server: its `peers` tells what the connection registered
    REMOTE = "remote"  # one of [supervisor] servers elsewhere: nothing the supervisor asks tells


def to_this_host(remote_ip: str, local_ip: str) -> bool:
    """Whether a connection from ``local_ip`` to ``remote_ip`` stays on this host: loopback,
    or to the address it comes from (Linux makes the destination itself the source of a
    connection to one of its own addresses), so no list of interfaces is read at each poll."""
    ip = remote_ip.removeprefix("::ffff:")
    return ipaddress.ip_address(ip).is_loopback or ip == local_ip.removeprefix("::ffff:")


def server_links(pid: int, local_port: int | None, ports: set[int]) -> set[Link]:
    """The kinds of server process ``pid`` or one of its descendants holds an established TCP
    connection to: LOCAL, the local server's ``local_port`` on this host; REMOTE, another of
    ``ports`` (a remote server on the local server's port is told apart by its address).
    Raises psutil.Error when ``pid`` is gone or may not be read."""
    found = set()
    for proc in processes(pid):
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            if proc.pid == pid:
                raise
            continue  # a descendant that ended meanwhile
        for c in conns:
            if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED:
                local = c.raddr.port == local_port and to_this_host(c.raddr.ip, c.laddr.ip)
                found.add(Link.LOCAL if local else Link.REMOTE)
    return found


class CommandStart:
    config: Config
    by_pid: dict[int, WorkerProcess]
    # Provided by farm.pools.commandjobs: which connected ones registered their functions.
    serving_commands: Callable[[list[WorkerProcess], float], list[WorkerProcess]]

    @staticmethod
    def settled(proc: WorkerProcess, now: float, local_port: int | None) -> bool:
        """Whether a worker seen connected to remote servers alone counts as serving them
        alone: at once where no local server runs, else once it has stayed so REMOTE_SETTLE."""
        if local_port is None:
            return True
        if proc.remote_since is None:
            proc.remote_since = now
        return now - proc.remote_since >= REMOTE_SETTLE

    def watch_commands(self) -> bool:
        """Mark command workers that connected to a server and registered their pool's
        functions there ``running``; whether one started less than ready_wait ago still
        starts (the loop then polls again soon; an older one is looked at every LATE_POLL).
        One whose connections all go to remote servers runs once it connects (and stays
        so REMOTE_SETTLE, where a local server runs), its registration not checked: only
        the local server answers `peers`."""
        ports = {parse_address(s).port for s in self.config.command_servers}
        local_port = self.config.server.tcp[1] if self.config.server.tcp else None
        if not self.config.local_server:
            local_port = None
        waiting = False
        ready_wait = self.config.supervisor.ready_wait
        now = time.monotonic()
        connected_ones = []
        remote_only = []
        for proc in self.by_pid.values():
            if not proc.command or proc.state is not ProcState.STARTING:
                continue
            late = now - proc.started >= ready_wait
            if late and now - proc.connect_checked < LATE_POLL:
                continue
            proc.connect_checked = now
            try:
                # The command or what it started: a wrapper's worker (`sh -c "php w.php;
                # ..."`, a run-worker.sh) serves too, as its jobs and drain are seen. Seen
                # only as its own, a wrapper stayed "starting": a restart replaced it with
                # no drain, killing its job.
                links = server_links(proc.pid, local_port, ports)
            except psutil.AccessDenied:
                links = {Link.LOCAL} if now - proc.started >= UNSEEN_READY_AFTER else set()
            except psutil.Error:
                continue  # exiting: reaping will tell
            if Link.LOCAL in links:
                connected_ones.append(proc)
            elif links and self.settled(proc, now, local_port):
                # Registered, or not, where the supervisor cannot look (`peers` is farm's,
                # answered only on the local Unix socket; gearmand's `workers` names a
                # connection by its IP alone): connected counts, as systemd counts started.
                # Where a local server runs, only once it has had time to connect there too:
                # one look decides for good, and a worker that dials all its servers at
                # once may reach a remote one first.
                remote_only.append(proc)
            elif not late:
                waiting = True
            if Link.LOCAL in links or not links:
                proc.remote_since = None
        serving = self.serving_commands(connected_ones, now) if connected_ones else []
        # Said at INFO where the farm runs a local server, which such a worker passed by
        # (its $FARM_SERVERS names it first): an operator reading `farm ps` wants to know
        # why. A farm of remote servers alone expects it, each start: DEBUG.
        level = logging.INFO if local_port is not None else logging.DEBUG
        for proc in remote_only:
            log.log(
                level,
                "worker %s (pid %d) serves remote servers only; its registration is not checked",
                proc.name,
                proc.pid,
                extra=proc.log_fields(),
            )
        for proc in serving:  # each one connected to the local server
            proc.local_seen = True
        for proc in serving + remote_only:
            proc.state, proc.served = ProcState.RUNNING, True
            log.debug("worker %s (pid %d) serves", proc.name, proc.pid)
        unserved = [p for p in connected_ones if p not in serving]
        return waiting or any(now - p.started < ready_wait for p in unserved)
