"""How the supervisor brings a pool to its target (Supervisor.manage_workers): which slots
a scale-down takes, what a slot given back keeps, and when a crash history is cleared.
No process is started: spawn_worker is a stand-in."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm import config
from farm.config import FunctionConfig
from farm.pools.slots import Slot, WorkerProcess
from farm.supervisor import Supervisor
from tests.helpers.configs import write


def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    text = f"""
    [server]
    store = "none"

    [supervisor]
    control = "{tmp_path / "control.sock"}"
    metrics = "off"
    servers = ["127.0.0.1:9"]
    local_server = false

    [functions.rev]
    target = "workers.hashing:compress"
    workers = 3
    """

    def spawn(self: Supervisor, slot: Slot, pool: FunctionConfig) -> None:
        slot.spawned += 1  # what the real one counts, for FARM_WORKER_ID

    monkeypatch.setattr(Supervisor, "spawn_worker", spawn)
    return Supervisor(config.load(write(tmp_path, text)))


def test_a_scale_down_takes_the_last_slots_and_a_scale_up_gives_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slots are numbered from 0 with no gap (pool#N in `farm restart` and `farm ps`, the
    # core each is pinned to, FARM_WORKER_ID): taking the first slot would leave 1 and 2,
    # and the next scale-up would make a second slot 2. A slot given back counts its
    # processes on, so no FARM_WORKER_ID names two processes of this farm (farm.pools.strays).
    sup = supervisor(tmp_path, monkeypatch)
    sup.manage_workers()
    assert [(s.index, s.spawned) for s in sup.slots["rev"]] == [(0, 1), (1, 1), (2, 1)]
    sup.targets["rev"] = 1
    sup.manage_workers()
    assert [s.index for s in sup.slots["rev"]] == [0]
    sup.targets["rev"] = 3
    sup.manage_workers()  # slot 0 starts once more each turn: the stand-in left it empty
    assert [(s.index, s.spawned) for s in sup.slots["rev"]] == [(0, 3), (1, 2), (2, 2)]


def test_a_worker_that_has_served_a_minute_clears_its_slots_crash_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While it runs, not only once it exits: else a slot that crashed three times in a row
    # stays "failing", its backoff history whole, for as long as its healthy worker lives.
    sup = supervisor(tmp_path, monkeypatch)
    sup.manage_workers()
    slot = sup.slots["rev"][0]
    now = time.monotonic()
    for _ in range(3):
        slot.failed(now)
    assert slot.failing
    options = sup.config.functions["rev"].options()
    slot.proc = WorkerProcess(1, "rev", 0, 0, -1, options, started=now - 61)
    sup.manage_workers()
    assert (slot.failures, slot.failing) == (0, False) and slot.proc is not None
