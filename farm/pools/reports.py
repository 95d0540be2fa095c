"""What comes back on a worker's pipes: a Python worker's reports, every worker's output.

A mixin of :class:`farm.supervisor.Supervisor`, beside farm.pools.workerstart,
which spawns the processes and registers their pipes with the supervisor's
selector. A Python worker writes JSON report lines on a pipe of its own
(farm.pools.workerproc). Every worker's stdout and stderr share another pipe,
read within a budget per process (farm.pools.outputlimit): what is over it is
dropped, and counted in a warning. A command worker's lines are logged with its
pool and slot, and so is a line a Python worker wrote past its logger (a job's
os.write, a C library's, a child program's); its own log records (its prints among
them), which follow its mark, are written on with nothing but their control
characters escaped (farm.logrelay).
A Python worker once wrote to the journal itself, out of the budget's reach: one
printing in a loop had journald drop the farm's warnings.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import time

from farm.logrelay import relay_lines
from farm.pools.outputlimit import OUTPUT_BURST, OUTPUT_RATE
from farm.pools.slots import WorkerProcess

__all__ = ["Reports", "READ_SIZE", "FLOOD_PAUSE"]

log = logging.getLogger("farm.supervisor")
output_log = logging.getLogger("farm.worker.output")

#: Bytes of output read at once: a flood is taken in few, large pieces.
READ_SIZE = 1 << 20
#: A process past its budget has its pipe read this long after the last read, not as soon
#: as it is readable: read as fast as `yes` writes, the supervisor spent a core on its
#: output, all of it dropped. The pipe fills meanwhile, and its writes wait: a flood runs
#: at READ_SIZE a pause (10 MB/s) at most, which costs the supervisor a few percent of a
#: core (counting lines takes ~3 ms a MiB); a process within its budget is never held.
FLOOD_PAUSE = 0.1
#: What a flooding process's pipe may hold (F_SETPIPE_SZ, as far as the system lets an
#: unprivileged user): a pause's worth, so each read takes a whole one.
FLOOD_PIPE_SIZE = READ_SIZE
#: Reads of a pipe at a process's end at most (a child it left may write on for ever).
LAST_READS = 16


class Reports:
    selector: selectors.BaseSelector
    by_pid: dict[int, WorkerProcess]
    # Drained command workers that ended, their group's output read on (farm.pools.strays).
    leftovers: list[WorkerProcess]

    def read_pipe(self, proc: WorkerProcess, fd: int) -> None:
        """The selector found ``fd`` of ``proc`` readable: its output, or its reports."""
        if fd == proc.output_fd:
            self.read_output(proc)
        else:
            self.read_report(proc)

    def read_report(self, proc: WorkerProcess) -> None:
        try:
            data = os.read(proc.report_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            proc.feed(data)
        else:
            self.close_report(proc)  # it is exiting; reap_workers will hear of it

    def read_output(self, proc: WorkerProcess) -> None:
        try:
            data = os.read(proc.output_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close_output(proc)
            return
        self.log_output(proc, data)
        if proc.out.limit.flooding and proc.output_resume is None:
            with contextlib.suppress(OSError):  # past the user's pipe allowance: as it is
                if fcntl.fcntl(proc.output_fd, fcntl.F_GETPIPE_SZ) < FLOOD_PIPE_SIZE:
                    fcntl.fcntl(proc.output_fd, fcntl.F_SETPIPE_SZ, FLOOD_PIPE_SIZE)
            self.selector.unregister(proc.output_fd)
            proc.output_resume = time.monotonic() + FLOOD_PAUSE

    def log_output(self, proc: WorkerProcess, data: bytes, *, final: bool = False) -> None:
        """A worker's stdout/stderr, as far as its budget goes: a command's a log line each,
        with its pool and slot; a Python worker's (log records it made itself) relayed.
        ``final``: its end, so what it had dropped is reported now."""
        now = time.monotonic()
        lines = proc.out.take(data, now, final=final)
        if lines and not proc.command:
            # What it wrote past its logger (a C library, a child) is logged as a command's.
            out = proc.out
            out.own_cut = relay_lines(
                lines,
                out.mark,
                lambda line, level: self.log_line(proc, line, level),
                continued=out.own_cut if out.continues else None,
                cut=out.cut,
            )
        for line in lines if proc.command else ():
            self.log_line(proc, line)
        self.report_drops(proc, now, final=final)

    def log_line(self, proc: WorkerProcess, line: str, level: int = logging.INFO) -> None:
        """A line of a worker's output as a record of the supervisor's, naming the worker
        (``level``: a Python worker's own record's, a piece of one cut at LONGEST_LINE)."""
        output_log.log(
            level,
            "worker %s (pid %d): %s",
            proc.name,
            proc.pid,
            line,
            extra={"function": proc.function, "slot": proc.slot, "worker_pid": proc.pid},
        )

    def tend_output(self) -> None:
        """The loop's step: read a flooding worker's pipe again once its pause is over, and
        say what a worker that flooded, then fell silent, dropped."""
        now = time.monotonic()
        for proc in [*self.by_pid.values(), *self.leftovers]:  # a drained wrapper's too
            if proc.output_resume is not None and now >= proc.output_resume:
                proc.output_resume = None
                self.selector.register(proc.output_fd, selectors.EVENT_READ, proc)
            self.report_drops(proc, now)

    def report_drops(self, proc: WorkerProcess, now: float, *, final: bool = False) -> None:
        dropped, span = proc.out.limit.drops_due(now, final=final)
        if dropped:
            log.warning(
                "worker %s (pid %d): %d lines of output dropped in %.1fs"
                " (more than %d at once or %g a second)",
                proc.name,
                proc.pid,
                dropped,
                span,
                OUTPUT_BURST,
                OUTPUT_RATE,
                extra=proc.log_fields(),
            )

    def close_pipes(self, proc: WorkerProcess) -> None:
        """At its end: what it wrote before exiting is still in its pipes (a command's last
        output, a Python worker's last report: why it could not boot, read before its
        exit's log), read; then they are closed."""
        self.close_output(proc)
        self.close_report(proc)

    def close_report(self, proc: WorkerProcess) -> None:
        if proc.report_fd < 0:
            return
        while True:
            try:
                data = os.read(proc.report_fd, 65536)
            except OSError:
                data = b""
            if not data:
                break
            proc.feed(data)
        self.selector.unregister(proc.report_fd)
        os.close(proc.report_fd)
        proc.report_fd = -1

    def close_output(self, proc: WorkerProcess) -> None:
        if proc.output_fd < 0:
            return
        for _ in range(LAST_READS):
            try:
                data = os.read(proc.output_fd, READ_SIZE)
            except OSError:
                data = b""
            if not data:
                break
            self.log_output(proc, data)
        self.log_output(proc, b"", final=True)
        if proc.output_resume is None:
            self.selector.unregister(proc.output_fd)
        proc.output_resume = None
        os.close(proc.output_fd)
        proc.output_fd = -1
