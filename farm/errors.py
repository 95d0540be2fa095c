"""One exception hierarchy for users of farm's libraries and tools."""

from __future__ import annotations

from typing import Any


class FarmError(Exception):
    """Base of every error farm raises on purpose."""


class ConfigError(FarmError):
    """A configuration mistake: names the file, the key and the fix in one line."""


class WorkingDirectoryGone(ConfigError):
    """The working directory was removed under this process (``cd /tmp/x && rmdir
    /tmp/x``): a usage error (exit 2) of whichever command needed it."""


class TLSFileError(FarmError):
    """A certificate, key or CA file cannot be used; the message names the file."""


class ServerUnavailable(FarmError, ConnectionError):
    """No job server could be reached (the message lists those tried)."""


class ServerError(FarmError):
    """The job server answered with a Gearman ERROR packet."""

    def __init__(self, code: str, text: str, function: str | None = None) -> None:
        said = f"{code}: {text}" if text else code
        # The server's ERROR names no job: a submit's says which function it refused
        # ("function name holds a control character"), among a map's or an Executor's many.
        super().__init__(said if function is None else f"{said} (function {function!r})")
        self.code = code
        self.text = text
        #: The function of the job the server refused, when the ERROR answered a submit.
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (an Executor's call, a process pool) or copied, an exception is made again
        # from ``args``, its message alone, which this __init__ does not take (TypeError).
        return type(self), (self.code, self.text, self.function), self.__dict__


class JobError(FarmError):
    """A job did not produce a result."""


class JobFailed(JobError):
    """The worker (or the server, after too many retries) failed the job: WORK_FAIL.

    ``warning``: the job's last WORK_WARNING before it, as text (its first 500 bytes, the
    newline it ends with taken off), else None: WORK_FAIL carries no reason, and a farm
    worker says why in a warning first (past kill_rss_mb), which the message quotes.
    ``reason``: why the server failed it (its timeout, its retries, an operator's cancel),
    where farm's server said (docs/held-grab.md, fail-reason), else None."""

    def __init__(
        self, *args: object, warning: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(*args)
        # Kept in __dict__, which pickling keeps beside ``args`` (an Executor's call).
        self.warning = warning
        self.reason = reason


class JobException(JobError):
    """The worker function raised; ``text`` is what the worker sent (WORK_EXCEPTION)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Timeout(JobError, TimeoutError):
    """The caller's timeout ran out before the job ended."""


class WorkerLost(JobError):
    """The worker running the call died, so the call's outcome is unknown."""


class PythonVersionMismatch(FarmError):
    """An Executor call's function, initializer or arguments (or its result) hold code
    pickled by value -- a lambda, a closure, a function or class of the script -- by
    another Python minor version than the reader's: refused before it is unpickled, since
    bytecode is only valid for the version that made it (farm/executor/bytecode.py)."""
