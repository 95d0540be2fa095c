"""farm: a Gearman-compatible compute farm for one multi-core host.

The public face: ``Client``, ``AsyncClient``, ``Worker``, ``Executor`` and the
errors. The libraries are imported on first use so that ``import farm`` stays
cheap for worker processes and tools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farm.errors import (
    ConfigError,
    FarmError,
    JobError,
    JobException,
    JobFailed,
    PythonVersionMismatch,
    ServerError,
    ServerUnavailable,
    Timeout,
    WorkerLost,
)
from farm.version import __version__

__all__ = [
    "Client",
    "AsyncClient",
    "Worker",
    "Job",
    "Executor",
    "ConfigError",
    "FarmError",
    "JobError",
    "JobException",
    "JobFailed",
    "PythonVersionMismatch",
    "ServerError",
    "ServerUnavailable",
    "Timeout",
    "WorkerLost",
    "__version__",
]

_LAZY = {
    "Client": "farm.client",
    "AsyncClient": "farm.client.aio",
    "Worker": "farm.worker",
    "Job": "farm.worker",
    "Executor": "farm.executor",
}
#: Submodules reachable as attributes before anything imported them (``farm.worker.Job``
#: in an annotation that is evaluated).
_SUBMODULES = frozenset({"client", "worker", "executor", "errors"})

if TYPE_CHECKING:  # pragma: no cover
    from farm.client import Client
    from farm.client.aio import AsyncClient
    from farm.executor import Executor
    from farm.worker import Job, Worker


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"farm.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'farm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The lazy names too (what an editor or IPython completes)."""
    return sorted({*globals(), *__all__})
