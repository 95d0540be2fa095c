"""farm.pools.strays' rule, on real processes: an adopted process whose worker still runs
is left to it, one whose worker ended gets its stop signal, and one that ignores it gets
SIGKILL at its deadline; one that names no worker of the farm's, a child the process had
before it adopted any, and a member of a drained group already watched are never signalled.

The sweep looks at every child of the process it runs in, so it runs in a fresh
interpreter whose only children are the ones made here, never in pytest's.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = r"""
import json, os, signal, subprocess, time
from types import SimpleNamespace
from farm.pools import strays
from farm.pools.slots import WorkerProcess

assert strays.become_subreaper()

made = []

def detach(worker_id, ignore_term=False, leader=False):
    # a double fork: the middle process ends, so the grandchild is adopted by this one
    trap = "trap '' TERM; " if ignore_term else ""
    run = "exec setsid sleep 300" if leader else "exec sleep 300"
    out = subprocess.run(
        ["sh", "-c", f"( {trap}{run} ) >/dev/null 2>&1 & echo $!"],
        env={**os.environ, **({"FARM_WORKER_ID": worker_id} if worker_id else {})},
        capture_output=True, text=True, check=True,
    )
    pid = int(out.stdout)
    made.append(pid)
    deadline = time.monotonic() + 10
    # adopted, and sleeping: the trap and setsid, run before the exec of sleep, may come
    # after the adoption (a SIGTERM then ended the one meant to ignore it)
    while pid not in strays.children() or comm(pid) != "sleep":
        assert time.monotonic() < deadline, "never adopted"
        time.sleep(0.01)
    return pid

def comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()

class Farm(strays.Strays):
    def __init__(self):
        # what the sweep reads of a Config: the farm's grace, and no pools of that name
        grace = SimpleNamespace(graceful_timeout=0.5)
        self.config = SimpleNamespace(supervisor=grace, functions={})
        self.by_pid, self.leftovers, self.stopping, self.grace = {}, [], False, 0.5
        class Server:
            pid = 0
        self.server = Server()
        self.adopt_orphans()

inherited = subprocess.Popen(["sleep", "300"])  # before `farm up` ran: not the farm's
made.append(inherited.pid)
try:
    farm = Farm()
    worker = WorkerProcess(os.getpid(), "rev", 0, 0, -1, ())
    worker.worker_id = "farm:rev#0:3"
    farm.by_pid[worker.pid] = worker
    kept = detach("farm:rev#0:3")
    ended = detach("farm:rev#0:2")
    anonymous = detach(None)
    deaf = detach("farm:gone#1:0", ignore_term=True)
    grouped = detach("farm:cmd#0:0", leader=True)  # leads a drained group watch_group has
    farm.leftovers.append(WorkerProcess(grouped, "cmd", 0, 0, -1, ()))
    farm.sweep_strays(time.monotonic(), stopping=True)
    swept = sorted(farm.strays)
    statuses = {}
    deadline = time.monotonic() + 20
    while len(statuses) < 2 and time.monotonic() < deadline:
        farm.sweep_strays(time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            statuses[pid] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1
            farm.stray_reaped(pid)
        time.sleep(0.01)
    others = (kept, anonymous, inherited.pid, grouped)
    alive = [os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in others]
    print(json.dumps({
        "swept": swept, "ended": ended, "anonymous": anonymous, "deaf": deaf,
        "statuses": {str(k): v for k, v in statuses.items()}, "alive": alive,
        "left": sorted(farm.strays),
    }))
finally:
    for pid in made:  # none may outlive the test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
"""


def test_adopted_processes_are_stopped_once_their_worker_ended() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=40,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["swept"] == sorted([seen["ended"], seen["deaf"]])
    # a running worker's, one naming no worker, an inherited child, a watched group's
    assert seen["alive"] == [True, True, True, True]
    assert seen["statuses"] == {
        str(seen["ended"]): 15,  # SIGTERM, the default stop signal
        str(seen["deaf"]): 9,  # it ignored SIGTERM: SIGKILL at its deadline
    }
    assert seen["left"] == []
