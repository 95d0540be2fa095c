"""A worker process started for its slot, and watched: the supervisor's spawning.

A mixin of :class:`farm.supervisor.Supervisor` (through farm.pools.lifecycle, which sees
the process on to its end). Two kinds of pool start the same way (farm.pools.spawn:
pinned, death signal, descriptors closed): a Python pool runs ``python -m
farm.pools.workerproc``, which reports on a pipe and writes a shared-memory record; a
command pool runs any executable. Either's stdout and stderr come back on a pipe, logged
within a budget (all pipes are read by farm.pools.reports). What each is told is
farm.pools.workerargs's.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time

from farm.config import Config, FunctionConfig
from farm.logrepeats import Repeats
from farm.pools.record import RecordReader, create_record_fd
from farm.pools.restartpolicy import crash_delay
from farm.pools.slots import Slot, WorkerProcess
from farm.pools.spawn import WORKER_OOM_SCORE_ADJ, exec_read, exec_text, spawn
from farm.pools.workerargs import command_env, log_mark, python_argv

__all__ = ["WorkerStart"]

log = logging.getLogger("farm.supervisor")
#: A pool's workers that cannot be started, by why: a line a minute at most for each.
_not_started = Repeats(log, every=60.0)


class WorkerStart:
    config: Config
    slots: dict[str, list[Slot]]
    targets: dict[str, int]
    offsets: dict[str, int]
    by_pid: dict[int, WorkerProcess]
    child_env: dict[str, str]  # a command pool's (base_environ): the supervisor's own
    python_env: dict[str, str]  # a Python worker's: targets.trusted_pythonpath's PYTHONPATH
    instance: str  # every worker's FARM_INSTANCE (farm.pools.leftbehind)
    selector: selectors.BaseSelector

    def place(self, pool: FunctionConfig) -> None:
        """Give a new pool its slots' cores: after those already placed, round robin."""
        if pool.name not in self.offsets:
            self.offsets[pool.name] = sum(self.targets.values()) % len(self.config.supervisor.cpus)
            self.slots[pool.name] = []
        self.targets[pool.name] = pool.workers

    def start_process(self, slot: Slot, pool: FunctionConfig) -> WorkerProcess | None:
        """Start a process for ``slot`` (not yet put in it); None, and a backoff, if none starts."""
        try:
            if pool.command is not None:
                return self.spawn_command(slot, pool)
            return self.spawn_python(slot, pool)
        except OSError as e:
            # Counted as a crash is: the backoff grows (0.5 s, 1, 2 ... 30) and the slot
            # reads as failing in `farm ps`, where a descriptor limit (EMFILE) retried it
            # every 0.5 s for ever, each try a line of the log.
            now = time.monotonic()
            slot.failed(now)
            slot.next_start = now + crash_delay(slot.failures + 1)  # never at once
            slot.last_exit = f"could not be started: {e.strerror or e}"
            _not_started(
                (slot.function, e.errno), logging.ERROR, "cannot start worker %s: %s", slot.name, e
            )
            return None

    def spawn_worker(self, slot: Slot, pool: FunctionConfig) -> None:
        """Fill an empty slot."""
        proc = self.start_process(slot, pool)
        if proc is not None:
            slot.proc = proc

    def spawn_python(self, slot: Slot, pool: FunctionConfig) -> WorkerProcess:
        read_fd, write_fd = os.pipe()
        out_read, out_write = os.pipe()  # its stdout and stderr, within a budget (reports)
        mark, mark_fd = log_mark()  # what its own log lines start with there (reports)
        try:
            record_fd = create_record_fd(slot.name)
        except OSError:
            for fd in (read_fd, write_fd, out_read, out_write, mark_fd):
                os.close(fd)
            raise
        os.set_inheritable(write_fd, True)  # the descriptors the worker keeps
        os.set_inheritable(record_fd, True)
        record = RecordReader(record_fd)
        argv, servers = python_argv(self.config, pool, slot, write_fd, record_fd, mark_fd)
        # Also in what it detaches: farm.pools.strays leaves that be while this process runs.
        worker_id = f"farm:{pool.name}#{slot.index}:{slot.spawned}"
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            # Pinned, killed with the supervisor and deaf to SIGHUP (`systemctl kill -s HUP`
            # reaches every process of the unit) before any of its own code runs.
            pid = spawn(
                argv,
                {
                    **self.python_env,
                    "FARM_WORKER_ID": exec_text(worker_id),  # its UTF-8, as strays reads it
                    "FARM_INSTANCE": self.instance,
                },
                death_signal=signal.SIGKILL,
                core=slot.core,
                keep=(write_fd, record_fd, mark_fd),
                stdio=(null, out_write, out_write),
                ignore=(signal.SIGHUP,),
                oom_score_adj=WORKER_OOM_SCORE_ADJ,  # the OOM killer's first choice
            )
        except OSError:
            os.close(read_fd)
            os.close(out_read)
            record.close()
            raise
        finally:
            for fd in (write_fd, out_write, null, record_fd, mark_fd):  # record_fd's mapping stays
                os.close(fd)
        proc = WorkerProcess(
            pid, pool.name, slot.index, slot.core, read_fd, pool.options(), pool.timeout, record
        )
        proc.output_fd, proc.servers, proc.worker_id = out_read, servers, worker_id
        proc.out.mark = mark
        proc.runs = f"{' or '.join(pool.functions)} ({pool.target})"  # its os._exit() names it
        return self.watch(slot, proc)

    def spawn_command(self, slot: Slot, pool: FunctionConfig) -> WorkerProcess:
        """A command pool's slot: the executable, with its stdout and stderr on our pipe."""
        spec = pool.command
        assert spec is not None
        env = command_env(self.config, pool, slot, self.child_env, self.instance)
        read_fd, write_fd = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            pid = spawn(
                spec.argv,
                env,
                death_signal=signal.SIGKILL,
                core=slot.core,
                stdio=(null, write_fd, write_fd),
                user=spec.user,
                cwd=spec.cwd,
                oom_score_adj=WORKER_OOM_SCORE_ADJ,
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            os.close(null)
        proc = WorkerProcess(
            pid, pool.name, slot.index, slot.core, -1, pool.options(), pool.timeout
        )
        proc.command, proc.stop_signal, proc.output_fd = True, pool.stop_signal, read_fd
        proc.worker_id = exec_read(env["FARM_WORKER_ID"])  # as strays.worker_id_of reads it
        return self.watch(slot, proc)

    def watch(self, slot: Slot, proc: WorkerProcess) -> WorkerProcess:
        for fd in (proc.report_fd, proc.output_fd):
            if fd >= 0:
                os.set_blocking(fd, False)
                self.selector.register(fd, selectors.EVENT_READ, proc)
        self.by_pid[proc.pid] = proc
        slot.spawned += 1
        log.debug("worker %s (pid %d) started", proc.name, proc.pid, extra=proc.log_fields())
        return proc
