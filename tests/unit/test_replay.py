"""farm.executor.replay: a call id is run once per pool, its own job's retries aside."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from farm.executor.replay import ReplayGuard
from farm.executor.signing import SignatureError
from tests.helpers.waiting import wait_for


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
    assert len(list((tmp_path / "calls").iterdir())) == 1, "one file per expiry minute"
    guard.sweep(soon + 1 - soon % 60 - 1)  # the minute is not over: its file stays
    assert len(list((tmp_path / "calls").iterdir())) == 1
    guard.sweep((soon // 60 + 1) * 60)  # every call filed there has expired
    assert list((tmp_path / "calls").iterdir()) == []


def test_a_claim_costs_twelve_bytes_and_workers_see_each_others(tmp_path: Path) -> None:
    # A busy pool claims thousands of calls a second until they expire: one small record
    # each, not a file each (about 1.2 KB of memory apiece in tmpfs).
    workers = [ReplayGuard(tmp_path / "calls") for _ in range(3)]
    expires = int(time.time()) + 600
    for n in range(300):
        workers[n % 3].claim(n.to_bytes(16, "big"), expires, f"H:x:{n}")
    (claims,) = (tmp_path / "calls").iterdir()
    assert claims.stat().st_size == 300 * 12
    for n in range(300):  # each worker refuses what the others ran
        with pytest.raises(SignatureError, match="already ran"):
            workers[(n + 1) % 3].claim(n.to_bytes(16, "big"), expires, f"H:x:{n + 1000}")
        workers[(n + 2) % 3].claim(n.to_bytes(16, "big"), expires, f"H:x:{n}")  # a retry


def _claim_all(directory: str, worker: int, ids: int, expires: int, start: Any, out: Any) -> None:
    guard = ReplayGuard(Path(directory))
    ran = []
    start.wait()
    for n in range(ids):
        try:
            guard.claim(n.to_bytes(16, "big"), expires, f"H:x:{worker}-{n}")
        except SignatureError:
            continue
        ran.append(n)
    out.put(ran)


@pytest.mark.timeout(60)
def test_workers_claiming_the_same_calls_at_once_run_each_exactly_once(tmp_path: Path) -> None:
    # A replayed payload may reach two workers at the same moment: with no lock on the
    # claims file, the first record of an id decides, and both workers read it.
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(4), ctx.Queue()
    expires, ids = int(time.time()) + 600, 3000
    procs = [
        ctx.Process(target=_claim_all, args=(str(tmp_path / "calls"), w, ids, expires, start, out))
        for w in range(4)
    ]
    for proc in procs:
        proc.start()
    ran = [out.get(timeout=50) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0
    counts = Counter(n for each in ran for n in each)
    assert sorted(counts) == list(range(ids)), "a call no worker ran"
    assert [n for n, c in counts.items() if c > 1] == [], "calls run twice"


def test_a_worker_reads_again_a_minute_it_let_go_of(tmp_path: Path) -> None:
    one, other = ReplayGuard(tmp_path / "calls"), ReplayGuard(tmp_path / "calls")
    now = int(time.time())
    old = now + 60
    one.claim(b"\7" * 16, old, "H:x:7")
    for minute in range(2, 8):  # other minutes push the first out of one's memory
        one.claim(bytes([minute]) * 16, now + 60 * minute, f"H:x:{minute}")
    other.claim(b"\10" * 16, old, "H:x:8")
    with pytest.raises(SignatureError, match="already ran"):
        one.claim(b"\10" * 16, old, "H:x:9")
    with pytest.raises(SignatureError, match="already ran"):
        one.claim(b"\7" * 16, old, "H:x:10")


def test_an_older_farms_directory_of_links_goes_once_its_day_is_over(tmp_path: Path) -> None:
    import os

    legacy = tmp_path / "farm-0-calls-abc"
    legacy.mkdir()
    os.symlink("H:x:1", legacy / f"{int(time.time()) + 3600}-{'0' * 32}")
    guard = ReplayGuard(tmp_path / "farm-0-claims-abc")
    guard.sweep(time.time())
    assert legacy.exists(), "a claim in it may still be live"
    os.utime(legacy, (time.time() - 25 * 3600,) * 2, follow_symlinks=False)
    guard.sweep(time.time())
    assert not legacy.exists()
    wait_for(
        "the links removed", lambda: [p.name for p in tmp_path.iterdir()] == [guard.directory.name]
    )


def test_every_worker_keeps_its_claims_where_the_first_fallback_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Another user who made the pool's /dev/shm directory first (its name can be worked
    # out) and removed it later split the record: workers started before kept their claims
    # beside the key, those after in /dev/shm, and a captured call ran once in each.
    from farm.executor import replay
    from farm.executor.signing import KEY_ENV

    monkeypatch.setenv(KEY_ENV, str(tmp_path / "executor.key"))
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(replay, "Path", lambda p: shm if p == "/dev/shm" else Path(p))
    squatted = replay.default_directory()  # made private, as a worker would
    assert squatted.parent == shm
    os.chmod(squatted, 0o777)  # as if another user had made it: not private, refused
    with caplog.at_level(logging.WARNING, logger=replay.log.name):
        first = replay.default_directory()
    # The warning says what to do about it; the sockets' fix (XDG_RUNTIME_DIR) does not
    # move a replay record.
    assert "remove that directory" in caplog.text
    assert "XDG_RUNTIME_DIR" not in caplog.text
    assert first == tmp_path / "claims"
    ReplayGuard(first)  # the first worker's guard makes it
    os.rmdir(squatted)  # the squatter leaves
    assert replay.default_directory() == first, "a later worker must use the same record"


def test_a_record_a_short_write_broke_refuses_calls_instead_of_crashing(tmp_path: Path) -> None:
    # A write cut short (a full file system) leaves the records after it out of step:
    # a worker's own claim could then not be found (KeyError, a crash of the call).
    guard = ReplayGuard(tmp_path / "calls")
    expires = int(time.time()) + 600
    guard.claim(b"\1" * 16, expires, "H:x:1")
    claims = tmp_path / "calls" / f"claims-{expires // 60}"
    with open(claims, "ab") as f:
        f.write(b"\0" * 5)  # part of a record
    other = ReplayGuard(tmp_path / "calls")
    with pytest.raises(SignatureError, match="replay record .* is damaged"):
        other.claim(b"\2" * 16, expires, "H:x:2")


def test_a_record_removed_under_the_pool_is_made_again(tmp_path: Path) -> None:
    # logind's RemoveIPC (a logout) or a cleanup of /dev/shm removed the directory: every
    # later call failed with FileNotFoundError on its claims file until the workers went.
    guard = ReplayGuard(tmp_path / "calls")
    expires = int(time.time()) + 600
    guard.claim(b"\1" * 16, expires, "H:x:1")
    shutil.rmtree(tmp_path / "calls")
    later = expires + 2 * 60  # another minute's file: the one held open went with the directory
    guard.claim(b"\2" * 16, later, "H:x:2")
    assert (tmp_path / "calls").is_dir() and (tmp_path / "calls").stat().st_mode & 0o077 == 0
    with pytest.raises(SignatureError):
        guard.claim(b"\2" * 16, later, "H:x:3")  # claims go on being kept
