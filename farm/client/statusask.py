"""What any of several servers may answer, asked by the blocking client (a job's
``status`` by bare handle, ``status_unique``, ``echo``): staggered, as farm.Executor asks
its admin ``status``, so that a server that accepts and never answers (hung, SIGSTOPped)
ahead of one that answers costs ``STAGGER``, not the client's timeout; and the timeout
bounds the whole ask, not each server's part of it."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

from farm.client.blockingconn import Connections
from farm.client.serverpick import STAGGER, connect_share
from farm.errors import ServerUnavailable
from farm.protocol.client import JobStatus, Query, Question, StatusResult

__all__ = ["first_echo", "first_known"]

R = TypeVar("R")
Asked = list[tuple[str, Query[R]]]


def first_known(
    wire: Connections,
    addrs: list[str],
    question: Question[StatusResult],
    timeout: float | None,
) -> JobStatus:
    """Ask ``addrs`` in turn until one knows the job (``staggered``). The status of the
    first that knows it, else the last "unknown". ServerUnavailable when none answered:
    "unknown" from nobody would read as "finished"."""
    asked, errors = staggered(wire, addrs, question, timeout, lambda r: r.status.known)
    for _, query in asked:
        if query.result is not None and query.result.status.known:
            return query.result.status
    unknown = None
    for _, query in _failed(wire, asked, errors, timeout):
        unknown = query.result.status if query.result is not None else unknown
    if unknown is None:
        raise ServerUnavailable("no job server answered; tried " + "; ".join(errors))
    return unknown


def first_echo(wire: Connections, addrs: list[str], data: bytes, timeout: float | None) -> bytes:
    """``data`` back from the first of ``addrs`` that echoes it (``staggered``)."""
    asked, errors = staggered(wire, addrs, Question.echo(data), timeout, lambda _: True)
    for _, query in asked:
        if query.result is not None:
            return query.result
    _failed(wire, asked, errors, timeout)
    raise ServerUnavailable("; ".join(errors))


def staggered(
    wire: Connections,
    addrs: list[str],
    question: Question[R],
    timeout: float | None,
    final: Callable[[R], bool],
) -> tuple[Asked[R], list[str]]:
    """Ask ``addrs`` in turn until one's answer is ``final``: the next is asked when the
    one before failed, answered what is not final, or has not answered within STAGGER
    (its answer still counts if it comes first), all within ``timeout``. A connect counts
    in that STAGGER: one not made by then (a host that drops our SYNs, a TLS handshake
    left unanswered) is given up for the next server, and tried again after the others
    with its share of the time left, as AsyncClient's goes on beside them. Each ask, and
    the failures to connect."""
    deadline = None if timeout is None else time.monotonic() + timeout
    asked: Asked[R] = []
    errors: list[str] = []
    # Each server with whether its connect may be cut at STAGGER: where another is left to
    # ask and connect_timeout is longer, or None: no bound (its own bound otherwise).
    limit = wire.connect_timeout
    may_cut = len(addrs) > 1 and (limit is None or limit > STAGGER)
    turns = [(addr, may_cut) for addr in addrs]

    def ended() -> bool:
        return any(q.result is not None and final(q.result) for _, q in asked)

    def settled(query: Query[R]) -> bool:
        return query.done or ended()

    for at, (addr, hasty) in enumerate(turns):  # (turns appended to are taken in turn)
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            errors.append(f"{addr} (not asked: the time given ran out)")
            continue
        until = connect_share(deadline, now, len(turns) - at)  # its share, as a submit's
        cut = hasty and (until is None or until > now + STAGGER)
        try:
            conn = wire.connection(addr, now + STAGGER if cut else until)
        except OSError as exc:
            wire.fail_if_closed()  # by a signal handler while it connected
            if cut and isinstance(exc, TimeoutError):  # tried again after the others
                turns.append((addr, False))
                continue
            # Tried last for a while, as for jobs (longer if its connect took longer).
            wire.picker.mark_down(addr, spent=time.monotonic() - now)
            errors.append(f"{addr}: {exc.strerror or exc}")
            continue
        query = wire.ask(conn, question)
        asked.append((addr, query))
        until = deadline
        if at + 1 < len(turns):  # the next one is asked after STAGGER, if not before
            step = time.monotonic() + STAGGER
            until = step if deadline is None else min(step, deadline)
        if wire.pump(functools.partial(settled, query), until) and ended():
            break
    wire.pump(lambda: ended() or all(q.done for _, q in asked), deadline)
    return asked, errors


def _failed(
    wire: Connections, asked: Asked[R], errors: list[str], timeout: float | None
) -> Asked[R]:
    """The asks that were answered; the others' failures added to ``errors``. A server's
    error that is not its going away (ServerError) is raised, as by a Task's status. One
    that did not answer is tried last for a while: only when no answer ended the wait (a
    server silent when another answered is not held against it)."""
    answered = []
    for addr, query in asked:
        if query.result is not None:
            answered.append((addr, query))
        elif isinstance(query.error, ServerUnavailable):
            errors.append(str(query.error))
        elif query.error is not None:
            raise query.error
        else:  # its answer, should it come, is matched and dropped
            wire.picker.mark_down(addr)
            errors.append(f"{addr} did not answer within {timeout}s")
    return answered
