"""What the metrics say of the latest reload: whether it applied its file, when a file last
applied, and what of it waits for the farm's next start (farm.pools.metrics).

Prometheus' own ``prometheus_config_last_reload_successful`` is 0 when any part of the file
did not apply, the parts that did notwithstanding, and its success time moves only with a
success. So here: a file refused as read (steering), and a file applied whose changed pool's
new target or options then did not boot (its old workers serve on, as `farm reload`'s exit 1
says: farm.pools.rollout), are both a failed reload. Split from steering, which applies a
file, as the rollout learns the rest later."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["ReloadOutcome"]


@dataclass
class ReloadOutcome:
    """The latest reload, as the metrics read it. The config read at start is a success."""

    ok: bool = True
    ok_at: float = field(default_factory=time.time)  # when a file last applied (Unix time)
    # The file's parts the latest applied one could not apply ([server] ...): they wait
    # for a restart, and the metrics said "applied" alone while the CLI said "not applied".
    restart_waits: list[str] = field(default_factory=list)
    # ``ok_at`` before the latest file applied: a rollout of its changed pools goes back
    # to it if one does not boot (farm.pools.rollout, Rollout.undo_at).
    before: float = 0.0

    def __post_init__(self) -> None:
        self.before = self.ok_at

    def refused(self) -> None:
        """The file was refused as read: the farm keeps the config it ran."""
        self.ok = False

    def applied(self, restart_waits: list[str]) -> None:
        """The file applied: its pools are the farm's (those changed still to boot)."""
        self.before, self.ok, self.ok_at = self.ok_at, True, time.time()
        self.restart_waits = restart_waits

    def did_not_boot(self, applied_at: float) -> None:
        """A pool the file changed did not boot and went back to what it ran: the file did
        not apply after all, and one last applied whole at ``applied_at``."""
        self.ok, self.ok_at = False, applied_at
