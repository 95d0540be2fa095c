"""What a supervisor killed -9 left running, stopped by the next one on the same farm.

Its Python workers and its command workers die of their death signal (farm.pools.spawn),
but only they get one: what they started lives on, reparented to init, and the subreaper
that stopped it (farm.pools.strays) died with the supervisor. A wrapper's worker (a shell
that runs ``farm worker`` or ``php worker.php`` without ``exec``) then served the next
farm's server outside its timeout, stop and scale; a job's subprocess ran on for good.
Under systemd the unit's cgroup is emptied; by hand, or in a container whose init does not
do it, nothing was.

So every worker is started with ``FARM_INSTANCE`` in its environment (``instance_token``),
as it starts ``FARM_WORKER_ID``, and what it starts inherits both: the supervisor's pid
and mount namespaces, pid and start time, then its control socket, which names the farm (no two
running farms share one: a second ``farm up`` on it stops there). A supervisor writes its
own in a record beside the control socket, removed at a clean stop (farm.pools.lastrun).
Once a new supervisor holds its control socket, and only where that record names one that
did not stop cleanly (``ended_uncleanly``: its pid gone or another process's, or a record
that does not read, said in one line), it looks through /proc once, within ``SCAN_FOR``
(``find``), for processes of its own user (as root, of its command pools' users too) whose
``FARM_INSTANCE`` names its control socket under a supervisor that no longer runs: its pid
gone, or another process's (another start time). Each is stopped as a stray is: its pool's
``stop_signal`` (its process group where it leads one, or where its leader is gone, as a
non-exec wrapper's shell is), then SIGKILL after the pool's grace, on the loop's turns.
Another farm's processes (another control socket), those of a supervisor that runs, of
another pid or mount namespace (whose pids and paths say nothing here) or of another user
are never touched; nor are this supervisor and the processes that started it (a `farm up`
run by a job of the killed farm carries its token). A group gets the stop whole only where
each of its processes was found (``stoppable_groups``): one that holds this supervisor, what
started it, or a process without the token (its environment cleared) would have been stopped
with it; there each found process is signalled alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass

from farm.config import Config
from farm.lifetime import process_stat, stat_fields
from farm.pools import lastrun
from farm.pools.controlserver import ControlServer

__all__ = [
    "INSTANCE_VAR",
    "Left",
    "LeftBehind",
    "ended_uncleanly",
    "find",
    "instance_token",
    "pool_stop",
    "stoppable_groups",
]

log = logging.getLogger("farm.supervisor")

#: The variable naming a worker's farm and supervisor, in each worker's environment.
INSTANCE_VAR = "FARM_INSTANCE"
#: How long the look through /proc at start may take at most: a host of tens of thousands
#: of processes must not hold the farm's start.
SCAN_FOR = 1.0


def _parent_and_group(pid: int | str) -> tuple[int, int] | None:
    """A process's parent pid and process group; None if gone."""
    fields = stat_fields(pid)
    try:
        return int(fields[1]), int(fields[2])  # stat(5): fields 4 and 5
    except (IndexError, ValueError):
        return None


def _lineage() -> set[int]:
    """This process and those that started it, up to init: never stopped, though a `farm up`
    that a job of the killed farm ran, and the job's shell, carry that farm's token."""
    line, pid = set(), os.getpid()
    while pid > 1 and pid not in line:
        line.add(pid)
        ids = _parent_and_group(pid)
        if ids is None:
            break
        pid = ids[0]
    return line


def _namespaces() -> str:
    """This process's pid and mount namespaces ("PID.MNT"): a pid says nothing in another
    pid namespace, nor a control socket's path in another mount namespace; "" where Linux
    does not say, and then nothing is found."""
    try:
        return ".".join(str(os.stat(f"/proc/self/ns/{ns}").st_ino) for ns in ("pid", "mnt"))
    except OSError:
        return ""


def instance_token(control: str) -> str:
    """This supervisor's ``FARM_INSTANCE``: namespaces, pid, start time, control socket."""
    mine = process_stat("self")
    return f"{_namespaces()}:{os.getpid()}:{mine[1] if mine else 0}:{control}"


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:  # gone, another user's, undumpable
        return {}
    return dict(e.split(b"=", 1) for e in entries if b"=" in e)


def _supervisor_gone(token: str, control: str, namespaces: str) -> bool:
    """Whether ``token`` names this farm (``control``) under a supervisor that no longer runs."""
    parts = token.split(":", 3)
    if len(parts) != 4 or parts[3] != control or parts[0] != namespaces or not namespaces:
        return False  # another farm's, or another namespace's: nothing to tell by here
    try:
        pid, start = int(parts[1]), int(parts[2])
    except ValueError:
        return False
    now = process_stat(pid)
    return now is None or now[0] == "Z" or now[1] != start


def ended_uncleanly(record: str | lastrun.Unreadable | None, path: str, control: str) -> bool:
    """Whether the record (``lastrun.read`` of ``path``) says that the farm's last supervisor
    may have left processes running: one that names a supervisor gone (as ``find`` judges a
    worker's token) or another namespace's, or one that does not read (said in one line,
    then looked through as before records were written). No record: the last one stopped
    cleanly, or none ran. One of a supervisor that runs: its control socket was removed
    under it, and its workers' tokens name it running: none of them could be found."""
    if record is None:
        return False
    parts = record.split(":", 3)
    numbers = parts[1:3] if len(parts) == 4 else []
    if isinstance(record, lastrun.Unreadable):
        why = str(record)
    elif len(numbers) != 2 or not all(n.isdecimal() for n in numbers) or parts[3] != control:
        why = f"not a record of this farm's supervisor: {record[:200]!r}"
    else:
        pid, start = int(numbers[0]), int(numbers[1])
        now = process_stat(pid)
        if parts[0] != _namespaces() or now is None or now[0] == "Z" or now[1] != start:
            return True  # killed (or of another namespace, whose pids say nothing here)
        if pid != os.getpid():
            log.warning(
                "%s: supervisor %d of this farm runs, without its control socket", path, pid
            )
        return False
    log.warning("%s: %s; looking for what the last supervisor left running", path, why)
    return True


@dataclass
class Left:
    """A process of the farm's last run being stopped."""

    pid: int
    start: int  # its start time: a pid another process has since is never signalled
    worker: str  # its FARM_WORKER_ID's "pool#slot"
    supervisor: int  # the pid of the supervisor that started it
    deadline: float  # SIGKILL then, if it is still there
    group: int = 0  # its process group, where the stop goes to that


def find(control: str, uids: set[int], budget: float = SCAN_FOR) -> list[Left]:
    """The processes of ``uids`` that this farm's ended supervisors left running; their
    ``deadline`` is left to the caller."""
    until = time.monotonic() + budget
    namespaces, mine, found = _namespaces(), _lineage(), []
    gone: dict[str, bool] = {}  # by token: a few supervisors' at most
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for looked, pid in enumerate(pids):
        if time.monotonic() > until:
            log.warning(
                "looked for what the farm's last supervisor left running in %d of %d"
                " processes only (%gs): the rest are not looked at",
                looked,
                len(pids),
                budget,
            )
            break
        try:
            if pid in mine or os.stat(f"/proc/{pid}").st_uid not in uids:
                continue
        except OSError:
            continue
        env = _environ(pid)
        token = env.get(INSTANCE_VAR.encode(), b"").decode(errors="replace")
        wid = env.get(b"FARM_WORKER_ID", b"").decode(errors="replace")
        if not token or not wid.startswith("farm:"):
            continue  # not a worker's: the job server carries no FARM_WORKER_ID
        if token not in gone:
            gone[token] = _supervisor_gone(token, control, namespaces)
        stat = process_stat(pid)
        if gone[token] and stat is not None and stat[0] != "Z":
            name = wid[len("farm:") :].rsplit(":", 1)[0]
            found.append(Left(pid, stat[1], name, int(token.split(":")[1]), 0.0))
    return found


def stoppable_groups(found: list[Left], budget: float = SCAN_FOR) -> set[int]:
    """The process groups of ``found`` that may get the stop whole: led by one of them, or
    whose leader is gone (what is left of a killed wrapper's group), and holding no process
    but those found: not this supervisor's group, nor one holding what started it or a
    process without this farm's token (its environment cleared). A killpg had stopped the
    new supervisor itself where a job of the killed farm ran it. One look through /proc;
    none where it runs past ``budget``: each found process is then signalled alone."""
    pids = {left.pid for left in found}
    candidates = set()
    for left in found:
        ids = _parent_and_group(left.pid)
        if ids is not None and (ids[1] == left.pid or process_stat(ids[1]) is None):
            candidates.add(ids[1])
    candidates.discard(os.getpgrp())
    if not candidates:
        return set()
    until = time.monotonic() + budget
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if time.monotonic() > until:
            return set()
        fields = stat_fields(pid)
        try:
            group, dead = int(fields[2]), fields[0] == b"Z"  # a zombie feels no signal
        except (IndexError, ValueError):
            continue  # gone
        if group in candidates and pid not in pids and not dead:
            candidates.discard(group)  # holds another process: not the farm's whole
            if not candidates:
                break
    return candidates


def pool_stop(config: Config, name: str) -> tuple[int, float]:
    """The stop signal and grace of the pool a process of worker ``name`` ("pool#slot")
    came from: a command pool's own, else SIGTERM and the farm's grace."""
    pool = config.functions.get(name.rsplit("#", 1)[0]) if "#" in name else None
    if pool is not None and pool.command is not None:
        grace = pool.graceful_timeout
        return pool.stop_signal, config.supervisor.graceful_timeout if grace is None else grace
    return signal.SIGTERM, config.supervisor.graceful_timeout


class LeftBehind:
    """A mixin of ``Supervisor``: the last run's processes stopped (``stop_left_behind`` at
    start, ``tend_left_behind`` on each turn)."""

    config: Config
    stopping: bool
    grace: float  # the farm's; 0 once SIGQUIT said "at once"
    left_behind: dict[int, Left]
    control: ControlServer | None

    def run_record(self) -> str:
        """Where the record that a supervisor of this farm runs is (farm.pools.lastrun)."""
        return lastrun.record_path(self.config.supervisor.control)

    def stop_left_behind(self) -> None:
        """At start, once this supervisor holds the control socket: its record written, and
        what an ended supervisor of this farm left running stopped, where its record says
        it did not stop cleanly (else no process's environment is read)."""
        self.left_behind = {}
        control, path = self.config.supervisor.control, self.run_record()
        last = lastrun.read(path)
        # Its own, before it looks: killed while it looks, the next start looks again.
        lastrun.write(path, instance_token(control))
        if not ended_uncleanly(last, path, control):
            return
        uids = {os.geteuid()}
        if os.geteuid() == 0:  # root: its command pools' users' processes are the farm's too
            spec = (p.command for p in self.config.functions.values())
            uids |= {s.user.uid for s in spec if s is not None and s.user is not None}
        found = find(self.config.supervisor.control, uids)
        # Its group where it leads it, or where its leader is gone (what is left of the
        # group of a killed wrapper's shell), if that holds nothing but what was found.
        whole = stoppable_groups(found)
        groups: set[int] = set()  # one stop signal to each: a second one may mean "at once"
        now = time.monotonic()
        for left in found:
            sig, grace = pool_stop(self.config, left.worker)
            left.deadline = now + grace
            ids = _parent_and_group(left.pid)
            if ids is not None and ids[1] in whole:
                left.group = ids[1]
            to = "its process group" if left.group else "it"
            log.warning(
                "pid %d (of worker %s) outlived the farm's last supervisor (pid %d), and is"
                " no longer watched: %s to %s, SIGKILL in %gs",
                left.pid,
                left.worker,
                left.supervisor,
                signal.Signals(sig).name,
                to,
                grace,
            )
            self.left_behind[left.pid] = left
            if not left.group or left.group not in groups:
                groups.add(left.group)
                self.signal_left(left, sig)

    def signal_left(self, left: Left, sig: int) -> bool:
        """``sig`` to it (its group where it has one); False if it is gone."""
        now = process_stat(left.pid)
        if now is None or now[0] == "Z" or now[1] != left.start:
            return False  # gone (or its pid another process's): never signalled
        if left.group and (ids := _parent_and_group(left.pid)) is not None and ids[1] != left.group:
            # It left the group it was found in: that group id may be another's by now (a
            # freed id a root daemon's new session took), never to be signalled as farm's.
            left.group = 0
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if left.group:
                os.killpg(left.group, sig)
            else:
                os.kill(left.pid, sig)
        return True

    def tend_left_behind(self, now: float) -> None:
        """Let the ended go; SIGKILL those past their grace (at once after SIGQUIT)."""
        for left in list(self.left_behind.values()):
            if self.stopping and self.grace == 0:
                left.deadline = min(left.deadline, now)
            if now < left.deadline and self.signal_left(left, 0):
                continue
            del self.left_behind[left.pid]
            if now >= left.deadline and self.signal_left(left, signal.SIGKILL):
                log.warning(
                    "pid %d (of worker %s, left by the farm's last supervisor) outlived its"
                    " grace: SIGKILL",
                    left.pid,
                    left.worker,
                )

    def left_behind_deadlines(self) -> list[float]:
        return [left.deadline for left in self.left_behind.values()]

    def close_control(self) -> None:
        """At the end of a clean stop (every worker, and what each started, ended): the
        control socket closed and its record removed, so that the next `farm up` reads no
        process's environment. A supervisor that dies otherwise leaves its record. The
        record goes first: a `farm up` that takes the freed path meanwhile would read it as
        that of a supervisor that runs."""
        lastrun.remove(self.run_record(), instance_token(self.config.supervisor.control))
        if self.control is not None:
            self.control.close()
