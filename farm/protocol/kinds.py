"""Submit kinds and priorities: one table that the client and the server both read.

Gearman spells a job's priority and whether anyone waits for it in the packet
type (SUBMIT_JOB_HIGH_BG and so on). The client session turns (priority,
background) into a packet type by this table (``farm.protocol.tasks._SUBMIT`` is derived from
it), and the server turns the packet type back here, so the two can never
disagree.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from farm.protocol.codec import PacketType

__all__ = [
    "Priority",
    "PRIORITY_NAMES",
    "SubmitKind",
    "SUBMIT_KINDS",
]


class Priority(enum.IntEnum):
    """Queue order: the value is the index of the server's queue (lower runs first)."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        """The name users write: ``high``, ``normal``, ``low``."""
        return self.name.lower()


#: The names the APIs and the CLI accept, in queue order.
PRIORITY_NAMES: tuple[str, ...] = tuple(p.label for p in Priority)


class SubmitKind(NamedTuple):
    """What a submit packet asks for."""

    priority: Priority
    background: bool


#: Every plain submit packet and what it means. SUBMIT_JOB_EPOCH (background,
#: normal priority, held until its time) and the reduce submits are variants
#: with more arguments, handled beside this table by their users.
SUBMIT_KINDS: dict[PacketType, SubmitKind] = {
    PacketType.SUBMIT_JOB_HIGH: SubmitKind(Priority.HIGH, background=False),
    PacketType.SUBMIT_JOB: SubmitKind(Priority.NORMAL, background=False),
    PacketType.SUBMIT_JOB_LOW: SubmitKind(Priority.LOW, background=False),
    PacketType.SUBMIT_JOB_HIGH_BG: SubmitKind(Priority.HIGH, background=True),
    PacketType.SUBMIT_JOB_BG: SubmitKind(Priority.NORMAL, background=True),
    PacketType.SUBMIT_JOB_LOW_BG: SubmitKind(Priority.LOW, background=True),
}
