"""What comes back on a worker's pipe: a Python worker's reports, a command's output.

A mixin of :class:`farm.supervisor.Supervisor`, beside farm.pools.lifecycle,
which spawns the processes and registers their pipes with the supervisor's
selector. A Python worker writes JSON report lines (farm.pools.workerproc); a
command worker's stdout and stderr share the pipe, and each line of it is
logged with its pool and slot, within a budget per process
(farm.pools.outputlimit): what is over it is dropped, and counted in a warning.
"""

from __future__ import annotations

import logging
import os
import selectors
import time

from farm.pools.outputlimit import OUTPUT_BURST, OUTPUT_RATE
from farm.pools.slots import WorkerProcess

__all__ = ["Reports"]

log = logging.getLogger("farm.supervisor")
output_log = logging.getLogger("farm.worker.output")


class Reports:
    selector: selectors.BaseSelector
    by_pid: dict[int, WorkerProcess]

    def read_report(self, proc: WorkerProcess) -> None:
        try:
            data = os.read(proc.report_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.take_report(proc, data)
        if not data:
            self.close_report(proc)  # it is exiting; reap_workers will hear of it

    def take_report(self, proc: WorkerProcess, data: bytes) -> None:
        """A worker's pipe's bytes (b"": its end): a command's output logged, else reports."""
        if proc.command:
            self.log_output(proc, proc.output(data, final=not data), final=not data)
        elif data:
            proc.feed(data)

    def log_output(self, proc: WorkerProcess, lines: list[str], *, final: bool = False) -> None:
        """A command worker's stdout/stderr, a log line each, with its pool and slot, as far
        as its budget goes; ``final``: its end, so what it had dropped is reported now."""
        now = time.monotonic()
        for line in lines:
            proc.note_output(line)  # every line, dropped or not: its end's log quotes the last
            if proc.output_limit.admit(now):
                output_log.info(
                    "worker %s (pid %d): %s",
                    proc.name,
                    proc.pid,
                    line,
                    extra={"function": proc.function, "slot": proc.slot, "worker_pid": proc.pid},
                )
        self.report_drops(proc, now, final=final)

    def report_dropped_output(self) -> None:
        """The loop's step: say what a worker that flooded, then fell silent, dropped."""
        now = time.monotonic()
        for proc in self.by_pid.values():
            if proc.command:
                self.report_drops(proc, now)

    def report_drops(self, proc: WorkerProcess, now: float, *, final: bool = False) -> None:
        dropped, span = proc.output_limit.drops_due(now, final=final)
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

    def close_report(self, proc: WorkerProcess) -> None:
        if proc.report_fd >= 0:
            # What it wrote before exiting is still in the pipe: a command's last output, a
            # Python worker's last report (why it could not boot, read before its exit's log).
            while True:
                try:
                    data = os.read(proc.report_fd, 65536)
                except OSError:
                    data = b""
                self.take_report(proc, data)
                if not data:
                    break
            self.selector.unregister(proc.report_fd)
            os.close(proc.report_fd)
            proc.report_fd = -1
