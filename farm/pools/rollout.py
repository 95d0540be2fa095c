"""`farm restart`: replace running workers with fresh processes, without downtime.

A mixin of :class:`farm.supervisor.Supervisor`. A restart is a *rollout*: a
queue of slots per pool. A few slots of a pool at a time (``surge``) get a
*successor*, a new process on the slot's core started beside the old one;
only once the successor serves (a Python worker reported ready, a command
worker connected and registered its pool's functions) is the old process
retired -- drained as on scale-down -- and the successor takes the slot. So a
pool never has fewer serving processes than its target minus the slots whose old
process is already draining while the new one is serving, i.e. never fewer than
target - 1 for any client, and
no job is lost: the old worker finishes its job in hand (a command worker is
drained by the server first, and gets its ``stop_signal`` once it holds no job or after
its grace; a job it dies holding is requeued by the server).

A successor that exits before it serves, or does not serve within
``[supervisor] boot_timeout``, fails the rollout of its pool: the old process keeps its
slot, the pool's remaining slots are left alone, and `farm restart` exits 1. Its end is
a ``boot_failure`` on the metrics; of a pool a reload changed, the reload failed too
(farm.pools.reloads), unless a later reload changed the pool again meanwhile. A slot with no
serving process gets none beside it: its next process runs the new code, and, of a pool a
reload changed, that process ending before it ever served, by whatever cause, fails the
reload as well (``slot_exited``).
Progress is read with the control command ``restart-status``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from farm.config import Config, FunctionConfig
from farm.pools.exits import describe_exit
from farm.pools.slots import ProcState, Slot, WorkerProcess

if TYPE_CHECKING:
    from farm.pools.exits import Exits
    from farm.pools.localserver import LocalServer
    from farm.pools.reloads import ReloadOutcome

__all__ = ["Restarting", "Rollout", "MAX_SURGE"]

log = logging.getLogger("farm.supervisor")

#: Slots of one pool replaced at the same time at most (and a quarter of the pool at most).
MAX_SURGE = 4


@dataclass
class Rollout:
    """One `farm restart`: which slots are still to be replaced, and how it went."""

    number: int
    queue: dict[str, list[int]]  # pool -> slot indices not started yet, in order
    total: dict[str, int]
    replaced: Counter[str] = field(default_factory=Counter)
    # Of them, slots that had no serving process (empty in a crash loop's backoff, or one
    # still starting): their next or new process runs the new code, but nobody saw it serve
    # (`farm restart` says so).
    unseen: Counter[str] = field(default_factory=Counter)
    # Those slots of a reload's pools (``before``): the first end of their next process of
    # the new target is looked at (``slot_exited``); one that did not boot fails the reload.
    unseen_slots: dict[str, set[int]] = field(default_factory=dict)
    in_flight: dict[str, set[int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # pool -> why its rollout stopped
    # A reload's pools: what their running workers ran, to go back to if the new fails.
    before: dict[str, FunctionConfig] = field(default_factory=dict)
    # When a config file last applied whole before the reloads of those pools: the
    # success time the metrics go back to if one does not boot (take_reloaded).
    undo_at: float = 0.0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    boot_timeout: float = 60.0  # [supervisor]'s: how long a step may take, for `farm restart`

    @property
    def done(self) -> bool:
        return not any(self.queue.values()) and not any(self.in_flight.values())

    def report(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.monotonic()
        return {
            "ok": True,
            "restart": self.number,
            "done": self.done,
            "total": self.total,
            "replaced": {name: self.replaced[name] for name in self.total},
            "unseen": {name: self.unseen[name] for name in self.total if self.unseen[name]},
            "failed": list(self.failed.values()),
            "seconds": round(end - self.started, 2),
            "boot_timeout": self.boot_timeout,
        }


class Restarting:
    config: Config
    slots: dict[str, list[Slot]]
    server: LocalServer
    rollout: Rollout | None
    rollouts: int
    kept_back: set[str]  # pools whose new options did not boot: they keep their old workers
    # A reload's pools with new options: what they ran before (Steering.reload), to go back to.
    reloaded_from: dict[str, FunctionConfig]
    reloads: ReloadOutcome  # the latest reload, for the metrics: failed if its pool did not boot
    exits: Exits  # (pool, cause) -> workers replaced, for the metrics

    # Provided by WorkerStart (farm.pools.workerstart); declared for the type checker.
    start_process: Callable[[Slot, FunctionConfig], WorkerProcess | None]
    retire: Callable[..., None]
    kill: Callable[[WorkerProcess, str], None]

    def start_restart(self, picks: dict[str, list[int] | None]) -> dict[str, Any]:
        """Begin replacing the slots named (pool -> slot indices, None: all of them)."""
        if self.rollout is not None and not self.rollout.done:
            return {
                "ok": False,
                "error": f"a restart is under way ({self.progress(self.rollout)}); wait for it",
            }
        queue = {}
        self.kept_back -= picks.keys()  # their new processes get another try
        for name, indices in picks.items():
            have = len(self.slots.get(name, ()))
            queue[name] = list(range(have)) if indices is None else [i for i in indices if i < have]
        self.rollouts += 1
        self.rollout = Rollout(
            self.rollouts,
            queue,
            {n: len(q) for n, q in queue.items()},
            in_flight={},
            boot_timeout=self.config.supervisor.boot_timeout,
        )
        self.take_reloaded(self.rollout, list(picks))
        log.info("restart %d: replacing %s", self.rollouts, self.progress(self.rollout))
        return self.rollout.report()

    def add_to_restart(self, names: list[str]) -> dict[str, Any]:
        """Put these pools' slots in the rollout under way (a reload changed them while
        it ran): each is replaced again, by a process with the new options."""
        ro = self.rollout
        assert ro is not None and not ro.done, "only while a rollout is under way"
        self.take_reloaded(ro, names)  # first: it asks which earlier pools still roll
        for name in names:
            # Every slot, those whose successor still starts (with the older options) too:
            # each is replaced once more when its turn comes (advance_pool defers it).
            flying = ro.in_flight.get(name, set())
            ro.queue[name] = list(range(len(self.slots.get(name, ()))))
            ro.total[name] = ro.replaced[name] + len(flying) + len(ro.queue[name])
            ro.failed.pop(name, None)  # an earlier failure of the pool is not this try's
        self.kept_back -= set(names)
        log.info("restart %d: also replacing %s", ro.number, ", ".join(names))
        return ro.report()

    def take_reloaded(self, ro: Rollout, names: list[str]) -> None:
        """What a reload's pools ran before now belongs to this rollout (fail_pool), and when
        a file last applied whole, should one of them not boot: before this reload, unless
        the pools of an earlier one are still being replaced (they may not boot either)."""
        taken = [name for name in names if name in self.reloaded_from]
        if taken and not any(self.rolling(name) for name in ro.before):
            ro.undo_at = self.reloads.before
        for name in taken:  # what runs now: the latest that did boot
            older = self.reloaded_from.pop(name)
            # Not a target none of whose processes served yet (the earlier reload's, still
            # starting): the pool's running workers run what came before it.
            if name not in ro.before or self.serves_with(name, older):
                ro.before[name] = older

    def serves_with(self, name: str, pool: FunctionConfig) -> bool:
        """Whether a process of ``pool``'s target and options serves in one of its slots."""
        options = pool.options()
        slots = self.slots.get(name, ())
        return any(s.proc and s.proc.state.serving and s.proc.options == options for s in slots)

    def restart_status(self) -> dict[str, Any]:
        if self.rollout is None:
            return {"ok": False, "error": "no restart has run"}
        return self.rollout.report()

    @staticmethod
    def progress(rollout: Rollout) -> str:
        return ", ".join(f"{n}: {rollout.replaced[n]}/{t}" for n, t in rollout.total.items())

    def rolling_any(self) -> bool:
        return self.rollout is not None and not self.rollout.done

    def rolling(self, name: str) -> bool:
        """Whether a rollout is replacing this pool's processes (reload leaves them to it)."""
        ro = self.rollout
        return ro is not None and bool(ro.queue.get(name) or ro.in_flight.get(name))

    def advance_restarts(self) -> bool:
        """One step of the rollout: hand over to successors that serve, start the next ones.
        Whether it is still under way (the loop then looks again soon)."""
        ro = self.rollout
        if ro is None or ro.finished is not None:
            return False
        if self.config.local_server and not self.server.ready:
            return True  # successors would only spin on connection refused
        now = time.monotonic()
        for name in list(ro.total):
            self.advance_pool(ro, name, now)
        if ro.done:
            ro.finished = now
            how = "failed: " + "; ".join(ro.failed.values()) if ro.failed else "done"
            log.info("restart %d %s (%s)", ro.number, how, self.progress(ro))
            return False
        return True

    def advance_pool(self, ro: Rollout, name: str, now: float) -> None:
        pool = self.config.functions.get(name)
        slots = self.slots.get(name, [])
        flying = ro.in_flight.setdefault(name, set())
        boot_timeout = self.config.supervisor.boot_timeout
        ready_wait = self.config.supervisor.ready_wait
        for index in sorted(flying):
            slot = slots[index] if index < len(slots) else None
            heir = slot.successor if slot is not None else None
            if slot is None or heir is None:  # scaled away, or its successor died (counted)
                flying.discard(index)
                if slot is None:  # nothing left to replace: not "2/3 replaced" at the end
                    ro.total[name] -= 1
            elif heir.state.serving:
                old = slot.proc
                if old is not None:
                    self.retire(old, pool)
                slot.proc, slot.successor = heir, None  # a deploy, not a restart: not counted
                ro.replaced[name] += 1
                flying.discard(index)
                log.info(
                    "restart: %s (pid %d) replaces pid %s", heir.name, heir.pid, old and old.pid
                )
            elif now - heir.started > boot_timeout and heir.state is ProcState.STARTING:
                why = f" ({heir.misregistered})" if heir.misregistered else ""
                self.kill(heir, f"did not serve within {boot_timeout:g}s of its start{why}")
        queue = ro.queue.get(name, [])
        if pool is None:  # removed by a reload: none of its slots is left on old code
            ro.total[name] -= len(queue)
            queue.clear()
            return
        surge = max(1, min(MAX_SURGE, math.ceil(len(slots) / 4)))
        deferred = []  # slots whose successor still starts: one at a time per slot
        while queue and len(flying) < surge:
            index = queue.pop(0)
            if index in flying:
                deferred.append(index)
                continue
            if index >= len(slots):
                ro.total[name] -= 1  # scaled down meanwhile: not a slot left on old code
                continue
            slot = slots[index]
            if slot.proc is None or not slot.proc.state.serving:
                # Empty (backoff), or a process not serving yet: the next process it gets is
                # new anyway, and one just started with these options is new. One that is
                # not (older options, or a command worker that never connected) is replaced
                # now: left alone, it was counted as replaced and went on as it was.
                proc = slot.proc
                if proc is not None and (
                    proc.options != pool.options()
                    or (proc.command and now - proc.started >= ready_wait)
                ):
                    self.retire(proc, pool)
                    slot.proc = None
                slot.next_start = min(slot.next_start, now)
                ro.replaced[name] += 1
                ro.unseen[name] += 1
                if name in ro.before:
                    ro.unseen_slots.setdefault(name, set()).add(index)
                continue
            heir = self.start_process(slot, pool)
            if heir is None:
                self.fail_pool(ro, name, f"{slot.name}: could not start a new process")
                return
            slot.successor = heir
            flying.add(index)
        queue[:0] = deferred  # their turn comes once their successor has taken over

    def successor_exited(self, slot: Slot, proc: WorkerProcess, status: int) -> None:
        """A successor died before it took over: the old process keeps the slot."""
        slot.successor = None
        ro = self.rollout
        reason = proc.kill_reason or describe_exit(status)
        if proc.boot_error:
            reason = f"failed to boot ({proc.boot_error})"
        elif proc.last_words:  # a command's why (a PHP fatal error) is in its output alone
            reason = f"{reason} ({proc.quote_last_words(time.monotonic())})"
        old = f"pid {slot.proc.pid}" if slot.proc is not None else "none"
        message = (
            f"{proc.name}: the new process (pid {proc.pid}) {reason}; the old one ({old}) stays"
        )
        log.warning("restart: %s", message)
        # Not replaced, yet counted: a deploy that did not boot showed in the log alone, on
        # no dashboard nor in FarmWorkersCrashLooping's sum. Whatever ended it (an import's
        # error, a command's exit, a kill past boot_timeout), the new process never served.
        self.exits[slot.function, "boot_failure"] += 1
        if ro is None:
            return
        ro.in_flight.get(slot.function, set()).discard(slot.index)
        pool = self.config.functions.get(slot.function)
        if pool is not None and proc.options != pool.options():
            # A later reload changed the pool while this one started (the file put back
            # after a deploy that does not boot): what failed is no longer what the file
            # says. Failing the pool had called that reload failed, set the pool back to
            # this target and dropped the slot's turn under the later one (add_to_restart).
            log.info("restart: %s is replaced again, as the latest reload says", slot.name)
            return
        self.fail_pool(ro, slot.function, message)

    def slot_exited(self, slot: Slot, proc: WorkerProcess, status: int, cause: str) -> None:
        """A slot's process ended (farm.pools.lifecycle): counted by its cause. The first of
        a reload's new target in a slot that had none serving (``Rollout.unseen_slots``: in
        backoff, or still loading) that ended before it ever served fails the reload, as a
        successor's end does; nothing old serves to go back to, so the slot backs off on the
        new target."""
        self.exits[slot.function, cause] += 1
        ro, pool = self.rollout, self.config.functions.get(slot.function)
        waiting = ro.unseen_slots.get(slot.function, set()) if ro is not None else set()
        if ro is None or pool is None or slot.index not in waiting:
            return
        if proc.options != pool.options():
            return  # an older target's process: the new one's turn is still to come
        waiting.discard(slot.index)
        # Judged by whether it served, not by its cause: a command that exits 1, or a Python
        # target that os._exit()s or segfaults at import, ends as a "crash", and the reload
        # that deployed it was called successful while the slot crash-looped on it.
        # A quick command worker (`gearman -w -c 2`) may end its jobs before it is seen
        # connected: the jobs the server counted for it (jobs_done) say it served too.
        if proc.served or proc.jobs_done > 0 or slot.function not in ro.before:
            return
        del ro.unseen_slots[slot.function]  # said once for the pool
        why = proc.boot_error or proc.kill_reason or describe_exit(status)
        if proc.last_words and proc.last_words != proc.boot_error:  # a command's why
            why = f"{why}; {proc.quote_last_words(time.monotonic())}"
        log.warning(
            "reload failed: %s's new target and options did not boot (%s: %s); its slot backs off",
            slot.function,
            proc.name,
            why,
        )
        self.reloads.did_not_boot(ro.undo_at)

    def fail_pool(self, ro: Rollout, name: str, message: str) -> None:
        """Stop replacing ``name``'s slots: a deploy that does not boot is not pushed on, and
        the old processes keep serving (until a reload or restart tries the pool again)."""
        ro.failed[name] = message
        ro.queue[name] = []
        self.kept_back.add(name)
        before = ro.before.pop(name, None)
        now = self.config.functions.get(name)
        if before is not None and now is not None:
            # New processes of the pool (a crash's, a scale's, a recycle's) start as the
            # running ones did, not with what did not boot, until the next reload tries it.
            functions = {**self.config.functions, name: replace(before, workers=now.workers)}
            self.config = replace(self.config, functions=functions)
            # The farm does not run what its file says: the reload failed after all, as
            # `farm reload` says by its exit 1; said as a refused file is, which
            # FarmConfigReloadFailed's `journalctl -g "reload failed"` finds.
            log.warning(
                "reload failed: %s goes on with its running target and options: %s", name, message
            )
            self.reloads.did_not_boot(ro.undo_at)
