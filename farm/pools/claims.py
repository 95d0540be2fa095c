"""What a quick command worker may claim as its own (admin ``claim``): the ends of connections
it could have made, which the server kept unnamed (``farm.pools.commandjobs.claim_served``
asks). Only its pool's own functions (no other pool's, command or Python), opened and closed
while it lived, and of its user where a Unix socket tells; a TCP end's user cannot be told
(docs/operations.md, "Command pools")."""

from __future__ import annotations

import os

from farm.config import Config
from farm.pools.slots import WorkerProcess
from farm.protocol.admin import named_lines

__all__ = ["CLAIM_SLACK", "claim_queries"]

#: A quick command worker's claim reaches this far past its lifetime: the server reads its
#: clock a little after the supervisor.
CLAIM_SLACK = 0.05


def claim_queries(config: Config, proc: WorkerProcess, now: float) -> list[str]:
    """The ``claim`` lines for ``proc``, which exited at ``now``; none when no end can be
    told its pool's."""
    pool = config.functions.get(proc.function)
    if pool is None:
        return []
    # Only functions no other pool serves: another pool's quick worker (or a Python
    # worker's connection) ended the same function's jobs, and its end is not this one's.
    others = {f for p in config.functions.values() if p is not pool for f in p.functions}
    own = [f for f in pool.functions if f not in others]
    if not own:
        return []  # counted as before claims were: no end can be told this pool's
    # Its user's Unix-socket ends (or the server's user's) alone; a TCP end's user
    # cannot be told (docs/operations.md).
    uid = pool.command.user.uid if pool.command and pool.command.user else os.geteuid()
    within = now - proc.started + CLAIM_SLACK
    return named_lines(f"claim {within:.3f} {uid}", own)
