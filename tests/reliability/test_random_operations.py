"""An operator's random day with a farm under load: scale, kill -9, restart, reload.

Seeded sequences of what an operator does to a running farm (docs/operations.md) while
clients submit jobs back to back: `farm scale` up and down, `kill -9` of a worker,
`farm restart` of a pool (one new process beside each old one), and `farm reload` of a
config with other worker counts (those that changed apply; a pool whose count did not
keeps its runtime scale). After each, the farm must come to run what it was told,
and no client may see a job fail or an answer go astray (jobs on a killed worker run
again: the server's job_retries is 0 here, never give up). ``FARM_OPERATION_SESSIONS=N``
runs N seeds (1 by default, some 20 s: seed 0 does each of the four operations, a
check below holds it to that).
"""

from __future__ import annotations

import os
import random
import signal
import textwrap
from pathlib import Path

import pytest

from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.streams import JobStream, running
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

POOLS = ("reverse", "hash")
TARGETS = {"reverse": "workers.text:reverse", "hash": "workers.hashing:pbkdf2"}


def pools_config(counts: dict[str, int]) -> str:
    return "".join(
        textwrap.dedent(f"""
        [functions.{name}]
        target = "{TARGETS[name]}"
        workers = {counts[name]}
        """)
        for name in POOLS
    )


def write_config(up: FarmUp, counts: dict[str, int]) -> None:
    """The farm's config with these counts, and a server that never gives a job up."""
    up.write_config(pools_config(counts))
    up.config.write_text(up.config.read_text().replace("job_retries = 3", "job_retries = 0"))


class Operator:
    """One seed's operations on ``up``, and the counts the farm was told to run."""

    def __init__(self, up: FarmUp, seed: int) -> None:
        self.up = up
        self.rng = random.Random(seed)
        self.targets = {"reverse": 1, "hash": 1}
        self.file = dict(self.targets)  # the counts in the config file
        self.log: list[str] = []

    def settle(self, what: str) -> None:
        self.log.append(what)
        try:
            wait_for(f"{what}: {self.targets}", lambda: running(self.up) == self.targets, 30)
        except AssertionError as e:
            rows = [(r["function"], r["state"], r["pid"]) for r in self.up.workers()]
            steps = "\n".join(self.log)
            raise AssertionError(f"{e}\nworkers: {rows}\nsteps:\n{steps}") from None

    def scale(self) -> None:
        pool, count = self.rng.choice(POOLS), self.rng.randint(1, 3)
        out = farm_cli("scale", f"{pool}={count}", "--control", self.up.control)
        assert out.returncode == 0, out.stderr
        self.targets[pool] = count
        self.settle(f"scale {pool}={count}")

    def kill(self) -> None:
        rows = [r for r in self.up.workers() if r["state"] in ("idle", "busy")]
        row = self.rng.choice(rows)
        os.kill(row["pid"], signal.SIGKILL)
        self.log.append(f"kill -9 {row['function']} pid {row['pid']} ({row['state']})")
        wait_for("the killed worker replaced", lambda: row["pid"] not in self._pids())
        self.settle("after the kill")

    def restart(self) -> None:
        pool = self.rng.choice(POOLS)
        before = {r["pid"] for r in self.up.workers(function=pool)}
        out = farm_cli("restart", pool, "--control", self.up.control)
        assert out.returncode == 0, out.stderr
        self.settle(f"restart {pool}")
        # The restart ends when the last successor serves and its old process is retired:
        # that one may still be finishing its job in hand (draining), so it is waited out.
        wait_for(
            f"restart {pool}: every old process gone",
            lambda: not before & {r["pid"] for r in self.up.workers(function=pool)},
            30,
        )

    def reload(self) -> None:
        counts = {name: self.rng.randint(1, 3) for name in POOLS}
        write_config(self.up, counts)
        out = farm_cli("reload", "--control", self.up.control)
        assert out.returncode == 0, out.stderr
        # Changed counts apply; a pool whose count did not change keeps its runtime scale.
        for name, count in counts.items():
            if count != self.file[name]:
                self.targets[name] = count
        self.file = counts
        self.settle(f"reload to {counts}")

    def _pids(self) -> set[int]:
        return {r["pid"] for r in self.up.workers()}

    def run(self, steps: int) -> set[str]:
        """``steps`` random operations; the names of those that ran."""
        actions = [self.scale, self.kill, self.restart, self.reload]
        ran = set()
        for _ in range(steps):
            action = self.rng.choices(actions, [4, 3, 2, 2])[0]
            action()
            ran.add(action.__name__)
        return ran


@pytest.mark.parametrize("seed", range(int(os.environ.get("FARM_OPERATION_SESSIONS", "1"))))
def test_an_operators_random_day_loses_no_job(tmp_path: Path, seed: int) -> None:
    up = FarmUp(tmp_path, "", start=False)
    write_config(up, {"reverse": 1, "hash": 1})
    up.start()
    operator = Operator(up, seed)
    stream: JobStream | None = None
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1, "hash": 1})
        stream = JobStream(up.addr)
        wait_for("jobs flowing", lambda: stream.done >= 20 or stream.errors)
        ran = operator.run(8)
        if seed == 0:  # the default run's only seed: it must still try every operation
            assert ran == {"scale", "kill", "restart", "reload"}, "\n".join(operator.log)
        before = stream.done
        wait_for("jobs after the last step", lambda: stream.done >= before + 20 or stream.errors)
    finally:
        done = stream.stop() if stream is not None else 0  # asserts no job failed
        assert up.stop() == 0, "\n".join(operator.log)
    assert done > 40, "\n".join(operator.log)
