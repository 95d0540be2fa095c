"""farm.executor.flight.take: which waiting calls travel together in one job."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future

from farm.executor.flight import BATCH_BYTES, MAX_BATCH, Call, WorkItem, take
from farm.executor.payload import CHUNK, SINGLE, SPILLED


def waiting(*calls: Call) -> deque[WorkItem]:
    return deque(WorkItem(Future(), call) for call in calls)


def test_waiting_calls_of_one_function_and_kind_go_together() -> None:
    pending = waiting(*[Call(b"f", SINGLE, b"x")] * 400, Call(b"g", SINGLE, b"y"))
    items: list[WorkItem] = []
    take(pending, items, MAX_BATCH, 2)  # 400 waiting over 2 workers: about 400 // 4, capped
    assert len(items) == MAX_BATCH and all(i.call.fn == b"f" for i in items)
    chunks = waiting(*[Call(b"f", CHUNK, b"c")] * 40, Call(b"f", SINGLE, b"x"))
    items = []
    take(chunks, items, MAX_BATCH, 2)  # chunks: a share of 1 / workers, 40 // 2 + 1
    assert len(items) == 21 and all(i.call.kind == CHUNK for i in items)
    items = []
    take(chunks, items, MAX_BATCH, 2)  # a smaller share: 19 wait behind its first
    assert len(items) == 19 // 2 + 1


def test_a_batch_stops_at_its_byte_budget_and_a_spilled_call_travels_alone() -> None:
    big = b"b" * (BATCH_BYTES // 3)
    pending = waiting(*[Call(b"f", SINGLE, big)] * 10)
    items: list[WorkItem] = []
    take(pending, items, MAX_BATCH, 1)
    assert len(items) == 3, "no job past the budget: the server's packet limit stays far"
    spilled = waiting(*[Call(b"f", SINGLE | SPILLED, b"ref")] * 10)
    items = []
    take(spilled, items, MAX_BATCH, 1)
    assert len(items) == 1


def test_a_cancelled_call_stays_out() -> None:
    pending = waiting(*[Call(b"f", SINGLE, b"x")] * 20)
    pending[1].future.cancel()
    items: list[WorkItem] = []
    take(pending, items, MAX_BATCH, 1)
    assert all(not i.future.cancelled() for i in items) and len(items) == 10


def test_a_deque_emptied_meanwhile_gives_no_call() -> None:
    # The pump looked at the deque, then shutdown(cancel_futures=True) took everything.
    items: list[WorkItem] = []
    assert take(deque(), items, MAX_BATCH, 2) == []


def test_calls_of_another_function_or_kind_end_a_batch() -> None:
    # A batch runs every call with its first call's function, and as its kind: a call of
    # another function, or a map's chunk behind a submit of the same function, taken in
    # would run as what it is not (the wrong function, a chunk's arguments as one call).
    pending = waiting(*[Call(b"f", SINGLE, b"x")] * 3, Call(b"g", SINGLE, b"y"))
    pending.extend(waiting(*[Call(b"g", CHUNK, b"c")] * 3))
    batches = []
    while pending:
        items: list[WorkItem] = []
        take(pending, items, MAX_BATCH, 1)
        batches.append([(i.call.fn, i.call.kind) for i in items])
    assert batches == [
        [(b"f", SINGLE)] * 3,
        [(b"g", SINGLE)],
        [(b"g", CHUNK)] * 3,
    ]
