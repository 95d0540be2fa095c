"""farm.executor.spill: files, references, checks and the sweep, without a farm."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm.executor import spill
from farm.executor.flight import CALL_TTL
from farm.executor.signing import SignatureError
from tests.helpers import ROOT


def settings(tmp_path: Path, mb: int = 16) -> spill.SpillSettings:
    return spill.SpillSettings(tmp_path / "spill", mb << 20)


def test_write_then_read_round_trips_with_private_modes(tmp_path: Path) -> None:
    ref = spill.write(settings(tmp_path), b"abc" * 1000, "a")
    path = spill.reference_path(ref)
    assert path.name.startswith(f"farm-spill-a-{os.getpid()}-")
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.stat(path.parent).st_mode & 0o7777 == 0o2770
    assert bytes(spill.read(ref)) == b"abc" * 1000
    spill.remove(ref)
    assert not path.exists()


@pytest.mark.parametrize("change", ["flip", "grow", "swap"])
def test_a_changed_file_is_refused(tmp_path: Path, change: str) -> None:
    ref = spill.write(settings(tmp_path), b"\x00" * 4096, "a")
    path = spill.reference_path(ref)
    if change == "flip":
        with open(path, "r+b") as f:
            f.write(b"\x01")
    elif change == "grow":
        with open(path, "ab") as f:
            f.write(b"\x00")
    else:
        other = spill.reference_path(spill.write(settings(tmp_path), b"\x01" * 4096, "a"))
        os.replace(other, path)
    with pytest.raises(spill.SpillRefused) as info:
        spill.read(ref)
    assert isinstance(info.value, SignatureError)


def test_a_missing_or_foreign_file_is_refused(tmp_path: Path) -> None:
    ref = spill.write(settings(tmp_path), b"x", "a")
    spill.remove(ref)
    with pytest.raises(spill.SpillRefused, match="cannot read"):
        spill.read(ref)
    foreign = ref[:40] + os.fsencode(tmp_path / "passwd")
    with pytest.raises(spill.SpillRefused, match="not a spill file"):
        spill.read(foreign)


def test_over_the_limit_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(spill.SpillTooLarge, match="limit of 1 MiB"):
        spill.write(settings(tmp_path, 1), b"x" * (2 << 20), "a")
    assert not (tmp_path / "spill").exists() or not list((tmp_path / "spill").iterdir())


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    where = tmp_path / "open"
    where.mkdir()
    os.chmod(where, 0o777)
    with pytest.raises(spill.SpillDirError, match="writable by others"):
        spill.write(spill.SpillSettings(where, 1 << 20), b"x", "a")


def test_a_directory_another_user_made_is_refused(tmp_path: Path) -> None:
    # Made first by another user (its owner reads whatever is spilled there): its mode,
    # 0775, passed the check.
    where = tmp_path / "theirs"
    where.mkdir(mode=0o775)
    stranger = 65534  # nobody / nogroup
    if os.geteuid() == stranger or stranger in {os.getegid(), *os.getgroups()}:
        pytest.skip("this test runs as nobody")
    try:
        os.chown(where, stranger, stranger)
    except PermissionError:
        pytest.skip("giving a directory away takes root (CI runs as root)")
    with pytest.raises(spill.SpillDirError, match="neither you nor a group of yours"):
        spill.write(spill.SpillSettings(where, 1 << 20), b"x", "a")


def test_the_sweep_removes_only_what_is_stale(tmp_path: Path) -> None:
    s = settings(tmp_path)
    live_arg = spill.reference_path(spill.write(s, b"x", "a"))
    result = spill.reference_path(spill.write(s, b"x", "r"))
    dead_arg = live_arg.with_name("farm-spill-a-999999999-00")
    dead_arg.write_bytes(b"x")
    other = s.directory / "not-ours"
    other.write_bytes(b"x")
    assert spill.sweep(s.directory, 100, 10) == 0  # all fresh
    later = time.time() + 50
    assert spill.sweep(s.directory, 100, 10, now=later) == 2  # the result, the dead caller's
    assert live_arg.exists() and not result.exists() and not dead_arg.exists()
    assert spill.sweep(s.directory, 100, 10, now=time.time() + 500) == 1  # past max age
    assert sorted(os.listdir(s.directory)) == ["not-ours"]


def test_a_kept_file_stays_while_its_writer_lives_whatever_its_age(tmp_path: Path) -> None:
    # An executor's initializer may serve it for weeks: past max age it was swept, and the
    # next worker to need it broke the executor.
    s = settings(tmp_path)
    kept = spill.reference_path(spill.write(s, b"x", "k"))
    dead = kept.with_name("farm-spill-k-999999999-00")
    dead.write_bytes(b"x")
    assert spill.sweep(s.directory, 100, 10, now=time.time() + 5) == 0  # all fresh
    assert spill.sweep(s.directory, 100, 10, now=time.time() + 10_000) == 1  # the dead one's
    assert kept.exists() and not dead.exists()


def test_the_default_max_age_outlives_the_call_ttl() -> None:
    assert spill.DEFAULT_MAX_AGE >= CALL_TTL


def test_shared_files_count_their_calls_and_survive_a_shutdown_between(tmp_path: Path) -> None:
    from concurrent.futures import Future

    from farm.executor.callerfiles import CallerFiles

    files = CallerFiles(None, tmp_path / "spill", None)
    data = os.urandom(3 << 20)
    stand_in, key = files.shared(data)
    again, same = files.shared(data)  # equal bytes: the same file
    assert (again, same) == (stand_in, key) and len(os.listdir(tmp_path / "spill")) == 1
    first, second = Future(), Future()  # type: ignore[var-annotated]
    files.use(key, [first])
    files.use(same, [second])
    first.set_result(1)
    assert len(os.listdir(tmp_path / "spill")) == 1, "a call still carries it"
    second.set_result(2)
    assert os.listdir(tmp_path / "spill") == [], "gone with the last call"
    # shutdown() between a map's shared() and its use(): no KeyError, nothing left.
    _, key = files.shared(data)
    files.remove_all()
    late = Future()  # type: ignore[var-annotated]
    files.use(key, [late])
    late.set_result(3)
    assert os.listdir(tmp_path / "spill") == []


def test_the_result_files_of_lost_calls_go_and_no_other(tmp_path: Path) -> None:
    # A caller that lost calls with their job server removes their result files, found by
    # the call id in their names; other calls' results, arguments and kept files stay.
    lost, other = os.urandom(16), os.urandom(16)
    where = settings(tmp_path)
    gone = [spill.write(where, b"r", "r", spill.result_tag(lost)) for _ in range(2)]
    kept = [
        spill.write(where, b"r", "r", spill.result_tag(other)),
        spill.write(where, b"r", "r"),  # an older worker's, named for no call
        spill.write(where, b"a", "a"),
        spill.write(where, b"k", "k"),
    ]
    assert spill.remove_results(where.directory, [lost])[0] == 2
    assert not any(spill.reference_path(ref).exists() for ref in gone)
    assert all(spill.reference_path(ref).exists() for ref in kept)
    assert spill.remove_results(tmp_path / "none", [lost]) == (0, 0)  # no spill directory yet
    # The sweep takes tagged names as the others: past the ages, all but the kept file,
    # whose writer (this process) lives.
    assert spill.sweep(where.directory, 10, 10, now=time.time() + 60) == 3
    assert [ref for ref in kept if spill.reference_path(ref).exists()] == kept[3:]


def test_a_lost_call_lists_the_spill_directory_only_if_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every lost connection that held calls listed the whole directory on the executor's
    # thread; a directory unchanged since the executor began holds no file of its calls.
    from farm.executor.callerfiles import CallerFiles

    where = settings(tmp_path)
    where.directory.mkdir()
    old = time.time() - 600
    os.utime(where.directory, (old, old))
    files = CallerFiles(None, where.directory, None)
    listed: list[list[bytes]] = []
    real = spill.remove_results
    monkeypatch.setattr(spill, "remove_results", lambda d, ids: listed.append(ids) or real(d, ids))
    lost = os.urandom(16)
    files.remove_results([lost])
    assert listed == []
    result = spill.write(where, b"r", "r", spill.result_tag(lost))  # a worker's, since
    files.remove_results([lost])
    assert listed == [[lost]] and not spill.reference_path(result).exists()


def test_a_spill_directory_whose_clock_is_behind_the_callers_is_still_listed(
    tmp_path: Path,
) -> None:
    # The directory's mtime was compared with this machine's clock: set by a file server
    # 2 s behind (NFS), or after an NTP step back, the listing was skipped and the file kept.
    from farm.executor.callerfiles import CallerFiles

    where = settings(tmp_path)
    where.directory.mkdir()
    old = time.time() - 600
    os.utime(where.directory, (old, old))
    files = CallerFiles(None, where.directory, None)
    lost = os.urandom(16)
    result = spill.write(where, b"r", "r", spill.result_tag(lost))  # a worker's, since
    behind = time.time() - 2.0
    os.utime(where.directory, (behind, behind))  # as the file server's clock set it
    files.remove_results([lost])
    assert not spill.reference_path(result).exists()


def test_a_spill_directory_changed_just_before_the_executor_began_is_listed(
    tmp_path: Path,
) -> None:
    # On a filesystem of whole seconds a change in the same second leaves the mtime as it
    # was: one recorded within its tick says nothing, so the directory is listed.
    from farm.executor.callerfiles import CallerFiles

    where = settings(tmp_path)
    where.directory.mkdir()
    tick = float(int(time.time()))
    os.utime(where.directory, (tick, tick))
    files = CallerFiles(None, where.directory, None)
    lost = os.urandom(16)
    result = spill.write(where, b"r", "r", spill.result_tag(lost))
    os.utime(where.directory, (tick, tick))  # the same whole second
    files.remove_results([lost])
    assert not spill.reference_path(result).exists()


def test_a_bad_config_leaves_lost_results_to_the_sweep_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from farm.errors import ConfigError
    from farm.executor import callerfiles

    def bad(*_: object) -> spill.SpillSettings:
        raise ConfigError("farm.toml: executor.spill_dir must be the path of a directory")

    monkeypatch.setattr(callerfiles, "spill_settings", bad)
    files = callerfiles.CallerFiles(None, None, None)
    for _ in range(3):
        files.remove_results([os.urandom(16)])  # raised each time, logged as a traceback
    said = [r for r in caplog.records if "lost calls" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None and "spill_dir" in said[0].getMessage()


@pytest.mark.timeout(30)
def test_a_spill_directory_changed_just_before_the_executor_began_is_listed_until_it_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its mtime too recent to tell a change by as the executor began, the directory was
    # listed at every lost connection for the executor's life, long after that mtime.
    from farm.executor import callerfiles

    where = settings(tmp_path)
    where.directory.mkdir()
    files = callerfiles.CallerFiles(None, where.directory, None)  # its mtime: just now
    listed: list[list[bytes]] = []
    real = spill.remove_results
    monkeypatch.setattr(spill, "remove_results", lambda d, ids: listed.append(ids) or real(d, ids))
    later = time.time_ns() + 10**10  # 10 s on: the directory's mtime is past its tick
    monkeypatch.setattr(callerfiles, "time", SimpleNamespace(time_ns=lambda: later))
    first, second, third = (os.urandom(16) for _ in range(3))
    files.remove_results([first])  # listed: its mtime said nothing as the executor began
    files.remove_results([second])  # not: unchanged since a listing that found it empty
    assert listed == [[first]]
    result = spill.write(where, b"r", "r", spill.result_tag(third))  # a worker's, since
    files.remove_results([third])
    assert listed == [[first], [third]] and not spill.reference_path(result).exists()
    # A result file of a call still under way, there as another's loss lists it: the
    # listing records nothing, so that call's loss later still finds its file.
    under_way, lost = os.urandom(16), os.urandom(16)
    kept = spill.write(where, b"r", "r", spill.result_tag(under_way))
    files.remove_results([lost])
    assert spill.reference_path(kept).exists()
    files.remove_results([under_way])
    assert not spill.reference_path(kept).exists()


@pytest.mark.parametrize("bad", ["abc", "-1", "0", "1.5"])
def test_a_bad_max_spill_mb_variable_fails_the_constructor_naming_it(
    monkeypatch: pytest.MonkeyPatch, no_local_farm: Path, bad: str
) -> None:
    # It was found only at the first argument over 1 MiB, as "max_spill_mb must be a whole
    # number of MiB, got 'abc'": no word of the variable the value came from.
    from farm.executor.callerfiles import CallerFiles

    monkeypatch.setenv(spill.MAX_SPILL_ENV, bad)
    with pytest.raises(spill.SpillError) as info:
        CallerFiles(None, no_local_farm / "spill", None)
    assert str(info.value) == f"$FARM_MAX_SPILL_MB must be a whole number of MiB > 0, got {bad!r}"
    with pytest.raises(spill.SpillError, match=r"^the Executor's max_spill_mb= must be"):
        CallerFiles(None, no_local_farm / "spill", 0)


@pytest.mark.parametrize(
    ("keyword", "variable", "config", "named"),
    [
        (1, "2", "3", "(the Executor's max_spill_mb=)"),
        (None, "1", "3", "($FARM_MAX_SPILL_MB)"),
        (None, None, "1", "([executor] max_spill_mb)"),
    ],
)
def test_spill_too_large_names_the_setting_the_limit_came_from(
    monkeypatch: pytest.MonkeyPatch,
    no_local_farm: Path,
    keyword: int | None,
    variable: str | None,
    config: str,
    named: str,
) -> None:
    # It blamed [executor] max_spill_mb whatever set the limit: max_spill_mb=5 was "over
    # the farm's limit of 5 MiB ([executor] max_spill_mb)", a key the user never wrote.
    from farm.executor.callerfiles import CallerFiles

    (no_local_farm / "farm.toml").write_text(f"[executor]\nmax_spill_mb = {config}\n")
    monkeypatch.delenv(spill.MAX_SPILL_ENV, raising=False)
    if variable:
        monkeypatch.setenv(spill.MAX_SPILL_ENV, variable)
    files = CallerFiles(None, no_local_farm / "spill", keyword)
    with pytest.raises(spill.SpillTooLarge) as info:
        files.write(b"x" * (1 << 20 | 1))
    assert str(info.value).endswith(f"over the farm's limit of 1 MiB {named}"), info.value


def test_a_workers_limit_names_the_config_and_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(spill.SPILL_ENV, str(tmp_path / "spill"))
    monkeypatch.setenv(spill.MAX_SPILL_ENV, "1")
    with pytest.raises(spill.SpillTooLarge, match=r"1 MiB \(\[executor\] max_spill_mb, the wor"):
        spill.write(spill.worker_settings(), b"x" * (1 << 20 | 1), "r")
    monkeypatch.setenv(spill.MAX_SPILL_ENV, "x")
    with pytest.raises(spill.SpillError, match=r"^\$FARM_MAX_SPILL_MB must be a whole number"):
        spill.worker_settings()


def test_a_spill_file_the_caller_cannot_write_says_where_and_what_to_change(
    tmp_path: Path,
) -> None:
    # Past a file size limit (`ulimit -f`), on a full disk or in a denied directory, the
    # caller's call failed with the bare OSError ("[Errno 27] File too large"), naming
    # neither the spill directory nor its setting, where a worker's result says both.
    program = f"""
import resource
from farm.executor.callerfiles import CallerFiles
from farm.executor.spill import SpillError
files = CallerFiles(None, {str(tmp_path / "spill")!r}, None)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
try:
    files.write(b"x" * (4 << 20))
except SpillError as exc:
    print(exc)
"""
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    said = run.stdout.strip()
    assert said.startswith(
        f"cannot write the call's argument to a spill file in {tmp_path / 'spill'}: File too large"
    ), said
    assert "spill_dir" in said
    assert os.listdir(tmp_path / "spill") == []  # the part written is gone
