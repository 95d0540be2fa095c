"""farm.executor.replay: a call id is run once per pool, its own job's retries aside."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm.executor.replay import ReplayGuard
from farm.executor.signing import SignatureError


def test_a_call_runs_once_but_its_job_may_be_retried(tmp_path: Path) -> None:
    one, other = ReplayGuard(tmp_path / "calls"), ReplayGuard(tmp_path / "calls")  # two workers
    expires = int(time.time()) + 60
    one.claim(b"\1" * 16, expires, "H:x:1")
    other.claim(b"\1" * 16, expires, "H:x:1")  # the server retries the job on another worker
    with pytest.raises(SignatureError, match="already ran"):
        other.claim(b"\1" * 16, expires, "H:x:2")  # the same bytes submitted again
    other.claim(b"\2" * 16, expires, "H:x:2")


def test_expired_calls_are_refused_and_their_claims_swept(tmp_path: Path) -> None:
    guard = ReplayGuard(tmp_path / "calls")
    with pytest.raises(SignatureError, match="expired"):
        guard.claim(b"\3" * 16, int(time.time()) - 1, "H:x:3")
    soon = int(time.time()) + 2
    guard.claim(b"\4" * 16, soon, "H:x:4")
    assert len(list((tmp_path / "calls").iterdir())) == 1
    guard.sweep(soon + 1)
    assert list((tmp_path / "calls").iterdir()) == []
