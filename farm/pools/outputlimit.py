"""How much of a worker's output reaches the log: a token bucket per process.

`command = ["yes", "spam"]` made the supervisor log ~39,000 lines a second, and
journald's rate limit (per service, so per farm) then dropped the farm's own
warnings with them. Each process may log a burst, then a steady rate; what is
over is dropped and counted, and the count is logged (farm.pools.reports).
A flood is read in large pieces and its lines only counted (``OutputLines``): the
supervisor spent a core splitting and decoding `yes`'s lines to drop them.
Nothing here does I/O, so the policy is testable without processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "OUTPUT_BURST",
    "OUTPUT_RATE",
    "DROPS_EVERY",
    "LONGEST_LINE",
    "OutputLimit",
    "OutputLines",
]

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

    def admit_many(self, count: int, now: float) -> int:
        """How many of ``count`` lines output at ``now`` are logged (the first ones); the
        rest are counted as dropped. ``admit`` for a piece of output at once."""
        if self.stamp is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        admitted = min(count, int(self.tokens))
        self.tokens -= admitted
        if count > admitted:
            if not self.dropped:
                self.since = now
            self.dropped += count - admitted
        return admitted

    @property
    def flooding(self) -> bool:
        """Whether its last output went past the budget (its next line would be dropped)."""
        return self.tokens < 1.0

    def drops_due(self, now: float, *, final: bool = False) -> tuple[int, float]:
        """(lines dropped, over how many seconds) to report now, and forget; (0, 0.0) when
        none is due: once ``DROPS_EVERY`` seconds after the first of them, or at the
        process's end (``final``), so a flood costs one line each interval."""
        if not self.dropped or (not final and now - self.since < DROPS_EVERY):
            return 0, 0.0
        dropped, span = self.dropped, now - self.since
        self.dropped = 0
        return dropped, span


#: A line this long with no end yet is taken as a line of its own (a binary blob, a
#: progress bar redrawn with \r): the supervisor holds no more of it.
LONGEST_LINE = 65536
#: Lines looked at, from the end of a piece of output, for the one its end's log quotes.
LAST_WORDS_LOOK = 64
#: A line that continues the message before it: indented (a trace's frames, PHP's
#: "  thrown in"), or PHP's "Stack trace:" and "#0 FILE(3): ..." frames.
_TRACE_TAIL = re.compile(r"\s|(PHP )?Stack trace:|#\d+ |PHP +\d+\. ")
#: The syslog priority a Python worker's line starts with when it goes to the journal
#: (farm.logs): not part of what it said.
_PRIORITY = re.compile(r"<\d>")


@dataclass(eq=False)
class OutputLines:
    """A process's stdout and stderr as they come off its pipe: the whole lines its budget
    admits, the rest counted; and the line its end's log quotes (``last_words``)."""

    limit: OutputLimit = field(default_factory=OutputLimit)
    last_words: str = ""
    last_words_at: float = 0.0  # when it was read off the pipe (monotonic): how old it is
    _part: bytes = b""  # the start of a line whose end has not come yet
    # What each of a Python worker's own log lines starts with (farm.logrelay): not part of
    # what it said, and never logged.
    mark: str = ""
    # Whether the first of the lines ``take`` gave last is the rest of the last line of the
    # take before, which it cut at LONGEST_LINE; whether its own last line is cut so.
    continues: bool = False
    cut: bool = False
    # The level of a Python worker's own record whose line was cut so, for its rest
    # (farm.logrelay.relay_lines): that is no less the worker's than its start.
    own_cut: int | None = None

    def take(self, data: bytes, now: float, *, final: bool = False) -> list[str]:
        """The lines of ``data`` to log (``final``: its end, so an unended last line too).
        Past the budget a line costs no Python: lines are counted, not split or decoded."""
        if self._part:
            data = self._part + data
        end = data.rfind(b"\n") + 1
        if final:
            whole, self._part = data, b""
        elif len(data) - end > LONGEST_LINE:
            # Never inside a mark: a piece of it at each side of the cut, both logged, told
            # whoever reads the log the whole of it.
            keep = len(data) - _mark_start(data, self.mark.encode())
            whole, self._part = data[:keep], data[keep:]
        else:
            whole, self._part = data[:end], data[end:]
        if not whole:
            return []
        continues, self.cut = self.cut, not final and not whole.endswith(b"\n")
        count = whole.count(b"\n") + (not whole.endswith(b"\n"))
        self.note_last_words(whole, now)
        admitted = self.limit.admit_many(count, now)
        if not admitted:
            self.cut = False  # its rest continues nothing logged
            return []
        if admitted < count:  # only as much as is logged is split: the burst's worth at most
            self.cut = False  # the cut line was dropped
            cut = 0
            for _ in range(admitted):
                cut = whole.index(b"\n", cut) + 1
            whole = whole[:cut]
        lines = whole.split(b"\n")
        if whole.endswith(b"\n"):
            lines.pop()
        self.continues = continues
        return [_text(line) for line in lines]

    def note_last_words(self, whole: bytes, now: float) -> None:
        """Keep the line the log of its end will quote: the last one that is not the tail of
        a stack trace (PHP's uncaught exception ends with "  thrown in FILE on line N",
        Java's with "\tat ..."; the line that began it says what was thrown). Read back
        from the end, a few lines at most: a flood's last line is found at once."""
        stop = len(whole) - whole.endswith(b"\n")
        first = ""
        for _ in range(LAST_WORDS_LOOK):
            start = whole.rfind(b"\n", 0, stop) + 1
            line = _text(whole[start:stop])
            # The mark starts each of the worker's records, wherever in a line (a child's
            # output with no newline before it): what is between two is one thing said.
            parts = line.split(self.mark) if self.mark else [line]
            # After each mark, the letter of its record's level (farm.logs._Marked): unsaid.
            parts[1:] = [part[1:] for part in parts[1:]]
            for part in reversed(parts):
                if (said := _PRIORITY.match(part)) is not None:
                    part = part[said.end() :]
                if part.strip():
                    if not _TRACE_TAIL.match(part):
                        self.last_words, self.last_words_at = part, now
                        return
                    first = part
            if not start:
                break
            stop = start - 1
        if not self.last_words and first:
            self.last_words, self.last_words_at = first, now  # a tail alone: nothing better


def _mark_start(data: bytes, mark: bytes) -> int:
    """How many bytes at the end of ``data`` may be the start of ``mark`` (its rest to come),
    or the whole of it, or it and the letter of its record's level after it
    (farm.logs._Marked): the record after it then starts the next piece, as its own."""
    if mark and data[-len(mark) - 1 : -1] == mark:
        return len(mark) + 1
    for size in range(min(len(mark), len(data)), 0, -1):
        if data.endswith(mark[:size]):
            return size
    return 0


def _text(line: bytes) -> str:
    return line.decode(errors="replace").rstrip("\r")
