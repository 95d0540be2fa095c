"""A call signed by an Executor of an older farm, in a layout this worker does not read.

Found in an upgrade hunt: the signed layout gained a call id (2 December 2026) and then an
expiry, under the same header, so a caller of an older farm (a rolling restart's) reached
new workers with a valid signature, and the worker read pickle bytes as the id, the expiry
and the function's size: the call failed with whatever that gave (`IndexError: index out
of bounds`, `this call already ran`), never saying the versions differ. ``run_call`` is
driven with a fake job, as in test_executor_setup_payload.py.
"""

from __future__ import annotations

import operator
import pickle
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import farm.executor.call as call
from farm.executor.call import run_call
from farm.executor.replay import ReplayGuard
from farm.executor.signing import CALL, KEY_ENV, SignatureError, Signer, ensure_key, load_key


class FakeJob:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.handle = "H:test:" + secrets.token_hex(4)

    def send_data(self, data: bytes) -> None:
        raise AssertionError("a refused call sends nothing")


@pytest.fixture
def signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Signer]:
    key = ensure_key(tmp_path / "executor.key")
    monkeypatch.setenv(KEY_ENV, str(key))
    monkeypatch.setattr(call, "_signer", None)
    monkeypatch.setattr(call, "_guard", ReplayGuard(tmp_path / "calls"))
    yield Signer(load_key(key))


def first_layout(signer: Signer, fn: object) -> bytes:
    """A call as the first Executor made it (November 2026): fn_size | fn | (kind, calls)."""
    fn_bytes = pickle.dumps(fn, protocol=5)
    calls = pickle.dumps((0, [((3,), {})]), protocol=5)
    return signer.seal(CALL, len(fn_bytes).to_bytes(4, "little") + fn_bytes + calls)


def with_id_layout(signer: Signer, fn: object) -> bytes:
    """As the Executor made it for a few hours of 2 December 2026: a call id, no expiry."""
    fn_bytes = pickle.dumps(fn, protocol=5)
    head = secrets.token_bytes(16) + len(fn_bytes).to_bytes(4, "little")
    return signer.seal(CALL, head + fn_bytes + b"\0" + pickle.dumps(((3,), {}), protocol=5))


@pytest.mark.parametrize("layout", [first_layout, with_id_layout])
@pytest.mark.parametrize("fn", [operator.neg, abs], ids=["neg", "abs"])
def test_a_call_of_an_older_layout_fails_saying_so(
    signer: Signer, layout: Callable[[Signer, object], bytes], fn: Callable[[int], int]
) -> None:
    with pytest.raises(SignatureError) as refused:
        run_call(FakeJob(layout(signer, fn)))
    assert "another farm version" in str(refused.value)
    assert "same farm" in str(refused.value)
