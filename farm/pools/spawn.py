"""One way to start a child of the supervisor: fork, settle the child, then exec.

``posix_spawn`` gives the child no hook before it runs, so the death signal was
set by the child's own code, tens of milliseconds later: a supervisor killed in
that window left orphans. Here the forked child, before ``exec``, joins its own
process group, asks Linux for a death signal and checks that its parent is
still the supervisor (the parent may have died before the request), and pins
itself to its core -- so none of the worker's own code ever runs unpinned or
unwatched. Python workers and command pools (any executable) start the same
way; a command may also get a user (the death signal is set *after* the change
of credentials, which clears it), a working directory and its stdout/stderr
on the supervisor's pipe. Every descriptor but 0-2 and those named in ``keep``
is closed before exec, whatever the supervisor inherited. The supervisor's only
other threads are its metrics endpoint's (farm.pools.metricsendpoint); the child makes
only system calls until exec (no logging, no import), so no lock one of them
held at the fork is ever needed. The supervisor is small, so forking it is cheap.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Collection, Mapping, Sequence

from farm.commandspec import RunAs
from farm.lifetime import PR_SET_PDEATHSIG, prctl

__all__ = [
    "EXIT_EXEC_FAILED",
    "EXEC_FAILED_PREFIX",
    "exec_text",
    "exec_read",
    "WORKER_OOM_SCORE_ADJ",
    "group_alive",
    "python_module",
    "spawn",
    "set_death_signal",
]

#: The exit code of a child that could not take its user or directory or exec its program
#: (as a shell's "cannot execute"); its one line of why on fd 2 starts with EXEC_FAILED_PREFIX.
EXIT_EXEC_FAILED = 127
EXEC_FAILED_PREFIX = "farm: cannot "

#: What a worker's /proc/self/oom_score_adj is raised to before exec, so that the kernel's
#: OOM killer takes a worker before the job server or the supervisor: a worker lost is
#: one job requeued and a slot the supervisor fills again, the server lost is every
#: connection, and the supervisor lost is the farm. The kernel's score is a process's share
#: of memory in thousandths plus this: +500, not +1000, so that a server holding over half
#: the memory more than a worker does is still the one taken (a worker killed then would
#: free little, and the next one be killed, and the next). Raising needs no privilege.
WORKER_OOM_SCORE_ADJ = 500

# What Python ignores in itself at startup (EPIPE rather than death on a closed pipe, EFBIG
# rather than death past RLIMIT_FSIZE): an ignored signal stays ignored across exec, and a
# shell cannot even trap one it was started ignoring, so a command worker's `yes | head`
# would print "Broken pipe" errors instead of ending quietly. subprocess's restore_signals.
_PYTHON_IGNORES = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)
_MAX_FD = max(256, os.sysconf("SC_OPEN_MAX"))
# Python 3.12 and later warn of every fork in a process with threads ("may lead to
# deadlocks in the child"): the metrics endpoint's thread made that one line in the
# supervisor's log for each worker started, wherever warnings are shown (PYTHONWARNINGS,
# -X dev). It does not apply here (this module's docstring): the child makes system calls
# alone until exec. Only the forks of this module are let through.
_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded"
warnings.filterwarnings("ignore", _FORK_WARNING, DeprecationWarning, r"farm\.pools\.spawn\Z")


def exec_text(text: str) -> str:
    """``text`` as an argument or environment value whose bytes, as exec encodes them
    (``os.fsencode``: the locale's encoding), are its UTF-8, the wire's: a function name is
    bytes to the job server. Under a locale that is not UTF-8 (ISO-8859-1) a pool named 中文
    failed the job server's exec (UnicodeEncodeError), so the farm did not start, and cmdé
    reached a command's $FARM_FUNCTION as its Latin-1 byte, a name no client sends.
    Unchanged under a UTF-8 locale; a child reads it back with ``exec_read``."""
    try:
        return os.fsdecode(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a surrogate no bytes made (a traceback's "\ud800"):
        # shown escaped rather than raised in the supervisor, before the fork
        return os.fsdecode(text.encode("utf-8", "backslashreplace"))


def exec_read(arg: str) -> str:
    """What ``exec_text`` gave, as the child reads it from its ``sys.argv``."""
    return os.fsencode(arg).decode("utf-8", "surrogateescape")


def python_module(module: str) -> list[str]:
    """The command that runs ``module`` in a fresh interpreter, as the job server and the
    Python workers start. ``-P``: nothing from the working directory on ``sys.path``, where
    another user may have put a module of the same name (farm.targets.search_working_directory
    decides). ``-s`` where this interpreter keeps the user's site directory out (``-s``,
    ``-I`` or PYTHONNOUSERSITE: ``sys.flags.no_user_site``): the children imported a user's
    ~/.local packages that `python -s -m farm up` ran without, and the config check, which
    searches this interpreter's path, did not see. -I's -E is not passed on: the children
    read the PYTHONPATH they are given (farm.targets.trusted_pythonpath)."""
    return [sys.executable, "-P", *(["-s"] if sys.flags.no_user_site else []), "-m", module]


def set_death_signal(sig: int) -> None:
    """Linux sends ``sig`` to this process when its parent dies (cleared by setuid)."""
    if prctl is not None:  # looked up in the parent, at import (farm.lifetime)
        prctl(PR_SET_PDEATHSIG, sig)


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, as another user (a pool's ``user``)
        return True
    return True


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    death_signal: int = signal.SIGKILL,
    core: int | None = None,
    keep: Collection[int] = (),
    stdio: tuple[int, int, int] | None = None,
    user: RunAs | None = None,
    cwd: str | None = None,
    ignore: Collection[int] = (),
    block: Collection[int] = (),
    oom_score_adj: int | None = None,
) -> int:
    """Start ``argv`` (``argv[0]`` an absolute path) as a watched child; its pid.

    The child keeps 0-2 (or gets ``stdio`` as its stdin, stdout, stderr) and the
    descriptors in ``keep``; all others are closed. ``user`` and ``cwd`` are taken
    before the death signal is set. The signals in ``ignore`` are ignored from before exec
    (an ignored signal stays ignored across it), so from the program's first instruction;
    SIGPIPE and SIGXFSZ, which Python ignores, get their default action back. The signals
    in ``block`` are blocked from before exec (the mask, too, is kept across it): the
    program unblocks them once it handles them, and one sent meanwhile waits for that. They
    are blocked here around the fork, not in the child: one sent as ``spawn`` returns came
    to the child's copy of the supervisor's handlers, and was lost.
    ``oom_score_adj`` raises the child's own (never lowers it), before ``user`` is taken.
    Raises OSError when the fork fails; a child that cannot take its user, directory or
    exec writes why on its fd 2 and ends with ``EXIT_EXEC_FAILED`` (127).
    """
    parent = os.getpid()
    kept = sorted(set(keep))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, block) if block else None
    try:
        pid = os.fork()
    finally:
        if held is not None and os.getpid() == parent:  # the child keeps them blocked
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if pid:
        return pid
    step = "start"  # what the child was doing, for its one line if that fails
    try:  # the child: nothing here may raise into the supervisor's code
        if user is None:
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor, which decides
        else:
            # A session of its own, so no controlling terminal: in the supervisor's, a
            # command run as another user could open /dev/tty (the terminal root started
            # `farm up` in) and push keystrokes into it (TIOCSTI) for root's shell to run.
            os.setsid()
        signal.set_wakeup_fd(-1)  # a signal before exec must not wake the supervisor's loop
        for sig in _PYTHON_IGNORES:
            signal.signal(sig, signal.SIG_DFL)
        for sig in ignore:
            signal.signal(sig, signal.SIG_IGN)
        if stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)  # dup2 leaves the copy inheritable
        _close_others(kept)
        if oom_score_adj is not None:
            # Before setuid: a process that changed its user is no longer dumpable, and
            # its /proc/self files become root's, not its own to write.
            _raise_oom_score(oom_score_adj)
        if user is not None:  # groups first: they need the privileges setuid drops
            step = f"run as {user.name}"
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
        if cwd is not None:
            step = f"change to directory {cwd}"
            os.chdir(cwd)
        set_death_signal(death_signal)  # after setuid, which would clear it
        if os.getppid() != parent:  # it died before the request took hold
            os._exit(1)
        if core is not None:
            try:
                os.sched_setaffinity(0, {core})
            except OSError:
                pass  # a core taken away since the config was read: run unpinned, not never
        step = f"exec {argv[0]}"
        os.execve(argv[0], list(argv), dict(env))
    except BaseException as e:
        # The only word of why (no shebang, a missing interpreter, a denied directory): to
        # fd 2, which is the worker's output the supervisor quotes. os.write alone, no
        # logging after fork; a failing write changes nothing.
        try:
            why = f"[Errno {e.errno}] {e.strerror}" if isinstance(e, OSError) else repr(e)
            line = f"{EXEC_FAILED_PREFIX}{step}: {why}\n"  # the path once, in step
            os.write(2, line.encode(errors="backslashreplace"))
        except BaseException:
            pass
    os._exit(EXIT_EXEC_FAILED)


def _raise_oom_score(value: int) -> None:
    """The forked child's oom_score_adj raised to ``value``; one set higher (the unit's
    OOMScoreAdjust=) is kept. System calls alone; where /proc cannot be written the child
    runs on with what it has."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_RDWR)
    except OSError:
        return
    try:
        if int(os.read(fd, 32) or b"0") < value:
            os.pwrite(fd, b"%d" % value, 0)
    except (OSError, ValueError):
        pass
    finally:
        os.close(fd)


def _close_others(keep: Sequence[int]) -> None:
    """Close every descriptor above 2 except ``keep`` (sorted)."""
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, _MAX_FD)
