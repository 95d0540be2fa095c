"""Events both session kinds produce."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerErrorNotice"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerErrorNotice:
    """An ERROR packet that answered no request of ours."""

    code: str
    text: str
