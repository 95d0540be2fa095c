"""farm.pools.rollout's rules, on the real Restarting mixin with a pool's slots in memory (no
processes: what it starts and retires is recorded). The farm as users run it is in
tests/integration/test_restart.py and test_supervisor_reload.py."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pytest

from farm.cli.deploy import follow_restart
from farm.config.model import FunctionConfig
from farm.pools.reloads import ReloadOutcome
from farm.pools.rollout import Restarting
from farm.pools.slots import ProcState, Slot, WorkerProcess

_pids = itertools.count(100)


def pool(name: str, target: str, workers: int = 1) -> FunctionConfig:
    return FunctionConfig(
        name=name,
        target=target,
        workers=workers,
        timeout=None,
        max_jobs=None,
        max_rss_mb=None,
    )


@dataclass(frozen=True)
class Cfg:  # what Restarting reads of Config
    functions: dict[str, FunctionConfig]
    local_server: bool = False
    supervisor: Any = field(
        default_factory=lambda: SimpleNamespace(boot_timeout=60.0, ready_wait=10.0)
    )


class Farm(Restarting):
    def __init__(self, **pools: FunctionConfig) -> None:
        self.config = Cfg(dict(pools))  # type: ignore[assignment]
        self.slots = {n: [Slot(n, i, 0) for i in range(p.workers)] for n, p in pools.items()}
        for name, slots in self.slots.items():
            for slot in slots:
                slot.proc = self.process(slot, pools[name], ProcState.IDLE)
        self.rollout, self.rollouts, self.kept_back, self.reloaded_from = None, 0, set(), {}
        self.retired: list[int] = []
        self.reloads, self.exits = ReloadOutcome(), Counter()

    @staticmethod
    def process(slot: Slot, p: FunctionConfig, state: ProcState, **kw: Any) -> WorkerProcess:
        return WorkerProcess(
            next(_pids), slot.function, slot.index, 0, -1, p.options(), state=state, **kw
        )

    def start_process(self, slot: Slot, p: FunctionConfig) -> WorkerProcess:
        return self.process(slot, p, ProcState.STARTING)

    def retire(self, proc: WorkerProcess, p: FunctionConfig | None = None) -> None:
        self.retired.append(proc.pid)

    def kill(self, proc: WorkerProcess, why: str) -> None:
        pass

    def reload_to(self, **targets: str) -> list[str]:
        """What Steering.reload does to the config and reloaded_from."""
        old = self.config.functions
        new = {n: replace(p, target=targets.get(n, p.target)) for n, p in old.items()}
        changed = [n for n in new if new[n].options() != old[n].options()]
        for name in changed:
            self.reloaded_from[name] = old[name]
        self.config = Cfg(new)  # type: ignore[assignment]
        self.reloads.applied([])
        return changed


def rolled_out(farm: Farm, name: str) -> dict[str, Any]:
    """Advance the restart, each successor serving as soon as it starts; its report."""
    for _ in range(10):
        farm.advance_restarts()
        for slot in farm.slots[name]:
            if slot.successor is not None:
                slot.successor.state = ProcState.IDLE
    assert farm.rollout is not None
    return farm.rollout.report()


def test_a_failed_reload_goes_back_to_what_runs_not_to_an_older_target() -> None:
    # X: A -> B (done) while Y's rollout goes on, then X: B -> C, which does not boot.
    farm = Farm(X=pool("X", "m:A"), Y=pool("Y", "m:P", 2))
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B", Y="m:Q")))
    farm.advance_restarts()
    farm.slots["X"][0].successor.state = ProcState.IDLE  # type: ignore[union-attr]
    farm.slots["Y"][0].successor.state = ProcState.IDLE  # type: ignore[union-attr]
    farm.advance_restarts()
    farm.add_to_restart(farm.reload_to(X="m:C"))
    farm.advance_restarts()
    slot = farm.slots["X"][0]
    assert slot.successor is not None
    farm.successor_exited(slot, slot.successor, 256)  # C did not boot
    assert slot.proc is not None and slot.proc.options[0] == "m:B"
    assert farm.config.functions["X"].target == "m:B", "later starts must run what runs now"


def test_a_reload_whose_pool_does_not_boot_goes_back_to_the_last_whole_success() -> None:
    # farm_config_last_reload_successful and its success time, as Prometheus' own: a file
    # whose changed pool did not boot did not apply, and the time is the last that did.
    farm = Farm(X=pool("X", "m:A"), Y=pool("Y", "m:P", 2))
    farm.reloads.ok_at = 1.0  # the start's; each reload's is now
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B", Y="m:Q")))
    farm.advance_restarts()
    farm.slots["X"][0].successor.state = ProcState.IDLE  # type: ignore[union-attr]
    farm.advance_restarts()  # X served; Y's second slot still to go
    farm.add_to_restart(farm.reload_to(X="m:C"))
    farm.advance_restarts()
    slot = farm.slots["X"][0]
    assert slot.successor is not None and farm.reloads.ok
    farm.successor_exited(slot, slot.successor, 256)  # C did not boot
    assert not farm.reloads.ok
    # Not the first reload's time: Y, which it changed, had not served yet either.
    assert farm.reloads.ok_at == 1.0
    assert farm.exits == Counter({("X", "boot_failure"): 1})


def test_a_reload_after_the_last_one_served_goes_back_to_that_one() -> None:
    farm = Farm(X=pool("X", "m:A"), Y=pool("Y", "m:P"))
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B")))
    farm.reloads.ok_at = 2.0  # that reload's; the next one's is now
    rolled_out(farm, "X")
    farm.start_restart(dict.fromkeys(farm.reload_to(Y="m:Q")))
    farm.advance_restarts()
    slot = farm.slots["Y"][0]
    assert slot.successor is not None
    farm.successor_exited(slot, slot.successor, 256)
    assert not farm.reloads.ok and farm.reloads.ok_at == 2.0


def test_a_restart_that_does_not_boot_leaves_the_reload_as_it_was() -> None:
    # `farm restart` of code on disk that does not import: no reload failed, the file runs
    # as it says; the boot failure is counted all the same.
    farm = Farm(X=pool("X", "m:A"))
    farm.reloads.ok_at = applied = 3.0
    farm.start_restart({"X": None})
    farm.advance_restarts()
    slot = farm.slots["X"][0]
    assert slot.successor is not None
    farm.successor_exited(slot, slot.successor, 3 << 8)
    assert farm.reloads.ok and farm.reloads.ok_at == applied
    assert farm.exits == Counter({("X", "boot_failure"): 1})


def test_restart_waits_for_a_slow_booting_python_worker() -> None:
    # Killing it would start its boot (a model's load, say) over on every deploy.
    p = pool("ml", "m:predict")
    farm = Farm(ml=p)
    slot = farm.slots["ml"][0]
    slot.proc = farm.process(slot, p, ProcState.STARTING, started=time.monotonic() - 11)
    farm.start_restart({"ml": None})
    farm.advance_restarts()
    assert farm.retired == [] and slot.proc is not None


def test_a_slot_scaled_away_during_a_restart_is_not_counted_as_left_out() -> None:
    # A reload that lowered a pool's count and changed its options ended its rollout with
    # "rev: 2/3 replaced" and exit 0: the third slot was gone, not left on old code.
    p = pool("rev", "m:A", 3)
    farm = Farm(rev=p)
    farm.start_restart({"rev": None})
    farm.slots["rev"].pop()  # manage_workers applying the new count, before its turn
    report = rolled_out(farm, "rev")
    assert report["done"] and report["total"] == {"rev": 2} and report["replaced"] == {"rev": 2}


def test_an_empty_slot_counts_as_replaced_and_the_restart_says_it_was_not_seen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A crash-looping pool's slot backs off with no process: `farm restart` said "1/1
    # replaced", exit 0, as if the new code were seen serving; its next start runs it, and
    # nobody knows yet whether that one serves.
    p = pool("rev", "m:A", 2)
    farm = Farm(rev=p)
    farm.slots["rev"][1].proc = None  # backing off after crashes
    farm.start_restart({"rev": None})
    report = rolled_out(farm, "rev")
    assert report["done"] and report["replaced"] == {"rev": 2} and report["unseen"] == {"rev": 1}
    follow_restart(report, lambda: report)
    err = capsys.readouterr().err
    assert "rev: 1 slot(s) had no serving process" in err and "farm ps" in err


def test_a_reload_that_fixes_a_pool_still_rolling_out_is_not_failed_by_the_old_successor() -> None:
    # Reload 1: X A -> B, which does not boot; while B's process still starts, reload 2 puts
    # A back. B's end is a boot failure, not a failure of reload 2, whose file the farm runs.
    farm = Farm(X=pool("X", "m:A"))
    farm.reloads.ok_at = 1.0
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B")))
    farm.advance_restarts()
    slot = farm.slots["X"][0]
    bad = slot.successor
    assert bad is not None and bad.options[0] == "m:B"
    farm.add_to_restart(farm.reload_to(X="m:A"))
    farm.successor_exited(slot, bad, 256)  # B did not boot (or was killed past boot_timeout)
    assert farm.reloads.ok, "the file the farm runs now was applied whole"
    assert farm.config.functions["X"].target == "m:A", "a later start would run the broken B"
    assert farm.exits == Counter({("X", "boot_failure"): 1})
    assert farm.rollout is not None and not farm.rollout.failed
    assert "X" not in farm.kept_back
    # Reload 2's replacement of the slot goes on, with what the file says now.
    farm.advance_restarts()
    assert slot.successor is not None and slot.successor.options[0] == "m:A"


def test_a_failed_reload_does_not_go_back_to_a_target_that_never_served() -> None:
    # X: A -> B, whose process still starts when a reload makes it C; neither boots. The
    # pool goes on with A, which its worker runs, not with B, which never served.
    farm = Farm(X=pool("X", "m:A"))
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B")))
    farm.advance_restarts()
    slot = farm.slots["X"][0]
    assert slot.successor is not None
    farm.add_to_restart(farm.reload_to(X="m:C"))
    farm.successor_exited(slot, slot.successor, 256)  # B
    farm.advance_restarts()
    assert slot.successor is not None and slot.successor.options[0] == "m:C"
    farm.successor_exited(slot, slot.successor, 256)  # C
    assert not farm.reloads.ok
    assert slot.proc is not None and slot.proc.options[0] == "m:A"
    assert farm.config.functions["X"].target == "m:A", "later starts must run what runs now"


def test_a_slot_with_no_serving_process_fails_the_reload_when_its_new_target_does_not_boot() -> (
    None
):
    farm = Farm(X=pool("X", "m:A"))
    farm.reloads.ok_at = 1.0
    slot = farm.slots["X"][0]
    slot.proc = None  # A crash-loops: the slot backs off
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B")))
    assert rolled_out(farm, "X")["unseen"] == {"X": 1}
    assert slot.successor is None and farm.reloads.ok  # nothing started beside it
    old = farm.process(slot, pool("X", "m:A"), ProcState.STARTING, boot_error="old")
    farm.slot_exited(slot, old, 768, "boot_failure")  # an older target's: not the file's
    assert farm.reloads.ok
    new = farm.process(slot, farm.config.functions["X"], ProcState.STARTING, boot_error="no m")
    farm.slot_exited(slot, new, 768, "boot_failure")
    assert not farm.reloads.ok and farm.reloads.ok_at == 1.0
    assert farm.exits == Counter({("X", "boot_failure"): 2})
    assert farm.config.functions["X"].target == "m:B", "nothing served before: it backs off"


def test_a_slot_with_no_serving_process_fails_the_reload_when_its_new_target_ends_unserved() -> (
    None
):
    # Judged by whether it served, not by its exit's cause: a command's `exit 1`, a target's
    # os._exit(1) or segfault at import end as a "crash", and the reload read as applied.
    farm = Farm(X=pool("X", "m:A"))
    slot = farm.slots["X"][0]
    slot.proc = None
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B")))
    assert rolled_out(farm, "X")["unseen"] == {"X": 1}
    new = farm.process(slot, farm.config.functions["X"], ProcState.STARTING)
    farm.slot_exited(slot, new, 256, "crash")
    assert not farm.reloads.ok
    assert farm.exits == Counter({("X", "crash"): 1}), "counted by its cause still"


def test_a_slot_whose_new_target_served_then_crashed_leaves_the_reload_applied() -> None:
    farm = Farm(X=pool("X", "m:A"))
    slot = farm.slots["X"][0]
    slot.proc = None
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B")))
    assert rolled_out(farm, "X")["unseen"] == {"X": 1}
    new = farm.process(slot, farm.config.functions["X"], ProcState.BUSY, served=True)
    farm.slot_exited(slot, new, 256, "crash")  # a job's crash: the target booted
    assert farm.reloads.ok


def test_a_quick_command_worker_that_ended_jobs_unseen_leaves_the_reload_applied() -> None:
    # `gearman -w -c 2` ends in milliseconds, before the supervisor sees it connected: the
    # server's `served`/`claim` counted its jobs (jobs_done), its exit 0 a recycle, and the
    # reload that deployed it was called failed, its slot backed off (a review's case).
    farm = Farm(X=pool("X", "m:A"))
    slot = farm.slots["X"][0]
    slot.proc = None
    farm.start_restart(dict.fromkeys(farm.reload_to(X="m:B")))
    assert rolled_out(farm, "X")["unseen"] == {"X": 1}
    new = farm.process(slot, farm.config.functions["X"], ProcState.STARTING, jobs_done=2)
    farm.slot_exited(slot, new, 0, "recycle")
    assert farm.reloads.ok
