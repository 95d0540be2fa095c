"""A command pool's ``user`` (``farm up`` as root) cannot reach root's terminal.

Its processes joined a process group of their own, but stayed in the supervisor's session:
one run as another user could open /dev/tty, the terminal root started ``farm up`` in, and
push keystrokes into it (TIOCSTI) for root's shell to run, as su and sudo once allowed."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from tests.helpers import ROOT

NOBODY = 65534
PROBE = "if (exec 3<>/dev/tty) 2>/dev/null; then echo opened; else echo refused; fi"
SUPERVISOR = f"""
import fcntl, os, signal, sys, termios
from farm.commandspec import RunAs
from farm.pools.spawn import spawn

terminal, out_write = int(sys.argv[1]), int(sys.argv[2])
fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)  # a session leader (start_new_session)
null = os.open(os.devnull, os.O_RDONLY)
nobody = RunAs(name="nobody", uid={NOBODY}, gid={NOBODY}, groups=(), home="/")
child = spawn(
    ["/bin/sh", "-c", {PROBE!r}],
    {{"PATH": "/usr/bin:/bin"}},
    user=nobody,
    stdio=(null, out_write, out_write),
    death_signal=signal.SIGTERM,
)
os.waitpid(child, 0)
"""


def test_a_command_run_as_another_user_cannot_open_the_supervisors_terminal() -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a command as another user (CI runs as root)")
    _, terminal = pty.openpty()
    out_read, out_write = os.pipe()
    # A supervisor started in a terminal: the pty is its controlling one. Its own process
    # (not a fork of this one, which may run other tests' threads: Python 3.12 warns).
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(terminal), str(out_write)],
        pass_fds=(terminal, out_write),
        start_new_session=True,
        cwd=ROOT,
    )
    assert supervisor.wait(30) == 0
    os.close(out_write)
    said = os.read(out_read, 100).decode().strip()
    os.close(out_read)
    assert said == "refused", f"a command run as nobody {said} root's terminal"
