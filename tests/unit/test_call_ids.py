"""Call ids come from a pool of random bytes: unique, and never shared with a forked child."""

from __future__ import annotations

import os

from farm.executor.callids import ID_POOL, new_call_id
from farm.executor.flight import Flight
from farm.executor.payload import CALL_ID_SIZE


def test_call_ids_are_distinct_past_a_refill() -> None:
    ids = [new_call_id() for _ in range(3 * ID_POOL // CALL_ID_SIZE)]
    assert all(len(i) == CALL_ID_SIZE for i in ids)
    assert len(set(ids)) == len(ids)
    assert len(Flight([]).call_id) == CALL_ID_SIZE


def test_a_forked_child_never_takes_the_ids_left_in_its_parent() -> None:
    new_call_id()  # the pool holds ids the parent has not used yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, b"".join(new_call_id() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 4 * CALL_ID_SIZE)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = b"".join(new_call_id() for _ in range(4))
    assert len(child) == 4 * CALL_ID_SIZE
    ours = {parent[i : i + CALL_ID_SIZE] for i in range(0, len(parent), CALL_ID_SIZE)}
    theirs = {child[i : i + CALL_ID_SIZE] for i in range(0, len(child), CALL_ID_SIZE)}
    assert not ours & theirs
