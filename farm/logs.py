"""How farm's processes log: readable text (the default) or one JSON object a line.

One module for the supervisor, the job server and the workers, so the three write the
same fields. A JSON record holds ``time`` (UTC, ISO 8601), ``level``, ``role``
(supervisor, server or worker), ``pid``, ``logger`` and ``message``; ``slot``,
``function`` and ``job`` (a job handle) where there is one -- a worker process knows its
slot and function, and a call may name them with ``extra={"function": ..., "job": ...}``;
``exc_info`` holds a traceback as one string, so a traceback stays one record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from farm.paths import open_own_file

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "setup_logging",
    "reopen_log_file",
    "journal_priorities",
    "relays_json",
    "write_relayed",
]

#: The values of --log-format and ``[supervisor] log_format``.
LOG_FORMATS = ("text", "json")

#: Fields a log call may add with ``extra=``.
_EXTRA = ("slot", "function", "job")


class JsonFormatter(logging.Formatter):
    """One JSON object a record; ``role``, ``slot`` and ``function`` fill what a record
    does not say itself."""

    def __init__(self, role: str, *, slot: int | None = None, function: str | None = None):
        super().__init__()
        self.fixed: dict[str, Any] = {"role": role, "slot": slot, "function": function}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "role": self.fixed["role"],
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA:
            value = record.__dict__.get(key, self.fixed.get(key))
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = record.stack_info
        return _json_controls(json.dumps(out, ensure_ascii=False, default=str))


#: C0 controls but the tab, DEL and C1 controls, each shown as ``\xNN`` (``\n`` and
#: ``\r`` as such) in a text log line.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09}
_CONTROLS.update({0x0A: "\\n", 0x0D: "\\r"})
#: Every control character as a JSON escape: json.dumps escapes C0 but leaves DEL and C1
#: raw, and a JSON line keeps no raw control character that this would spoil.
_JSON_CONTROLS = {c: f"\\u{c:04x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def escape_controls(text: str) -> str:
    """``text`` without control characters: what a log line quotes may come from anyone
    (a command worker's output, a function name a TCP peer chose), and a terminal that
    shows the log (``journalctl``, ``tail -f``) would obey an escape sequence, and a
    newline would start a line that reads as the farm's own record."""
    return text.translate(_CONTROLS) if not text.isprintable() else text


def _json_controls(text: str) -> str:
    """A JSON line with no raw control character, and still the same JSON."""
    return text.translate(_JSON_CONTROLS) if not text.isprintable() else text


class TextFormatter(logging.Formatter):
    """The readable format, with control characters in a record's message escaped
    (escape_controls); a traceback after it keeps its lines, each escaped (an exception's
    message may quote what a caller sent)."""

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format keeps a traceback's text in record.exc_text, which every
        # handler of the record reads: one with a stock formatter ahead of this one (a
        # library's handler, pytest 9.2's log capture) left the raw text there, written out
        # as it was. So this one makes its own each time, and leaves the record as it found it.
        cached = record.exc_text
        if record.exc_info:
            record.exc_text = None  # super() calls formatException
        elif cached:  # a record with no exc_info left (one sent from another process)
            record.exc_text = self._escaped(cached)
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return self._escaped(super().formatException(ei))

    @staticmethod
    def _escaped(traceback: str) -> str:
        return "\n".join(_unlike_a_record(escape_controls(line)) for line in traceback.split("\n"))


#: What a traceback itself prints at the start of a line: its head, the words between the
#: exceptions of a chain, and an exception's name (``ValueError: ...``, ``pkg.Error``).
_TRACEBACK_WORDS = frozenset(
    {
        "Traceback (most recent call last):",
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
    }
)
_EXCEPTION_HEAD = re.compile(r"[A-Za-z_][\w.]*(?::|$)")


def _unlike_a_record(line: str) -> str:
    """A traceback's line, indented unless the traceback itself prints it at the start of a
    line (its frames are indented already): an exception's message of several lines
    (`ValueError(f"bad row {row}")`, its row a caller's) put a line of its own in the log,
    "2026-12-06 16:44:20,000 farm[1] ERROR ..." or, under journald, "ERROR pool ...", which
    read as one the farm wrote."""
    if not line or line[0] in " \t" or line in _TRACEBACK_WORDS or _EXCEPTION_HEAD.match(line):
        return line
    return "  " + line


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def setup_logging(
    *,
    role: str,
    log_format: str = "text",
    level: int = logging.INFO,
    text_format: str,
    stream: IO[str] | None = None,
    filename: str | None = None,
    slot: int | None = None,
    function: str | None = None,
    journal: bool | None = None,
    journal_format: str | None = None,
    mark: str = "",
) -> None:
    """Configure the root logger of this process (as logging.basicConfig: once).

    ``text_format`` is the process's readable format, kept exactly as it was; with
    ``log_format="json"`` each record is a JsonFormatter line instead. ``journal``: each
    line carries its priority for journald (None: when the stream is the journal's), and
    is written in ``journal_format``, by default ``text_format`` without its time: journald
    records each line's time, and its writer's name and pid, which `journalctl` showed
    twice ("Dec 06 16:44:12 host farm[29924]: 2026-12-06 16:44:12,000 farm[29924] ...").
    ``mark``: each line starts with it (a supervised worker's: farm.logrelay).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: one of {', '.join(LOG_FORMATS)}")
    if filename:
        # Not logging.FileHandler: it would follow a link planted at the path (see
        # paths.open_own_file). Appending, so logrotate's copytruncate works.
        stream = _open_log(filename)
    handler = logging.StreamHandler(stream or sys.stderr)
    global _log_file, _handler
    _log_file = (filename, handler) if filename else None
    _handler = handler
    if journal is None:
        journal = not filename and _to_journal(stream or sys.stderr)
    if journal:
        text_format = journal_format or text_format.removeprefix("%(asctime)s ")
    formatter: logging.Formatter = (
        JsonFormatter(role, slot=slot, function=function)
        if log_format == "json"
        else TextFormatter(text_format)
    )
    if journal:
        formatter = _JournalPriority(formatter)
    if mark:
        formatter = _Marked(formatter, mark)
    handler.setFormatter(formatter)
    global _relayed
    _relayed = _json_controls if log_format == "json" else escape_controls
    logging.basicConfig(level=level, handlers=[handler])
    if log_format == "json":
        _log_what_python_prints(logging.getLogger(f"farm.{role}"))


def _log_what_python_prints(log: logging.Logger) -> None:
    """What Python itself writes on stderr, as records of the JSON log: a warning
    (``py.warnings``, WARNING), an exception no code caught, the main thread's or
    another's (CRITICAL, its traceback one ``exc_info``), and one Python could not raise
    (ERROR: "Exception ignored in", a ``__del__``'s). Its text, a traceback's lines
    each, stopped `jq` at the first, and every record after it went unseen."""
    logging.captureWarnings(True)

    def uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):  # ^C: Python's own word, no record
            sys.__excepthook__(kind, value, tb)
            return
        log.critical("uncaught %s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:  # as threading's own hook: a thread's quiet end
            return
        where = args.thread.name if args.thread is not None else "?"
        exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
        log.critical("uncaught %s in thread %s", args.exc_type.__name__, where, exc_info=exc_info)

    def unraisable(what: Any) -> None:  # "Exception ignored in": a __del__'s, say
        exc_info = (what.exc_type, what.exc_value or what.exc_type(), what.exc_traceback)
        log.error("%s: %r", what.err_msg or "Exception ignored in", what.object, exc_info=exc_info)

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
    sys.unraisablehook = unraisable


#: The file this process logs to, and its handler (reopen_log_file).
_log_file: tuple[str, logging.StreamHandler[IO[str]]] | None = None
#: The handler setup_logging made (write_relayed writes through it).
_handler: logging.StreamHandler[IO[str]] | None = None
#: What write_relayed does to a line: no raw control character reaches the log, and a JSON
#: line stays valid JSON.
_relayed: Callable[[str], str] = escape_controls


def journal_priorities() -> bool:
    """Whether this process's log lines carry their priority for journald (setup_logging)."""
    formatter = _handler.formatter if _handler is not None else None
    if isinstance(formatter, _Marked):
        formatter = formatter.inner
    return isinstance(formatter, _JournalPriority)


def relays_json() -> bool:
    """Whether this process logs JSON lines, which a relayed line must be as well."""
    return _relayed is _json_controls


def write_relayed(lines: list[str]) -> None:
    """Write lines another process formatted (farm.logrelay) on this process's log stream,
    their control characters escaped, under its handler's lock: whole lines, between this
    process's own records, never inside one."""
    if not lines:
        return
    handler = _handler
    text = "".join(_relayed(line) + "\n" for line in lines)
    # A log that cannot be written (the terminal `farm up` ran in closed: EIO; a pipe whose
    # reader left: EPIPE) loses the lines, as logging's handleError drops a record of this
    # process's own: raised here, in the supervisor's loop, it took the whole farm down.
    with contextlib.suppress(OSError):
        if handler is None:
            sys.stderr.write(text)
            return
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(text)
            handler.flush()


def _open_log(filename: str) -> IO[str]:
    return os.fdopen(open_own_file(filename, append=True), "a", encoding="utf-8", buffering=1)


def reopen_log_file() -> str | None:
    """Open the log file again at its path (logrotate moved it away and sent SIGHUP, as
    for gearmand); the path, or None when this process logs to no file. OSError when it
    cannot be opened: the old file is kept then."""
    if _log_file is None:
        return None
    filename, handler = _log_file
    old = handler.setStream(_open_log(filename))
    if old is not None:
        old.close()
    return filename


def _to_journal(stream: IO[str]) -> bool:
    """Whether ``stream`` is systemd's journal stream ($JOURNAL_STREAM names its device and
    inode), where a line's ``<N>`` prefix sets its priority."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{info.st_dev}:{info.st_ino}"


def error_line(
    line: str,
    stream: IO[str] | None = None,
    *,
    log_format: str = "text",
    role: str = "supervisor",
) -> str:
    """A line for stderr that says why a process gives up: marked an error (``<3>``, which
    journald reads as its priority and strips) when stderr is the journal, so that
    `journalctl -p warning` shows why `farm up` or its job server exited; else as it is.
    With ``log_format="json"`` it is a record as every other line of that log (level ERROR,
    ``role``'s): a plain line there stopped `jq` at it, and every line after it went unseen
    (said before the log is set up too: a config refused at start)."""
    if log_format == "json":
        record = logging.LogRecord(f"farm.{role}", logging.ERROR, __file__, 0, line, None, None)
        line = JsonFormatter(role).format(record)
    return f"<3>{line}" if _to_journal(stream or sys.stderr) else line


class _JournalPriority(logging.Formatter):
    """Each line with its syslog priority as ``<N>``, which journald reads and strips, so
    that ``journalctl -p warning`` finds warnings and errors (every line was "info")."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelno
        priority = 7 if level < 20 else 6 if level < 30 else 4 if level < 40 else 3
        prefix = f"<{2 if level >= 50 else priority}>"
        return prefix + self.inner.format(record).replace("\n", "\n" + prefix)


#: The letter after a worker's mark on each of its lines (_Marked): its record's level, at
#: which the supervisor logs a piece of a line it cut (farm.logrelay).
MARK_LEVELS = {
    "D": logging.DEBUG,
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "C": logging.CRITICAL,
}


class _Marked(logging.Formatter):
    """Each line with ``mark`` before it, then its record's level (a letter of MARK_LEVELS;
    its journal priority after them, which the supervisor passes on): a supervised
    worker's stdout and stderr are one pipe, which its jobs and their children write to as
    well, and the mark, a secret the supervisor gave this process alone, is how it tells
    the worker's records from their lines. The level is said beside the mark, not read
    from the line: a traceback's lines have no header, and what they say (an exception's
    message, a job's input) may look like one ("[1] CRITICAL ...")."""

    def __init__(self, inner: logging.Formatter, mark: str) -> None:
        super().__init__()
        self.inner = inner
        self.mark = mark

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelno
        letter = "D" if level < 20 else "I" if level < 30 else "W" if level < 40 else "E"
        prefix = self.mark + ("C" if level >= 50 else letter)
        return prefix + self.inner.format(record).replace("\n", "\n" + prefix)
