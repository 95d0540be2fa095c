"""What `farm check` asks beyond the config: can each pool's workers start, and can
`farm up` make the files it needs?

The config's own checks (farm.config) find a target's module without running it. Here
each Python target is loaded the way its workers load it: by the worker process itself
(``python -P -m farm.pools.workerproc --check``), in the environment the supervisor gives
its workers (``children_environ``), from the same working directory, so a target's
import side effects stay in that child, and within a time bound (the child's process
group is killed past it, or as soon as it has reported: what the import started, a
thread that keeps its interpreter from exiting, does not hold the check).
"""

from __future__ import annotations

import json
import os
import select
import signal
import time

from farm.commandspec import dials_php_default
from farm.config import Config, ExecutorConfig
from farm.net import DEFAULT_PORT, connectable, parse_address
from farm.pools.executorduties import spill_environ
from farm.pools.sdnotify import child_environ
from farm.pools.spawn import exec_text, python_module, spawn
from farm.targets import trusted_pythonpath

__all__ = ["CannotStart", "children_environ", "php_default_dials", "target_failures"]

#: What ``localhost`` names: a listener there (or on every interface: ``connectable``).
_LOCALHOST = frozenset({"127.0.0.1", "::1", "localhost"})
#: Targets loaded at once: each is a whole interpreter importing a module.
PARALLEL = max(1, min(8, os.cpu_count() or 1))


def children_environ(executor: ExecutorConfig) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The environments of the supervisor's children: a command pool's (the supervisor's own,
    less systemd's notify variables, plus the Executor's spill settings), a Python worker's
    and the job server's (that one with ``trusted_pythonpath``'s PYTHONPATH), and what to
    warn of about PYTHONPATH, a line each."""
    child_env = child_environ()
    child_env.update(spill_environ(executor))
    python_env = dict(child_env)
    warnings = trusted_pythonpath(python_env)
    return child_env, python_env, warnings


class CannotStart(Exception):
    """No process (or pipe) to load a target in: the OSError that said so is its cause."""


def target_failures(config: Config, timeout: float, env: dict[str, str]) -> dict[str, str]:
    """Each Python target of ``config`` that its workers cannot load -> why, in one line;
    each is loaded in a child of its own, ``PARALLEL`` at a time, at most ``timeout``
    seconds each, in ``env`` (a Python worker's, ``children_environ``). The children are
    started as the workers are (``spawn``: their own process group, killed if this process
    dies) and none outlives this call. CannotStart when one could not be started."""
    # Each target once, named by its first pool (the child's title and log say that name).
    pools: dict[str, str] = {}
    for pool in config.functions.values():
        if pool.target:
            pools.setdefault(pool.target, pool.name)
    waiting = list(pools)
    running: list[_Load] = []
    failed: dict[str, str] = {}
    try:
        while waiting or running:
            while waiting and len(running) < PARALLEL:
                target = waiting.pop(0)
                running.append(_Load(target, pools[target], env, time.monotonic() + timeout))
            soonest = min(load.deadline for load in running)
            fds = [fd for load in running for fd in load.open_fds()]
            # Up to 0.1 s: a child whose pipes something it started holds open is seen
            # ending by waitid, which has no descriptor to wait on.
            wait = max(0.0, min(0.1, soonest - time.monotonic()))
            if fds:
                readable = select.select(fds, [], [], wait)[0]
            else:
                readable = []
                time.sleep(wait)  # no pipe left open: waiting on waitid alone
            for load in list(running):
                load.read(readable)
                why = load.outcome(timeout)
                if why is not _STILL:
                    running.remove(load)
                    load.close()
                    if why is not None:
                        failed[load.target] = why
    finally:
        for load in running:
            load.close()
    return failed


#: What ``_Load.outcome`` returns while the child still loads.
_STILL = "still"


class _Load:
    """One ``workerproc --check`` child loading one target; its report pipe and its stderr
    (the worker's log, whose last line says why when it dies without a report)."""

    def __init__(self, target: str, pool: str, env: dict[str, str], deadline: float) -> None:
        self.target, self.deadline = target, deadline
        self.status: int | None = None
        self.reports, self.err = bytearray(), bytearray()
        opened: list[int] = []
        try:
            report_read, report_write = os.pipe()
            opened += (report_read, report_write)
            err_read, err_write = os.pipe()
            opened += (err_read, err_write)
            null = os.open(os.devnull, os.O_RDWR)
            opened.append(null)
            os.set_inheritable(report_write, True)
            # --NAME=VALUE: a pool's name may start with "-" (see farm.pools.workerargs)
            check = ["--check", f"--function={exec_text(pool)}"]  # read back as its UTF-8
            argv = python_module("farm.pools.workerproc") + check
            argv += [f"--target={target}", "--report-fd", str(report_write)]
            # Its stdout: what the module prints as it loads, which is not ours to show.
            self.pid = spawn(argv, env, keep=(report_write,), stdio=(null, null, err_write))
        except BaseException as exc:
            for fd in opened:
                os.close(fd)
            if isinstance(exc, OSError):  # no process (EAGAIN: the process limit), no fd
                raise CannotStart(exc) from exc
            raise
        for fd in (report_write, err_write, null):
            os.close(fd)
        self.report_fd = report_read
        self.fds = {report_read: self.reports, err_read: self.err}

    def open_fds(self) -> list[int]:
        return list(self.fds)

    def read(self, readable: list[int]) -> None:
        for fd in [fd for fd in self.fds if fd in readable]:
            chunk = os.read(fd, 65536)
            if not chunk:
                del self.fds[fd]
                os.close(fd)
                continue
            self.fds[fd].extend(chunk)
            del self.err[: max(0, len(self.err) - 4096)]  # its last lines are enough

    def outcome(self, timeout: float) -> str | None:
        """Why the target does not load, None when it loads, or ``_STILL``."""
        # Decided by its report, once a whole line of it is in: a module may leave a
        # thread running, which keeps the interpreter from exiting (a worker serves beside
        # it), or a child holding the pipes open. ``close`` kills what is left.
        events = [
            json.loads(line)
            for line in self.reports.splitlines(keepends=True)
            if line.endswith(b"\n") and line.strip()
        ]
        for event in events:
            if event.get("ev") == "ready":
                return None
            if event.get("ev") == "boot_error":
                return str(event.get("why"))
        if self.status is None:
            # Seen ended, not reaped: its pid names its process group until ``close``
            # has killed that group, and only then is it reaped.
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None and info.si_pid:
                exited = info.si_code == os.CLD_EXITED
                self.status = info.si_status if exited else -info.si_status
        # Its report read to its end (its stderr may be held open by what it started).
        if self.status is None or self.report_fd in self.fds:
            if time.monotonic() < self.deadline:
                return _STILL
            if self.status is None:
                return (
                    f"still loading after {timeout:g}s (a hang at import? the supervisor kills"
                    " a worker still loading at [supervisor] boot_timeout)"
                )
        last = self.err.decode(errors="replace").strip().splitlines()[-1:] or ["it said nothing"]
        return f"the worker exited with status {self.status} while loading it: {last[0]}"

    def close(self) -> None:
        """Kill what is left of its process group, then reap it (not before: until then its
        pid is its own, not another's group's), close its pipes."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        os.waitpid(self.pid, 0)
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def php_default_dials(cfg: Config) -> list[str]:
    """A warning for each command pool whose PHP script calls addServer() with no server,
    where this farm's server is not at localhost:4730, which such a call dials: its workers
    would serve a server of another farm, or fail at every start (the PHP review: the seed's
    worker under a config that moved the port). `farm check` says them, and `farm up` logs
    them at its start."""
    addresses = list(cfg.server.addresses) if cfg.local_server else []
    addresses += [parse_address(s) for s in cfg.supervisor.servers]
    reached = [connectable(a) for a in addresses if a.kind == "tcp"]
    if any(a.port == DEFAULT_PORT and a.host in _LOCALHOST for a in reached):
        return []
    where = ", ".join(str(a) for a in addresses if a.kind == "tcp") or "no TCP address"
    found = []
    for pool in cfg.functions.values():
        if pool.command is None or (script := dials_php_default(pool.command)) is None:
            continue
        found.append(
            f"{cfg.source}: functions.{pool.name}.command: {script} calls addServer() with no"
            f" server, which dials localhost:{DEFAULT_PORT}, but this farm's server is at"
            f' {where}; have it call $worker->addServer(getenv("FARM_SERVER_HOST"),'
            f' (int)getenv("FARM_SERVER_PORT"))'
        )
    return found
