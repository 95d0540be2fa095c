"""A job's status asked of several servers by the blocking client (``status`` of a bare
handle, ``status_unique``): staggered, as farm.Executor asks its admin ``status``, so
that a server that accepts and never answers (hung, SIGSTOPped) ahead of the one that
knows the job costs ``STAGGER``, not the client's timeout; and the timeout bounds the
whole ask, not each server's part of it."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from farm.client.blockingconn import Connections
from farm.client.serverpick import STAGGER, connect_share
from farm.errors import ServerUnavailable
from farm.protocol.client import ClientSession, JobStatus, Query, StatusResult

__all__ = ["first_known"]

Asked = list[tuple[str, Query[StatusResult]]]


def first_known(
    wire: Connections,
    addrs: list[str],
    make: Callable[[ClientSession], Query[StatusResult]],
    timeout: float | None,
) -> JobStatus:
    """Ask ``addrs`` in turn until one knows the job: the next is asked when the one before
    failed, said "unknown", or has not answered within STAGGER (its answer still counts if
    it comes first), all within ``timeout``. The status of the first that knows it, else
    the last "unknown". ServerUnavailable when none answered: "unknown" from nobody would
    read as "finished"."""
    deadline = None if timeout is None else time.monotonic() + timeout
    asked: Asked = []
    errors: list[str] = []

    def knows() -> bool:
        return any(q.result is not None and q.result.status.known for _, q in asked)

    def settled(query: Query[StatusResult]) -> bool:
        return query.done or knows()

    for at, addr in enumerate(addrs):
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            errors.append(f"{addr} (not asked: the time given ran out)")
            continue
        try:  # each connect its share of the time left, as a submit's
            conn = wire.connection(addr, connect_share(deadline, now, len(addrs) - at))
        except OSError as exc:
            wire.fail_if_closed()  # by a signal handler while it connected
            # Tried last for a while, as for jobs (longer if its connect took longer).
            wire.picker.mark_down(addr, spent=time.monotonic() - now)
            errors.append(f"{addr}: {exc.strerror or exc}")
            continue
        query = make(conn.session)
        asked.append((addr, query))
        until = deadline
        if at + 1 < len(addrs):  # the next one is asked after STAGGER, if not before
            step = time.monotonic() + STAGGER
            until = step if deadline is None else min(step, deadline)
        if wire.pump(functools.partial(settled, query), until) and knows():
            break
    wire.pump(lambda: knows() or all(q.done for _, q in asked), deadline)
    return _outcome(wire, asked, errors, timeout)


def _outcome(
    wire: Connections, asked: Asked, errors: list[str], timeout: float | None
) -> JobStatus:
    """``first_known``'s answer from its asks; a server's error that is not its going away
    (ServerError) is raised, as it is by the status of a Task. Servers silent when another
    knew the job are not held against them: only when the whole time was waited."""
    for _, query in asked:
        if query.result is not None and query.result.status.known:
            return query.result.status
    unknown = None
    for addr, query in asked:
        if query.result is not None:
            unknown = query.result.status
        elif isinstance(query.error, ServerUnavailable):
            errors.append(str(query.error))
        elif query.error is not None:
            raise query.error
        else:  # its answer, should it come, is matched and dropped; tried last a while
            wire.picker.mark_down(addr)
            errors.append(f"{addr} did not answer within {timeout}s")
    if unknown is None:
        raise ServerUnavailable("no job server answered; tried " + "; ".join(errors))
    return unknown
