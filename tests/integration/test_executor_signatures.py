"""farm.Executor's signatures against real processes: payloads without a valid signature
are refused by the worker without being unpickled, and results by the client; a captured
call runs once, an expired one never, and not again on a restarted server.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import farm
from farm.executor.call import CALL_ID_SIZE, OK, SINGLE, encode_call
from farm.executor.signing import MAGIC, RESULT, SignatureError, Signer, ensure_key, load_key
from tests.helpers import executorfarm
from tests.helpers.calls import add
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.servers import start_farm_server
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared_farm = executorfarm.shared_farm

# -- signatures --


class Marker:
    """Unpickling this creates ``path``: the proof that a payload was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (self.path, "w"))


def signed_call(signer: Signer, fn_pickle: bytes, expires: float | None = None) -> bytes:
    """A call as the Executor would sign it (a fresh id, valid for an hour unless told)."""
    until = int(time.time() + 3600 if expires is None else expires)
    body = pickle.dumps(((), {}))
    return encode_call(signer, os.urandom(CALL_ID_SIZE), until, fn_pickle, SINGLE, body)


def test_worker_refuses_unsigned_payloads_without_unpickling(
    shared_farm: ExecutorFarm, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(Marker(marker))
    good_key = Signer(load_key(shared_farm.key))
    other_key = Signer(b"not the farm's key!")
    wrong_mac = MAGIC + b"\0" * 32 + signed_call(good_key, evil)[36:]
    with farm.Client(shared_farm.addr) as client:
        for payload in (evil, signed_call(other_key, evil), wrong_mac):
            with pytest.raises(farm.JobException, match="SignatureError") as err:
                client.call("farm.python", payload, timeout=30)
            assert "refused without unpickling" in str(err.value) or "not signed" in str(err.value)
            assert not marker.exists()
        # The same payload with the farm's key IS unpickled: the check above can fail.
        client.call("farm.python", signed_call(good_key, evil), timeout=30)
        assert marker.exists()


def test_worker_with_another_key_refuses_the_executor(tmp_path: Path) -> None:
    small = ExecutorFarm(tmp_path, count=0)
    try:
        small.add_worker(ensure_key(tmp_path / "other.key"), name="farm.other")
        refused = pytest.raises(farm.JobException, match="SignatureError.*this farm's key")
        with small.executor(function="farm.other") as ex, refused:
            ex.submit(add, 1, 2).result(timeout=30)
    finally:
        small.stop()


def test_client_refuses_unsigned_results_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    small = ExecutorFarm(tmp_path, count=0)
    worker = farm.Worker(f"unix:{small.unix}")  # a worker the server trusts, gone bad
    worker.register("farm.fake", lambda job: MAGIC + b"\0" * 32 + pickle.dumps(Marker(marker)))
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with small.executor(function="farm.fake") as ex:
            future: Future[Any] = ex.submit(add, 1, 2)
            with pytest.raises(SignatureError):
                future.result(timeout=30)
        assert not marker.exists()
    finally:
        worker.stop()
        thread.join(10)
        small.stop()


def test_an_executor_pool_must_have_a_reserved_name(tmp_path: Path) -> None:
    # Any other name, any local user may register a worker for over TCP and read the
    # calls (and hold them: the caller waited until its timeout).
    with pytest.raises(ValueError, match="'python' is not a farm.\\* name"):
        farm.Executor(servers="unix:/nowhere", function="python", key_file=str(tmp_path / "k"))


def test_a_result_signed_for_another_call_is_refused(tmp_path: Path) -> None:
    # Whoever answers a call -- a worker that took it, or a result captured from another
    # call -- may hold a validly signed result; it must still be this call's.
    small = ExecutorFarm(tmp_path, count=0)
    signer = Signer(load_key(small.key))
    elsewhere = signer.seal(RESULT, os.urandom(CALL_ID_SIZE) + pickle.dumps((OK, 42)))
    worker = farm.Worker(f"unix:{small.unix}")
    worker.register("farm.stolen", lambda job: elsewhere)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with (
            small.executor(function="farm.stolen") as ex,
            pytest.raises(SignatureError, match="for another call"),
        ):
            ex.submit(add, 1, 2).result(timeout=30)
    finally:
        worker.stop()
        thread.join(10)
        small.stop()


def test_a_captured_call_runs_once_and_an_expired_one_never(
    shared_farm: ExecutorFarm, tmp_path: Path
) -> None:
    # Someone who captured a signed call (it crosses the server) submits it again.
    signer = Signer(load_key(shared_farm.key))
    call = signed_call(signer, pickle.dumps(os.getpid))
    with farm.Client(shared_farm.addr) as client:
        first = client.call("farm.python", call, timeout=30)
        assert first.startswith(MAGIC), "the genuine submission ran"
        for _ in range(2):  # whichever worker takes it: the record is the pool's
            with pytest.raises(farm.JobException, match="already ran"):
                client.call("farm.python", call, timeout=30)
        stale = signed_call(signer, pickle.dumps(os.getpid), expires=time.time() - 5)
        with pytest.raises(farm.JobException, match="expired"):
            client.call("farm.python", stale, timeout=30)


def test_a_captured_call_does_not_run_again_on_a_restarted_server(tmp_path: Path) -> None:
    # A restarted server once numbered its jobs from 1 again: the captured call's new job
    # got the old job's handle, which the replay guard took for the server's own retry.
    signer = Signer(load_key(ensure_key(tmp_path / "executor.key")))
    call = signed_call(signer, pickle.dumps(os.getpid))
    for attempt in range(2):  # the same key, the same pool's record; a fresh server each
        fresh = ExecutorFarm(tmp_path, count=1)
        try:
            with farm.Client(fresh.addr) as client:
                if attempt == 0:
                    assert client.call("farm.python", call, timeout=30).startswith(MAGIC)
                else:
                    with pytest.raises(farm.JobException, match="already ran"):
                        client.call("farm.python", call, timeout=30)
        finally:
            fresh.stop()


def test_calls_that_never_left_wait_for_a_server_that_comes_back(tmp_path: Path) -> None:
    """A supervised server is restarted at once after a crash: calls still waiting in the
    executor wait for it (up to connect_timeout) instead of failing at once with "no job
    server is reachable" (only calls the dead server held have an unknown outcome)."""
    f = ExecutorFarm(tmp_path)
    try:
        with f.executor(connect_timeout=30) as ex:
            assert ex.submit(add, 1, b=1).result(timeout=30) == 2
            port = f.server.port
            f.server.stop()
            wait_for("the executor saw its server go", lambda: not ex._pump._conns)
            futures = [ex.submit(add, i, b=0) for i in range(5)]
            assert not any(fu.done() for fu in futures)  # waiting, not failed
            f.server = start_farm_server("--job-retries", "1", port=port, unix=f.unix)
            assert [fu.result(timeout=30) for fu in futures] == list(range(5))
        with f.executor(connect_timeout=0.5) as ex:
            f.server.stop()
            late = ex.submit(add, 1, b=2)
            with pytest.raises(farm.ServerUnavailable, match=r"no job server is reachable"):
                late.result(timeout=30)  # after connect_timeout: it fails, and says so
    finally:
        f.stop()
