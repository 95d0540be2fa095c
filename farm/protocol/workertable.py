"""The worker connection's states and its (state, packet) table, for ``WorkerSession``.

``farm.protocol.worker`` runs the cycle; what it is made of -- the states, the event a job
assignment becomes, which packet moves which state where, and the packets and ints the
per-job path reads as module names -- is here, so that the cycle reads on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from farm.protocol.codec import PacketType, encode_req

__all__ = ["JobAssigned", "JobNotHeld", "WorkerState"]

PT = PacketType


class WorkerState(enum.Enum):
    DISCONNECTED = "disconnected"
    READY = "ready"  # may grab: just registered, woken by NOOP, or a job just ended
    GRABBING = "grabbing"  # GRAB_JOB_UNIQ sent, JOB_ASSIGN_UNIQ or NO_JOB due
    SLEEPING = "sleeping"  # PRE_SLEEP sent, NOOP due
    WORKING = "working"  # holds a job until it is completed, failed or excepted

    # Members are singletons: identity is their equality, so it can be their hash too
    # (Enum's own hashes the name in Python, once per packet in the table below).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True, kw_only=True)
class JobAssigned:
    handle: str
    function: str
    unique: str
    data: bytes
    # Assigned before the server read our CANT_DO (or RESET_ABILITIES) of its function, so
    # given back there: not to be run (``WorkerSession.taken_back``). Said as it is read,
    # as an ECHO_RES later in the same read may register the function again.
    given_back: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class JobNotHeld:
    """The server answered our news or answer of a job with ERROR JOB_NOT_FOUND: it no longer
    holds the job for this worker (gearmand requeues a job past its CAN_DO_TIMEOUT, tells the
    client nothing, and hands it out again). Said once per run of a job (``handle``, its
    ``function``): every WORK_DATA or WORK_STATUS it sent after gets one more such ERROR."""

    handle: str
    function: str
    code: str
    text: str


S = WorkerState
#: (state, packet received) → next state. NOOPs outside a sleep are stale
#: wake-ups and change nothing; a missing key is a protocol error.
_WORKER_TRANSITIONS: dict[tuple[WorkerState, int], WorkerState] = {
    (S.GRABBING, PT.NO_JOB): S.SLEEPING,
    (S.GRABBING, PT.JOB_ASSIGN_UNIQ): S.WORKING,
    (S.GRABBING, PT.JOB_ASSIGN): S.WORKING,
    (S.SLEEPING, PT.NOOP): S.READY,
    (S.READY, PT.NOOP): S.READY,
    (S.GRABBING, PT.NOOP): S.GRABBING,
    (S.WORKING, PT.NOOP): S.WORKING,
}

# The per-job path reads plain ints and module names: an enum member read off its class
# costs about 100 ns on Python 3.11 (EnumType.__getattr__ defeats the attribute cache).
_READY, _GRABBING, _WORKING = S.READY, S.GRABBING, S.WORKING
_ERROR, _OPTION_RES, _NO_JOB, _NOOP = (
    int(PT.ERROR),
    int(PT.OPTION_RES),
    int(PT.NO_JOB),
    int(PT.NOOP),
)
_JOB_ASSIGN, _JOB_ASSIGN_UNIQ = int(PT.JOB_ASSIGN), int(PT.JOB_ASSIGN_UNIQ)
_WORK_COMPLETE = int(PT.WORK_COMPLETE)
_JOB_REVOKE = int(PT.JOB_REVOKE)
_ECHO_RES = int(PT.ECHO_RES)
#: What our ECHO_REQs carry, and then their number on the connection: the ECHO_RES that
#: lets a function given up with a grab out be registered again (WorkerSession.add_ability).
_SETTLED = b"farm:settled:"
_GRAB = encode_req(PT.GRAB_JOB_UNIQ)
_ABSENT = object()  # an ability's timeout may be None
_PRE_SLEEP = encode_req(PT.PRE_SLEEP)
