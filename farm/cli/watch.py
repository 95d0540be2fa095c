"""What the CLI shows while something goes on: a line redrawn in place, a progress bar,
the process table of `farm ps`, and `farm stop` following the drain. (`farm ps --watch` is
`farm top`'s live view: farm/cli/top.py.)"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import typer

from farm.cli.app import fail, typed
from farm.cli.rows import cells, ljust, state_text

if TYPE_CHECKING:
    import ssl

#: Seconds `farm submit` waits before it checks that some worker has the function.
NO_WORKER_AFTER = 3.0

PS_HEADER = ("PID", "FUNCTION", "SLOT", "CPU", "STATE", "JOBS", "RSS", "RESTARTS", "UPTIME", "JOB")


class LiveLine:
    """One status line: redrawn in place on a terminal; elsewhere printed when its text
    changes (a log reads as a history, not as a stream of carriage returns)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}")
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take the line away (on a terminal) before other output is written."""
        if self.tty and self.last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self.last = ""


def progress_bar(numerator: int, denominator: int, width: int = 30) -> str:
    """WORK_STATUS as a bar: ``[#######.......]  50% (5/10)``; no total: just the count."""
    if denominator <= 0:
        return f"[{'?' * width}] {numerator}"
    done = max(0.0, min(1.0, numerator / denominator))
    filled = int(done * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:4.0%} ({numerator}/{denominator})"


def ps_lines(rows: Sequence[dict[str, Any]], width: int | None = None) -> list[str]:
    """`farm ps`'s table; a busy worker's JOB is its job handle and how long it has run.
    ``width``: the terminal's columns (None: no screen to fit, the lines as wide as they
    are); lines that fit it are drawn as ever, the others fitted (``_fitted``)."""
    if width is not None and width < PS_NARROWEST:
        width = None  # not even PID, FUNCTION and STATE fit: fitting would only shred it
    table = [PS_HEADER] + [
        (
            _cell(r["pid"]),
            r["function"],
            _cell(r["slot"]),
            _cell(r["cpu"]),
            state_text(r),
            str(r["jobs"]),
            f"{r['rss'] / 2**20:.1f}M" if r["rss"] else "-",
            str(r["restarts"]),
            duration(r["uptime"]),
            _job(r),
        )
        for r in rows
    ]
    lines = _fitted(table, width)
    # Why a slot (or the server) has no serving process: the table said "failing" and
    # the journal alone said why.
    from farm.logs import escape_controls

    # A Python worker's boot error is its exception's text, a command's its output: the
    # terminal would obey an escape in them, as the journal's lines escape them too.
    # A starting command worker that registered other names: that, not its predecessor's end.
    why = [
        f"{_place(r)} {r['state']}: {escape_controls(r.get('not_serving') or r['last_exit'])}"
        for r in rows
        if r["state"] in NOT_SERVING and (r.get("not_serving") or r.get("last_exit"))
    ]
    return lines + ([""] + [part for line in why for part in _folded(line, width)] if why else [])


#: Cells between two columns of `farm ps`.
GAP = 2
#: The columns a narrow terminal keeps, whatever else it leaves out: the pid, what the
#: process is, its state (and JOB, in its column or under its row).
PS_KEPT = (PS_HEADER.index("PID"), PS_HEADER.index("FUNCTION"), PS_HEADER.index("STATE"))
PS_JOB = PS_HEADER.index("JOB")
#: Below this many columns the kept headers alone do not fit: nothing is fitted then.
PS_NARROWEST = sum(len(PS_HEADER[i]) for i in PS_KEPT) + GAP * (len(PS_KEPT) - 1)


def _fitted(table: list[tuple[str, ...]], width: int | None) -> list[str]:
    """``table``'s lines within ``width`` cells. One that fits is drawn as ever. Else the
    columns right of STATE other than JOB, then CPU and SLOT, are left out, from the right,
    until it fits, and a note under it names them; when PID, FUNCTION, STATE and JOB alone
    are still too wide, each job goes on a line of its own under its row, as many of the
    other columns coming back as fit, and FUNCTION and STATE are wrapped within their
    columns (a number is never cut). At 40 columns a busy worker's handle was wrapped by
    the terminal onto the next row's place, every cell after it off its header."""
    natural = [max(cells(row[i]) for row in table) for i in range(len(PS_HEADER))]

    def span(shown: list[int]) -> int:
        return sum(natural[i] for i in shown) + GAP * (len(shown) - 1)

    every = list(range(len(PS_HEADER)))
    if width is None or span(every) <= width:
        return _drawn(table, every, natural, None)
    for under in (False, True):  # the job in its column while the kept columns fit with it
        shown = [i for i in every if not (under and i == PS_JOB)]
        droppable = [i for i in shown if i not in PS_KEPT and i != PS_JOB]
        while span(shown) > width and droppable:
            shown.remove(droppable.pop())
        if span(shown) <= width:
            break
    widths = list(natural)
    text = (PS_KEPT[1], PS_KEPT[2])  # FUNCTION, STATE
    # Wrapped between words first ("running (not checked)"), then within them, down to
    # the header's width.
    words = {i: max(cells(w) for row in table for w in row[i].split(" ")) for i in text}
    excess = span(shown) - width
    for floors in (words, {i: cells(PS_HEADER[i]) for i in text}):
        while excess > 0:  # the wider text column gives a cell
            wrappable = [i for i in text if widths[i] > floors[i]]
            if not wrappable:
                break  # narrower than the headers: lines run past it, as they must
            widths[max(wrappable, key=lambda i: widths[i])] -= 1
            excess -= 1
    lines = _drawn(table, shown, widths, width if under else None)
    left_out = [PS_HEADER[i] for i in every if i not in shown and i != PS_JOB]
    if left_out:
        note = f"{', '.join(left_out)} left out (a wider terminal shows them)"
        lines += _folded(note, width, indent="")
    return lines


def _drawn(
    table: list[tuple[str, ...]], shown: list[int], widths: list[int], under: int | None
) -> list[str]:
    """The ``shown`` columns of ``table``, each cell padded to (or wrapped within) its
    width; ``under``: the JOB column goes under each busy row instead, within that width."""
    lines = []
    for n, row in enumerate(table):
        parts = [_folded(row[i], widths[i], indent="") for i in shown]
        for k in range(max(len(p) for p in parts)):
            cell = [p[k] if k < len(p) else "" for p in parts]
            padded = (ljust(c, widths[i]) for c, i in zip(cell, shown, strict=True))
            lines.append("  ".join(padded).rstrip())
        if under is not None and n and row[PS_JOB] != "-":
            indent = " " * (widths[shown[0]] + GAP)  # under FUNCTION: the row's own
            lines += [indent + part for part in _folded(f"job {row[PS_JOB]}", under - len(indent))]
    return lines


def _folded(text: str, width: int | None, indent: str = "  ") -> list[str]:
    """``text`` in lines of at most ``width`` cells (None: one line), broken at spaces,
    within a word only where it is longer than a line; the lines after the first indented.
    One pass, each character measured once: a worker's last line may be 64 KiB."""
    if width is None or cells(text) <= width:
        return [text]
    following = max(width - cells(indent), 1)  # the room of each line after the first
    lines: list[str] = []
    line, used, room = "", 0, max(width, 1)
    for word in text.split(" "):
        size = cells(word)
        gap = 1 if line else 0
        if used + gap + size <= room:
            line, used = line + " " * gap + word, used + gap + size
            continue
        if size <= following:  # on a line of its own
            lines.append(line)
            line, used, room = word, size, following
            continue
        if line:  # longer than any line: broken wherever it goes, from this line on
            line, used = line + " ", used + 1
        for char in word:
            wide = cells(char)
            if used + wide > room and line.strip(" "):
                lines.append(line.rstrip(" "))
                line, used, room = "", 0, following
            line, used = line + char, used + wide
    lines.append(line)
    return [lines[0]] + [indent + rest for rest in lines[1:]]


def terminal_width() -> int | None:
    """The columns `farm ps` fits its lines to: $COLUMNS where set (as rich reads it for
    `farm top`), else standard output's terminal's; None into a pipe or a file (grep, a cron
    job's mail): no screen to fit there, and each line as wide as it is."""
    import os

    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:  # not "²"
        return int(columns)
    try:
        if sys.stdout.isatty():
            return os.get_terminal_size(sys.stdout.fileno()).columns or None
    except (OSError, ValueError):  # a stream without a descriptor (a test's runner)
        pass
    return None


def _place(row: dict[str, Any]) -> str:
    """A row's name as the log writes it: ``bad#0 cpu1``, or ``server``."""
    from farm.pools.slots import worker_name

    if row["slot"] is None:
        return str(row["function"])
    return worker_name(row["function"], row["slot"], row["cpu"])


#: A slot's states with no serving process, the last one's end said under `farm ps`.
NOT_SERVING = ("failing", "backoff", "starting")


def follow_stop(path: str, wait: float, config: dict[str, str] | None = None) -> None:
    """Ask the supervisor to stop and show the drain as it goes (workers left, seconds
    left), then what it killed; exit 1 if it is still there after ``wait`` seconds.
    ``config``: the one the user named, which the supervisor refuses if it runs another."""
    from farm.pools.control import ControlUnavailable, follow, request

    deadline = time.monotonic() + wait
    line = LiveLine(sys.stdout)
    pid: object = None
    killed: list[dict[str, Any]] = []
    message: dict[str, Any] = {"cmd": "stop", "follow": True}
    message.update(config or {})
    replies = follow(path, message, timeout=max(wait, 1.0))
    try:
        for news in replies:
            if pid is None:
                if not news.get("ok"):
                    said = str(news.get("error", "the supervisor refused"))
                    # In the supervisor's words (as ask_supervisor's): --help would not fix it.
                    fail(said, 2 if news.get("usage") else 1, usage=False)
                pid = news.get("pid")
                continue
            killed = news.get("killed", killed)
            if news.get("done") or time.monotonic() > deadline:
                break
            left, workers = news.get("seconds_left"), news.get("workers")
            said = f"draining: {workers} worker{'' if workers == 1 else 's'} left"
            # What workers detached: the farm waits for those too (an older supervisor: none).
            if detached := news.get("detached", 0):
                said += f", {detached} detached process{'' if detached == 1 else 'es'}"
            if left is not None:
                said += f", {max(0.0, left):.0f}s before SIGKILL"
            line.show(said)
    except ControlUnavailable as e:
        if pid is None:
            fail(str(e), 1)  # nobody to stop; once asked, a closed socket means it has gone
    finally:
        replies.close()
    line.clear()
    while time.monotonic() < deadline:
        try:
            request(path, {"cmd": "ping"}, timeout=1.0)
        except ControlUnavailable:
            for k in killed:
                typer.echo(f"killed worker {k['worker']} (pid {k['pid']}): {k['reason']}")
            typer.echo(f"stopped (supervisor {pid})")
            return
        time.sleep(0.1)  # polling another process's exit
    fail(f"supervisor {pid} is still draining after {wait:g}s", 1)


class UnservedHint:
    """`farm submit`'s no-worker hint, looked for in a timer thread. ``cancel`` (the call
    ended) silences it for good: Timer.cancel() alone stops only a look that has not begun,
    and one already asking the servers printed "the job waits until one does" after the
    call had failed ("not done within 3.0s")."""

    def __init__(self, look: Callable[[], str | None], within: float | None) -> None:
        self._lock = threading.Lock()  # the hint said, or the call ended: one, then not the other
        self._ended = False
        self._look = look
        self._timer = threading.Timer(NO_WORKER_AFTER, self._say)
        self._timer.daemon = True
        # A call given up by then (--timeout no longer than the wait) is never hinted at.
        if within is None or within > NO_WORKER_AFTER:
            self._timer.start()

    def _say(self) -> None:
        hint = self._look()
        with self._lock:
            if hint is not None and not self._ended:
                typer.echo(hint, err=True)

    def cancel(self) -> None:
        """The call ended: nothing is said from now on (a hint being written is let end)."""
        with self._lock:
            self._ended = True
        self._timer.cancel()

    def join(self, timeout: float | None = None) -> None:
        if self._timer.is_alive():
            self._timer.join(timeout)


def warn_if_unserved(
    addresses: Sequence[str],
    function: str,
    tls: ssl.SSLContext | None = None,
    within: float | None = None,
) -> UnservedHint:
    """After NO_WORKER_AFTER seconds, say on stderr when no worker has registered
    ``function`` at any of ``addresses`` that answers (the job would wait silently); the
    caller cancels it when the job ends, and ``within``, its timeout, may end it first.
    Which of several servers took the job is the client's choice (a key's server,
    rotation, failover): where one has a worker the job may well run there, and a hint
    naming another would be false."""

    def look() -> str | None:
        from farm.client.admin import admin_query
        from farm.protocol.admin import parse_status, workers_serving

        unserved = []
        for address in addresses:
            try:
                reply = admin_query(address, "status", tls=tls, errors="surrogateescape")
                rows = parse_status(reply)
            except Exception:  # only a hint: a server that cannot say is left out of it
                continue
            if workers_serving(rows, function):  # by its bytes, as the Executor counts
                return None
            unserved.append(address)
        if not unserved:
            return None
        return (
            f"farm: no worker has registered {typed(function)} at {' or '.join(unserved)};"
            " the job waits until one does (Ctrl-C or --timeout to give up)"
        )

    return UnservedHint(look, within)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _job(row: dict[str, Any]) -> str:
    handle = row.get("job")
    if not handle:
        return "-"
    busy = row.get("busy_for")
    gone = ", server gone" if row.get("server_gone") else ""  # its answer goes nowhere
    return f"{handle} ({busy:.1f}s{gone})" if busy is not None else str(handle)
