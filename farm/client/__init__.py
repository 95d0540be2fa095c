"""The client side: the blocking ``Client`` (with its task sets), ``AsyncClient``, the
rule for which server to try, and a small admin-protocol client for tools.

Each face only moves bytes; what a reply means lives in ``farm.protocol.client``.
The faces are imported on first use: the supervisor, `farm status` and the Executor
import ``farm.client.admin`` alone, and should not load every face's machinery with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Client", "AsyncClient", "Task", "JobStatus"]

_LAZY = {
    "Client": "farm.client.blocking",
    "AsyncClient": "farm.client.aio",  # asyncio: `farm submit` should not pay for it
    "Task": "farm.protocol.client",
    "JobStatus": "farm.protocol.client",
}

if TYPE_CHECKING:  # pragma: no cover
    from farm.client.aio import AsyncClient
    from farm.client.blocking import Client
    from farm.protocol.client import JobStatus, Task


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'farm.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The lazy names too (what an editor or IPython completes)."""
    return sorted({*globals(), *__all__})
