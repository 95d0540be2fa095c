"""Events both session kinds produce."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerErrorNotice"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerErrorNotice:
    """An ERROR packet that answered no request of ours (or, for a worker, a CAN_DO of it:
    ``function``, the name farm's job server refused; None for any other ERROR)."""

    code: str
    text: str
    function: str | None = None
