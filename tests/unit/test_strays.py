"""farm.pools.strays' rule, on real processes: an adopted process whose worker still runs
is left to it, one whose worker ended (or that does not say) gets its stop signal, and one
that ignores it gets SIGKILL at its deadline.

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

def detach(worker_id, ignore_term=False):
    # a double fork: the middle process ends, so the grandchild is adopted by this one
    trap = "trap '' TERM; " if ignore_term else ""
    out = subprocess.run(
        ["sh", "-c", f"( {trap}exec sleep 300 ) >/dev/null 2>&1 & echo $!"],
        env={**os.environ, **({"FARM_WORKER_ID": worker_id} if worker_id else {})},
        capture_output=True, text=True, check=True,
    )
    pid = int(out.stdout)
    while pid not in strays.children():
        time.sleep(0.01)
    return pid

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

farm = Farm()
worker = WorkerProcess(os.getpid(), "rev", 0, 0, -1, ())
worker.worker_id = "farm:rev#0:3"
farm.by_pid[worker.pid] = worker
kept = detach("farm:rev#0:3")
ended = detach("farm:rev#0:2")
anonymous = detach(None)
deaf = detach("farm:gone#1:0", ignore_term=True)
now = time.monotonic()
farm.sweep_strays(now)
swept = sorted(farm.strays)
statuses = {}
deadline = time.monotonic() + 20
while len(statuses) < 3 and time.monotonic() < deadline:
    farm.sweep_strays(time.monotonic())
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid:
        statuses[pid] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1
        farm.stray_reaped(pid)
    time.sleep(0.01)
kept_alive = os.waitpid(kept, os.WNOHANG) == (0, 0)
os.kill(kept, signal.SIGKILL)
print(json.dumps({
    "swept": swept, "kept": kept, "ended": ended, "anonymous": anonymous, "deaf": deaf,
    "statuses": {str(k): v for k, v in statuses.items()}, "kept_alive": kept_alive,
    "left": sorted(farm.strays),
}))
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
    assert seen["swept"] == sorted([seen["ended"], seen["anonymous"], seen["deaf"]])
    assert seen["kept_alive"], "a process detached from a running worker was stopped"
    assert seen["statuses"] == {
        str(seen["ended"]): 15,  # SIGTERM, the default stop signal
        str(seen["anonymous"]): 15,
        str(seen["deaf"]): 9,  # it ignored SIGTERM: SIGKILL at its deadline
    }
    assert seen["left"] == []
