"""What a command worker is doing, seen from the job server: its jobs, its drain, its timeout.

A command worker (PHP, Perl, ``gearman -w``) tells the supervisor nothing, but the local
job server knows each worker connection's other end: the process on its Unix socket
(SO_PEERCRED), the remote port on TCP. The supervisor reads which sockets each command
worker holds (psutil), and matches them against the server's farm-only admin ``peers``
listing (docs/server.md) for `farm ps` (jobs done, the job in hand since when) and for a
pool's ``timeout``; a starting one serves once one of its connections registered one of
its pool's functions there (the same listing names them). To stop a command worker
without killing its job mid-way it first asks the server to ``drain`` those connections
(their grabs get NO_JOB from then on), and sends ``stop_signal`` once the server shows the
worker holds no job, or after ``graceful_timeout``; SIGKILL follows ``graceful_timeout``
later, as for any stop.

A mixin of :class:`farm.supervisor.Supervisor`. ``peers`` and ``drain`` are refused on
TCP, so all this needs the local server's Unix socket; without one (or with no local
server) a command worker serves once it connects, gets its ``stop_signal`` at once, and
`farm ps` shows no jobs for it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from typing import TYPE_CHECKING

from farm.client.admin import admin_query
from farm.config import Config
from farm.net import parse_address
from farm.pools.claims import claim_queries
from farm.pools.exits import cut_off, undrained
from farm.pools.peerlist import PeerRow, Registered, parse_peers, peers_queries, process_peers
from farm.pools.slots import ProcState, WorkerProcess
from farm.protocol.admin import named_lines

if TYPE_CHECKING:
    from farm.pools.localserver import LocalServer

__all__ = ["CommandJobs", "PEERS_POLL"]

log = logging.getLogger("farm.supervisor")

#: While a command worker drains, the server is asked this often whether it holds a job.
PEERS_POLL = 0.1
#: Command workers with a pool timeout: their jobs are looked at this often.
TIMEOUT_POLL = 0.5
#: A command worker's sockets are read again after this long (a reconnect changes its port).
SOCKETS_STALE = 1.0
#: How long the supervisor's loop waits on the local server's admin answer at most.
ADMIN_TIMEOUT = 0.5


class CommandJobs:
    config: Config
    server: LocalServer
    retiring: list[WorkerProcess]
    by_pid: dict[int, WorkerProcess]
    quitting: bool  # SIGQUIT came (farm.pools.signals)
    peers_polled: float = 0.0
    registered_polled: float = 0.0

    def server_ports(self) -> set[int]:
        return {parse_address(s).port for s in self.config.command_servers}

    def peers_address(self) -> str | None:
        """The local server's Unix socket, where ``peers`` and ``drain`` are answered."""
        srv = self.server
        if not self.config.local_server or not srv.pid or not srv.ready:
            return None
        return f"unix:{self.config.server.unix}" if self.config.server.unix else None

    def ask_server(self, command: str) -> str | None:
        address = self.peers_address()
        if address is None:
            return None
        try:
            return admin_query(address, command, timeout=ADMIN_TIMEOUT)
        except (OSError, ValueError) as e:
            log.debug("admin %r to %s: %s", command.split()[0], address, e)
            return None

    def ask_each(self, command: str, names: list[str]) -> tuple[int, ...] | None:
        """``drain``/``killing``/``served`` of the connections ``names``, in as many lines
        as the server's line limit asks (a process may hold hundreds): the numbers of each
        ``OK N…`` reply added up by position, or None when a line is not answered so (or
        there is no local server to ask)."""
        total: tuple[int, ...] = ()
        for line in named_lines(command, names):
            said = re.match(r"OK ([0-9]+(?: [0-9]+)*)\r?\n", self.ask_server(line) or "")
            numbers = () if said is None else tuple(int(n) for n in said[1].split())
            if not numbers or total and len(numbers) != len(total):
                return None  # not one of the replies the lines before it were
            total = tuple(a + b for a, b in zip(total, numbers, strict=True)) if total else numbers
        return total

    def ask_peers(self, procs: list[WorkerProcess]) -> list[PeerRow] | None:
        """The server's ``peers`` rows of the connections of ``procs`` (as ``read_sockets``
        named them last), asked about those alone; None when it does not answer, or not
        with a listing."""
        names = sorted(frozenset[str]().union(*(proc.peers for proc in procs)))
        rows: list[PeerRow] = []
        for query in peers_queries(names):
            reply = self.ask_server(query)
            if reply is None:
                return None
            try:
                rows += parse_peers(reply)
            except ValueError as e:
                log.warning("the job server's peers listing: %s", e)
                return None
        return rows

    def count_served(self, proc: WorkerProcess, status: int) -> None:
        """A command worker ended: its jobs as the server counted them (admin ``served``),
        its connections closed lately included. ``track_commands`` reads them only for a
        pool with a timeout, a drain or `farm ps`, and a worker that stopped itself after
        its jobs closed its connections before it was reaped: its end said "0 jobs", and
        its exit 0 read as a crash (Slot.note_exit). Its own pid names its Unix-socket
        connections; a wrapper's child's, and TCP ones, are known when read while it ran."""
        served = self.ask_each("served", sorted(proc.peers | {f"pid:{proc.pid}"}))
        if served is not None and len(served) == 2:
            done, held = served
            proc.jobs_done = max(proc.jobs_done, done)
            if held and proc.busy_since is None:  # it left holding one: no clean stop of its own
                proc.busy_since = time.monotonic()
        clean = os.waitstatus_to_exitcode(status) == 0 and proc.busy_since is None
        if clean and not proc.jobs_done:
            self.claim_served(proc)

    def claim_served(self, proc: WorkerProcess) -> None:
        """A command worker that exited 0 with no job counted: one that ended its jobs before
        its sockets were read (``gearman -w -c 2`` with a backlog ends in milliseconds), or
        closed them before the ``peers`` that named them reached the server. Its connections
        were named too late, and it was counted a crash, backed off to 30 s while the backlog
        drained 2 jobs a backoff. The server kept the end of each connection nobody named that
        ended jobs, with what it registered: one such end of its pool's own functions (those
        no other pool serves), opened and closed while it lived, of its user where a Unix
        socket tells, is claimed as its own (admin ``claim``, one per process: quick workers
        of a pool add up to the jobs done; one that did none finds none left, still a crash)."""
        for line in claim_queries(self.config, proc, time.monotonic()):
            said = re.match(r"OK ([0-9]+)\r?\n", self.ask_server(line) or "")
            if said is None:
                return
            if int(said[1]):
                proc.jobs_done = int(said[1])
                log.debug(
                    "worker %s (pid %d) closed its connections before they were named: claimed"
                    " an unnamed one of its pool that ended %d jobs",
                    proc.name,
                    proc.pid,
                    proc.jobs_done,
                    extra=proc.log_fields(),
                )
                return

    def read_sockets(self, proc: WorkerProcess, now: float) -> None:
        peers = process_peers(proc.pid, self.server_ports())
        if peers is not None:
            proc.peers = peers
        proc.peers_read = now

    # -- starting --

    def serving_commands(self, connected: list[WorkerProcess], now: float) -> list[WorkerProcess]:
        """Of the command workers that connected, those that serve: one of their connections
        registered one of their pool's functions. One registering another name connects all
        the same, and a deploy of it was reported done while the pool's jobs queued for
        ever. Where the local server cannot tell (none that they reach on TCP, no Unix
        socket to ask on, as ``peers`` is refused on TCP, no answer), connecting is serving.
        The server is asked every PEERS_POLL at most, and until then none is serving."""
        if self.peers_address() is None or self.config.server.tcp is None:
            return connected
        if now - self.registered_polled < PEERS_POLL:
            return []
        self.registered_polled = now
        # One listing names each connection and what it registered. Joined by fd with a
        # second one (`workers`), a connection closed between the two queries left its fd to
        # another, whose functions were then credited to the wrong process.
        for proc in connected:
            self.read_sockets(proc, now)
        rows = self.ask_peers(connected)
        if rows is None:
            return connected
        seen = Registered(rows)
        serving = []
        for proc in connected:
            pool = self.config.functions.get(proc.function)
            proc.registered, final = seen.of(proc.peers, proc.registered, now)
            names = proc.registered[0]
            if pool is None or names & set(pool.functions):
                proc.registration_seen = pool is not None
                serving.append(proc)
                continue
            # "So far" until it asks for jobs with these and names no new one for a while: a
            # slow init may come before its pool's name, and GearmaNode asks after each name.
            wrong = f"registered {', '.join(sorted(names))}{'' if final else ' so far'}, not"
            wrong += f" {' or '.join(pool.functions)}"
            if not names or wrong == proc.misregistered:  # said once, not at every poll
                continue
            proc.misregistered, proc.misregistered_final = wrong, final
            if final:
                log.warning(
                    "worker %s (pid %d) %s: not serving",
                    proc.name,
                    proc.pid,
                    wrong,
                    extra=proc.log_fields(),
                )
        return serving

    # -- draining --

    def drain_command(self, proc: WorkerProcess, grace: float) -> bool:
        """Ask the server to hand ``proc`` no more jobs; its ``stop_signal`` follows once
        it holds none (``track_commands``). False when that cannot be asked (no local
        server's Unix socket, no connection of it seen or on that server), or when there is
        no grace to drain in (SIGQUIT's 0): then it is signalled at once. A drain of 0 s
        said "SIGTERM once it holds none, or after 0s", then "still runs after the 0s
        grace" before the kill SIGQUIT meant."""
        if self.peers_address() is None:
            return False
        now = time.monotonic()
        if not grace:
            # Its job, read before the signal: one dead of it holds none by the time its
            # kill (exits.undrained) or its exit line (strays.watch_group) names it. After
            # SIGQUIT, read for every worker at once already (quit_workers).
            if not self.quitting:
                self.read_job(proc, now)
            if proc.busy_since is not None and proc.handle:
                proc.cut_job = undrained(proc, now, quitting=self.quitting)
            return False
        self.read_sockets(proc, now)
        if not proc.peers:
            return False
        drained = self.ask_each("drain", sorted(proc.peers))
        if drained is None:
            return False
        if drained == (0,):
            # None of its connections is the local server's (its servers are remote, as a
            # "running (not checked)" one's): nothing here holds its jobs back or sees them
            # end. Said as it is, not as a drain that then signalled it within 0.1 s.
            log.info(
                "worker %s (pid %d): no connection of it to the local server to drain; %s now",
                proc.name,
                proc.pid,
                signal.Signals(proc.stop_signal).name,
            )
            return False
        proc.signal_at, proc.grace = now + grace, grace
        log.info(
            "worker %s (pid %d): the server hands it no more jobs; %s once it holds none,"
            " or after %gs",
            proc.name,
            proc.pid,
            signal.Signals(proc.stop_signal).name,
            grace,
        )
        return True

    def quit_workers(self, procs: list[WorkerProcess]) -> None:
        """SIGQUIT: every worker is stopped at once. The jobs the command workers hold are
        read before any signal (for their kills and exit lines to name), and all are
        excused (``killing``), each with one query for all: asked of each worker in turn, a
        hung job server's ADMIN_TIMEOUT made the stop take half a second per worker."""
        now = time.monotonic()
        for proc in procs:
            self.read_sockets(proc, now)
        if (rows := self.ask_peers([p for p in procs if p.command])) is None:
            return  # the server does not answer: not asked again, `killing` neither
        by_peer = {row.peer: row for row in rows}
        for proc in procs:
            mine = [by_peer[name] for name in proc.peers if name in by_peer]
            if proc.command and mine:  # none listed: it died holding what it held
                _note_job(proc, mine, now)
        self.ask_each("killing", sorted(frozenset[str]().union(*(p.peers for p in procs))))

    def excuse(self, proc: WorkerProcess) -> None:
        """Before a worker past its drain's grace is killed (farm stop, a deploy, a
        scale-down): tell the server (admin ``killing``), so that a job this ends for good
        (``job_retries``) is logged as stopped, not as a poison job that killed its worker.
        A command worker's job in hand is read anew, for the kill to name (exits.undrained):
        it was read last when its stop signal went, and the job may have ended since. Its
        connections are those read last while it ran (a wrapper's worker left after its
        shell: the shell's pid no longer leads to them). After SIGQUIT, quit_workers did."""
        if self.quitting:
            return
        self.read_job(proc, time.monotonic())
        if proc.peers:
            self.ask_each("killing", sorted(proc.peers))

    def read_job(self, proc: WorkerProcess, now: float) -> None:
        """A command worker's job in hand, as the server says now; left as it was when the
        server cannot tell, or lists none of its connections (it died of its stop signal,
        not yet reaped). For a Python worker, its sockets alone."""
        self.read_sockets(proc, now)
        rows = self.ask_peers([proc]) if proc.command and proc.peers else None
        if not rows:
            return  # none, or its connections closed: it died holding what it held
        _note_job(proc, rows, now)

    def send_stop(self, proc: WorkerProcess, now: float, why: str) -> None:
        proc.signal_at = None
        proc.stop_deadline = now + proc.grace
        log.debug("worker %s (pid %d): stop signal (%s)", proc.name, proc.pid, why)
        try:
            os.killpg(proc.pid, proc.stop_signal)  # a wrapper's children too (lifecycle.signal)
        except ProcessLookupError:
            pass

    # -- the loop's step --

    def track_commands(self, *, everyone: bool = False) -> None:
        """Read the server's ``peers`` when a command worker drains, has a pool timeout,
        or `farm ps` asks (``everyone``); set each one's jobs and job in hand, and signal
        the drained workers that hold no job any more."""
        now = time.monotonic()
        waiting = [p for p in self.retiring if p.command and p.signal_at is not None]
        watched = [
            p
            for p in self.by_pid.values()
            if p.command
            and p.state is not ProcState.KILLING
            and (everyone or p.signal_at is not None or self.has_timeout(p))
        ]
        if not watched:
            return
        due = PEERS_POLL if waiting else TIMEOUT_POLL
        if not everyone and now - self.peers_polled < due:
            return
        self.peers_polled = now
        for proc in watched:
            if now - proc.peers_read > SOCKETS_STALE or not proc.peers:
                self.read_sockets(proc, now)
        rows = self.ask_peers(watched)
        if rows is None:  # nothing to wait on: the server cannot tell
            for proc in waiting:
                self.send_stop(proc, now, "the job server does not answer")
            return
        by_peer = {row.peer: row for row in rows}
        for proc in watched:
            mine = [by_peer[name] for name in proc.peers if name in by_peer]
            for row in mine:
                proc.peer_jobs[row.peer] = row.jobs
            proc.jobs_done = sum(proc.peer_jobs.values())
            oldest = _note_job(proc, mine, now)
            proc.job_seen = now  # trusted for JOB_SEEN_STALE: its end is judged by it
            if proc.signal_at is None:
                continue
            undrained = [r.peer for r in mine if not r.draining]
            if undrained:  # a connection made after the drain was asked
                self.ask_each("drain", undrained)
            if oldest is None:
                self.send_stop(proc, now, "it holds no job")
            elif now >= proc.signal_at:
                # The drain did not save this job: the operator hears of it (a job the
                # worker dies holding goes back to the server's queue, job_retries allowing).
                log.warning(
                    "worker %s (pid %d): job %s still runs after the %gs grace; %s",
                    proc.name,
                    proc.pid,
                    oldest.handle,
                    proc.grace,
                    signal.Signals(proc.stop_signal).name,
                )
                # Its exit line said "after draining": it names the job cut off, once its
                # group ends with it (strays.watch_group); a wrapper's worker deaf to the
                # signal may finish the job after its shell died of it.
                ran = oldest.seconds or 0.0  # busy: not None
                proc.cut_job = cut_off("did not drain in time", oldest.handle, ran)
                self.send_stop(proc, now, "its grace is over")

    def has_timeout(self, proc: WorkerProcess) -> bool:
        return bool(proc.timeout)

    def command_wakeup(self, now: float) -> float | None:
        """When the loop must look again for ``track_commands``; None: no hurry."""
        times = []
        for proc in self.by_pid.values():
            if not proc.command or proc.state is ProcState.KILLING:
                continue
            if proc.signal_at is not None:
                times.append(min(proc.signal_at, self.peers_polled + PEERS_POLL))
            elif self.has_timeout(proc):
                times.append(self.peers_polled + TIMEOUT_POLL)
        return min(times) - now if times else None


def _note_job(proc: WorkerProcess, rows: list[PeerRow], now: float) -> PeerRow | None:
    """``proc``'s job in hand from the ``peers`` rows of its connections: the one that has
    run longest (a wrapper may hold several connections), or none; its row returned."""
    busy = [r for r in rows if r.seconds is not None]
    oldest = max(busy, key=lambda r: r.seconds or 0.0, default=None)
    if oldest is None or oldest.seconds is None:
        proc.handle, proc.busy_since = "", None
    else:
        proc.handle, proc.busy_since = oldest.handle, now - oldest.seconds
    return oldest
