"""One supervised worker process: ``python -m farm.pools.workerproc --function NAME ...``.

The supervisor spawns this module once per slot and pins it (this process
pins nothing itself). It loads the target, serves it through
:class:`farm.Worker`, and tells the supervisor what it does through a pipe
(``--report-fd``), one JSON object a line, for what happens once or twice in its life::

    {"ev": "ready"}                       target loaded, about to connect
    {"ev": "recycle", "why": "..."}       it will exit after this job (max_jobs / max_rss_mb)
    {"ev": "boot_error", "why": "..."}    it cannot serve its target, and exits 3 (the why goes
                                          into the supervisor's log, `farm ps` and `farm restart`)
    {"ev": "exiting"}                     its loop has ended (drained, or recycled): what is
                                          left is Python's exit (a job's thread, atexit hooks)

Its stdout and stderr (its log, and what its jobs print) are a pipe the supervisor
reads, within a budget of lines (farm.pools.outputlimit). Its log's lines start with a
mark the supervisor gave it alone (``--mark-fd``), and the supervisor writes them on as
they are; what a job writes past the logger, which has no mark, is logged as a line of
the worker's output (farm.logrelay.relay_lines).

What it does job by job (the job in hand since when, jobs done, RSS) it writes
into its slot's shared-memory record (``--record-fd``, farm.pools.record), which
the supervisor reads on its own tick: no message, no wake-up per job.

With ``--kill-rss-mb`` a watchdog thread reads RSS while a job runs; past that
ceiling the job fails (WORK_FAIL: the server does not retry it, which would
only blow up another worker) and the process exits at once (see ``watch_rss``).

SIGTERM means drain: finish the job in hand, unregister, exit 0. Exit codes
are the supervisor's contract (farm.pools.exits): 3 = the target cannot be loaded
(a boot failure, backed off), 4 = recycled, 5 = killed past kill_rss_mb mid-job,
anything else = crashed.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from farm.logprints import capture_prints
from farm.logs import LOG_FORMATS, setup_logging
from farm.pools.exits import EXIT_BOOT_ERROR, EXIT_DRAINED, EXIT_RECYCLE, EXIT_RSS_KILLED
from farm.pools.record import RecordWriter
from farm.pools.spawn import exec_read

if TYPE_CHECKING:
    from farm.worker import Job, Worker

__all__ = ["main", "current_rss", "watch_rss"]

log = logging.getLogger("farm.pools.workerproc")
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: RSS is read after a job at most this often (seconds); max_rss_mb acts on the latest.
RSS_EVERY = 0.05
#: While a job runs, RSS is checked against kill_rss_mb this often (seconds). A job can
#: outgrow the ceiling by what it allocates in this time (or in one C call that holds
#: the GIL, which delays the check until it returns): a hard ceiling, not an exact one.
RSS_WATCH_EVERY = 0.1
#: The longest why a boot_error report carries (its JSON line stays under PIPE_BUF).
BOOT_ERROR_CHARS = 500
#: How long a supervised worker's server may be gone before the worker warns (seconds):
#: the supervisor restarts a job server that died at once, and warns of it itself; its
#: workers' two warnings each ("closed the connection", "unreachable") were 74 lines in
#: `journalctl -p warning` for one event on 37 workers. Said at INFO within it.
OUTAGE_GRACE = 10.0


def current_rss() -> int:
    """This process's resident set size in bytes (from /proc, without importing psutil)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Reporter:
    """Writes report lines to the supervisor; a gone supervisor means we stop too."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.lost = False

    def send(self, **event: Any) -> None:
        if self.fd is None or self.lost:
            return
        try:
            os.write(self.fd, json.dumps(event).encode() + b"\n")  # < PIPE_BUF: atomic
        except OSError:
            self.lost = True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m farm.pools.workerproc")
    ap.add_argument("--function", required=True)
    ap.add_argument("--target", required=True, help="module:function")
    ap.add_argument(
        "--serve", action="append", default=[], help="a function to register (default: --function)"
    )
    ap.add_argument("--slot", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=None, help="the core the supervisor pins us to")
    ap.add_argument("--server", action="append", default=[], help="HOST:PORT or unix:PATH")
    ap.add_argument("--timeout", type=int, default=None)
    ap.add_argument("--max-jobs", type=int, default=None)
    ap.add_argument("--max-rss-mb", type=int, default=None)
    ap.add_argument("--kill-rss-mb", type=int, default=None)
    ap.add_argument("--report-fd", type=int, default=None)
    ap.add_argument("--record-fd", type=int, default=None)
    ap.add_argument(
        "--mark-fd", type=int, default=None, help="a pipe holding what each log line starts with"
    )
    ap.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    ap.add_argument(
        "--journal",
        action="store_true",
        help="stderr reaches the journal (through the supervisor): mark each line's priority",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="load the target as a worker does, report ready or boot_error, and exit (farm check)",
    )
    ap.add_argument(
        "--last-boot-error",
        default="",
        help="why this slot's last process failed to boot: the same error is logged in one line",
    )
    ns = ap.parse_args(argv)
    # The supervisor writes names and text as their UTF-8 (spawn.exec_text), whatever the
    # locale's encoding: read back so, a name of this locale's read as it (a surrogate
    # for a byte that is not UTF-8: the wire's bytes as typed, as farm worker sends them).
    ns.function, ns.last_boot_error = exec_read(ns.function), exec_read(ns.last_boot_error)
    ns.serve = [exec_read(name) for name in ns.serve]
    return ns


def main(argv: list[str] | None = None) -> int:
    # First, before a slow import: `systemctl kill -s HUP farm` (every process of the unit)
    # or `pkill -HUP -f farm` meant to reload the supervisor killed every worker mid-job.
    # The supervisor starts its workers with SIGHUP ignored already (spawn's ``ignore``);
    # this is for a worker started by hand or by another process manager.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ns = parse_args(argv)
    # A pool's name may hold "%" (any function name the job server takes, Perl's and PHP's
    # included): in the %-style format it read as a field, and each of the worker's log
    # lines (a job's prints, its tracebacks) was lost to a "--- Logging error ---".
    named = ns.function.replace("%", "%%")
    setup_logging(
        role="worker",
        log_format=ns.log_format,
        text_format=f"%(asctime)s farm-worker {named}#{ns.slot}[%(process)d] "
        "%(levelname)s %(message)s",
        slot=ns.slot,
        function=ns.function,
        journal=True if ns.journal else None,
        mark=read_mark(ns.mark_fd),
    )
    capture_prints(logging.getLogger("farm.job"))  # after the handler took the real stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    # The supervisor's spawn set our death signal (SIGKILL) and pinned us before exec.
    from setproctitle import setproctitle

    where = f" cpu{ns.cpu}" if ns.cpu is not None else ""
    # Not a worker's title under --check: whatever counts the farm's workers by it must
    # not count a check's import beside a running farm.
    role = "check" if ns.check else "worker"
    setproctitle(f"farm: {role} {ns.function}#{ns.slot}{where}")
    reporter = Reporter(ns.report_fd)
    record = RecordWriter(ns.record_fd) if ns.record_fd is not None else None

    from farm.protocol.checks import check_sync_worker
    from farm.targets import NotCallable, load_failure, load_target, search_working_directory

    # Started with -P: only a directory others may not write, and not one removed since the
    # supervisor started (no module is left there; PYTHONPATH's and installed ones load).
    search_working_directory()
    try:
        fn = load_target(ns.target)
        from farm.worker import Worker
    except NotCallable as e:  # its traceback would only point into load_target
        log.error("cannot serve %s: %s; point target at one", ns.function, e)
        return boot_failed(reporter, str(e))
    except Exception as e:  # whatever the target's import raises is a boot failure
        # with the file and line: the traceback is ours alone
        why = boot_why(load_failure(e, ns.target))
        if why == ns.last_boot_error:
            # The slot's last try failed the same way, and its traceback is in the log: a
            # failing slot retries until fixed, and a traceback each time (a pool of 64, twice
            # a minute) buried the journal in copies of it.
            log.error(
                "cannot load %s for %s: %s (as on the last try; its traceback is logged there)",
                ns.target,
                ns.function,
                why,
            )
        else:
            log.error(
                "cannot load %s for %s: %s: %s",
                ns.target,
                ns.function,
                type(e).__name__,
                e,
                exc_info=True,  # a traceback to the import error; one record (farm.logs)
            )
        return boot_failed(reporter, why)
    try:  # as register() would refuse it, but before _recording wraps it in a plain function
        check_sync_worker(ns.function, fn)
    except TypeError as e:  # async def: every job would fail; `farm check` says so too
        log.error("cannot serve %s: %s", ns.function, e)
        return boot_failed(reporter, str(e))
    if ns.check:  # loaded as the pool's workers load it: that is all `farm check` asks
        reporter.send(ev="ready")
        return 0

    recycle: list[str] = []
    rss_read = [0.0, 0]  # when RSS was last read, and what it was
    # After a job, past max_rss_mb recycles; so does past kill_rss_mb without it (a
    # worker still past its ceiling after a job would fail the next one at once).
    rss_limited = ns.max_rss_mb is not None or ns.kill_rss_mb is not None
    in_hand: list[Job | None] = [None]  # the job the main thread runs, for watch_rss

    def after_job(job: Any) -> None:
        now = time.monotonic()
        # /proc is a few system calls: every job only where an RSS limit acts on it.
        if rss_limited or now - rss_read[0] >= RSS_EVERY:
            rss_read[:] = [now, current_rss()]
        rss = int(rss_read[1])
        if record is not None:
            record.ended(worker.jobs_done, rss)
        if ns.max_jobs is not None and worker.jobs_done >= ns.max_jobs:
            recycle.append(f"max_jobs {ns.max_jobs} reached")
        elif ns.max_rss_mb is not None and rss > ns.max_rss_mb * 1024 * 1024:
            recycle.append(f"RSS {rss // 2**20} MiB > max_rss_mb {ns.max_rss_mb}")
        elif ns.kill_rss_mb is not None and rss > ns.kill_rss_mb * 1024 * 1024:
            recycle.append(f"RSS {rss // 2**20} MiB > kill_rss_mb {ns.kill_rss_mb}")
        elif (calls := sys.modules.get("farm.executor.call")) and calls.recycle_requested:
            recycle.append(calls.recycle_requested)  # an Executor's max_tasks_per_child
        if recycle:
            reporter.send(ev="recycle", why=recycle[0])
            worker.stop()
        elif reporter.lost:
            worker.stop()  # the supervisor is gone

    client_id = f"farm:{ns.function}#{ns.slot}:{os.getpid()}"
    try:
        worker = Worker(ns.server or None, client_id=client_id, after_job=after_job)
        # Its hook is quick and ends the worker only through stop(), which sends the answer
        # first: the answer and the next grab leave in one write, as they did before the
        # hook ran after the send (one system call, and one read for the server, a job).
        worker.answer_before_hook = False
        worker.outage_grace = OUTAGE_GRACE
        watched = in_hand if ns.kill_rss_mb is not None else None
        for served in ns.serve or [ns.function]:
            worker.register(
                served, _recording(fn, record, watched, worker.servers), timeout=ns.timeout
            )
    except (ValueError, TypeError) as e:
        log.error("cannot serve %s: %s", ns.function, e)
        return boot_failed(reporter, str(e))
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop())
    # SA_RESTART: the drain's SIGTERM (scale-down, deploy, reload, stop) must not break the
    # job in hand. Without it a C library's blocking read, write or wait in the job failed
    # with EINTR (Python's own calls retry; many C ones do not), so a deploy failed jobs.
    # The loop still wakes at once: its selector watches the signal wake-up fd.
    signal.siginterrupt(signal.SIGTERM, False)
    if ns.kill_rss_mb is not None:
        rss = current_rss()
        if rss > ns.kill_rss_mb * 1024 * 1024:
            log.warning(
                "RSS %d MiB is past kill_rss_mb %d before any job: every job will fail;"
                " raise kill_rss_mb (and max_rss_mb)",
                rss // 2**20,
                ns.kill_rss_mb,
            )
        threading.Thread(
            target=watch_rss, args=(worker, in_hand, ns.kill_rss_mb), name="rss-watch", daemon=True
        ).start()
    reporter.send(ev="ready")
    worker.work()
    # Drained: a process still here past its grace is held by what its code left (a job's
    # thread that is no daemon, an atexit hook), not deaf to SIGTERM (farm.pools.exits).
    reporter.send(ev="exiting")
    return EXIT_RECYCLE if recycle else EXIT_DRAINED


def read_mark(fd: int | None) -> str:
    """The mark the supervisor gave this process's log lines (``--mark-fd``), its pipe
    closed, so no child of a job holds it; "" without one (each line is then logged as
    output of the worker's, none as its own record)."""
    if fd is None:
        return ""
    try:
        with os.fdopen(fd, "rb") as pipe:
            return pipe.read(256).decode("ascii", "replace").strip()
    except OSError:
        return ""


def boot_failed(reporter: Reporter, why: str) -> int:
    """Tell the supervisor why the target cannot be served, for the log line of this exit,
    `farm ps --json` and `farm restart`/`farm reload` (the traceback is in our own log
    alone); return the boot failure's exit code."""
    reporter.send(ev="boot_error", why=boot_why(why))
    return EXIT_BOOT_ERROR


def boot_why(why: str) -> str:
    """A boot failure's why as reported: one line, at most ``BOOT_ERROR_CHARS``."""
    why = " ".join(why.split())
    if len(why) > BOOT_ERROR_CHARS:
        why = why[: BOOT_ERROR_CHARS - 3] + "..."
    return why


def watch_rss(worker: Worker, in_hand: list[Job | None], kill_rss_mb: int) -> None:
    """Kill this worker once its RSS passes ``kill_rss_mb`` while a job runs.

    A thread of its own, because the job's code holds the main thread until it
    returns. Every RSS_WATCH_EVERY seconds, while a job is in hand: past the
    ceiling, fail that job (WORK_FAIL, sent before the connection drops, so the
    server fails it for its client instead of retrying it) and ``os._exit`` at
    once: nothing of the job's code runs on, nor any cleanup that could allocate.
    The check needs the GIL, so a C call holding it delays the check until it returns.
    """
    ceiling = kill_rss_mb * 1024 * 1024
    while True:
        time.sleep(RSS_WATCH_EVERY)
        job = in_hand[0]
        if job is None:
            continue
        rss = current_rss()
        if rss <= ceiling:
            continue
        why = f"RSS {rss // 2**20} MiB over kill_rss_mb {kill_rss_mb}; worker exits"
        # Not sent while the job is still in hand: its server is gone (the server hands the
        # job out again, nothing to do about that), exit all the same. Not sent and no
        # longer in hand: it ended just now and after_job recycles this worker.
        sent = worker.abandon(job, why)  # logs "job HANDLE failed: WHY"
        if sent or in_hand[0] is job:
            if not sent:
                log.error(
                    "job %s: %s (its job server is gone, no WORK_FAIL)",
                    job.handle,
                    why,
                    extra={"function": job.function, "job": job.handle},
                )
            os._exit(EXIT_RSS_KILLED)


def _recording(
    fn: Callable[[Any], Any],
    record: RecordWriter | None,
    in_hand: list[Job | None] | None,
    servers: list[str],
) -> Callable[[Any], Any]:
    """Wrap the target so the supervisor knows which job runs since when and from which of
    ``servers``, and ``watch_rss`` which job is in hand (``in_hand[0]``, cleared before its
    answer)."""
    if record is None and in_hand is None:
        return fn
    place = {addr: i + 1 for i, addr in enumerate(servers)}

    @functools.wraps(fn)  # a job's one line names the target (farm.workeranswer.target_of)
    def run(job: Job) -> Any:
        if record is not None:
            record.started(job.handle, place.get(job.server, 0))
        if in_hand is None:
            return fn(job)
        in_hand[0] = job
        try:
            return fn(job)
        finally:
            in_hand[0] = None

    return run


if __name__ == "__main__":
    sys.exit(main())
