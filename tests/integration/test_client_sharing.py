"""farm.Client shared where it should not be: across fork() (gunicorn --preload,
multiprocessing's fork), and across threads."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT
from tests.helpers.servers import Server
from tests.helpers.serving import reverse, serving

FORK_PROGRAM = """
import os, sys
import farm

c = farm.Client(sys.argv[1])
assert c.call("reverse", "parent") == b"tnerap"
unserved = c.submit("nobody.serves.this", "x")  # in flight across the fork, never answered

def calls(who):
    for i in range(100):
        sent = f"{who}-{i}"
        got = c.call("reverse", sent, timeout=10)
        assert got == sent[::-1].encode(), (sent, got)

pid = os.fork()
if pid == 0:
    try:
        c.wait(unserved, 5)
    except farm.ServerUnavailable as exc:  # not a Timeout: its reply goes to the parent
        assert "forked" in str(exc), exc
    calls("child")
    c.close()  # the child's copies only: the parent's connection stays registered
    print("child done", flush=True)
    os._exit(0)
calls("parent")
_, status = os.waitpid(pid, 0)
closer = os.fork()
if closer == 0:
    c.close()  # its first use: unregistering the sockets from the shared epoll muted the parent
    os._exit(0)
os.waitpid(closer, 0)
calls("parent-after")
c.abandon(unserved)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
print("parent done", flush=True)
"""


def test_a_forked_child_gets_connections_of_its_own(farm_server: Server) -> None:
    # gunicorn --preload: a Client used in the master, then every worker forked from it.
    # The child wrote on the parent's sockets and both read each other's replies (calls
    # timed out on both sides, or the parent's connection was dropped as "went away").
    with serving(farm_server.addr, {"reverse": reverse}):
        run = subprocess.run(
            [sys.executable, "-c", FORK_PROGRAM, farm_server.addr],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == ["child done", "child exit 0", "parent done"], (
        run.stdout,
        run.stderr,
    )
