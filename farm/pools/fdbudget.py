"""The descriptors a farm needs, asked before `farm up` starts anything, and by `farm check`.

Under a low ``LimitNOFILE`` (``ulimit -n``) a farm started, said it was ready, and then
failed piecemeal: the job server lowered its --max-connections to fit (farm.server.process)
and refused most of the workers, each looping "Broken pipe; reconnecting"; the supervisor ran
out while starting workers, or hours later at a `farm ps`. So the soft limit is first raised
toward the hard one, as the server raises its own, and a farm that would not fit even so is
refused in one line (exit 2: a setting of the unit's to change, which a restart does not).
"""

from __future__ import annotations

import re

from farm.config import Config
from farm.errors import ConfigError
from farm.server.process import raise_soft_limit
from farm.server.settings import DEFAULTS, SERVER_FDS

__all__ = [
    "PER_WORKER",
    "SPARE_CONNECTIONS",
    "SUPERVISOR_FDS",
    "descriptor_refusal",
]

#: The supervisor's own, beside its workers': its log, control socket and metrics listeners,
#: selector and waker, a worker's start (its pipes before they are handed over), a control
#: client and a scrape at once, a look at /proc. An idle supervisor holds about 11.
SUPERVISOR_FDS = 24
#: Each worker's in the supervisor: its report pipe, its output pipe, its record.
PER_WORKER = 3
#: Connections to the local server beyond one a worker: callers, the supervisor's own looks
#: at the server (its metrics, command pools' jobs), `farm admin`.
SPARE_CONNECTIONS = 8

_MAX_CONNECTIONS = re.compile(r"--max-connections=(\d+)")


def descriptor_refusal(config: Config) -> ConfigError | None:
    """Why this farm does not fit the descriptor limit (raised first, ``raise_soft_limit``):
    its supervisor's own needs, or a local server whose connections (what is left of its
    hard limit past its own, SERVER_FDS) would be fewer than the workers and a spare; else
    None. ``farm scale`` past it later is not asked: its workers back off, said."""
    workers = sum(pool.workers for pool in config.functions.values())
    own = SUPERVISOR_FDS + PER_WORKER * workers
    soft, hard = raise_soft_limit(own)
    needs: list[str] = []
    least = own
    if soft != -1 and soft < own:
        needs.append(f"the supervisor needs about {own} for itself and its {workers} worker(s)")
    if config.local_server and hard != -1:
        asked = _MAX_CONNECTIONS.search(" ".join(config.server.flags))
        limit = int(asked[1]) if asked else DEFAULTS.max_connections
        wanted = min(limit, workers + SPARE_CONNECTIONS)
        least = max(least, SERVER_FDS + wanted)
        if hard - SERVER_FDS < wanted:
            fits = max(0, hard - SERVER_FDS)
            needs.append(
                f"the job server would take {fits} connection(s), fewer than its {workers}"
                f" worker(s) and {SPARE_CONNECTIONS} to spare"
            )
    if not needs:
        return None
    said = f"{soft} (hard limit {hard})" if soft != hard else str(soft)
    return ConfigError(
        f"the descriptor limit (LimitNOFILE=, ulimit -n) is {said}: {'; '.join(needs)}."
        f" Raise it to at least {least} (docs/operations.md, Descriptors), or run fewer workers"
    )
