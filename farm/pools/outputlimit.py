"""How much of a command worker's output reaches the log: a token bucket per process.

`command = ["yes", "spam"]` made the supervisor log ~39,000 lines a second, and
journald's rate limit (per service, so per farm) then dropped the farm's own
warnings with them. Each process may log a burst, then a steady rate; what is
over is dropped and counted, and the count is logged (farm.pools.reports).
Nothing here does I/O, so the policy is testable without processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OUTPUT_BURST", "OUTPUT_RATE", "DROPS_EVERY", "OutputLimit"]

#: Lines a process may log at once: a fresh one's whole start-up (a stack trace of a
#: worker that cannot start runs to tens of lines, a chatty one's banner to a hundred) is
#: always seen, as each process of a slot starts with a full bucket.
OUTPUT_BURST = 300
#: Lines a second after the burst. journald lets a service log 10,000 lines in 30 s by
#: default (RateLimitIntervalSec=, RateLimitBurst=): a slot logs at most 300 + 30 × 20 =
#: 900 of them, so ten flooding slots leave room for the farm's own lines.
OUTPUT_RATE = 20.0
#: Seconds between the lines that say how many lines were dropped, per process.
DROPS_EVERY = 10.0


@dataclass(eq=False, kw_only=True)
class OutputLimit:
    """One process's output budget: ``admit`` each line; ``drops_due`` says what to report."""

    burst: int = OUTPUT_BURST
    rate: float = OUTPUT_RATE
    tokens: float = field(init=False)  # lines it may log now: a fresh process, its burst
    stamp: float | None = None  # when tokens was last brought up to date
    dropped: int = 0  # lines dropped since the last report of them
    since: float = 0.0  # when the first of them was dropped

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def admit(self, now: float) -> bool:
        """Whether a line output at ``now`` is logged (else it is counted as dropped)."""
        if self.stamp is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        if not self.dropped:
            self.since = now
        self.dropped += 1
        return False

    def drops_due(self, now: float, *, final: bool = False) -> tuple[int, float]:
        """(lines dropped, over how many seconds) to report now, and forget; (0, 0.0) when
        none is due: once ``DROPS_EVERY`` seconds after the first of them, or at the
        process's end (``final``), so a flood costs one line each interval."""
        if not self.dropped or (not final and now - self.since < DROPS_EVERY):
            return 0, 0.0
        dropped, span = self.dropped, now - self.since
        self.dropped = 0
        return dropped, span
