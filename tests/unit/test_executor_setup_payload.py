"""The setup sections of a call (initializer, max_tasks_per_child), encoded and run in-process.

``run_call`` is driven with a fake job: no server, no worker process.
"""

from __future__ import annotations

import pickle
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farm.executor.call as call
from farm.executor.call import (
    BATCH,
    BROKEN,
    CALL_ID_SIZE,
    OK,
    SINGLE,
    dump,
    dump_initializer,
    encode_call,
    encode_setup,
    open_result,
    run_call,
)
from farm.executor.payload import INIT_ENDS, INIT_NEWS, INIT_STARTS
from farm.executor.replay import ReplayGuard
from farm.executor.signing import KEY_ENV, Signer, ensure_key, load_key
from tests.helpers import calls as helpers


class FakeJob:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.handle = "H:test:" + secrets.token_hex(4)
        self.sent: list[bytes] = []

    def send_data(self, data: bytes) -> None:
        self.sent.append(data)


@pytest.fixture
def signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Signer]:
    key = ensure_key(tmp_path / "executor.key")
    monkeypatch.setenv(KEY_ENV, str(key))
    for name, value in (
        ("_signer", None),
        ("_guard", ReplayGuard(tmp_path / "calls")),
        ("_initialized", None),
        ("recycle_requested", None),
    ):
        monkeypatch.setattr(call, name, value)
    monkeypatch.setattr(call, "_tasks_done", {})
    monkeypatch.setattr(helpers, "INIT_STATE", "uninitialized")
    yield Signer(load_key(key))


def run(signer: Signer, fn: Any, args: tuple[Any, ...], setup: tuple[int, bytes]) -> Any:
    call_id = secrets.token_bytes(CALL_ID_SIZE)
    payload = encode_call(signer, call_id, 2**40, dump(fn), SINGLE, dump((args, {})), setup)
    return pickle.loads(open_result(signer, call_id, run_call(FakeJob(payload))))


def test_a_call_without_setup_carries_no_byte_more(signer: Signer) -> None:
    call_id = bytes(CALL_ID_SIZE)
    plain = encode_call(signer, call_id, 1, b"fn", SINGLE, b"body")
    assert encode_call(signer, call_id, 1, b"fn", SINGLE, b"body", encode_setup(None)) == plain


def test_the_initializer_runs_once_per_digest_and_again_when_it_changes(signer: Signer) -> None:
    first = encode_setup(dump_initializer(helpers.init_state, ("a",)))
    second = encode_setup(dump_initializer(helpers.init_state, ("b",)))
    assert run(signer, helpers.get_init_state, (), first) == (OK, "a")
    helpers.INIT_STATE = "changed by a call"
    assert run(signer, helpers.get_init_state, (), first) == (OK, "changed by a call")
    assert run(signer, helpers.get_init_state, (), second) == (OK, "b")  # another executor's
    assert run(signer, helpers.get_init_state, (), first) == (OK, "a")  # and back
    assert run(signer, helpers.get_init_state, (), (0, b"")) == (OK, "a")  # none: state stays


def test_a_failing_initializer_is_a_broken_outcome_and_runs_again_next_time(
    signer: Signer,
) -> None:
    setup = encode_setup(dump_initializer(helpers.init_fails, ()))
    for _ in range(2):
        outcome = run(signer, helpers.add, (1, 2), setup)
        assert outcome[0] == BROKEN and isinstance(outcome[1], ValueError)
        assert "error in initializer" in outcome[2]
    assert call._initialized is None


def test_a_batch_with_a_failing_initializer_reports_one_broken_outcome(signer: Signer) -> None:
    setup = encode_setup(dump_initializer(helpers.init_fails, ()))
    call_id = secrets.token_bytes(CALL_ID_SIZE)
    body = pickle.dumps([dump(((i,), {})) for i in range(3)])
    payload = encode_call(signer, call_id, 2**40, dump(helpers.add), BATCH, body, setup)
    first, outcomes = pickle.loads(open_result(signer, call_id, run_call(FakeJob(payload))))
    assert first == 0 and [o[0] for o in outcomes] == [BROKEN]


def test_max_tasks_counts_jobs_per_executor(signer: Signer) -> None:
    mine = encode_setup(None, b"A" * CALL_ID_SIZE, 2)
    other = encode_setup(None, b"B" * CALL_ID_SIZE, 2)
    assert run(signer, helpers.add, (1, 1), mine) == (OK, 2)
    assert run(signer, helpers.add, (1, 1), other) == (OK, 2)
    assert call.recycle_requested is None
    assert run(signer, helpers.add, (2, 2), mine) == (OK, 4)
    assert call.recycle_requested and "max_tasks_per_child 2" in call.recycle_requested


def test_both_sections_together(signer: Signer) -> None:
    setup = encode_setup(dump_initializer(helpers.init_state, ("x",)), b"C" * CALL_ID_SIZE, 1)
    assert run(signer, helpers.get_init_state, (), setup) == (OK, "x")
    assert call.recycle_requested is not None


def news(signer: Signer, setup: tuple[int, bytes], fn: Any = helpers.add) -> list[bytes]:
    """The initializer's news a call with ``setup`` sends (each opened for its call)."""
    call_id = secrets.token_bytes(CALL_ID_SIZE)
    payload = encode_call(signer, call_id, 2**40, dump(fn), SINGLE, dump(((1,), {})), setup)
    job = FakeJob(payload)
    run_call(job)
    return [bytes(open_result(signer, call_id, sent)) for sent in job.sent]


def test_the_worker_tells_the_caller_as_the_initializer_starts_and_ends(signer: Signer) -> None:
    # Before them the caller could not tell a worker that died in the initializer (os._exit,
    # a crash) from one that died in the call: neither broke the executor.
    setup = encode_setup(dump_initializer(helpers.init_state, ("a",)))
    assert setup[0] & INIT_NEWS
    assert news(signer, setup) == [INIT_STARTS, INIT_ENDS]
    assert news(signer, setup) == []  # run already: nothing to tell
    failing = encode_setup(dump_initializer(helpers.init_fails, ()))
    assert news(signer, failing) == [INIT_STARTS]  # the BROKEN outcome ends it
    # A caller older than the flag gets none (a batch's caller would take them for outcomes).
    assert news(signer, (failing[0] & ~INIT_NEWS, failing[1])) == []
