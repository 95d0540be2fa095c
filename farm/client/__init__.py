"""The client side: the blocking ``Client`` (with its task sets), ``AsyncClient``, the
rule for which server to try, and a small admin-protocol client for tools.

Each face only moves bytes; what a reply means lives in ``farm.protocol.client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farm.client.blocking import Client
from farm.protocol.client import JobStatus, Task

__all__ = ["Client", "AsyncClient", "Task", "JobStatus"]

if TYPE_CHECKING:  # pragma: no cover
    from farm.client.aio import AsyncClient


def __getattr__(name: str) -> Any:
    # AsyncClient brings asyncio; the CLI's `farm submit` should not pay for it.
    if name == "AsyncClient":
        from farm.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'farm.client' has no attribute {name!r}")
