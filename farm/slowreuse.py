"""What the two metrics endpoints share, the job server's (``--metrics``:
farm.server.exposition, farm.server.metricshttp) and the supervisor's ``/metrics``
(farm.pools.metricsapp): how long a slow answer is given again, and how many
connections each serves at once and for how long.

Each layer decides what "slow" is for itself (the server's loop serves every job, the
supervisor's scrape parses the server's text); how long a slow answer is then reused
is one rule, here, so that the two cannot drift apart; so are the connection bounds,
written twice before. Stdlib only: both the server and the pools import it, and neither
may import the other.
"""

from __future__ import annotations

__all__ = ["EVICT_AFTER", "MAX_SCRAPERS", "REUSE_FACTOR", "SCRAPE_TIMEOUT", "reuse_until"]

#: HTTP connections a metrics endpoint serves at once: any local user can reach its port,
#: and connections held open must grow neither the server's loop nor the supervisor's
#: threads without bound. Past them a new connection takes the place of the oldest one
#: that has not sent its whole request yet, else of the oldest one open for more than
#: EVICT_AFTER seconds (a scrape takes a second at most), or is closed: a local user who
#: keeps them all open does not keep Prometheus out.
MAX_SCRAPERS = 32
EVICT_AFTER = 1.0
#: Seconds a connection may stay silent: sending its request, or taking the reply.
SCRAPE_TIMEOUT = 5.0

#: A slow answer is served again, as it was, for REUSE_FACTOR times as long as it took to
#: make: whoever asks in a loop then holds the process making it 1 / (1 + REUSE_FACTOR) of
#: the time at most.
REUSE_FACTOR = 10


def reuse_until(started: float, took: float) -> float:
    """The monotonic time until which an answer begun at ``started`` that took ``took``
    seconds is given again rather than made afresh."""
    return started + (1 + REUSE_FACTOR) * took
