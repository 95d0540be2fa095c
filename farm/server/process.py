"""The server process set up as gearmand sets up its own: the descriptor limit fitted to
--max-connections, the log (and SIGHUP opening it again), and ``-d``'s detaching; what
it tells `farm up` while it replays its store (``ReplayProgress``), and a graceful stop
asked before it serves (``take_early_stop``). Split off ``farm.server.app``, which runs
them around its listeners.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from farm.logs import reopen_log_file, setup_logging
from farm.net import parse_address
from farm.server.options import ServerOptions
from farm.server.settings import FD_MARGIN, log_level

__all__ = [
    "PROGRESS_EVERY",
    "ReplayProgress",
    "StoppedEarly",
    "detach",
    "detached",
    "fit_fd_limit",
    "raise_soft_limit",
    "reopen_log",
    "setup_server_logging",
    "take_early_stop",
    "title_address",
]

log = logging.getLogger("farm.server")

#: Seconds between two lines of replay progress to `farm up` (ReplayProgress).
PROGRESS_EVERY = 0.5


class StoppedEarly(SystemExit):
    """A graceful stop (SIGUSR1) asked before the server's loop handles it: the server
    ends at once, as it would with nothing running. A SystemExit: it may come in any code
    of the start, and no ``except Exception`` keeps it, nor an event loop's callback
    (asyncio and uvloop log any other BaseException there and run on)."""


def _stop_early(signum: int, frame: object) -> None:
    raise StoppedEarly


def take_early_stop() -> None:
    """SIGUSR1 ends the server with StoppedEarly until its loop takes the signal over
    (Server.serve). `farm up` stops the server it started with SIGUSR1 (a Ctrl-C, a
    ``systemctl stop`` at once), and at Python's default that killed it: the journal said
    "job server was killed by SIGUSR1". `farm up` starts it with SIGUSR1 blocked from
    before exec (the interpreter's start, the imports), so one sent then is taken here."""
    signal.signal(signal.SIGUSR1, _stop_early)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def fit_fd_limit(options: ServerOptions) -> None:
    """Lift the soft descriptor limit toward --max-connections and the headroom (what is
    open now and FD_MARGIN; as gearmand's -f does), never past hard; where the hard limit
    is lower, lower --max-connections to fit: otherwise TCP peers could take every
    descriptor, the share kept for the Unix socket's peers with them."""
    # What it holds now and its margin: a fixed 64 left a limit of 64 one connection, where
    # an idle server holds about 23 (`farm up` then said ready, 3 of 4 workers refused).
    headroom = _open_now() + FD_MARGIN
    wanted = options.max_connections + headroom
    soft, _ = raise_soft_limit(wanted)
    if soft != -1 and soft < wanted:
        fits = max(1, soft - headroom)
        log.warning(
            "the descriptor limit is %d: --max-connections lowered from %d to %d (raise"
            " LimitNOFILE= or ulimit -n)",
            soft,
            options.max_connections,
            fits,
        )
        options.max_connections = fits


def raise_soft_limit(wanted: int) -> tuple[int, int]:
    """The soft descriptor limit raised toward ``wanted``, never past the hard one (the
    processes started after inherit it): the server's own (``fit_fd_limit``) and `farm
    up`'s for its supervisor and workers (farm.pools.fdbudget). (soft, hard) after, -1 for
    no limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # a limit the kernel caps lower (fs.nr_open)
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    unlimited = resource.RLIM_INFINITY
    return (-1 if soft == unlimited else soft), (-1 if hard == unlimited else hard)


def _open_now() -> int:
    """Descriptors this process holds (its listing's own left out)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:  # no /proc: what a process started by `farm up` holds, about
        return 8


def reopen_log() -> None:
    """SIGHUP: open the log file again (logrotate moved it), as gearmand does."""
    try:
        reopened = reopen_log_file()
    except OSError as exc:
        log.error("SIGHUP: cannot open the log file again: %s; logging on to the old one", exc)
        return
    if reopened is None:
        log.info("SIGHUP: no log file to open again (logging to standard error); running on")
    else:
        log.info("SIGHUP: log file %s opened again", reopened)


def setup_server_logging(options: ServerOptions) -> None:
    level = log_level(options.verbose)
    fmt = "%(asctime)s farm-server[%(process)d] %(levelname)s %(message)s"
    if options.log_file == "none":
        logging.basicConfig(level=logging.CRITICAL + 1)
        return
    setup_logging(
        role="server",
        log_format=options.log_format,
        level=level,
        text_format=fmt,
        filename=None if options.log_file == "stderr" else options.log_file,
    )


def detach() -> int:
    """gearmand's -d. The starting process waits until the server listens (then exits 0)
    or ends (then exits with its code), so an init script sees a server that could not
    start; the server goes on in a session of its own. Returns the pipe it says so on."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid:
        os.close(writer)
        with os.fdopen(reader, "rb") as word:
            if word.read() == b"ok":
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code or 1)  # killed by signal N: 128 + N
    os.close(reader)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    return writer


def detached(ready: int) -> None:
    """Listening: the starting process may exit, and stdout and stderr (its terminal, which
    showed any start-up error) go to /dev/null (logs go to --log-file)."""
    os.write(ready, b"ok")
    os.close(ready)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


class ReplayProgress:
    """Lines to `farm up`'s pipe (``--progress-fd``) while the store is replayed, at most
    every PROGRESS_EVERY seconds: the supervisor extends systemd's start timeout on each
    (EXTEND_TIMEOUT_USEC), so a large store is not killed at TimeoutStartSec and a server
    that hangs, which writes none, still is."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.last = time.monotonic()
        if fd is not None:
            try:
                os.set_blocking(fd, False)  # a supervisor that does not read must not stop us
            except OSError:
                self.fd = None

    def tell(self, count: int) -> None:
        now = time.monotonic()
        if self.fd is None or now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        try:
            os.write(self.fd, b"%d\n" % count)
        except OSError:  # full (the next line says as much) or closed: replay goes on
            pass

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def title_address(options: ServerOptions) -> str:
    """``:PORT`` of the first TCP listener (-L may move it off -p's), else the Unix socket:
    the process title's."""
    if options.listen:
        return f":{parse_address(options.listen[0]).port}"
    return options.unix[0] if options.unix else f":{options.port}"
