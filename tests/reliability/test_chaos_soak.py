"""A bounded chaos soak of `farm up`: what docs/operations.md, server.md and executor.md
promise while clients keep working and the farm is hurt in every way an operator or the
kernel may hurt it.

Three clients run the whole time: background submits to a durable store (`farm.Client`),
foreground calls with a timeout (`farm.Client`) and calls through `farm.Executor`. Meanwhile,
in a fixed order with seeded choices (seed 0; ``FARM_CHAOS_SEED`` picks another, so a failure
can be run again): `kill -9` of workers, a worker SIGSTOPped past its function's `timeout`,
`farm scale` up and down, `farm reload` of a changed file, `kill -9` of the job server, and a
full `farm stop` and `farm up`. Then:

* every background job the server acknowledged ran at least once (the store kept those the
  server's death and the stop caught);
* every foreground call and every Executor call ended in its result or in an error the docs
  name for such a case, and none waited past its timeout;
* the stopped worker was killed and replaced, and no job is left running (admin `status`);
* the pools run what the reloaded file says, the supervisor never died, and no process of
  the farm is left once `farm up` has exited.

The chaos hunt this was cut from (December 2026: nine seeded runs of up to 30 harms each,
PHP's GearmanClient among the clients, and more harms: the server SIGSTOPped, killed during a
reload, a stop or a burst of background submits, the supervisor SIGKILLed or paused) found
none of these promises broken.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import farm
from farm.client.admin import admin_query
from farm.protocol.admin import parse_status
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.streams import running
from tests.helpers.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(150)]

SEED = int(os.environ.get("FARM_CHAOS_SEED", "0"))
CALL_TIMEOUT = 5.0  # every foreground call's and Executor result's bound
SLACK = 2.0  # past its timeout a call may take this much to give up (2 cores, shared)

POOLS = """
[functions.reverse]
target = "workers.text:reverse"
workers = {reverse}

[functions.r]
target = "tests.helpers.crashy:record"
workers = 1

[functions.h]
target = "tests.helpers.crashy:hold"
workers = 1
timeout = 1

[functions."farm.python"]
target = "farm.executor.call:run_call"
workers = 1
"""


class Clients:
    """The three clients, each in a thread, until ``halt``; what they saw, to judge after."""

    def __init__(self, up: FarmUp, key: Path) -> None:
        self.up, self.key = up, key
        self.acked: set[str] = set()  # background jobs the server acknowledged
        self.results = {"fg": 0, "executor": 0}
        self.broken: list[str] = []  # outcomes no doc promises
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self.guarded, args=(run,))
            for run in (self.background, self.foreground, self.executor)
        ]
        for t in self.threads:
            t.start()

    def guarded(self, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as e:  # a client must end only when told to
            self.broken.append(f"{run.__name__} raised {e!r}")

    def background(self) -> None:
        with farm.Client(self.up.addr, timeout=CALL_TIMEOUT) as c:
            for i in range(100_000):
                if self.halt.wait(0.01):
                    return
                try:  # the unique is what crashy.record writes down
                    c.submit("r", b"", unique=f"bg-{i}", background=True)
                except (farm.ServerUnavailable, farm.Timeout):
                    continue  # not acknowledged: no promise about it
                self.acked.add(f"bg-{i}")

    def foreground(self) -> None:
        with farm.Client(self.up.addr) as c:
            for i in range(100_000):
                if self.halt.wait(0.01):
                    return
                began, data = time.monotonic(), f"fg-{i}"
                try:
                    if c.call("reverse", data, timeout=CALL_TIMEOUT) != data[::-1].encode():
                        self.broken.append(f"{data}: a wrong answer")
                    self.results["fg"] += 1
                except (farm.ServerUnavailable, farm.Timeout, farm.JobFailed):
                    pass  # the server went away, or the job's workers died job_retries times
                if time.monotonic() - began > CALL_TIMEOUT + SLACK:
                    self.broken.append(f"{data} took {time.monotonic() - began:.1f}s")

    def executor(self) -> None:
        ex = farm.Executor(
            servers=f"unix:{self.up.unix}", key_file=str(self.key), connect_timeout=CALL_TIMEOUT
        )
        try:
            for i in range(100_000):
                if self.halt.wait(0.01):
                    return
                future = ex.submit(pow, i, 2)
                try:
                    if future.result(timeout=CALL_TIMEOUT * 3) != i * i:
                        self.broken.append(f"executor {i}: a wrong answer")
                    self.results["executor"] += 1
                except (farm.WorkerLost, farm.ServerUnavailable):
                    pass  # documented ends of a call whose worker or server died
                except TimeoutError:
                    self.broken.append(f"executor {i}: no outcome in {CALL_TIMEOUT * 3}s")
        finally:
            ex.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a client hangs"


class Chaos:
    """The harms, each followed by the farm's recovery from it."""

    def __init__(self, up: FarmUp, tmp: Path) -> None:
        self.up, self.tmp = up, tmp
        self.rng = random.Random(SEED)
        self.want = {"reverse": 2, "r": 1, "h": 1, "farm.python": 1}
        self.in_file = 2  # reverse's workers in the config file: a new `farm up` runs these
        self.pids: set[int] = set()  # every process of the farm seen, for the leak check

    def rows(self) -> list[dict]:
        rows = self.up.ps()
        self.pids.update(r["pid"] for r in rows if r.get("pid"))
        assert self.up.proc.poll() is None, "the supervisor died"
        return rows

    def settled(self) -> None:
        wait_for(f"pools {self.want}", lambda: running(self.up) == self.want, 30)
        wait_for("the job server", lambda: self.server_pid() is not None, 30)

    def server_pid(self) -> int | None:
        row = next(r for r in self.rows() if r["function"] == "server")
        return row["pid"] if row["state"] == "ready" else None

    def kill_workers(self) -> None:
        for _ in range(2):
            victim = self.rng.choice([r for r in self.rows() if r["slot"] is not None])
            os.kill(victim["pid"], signal.SIGKILL)
            self.settled()

    def stop_past_timeout(self) -> None:
        """SIGSTOP `h`'s worker mid-job: the server fails the job at the function's timeout,
        and the supervisor kills the stopped worker (SIGKILL reaches it) and replaces it."""
        (held := self.tmp / "held").mkdir()
        outcome: list[object] = []
        caller = threading.Thread(target=self.call_h, args=(held, outcome))
        caller.start()
        started = wait_for("h's job to start", lambda: list(held.glob("started-*")), 10)
        pid = int(started[0].name.split("-")[1])
        os.kill(pid, signal.SIGSTOP)
        try:
            caller.join(CALL_TIMEOUT + SLACK)
            assert outcome and isinstance(outcome[0], farm.JobFailed), outcome
            wait_for("the stopped worker's end", lambda: not _alive(pid), 10)
        finally:
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
        self.settled()

    def call_h(self, held: Path, outcome: list[object]) -> None:
        with farm.Client(self.up.addr) as c:
            try:
                outcome.append(c.call("h", str(held), timeout=CALL_TIMEOUT))
            except farm.FarmError as e:
                outcome.append(e)

    def scale(self) -> None:
        for count in (3, 1, 2):
            scaled = farm_cli("scale", f"reverse={count}", "--control", self.up.control)
            assert scaled.returncode == 0, scaled.stdout + scaled.stderr
            self.want["reverse"] = count
            self.settled()

    def reload(self) -> None:
        self.want["reverse"] = self.in_file = self.rng.choice([1, 3])
        self.up.write_config(POOLS.format(reverse=self.in_file))
        self.up.config.write_text(_durable(self.up, self.tmp))
        reloaded = farm_cli("reload", "--control", self.up.control)
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        self.settled()

    def kill_server(self) -> None:
        pid = self.server_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for("a new job server", lambda: self.server_pid() not in (None, pid), 30)
        self.settled()

    def restart_farm(self) -> None:
        self.rows()
        stopped = farm_cli("stop", "--control", self.up.control)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert self.up.proc.wait(30) == 0
        self.assert_none_left()
        _drain_notify(self.up)  # the first run's READY=1s (start, each reload) must not count
        self.up.start()
        self.up.expect_notify("READY=1", timeout=30)
        self.want["reverse"] = self.in_file  # not what `farm scale` said to the last farm
        self.settled()

    def assert_none_left(self) -> None:
        assert not [pid for pid in self.pids if _alive(pid)], "processes left by farm up"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _drain_notify(up: FarmUp) -> None:
    up.notify.setblocking(False)
    try:
        while up.notify.recv(4096):
            pass
    except BlockingIOError:
        pass
    up.messages.clear()


def _durable(up: FarmUp, tmp: Path) -> str:
    """The config with a durable store (the server is killed) and a 2 s grace."""
    text = up.config.read_text().replace('store = "none"', f'store = "{tmp / "queue.db"}"')
    return text.replace("graceful_timeout = 10", "graceful_timeout = 2")


def _running_jobs(up: FarmUp) -> dict[str, int]:
    status = parse_status(admin_query(up.addr, "status"))
    return {row.function: row.running for row in status if row.running}


def test_chaos_soak_keeps_the_documented_promises(tmp_path: Path) -> None:
    done, key = tmp_path / "done.txt", tmp_path / "state" / "executor.key"
    up = FarmUp(
        tmp_path,
        POOLS.format(reverse=2),
        start=False,
        extra_env={"FARM_TEST_RECORD": str(done), "FARM_KEY_FILE": str(key)},
    )
    up.config.write_text(_durable(up, tmp_path))
    chaos, clients = Chaos(up, tmp_path), None
    try:
        up.start()
        up.expect_notify("READY=1", timeout=30)
        chaos.settled()
        clients = Clients(up, key)
        harms = [chaos.kill_workers, chaos.stop_past_timeout, chaos.scale, chaos.reload]
        chaos.rng.shuffle(harms)
        for harm in [*harms, chaos.kill_server, chaos.restart_farm, chaos.kill_workers]:
            harm()
        clients.stop()
        assert not clients.broken, clients.broken
        assert clients.results["fg"] and clients.results["executor"], clients.results

        def all_ran() -> bool:
            return done.exists() and clients.acked <= set(done.read_text().split())

        wait_for(f"the {len(clients.acked)} acknowledged background jobs", all_ran, 30)
        wait_for("no job left running", lambda: not _running_jobs(up), 10)
        chaos.settled()
        chaos.rows()
    finally:
        if clients is not None:
            clients.halt.set()
        returncode = up.stop()
    assert returncode == 0
    chaos.assert_none_left()
