"""A command pool's ``user`` (``farm up`` as root) cannot reach root's terminal.

Its processes joined a process group of their own, but stayed in the supervisor's session:
one run as another user could open /dev/tty, the terminal root started ``farm up`` in, and
push keystrokes into it (TIOCSTI) for root's shell to run, as su and sudo once allowed."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import termios

import pytest

from farm.commandspec import RunAs
from farm.pools.spawn import spawn

NOBODY = 65534
PROBE = "if (exec 3<>/dev/tty) 2>/dev/null; then echo opened; else echo refused; fi"


def test_a_command_run_as_another_user_cannot_open_the_supervisors_terminal() -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a command as another user (CI runs as root)")
    _, terminal = pty.openpty()
    out_read, out_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a supervisor started in a terminal: the pty is its controlling one
        try:
            os.setsid()
            fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
            null = os.open(os.devnull, os.O_RDONLY)
            nobody = RunAs(name="nobody", uid=NOBODY, gid=NOBODY, groups=(), home="/")
            child = spawn(
                ["/bin/sh", "-c", PROBE],
                {"PATH": "/usr/bin:/bin"},
                user=nobody,
                stdio=(null, out_write, out_write),
                death_signal=signal.SIGTERM,
            )
            os.waitpid(child, 0)
        finally:
            os._exit(0)
    os.close(out_write)
    os.waitpid(pid, 0)
    said = os.read(out_read, 100).decode().strip()
    os.close(out_read)
    assert said == "refused", f"a command run as nobody {said} root's terminal"
