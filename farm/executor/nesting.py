"""An Executor used inside one of the farm's calls: which pool this process serves, and a
warning when the executor sends to that same pool (at its submit or map: one made as a
worker imports a module, a web app's module global, sends nothing by being made).

A ProcessPoolExecutor made inside a pool's call gets processes of its own. A
farm.Executor made inside a farm call queues its calls for the very workers such calls
occupy: that works while some worker of the pool is free, and waits for good once every
one runs such a call. So a warning (it lands in the farm's log, where a worker's stderr
goes), not an error.
"""

from __future__ import annotations

import warnings

__all__ = ["serving", "warn_if_nested"]

#: The function (pool) whose calls this process runs; None outside the farm's workers.
#: Set by farm.executor.call.run_call.
serving: str | None = None


def warn_if_nested(function: str) -> None:
    """Warn when an Executor for ``function`` sends from inside a call of ``function``
    (called by its submit and map: the warning names the caller's line; Python's default
    filter says it once per line)."""
    if serving == function:
        warnings.warn(
            f"farm.Executor used inside a call running on {function!r} sends its calls to"
            f" the same pool: once every worker of {function!r} runs such a call, they all"
            " wait for each other for good. Send the inner calls to a pool of their own"
            " (farm.Executor(function='farm.inner') and that pool in farm.toml;"
            " docs/executor.md)",
            RuntimeWarning,
            stacklevel=3,
        )
