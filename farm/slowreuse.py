"""A slow answer given again: the rule the job server's metrics exposition
(farm.server.exposition) and the supervisor's ``/metrics`` endpoint
(farm.pools.metricsendpoint) share.

Each layer decides what "slow" is for itself (the server's loop serves every job, the
supervisor's scrape parses the server's text); how long a slow answer is then reused
is one rule, here, so that the two cannot drift apart. Stdlib only: both the server and
the pools import it, and neither may import the other.
"""

from __future__ import annotations

__all__ = ["REUSE_FACTOR", "reuse_until"]

#: A slow answer is served again, as it was, for REUSE_FACTOR times as long as it took to
#: make: whoever asks in a loop then holds the process making it 1 / (1 + REUSE_FACTOR) of
#: the time at most.
REUSE_FACTOR = 10


def reuse_until(started: float, took: float) -> float:
    """The monotonic time until which an answer begun at ``started`` that took ``took``
    seconds is given again rather than made afresh."""
    return started + (1 + REUSE_FACTOR) * took
