"""The default store's name for a server on a Unix socket alone (farm.paths.default_store):
one per path, so two servers never meet on one store they did not ask for."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from farm.paths import default_store


@pytest.fixture(autouse=True)
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    return tmp_path / "farm"


def test_paths_that_differ_in_a_slash_and_a_dash_get_stores_of_their_own() -> None:
    names = {
        default_store(None, path).name
        for path in ("/run/a-b.sock", "/run/a/b.sock", "/run/a b.sock", "/run/a--b.sock")
    }
    assert len(names) == 4, names


def test_a_plain_path_keeps_the_name_it_had(state: Path) -> None:
    # No upgrade to make for the usual sockets: /run/farm/..., $XDG_RUNTIME_DIR/farm/...
    assert default_store(None, "/run/farm/gearman.sock") == state / "queue-run-farm-gearman.sock.db"
    assert (
        default_store(None, "/run/user/1000/farm/g.sock").name
        == "queue-run-user-1000-farm-g.sock.db"
    )


def test_a_unix_path_never_gets_a_ports_store() -> None:
    assert default_store(None, "/4731") != default_store(4731)
    assert default_store(None, "/4731/").name != "queue-4731.db"


def test_a_relative_path_is_told_apart_by_where_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    first = default_store(None, "farm.sock")
    monkeypatch.chdir(tmp_path / "two")
    assert default_store(None, "farm.sock") != first


def test_the_store_of_a_port_is_not_adopted_for_a_unix_path(state: Path) -> None:
    # /4731 was named queue-4731.db before: the store of port 4731's server, not its own.
    from farm.server.legacystore import adopt_older_unix_store
    from farm.server.options import parse_args

    state.mkdir()
    (state / "queue-4731.db").write_bytes(b"")
    options = parse_args(["-L", "unix:/4731"])
    assert options.store == str(default_store(None, "/4731"))
    assert not adopt_older_unix_store(options)
    assert (state / "queue-4731.db").exists() and not Path(options.store).exists()


def test_an_adopted_store_takes_its_reserve_with_it(state: Path) -> None:
    # The older store's 8 MB -reserve was left behind for ever (the new store makes its own).
    from farm.paths import older_unix_store_name
    from farm.server.legacystore import adopt_older_unix_store
    from farm.server.options import parse_args
    from farm.server.store import SQLiteStore

    sock = "/no-such-dir-here/farm-1000.sock"  # a '-' of its own: the name changed
    state.mkdir()
    old = state / older_unix_store_name(sock)
    store = SQLiteStore(old)
    store.add(b"H:t:1", b"f", b"u", b"d", 1, None, 0.0, True)
    store.commit()
    store.close()
    reserve = Path(f"{old}-reserve")
    if not reserve.exists():  # a disk too full for one: the rename is what is tested
        reserve.write_bytes(b"\0" * 4096)
    held = reserve.stat().st_ino
    options = parse_args(["-L", f"unix:{sock}"])
    assert adopt_older_unix_store(options)
    assert not reserve.exists()
    assert Path(f"{options.store}-reserve").stat().st_ino == held
    store = SQLiteStore(options.store)
    try:
        assert [job.unique for job in store.load()] == [b"u"]
    finally:
        store.close()
    assert sorted(p.name for p in state.iterdir() if p.name.endswith("-reserve")) == [
        Path(f"{options.store}-reserve").name
    ]


def _store_holding(path: Path, *uniques: bytes) -> None:
    from farm.server.store import SQLiteStore

    store = SQLiteStore(path)
    for unique in uniques:
        store.add(b"H:t:1", b"f", unique, b"d", 1, None, 0.0, True)
    store.commit()
    store.close()


def _uniques(path: Path) -> list[bytes]:
    from farm.server.store import SQLiteStore

    store = SQLiteStore(path)
    try:
        return [job.unique for job in store.load()]
    finally:
        store.close()


def test_an_empty_new_store_gives_way_to_the_older_one_after_a_downgrade(state: Path) -> None:
    # Upgraded, downgraded (the older farm queued on the older name), upgraded again: the new
    # store existed, empty, and the jobs under the older name waited there for ever.
    from farm.paths import older_unix_store_name
    from farm.server.legacystore import adopt_older_unix_store
    from farm.server.options import parse_args

    sock = "/no-such-dir-here/farm-1000.sock"
    state.mkdir()
    old = state / older_unix_store_name(sock)
    options = parse_args(["-L", f"unix:{sock}"])
    new = Path(options.store)
    _store_holding(new)  # made by the first upgrade, its jobs all done
    _store_holding(old, b"queued-while-downgraded")
    assert adopt_older_unix_store(options)
    assert not old.exists()
    assert _uniques(new) == [b"queued-while-downgraded"]


def test_a_new_store_holding_jobs_is_not_replaced(state: Path) -> None:
    from farm.paths import older_unix_store_name
    from farm.server.legacystore import adopt_older_unix_store
    from farm.server.options import parse_args

    sock = "/no-such-dir-here/farm-1000.sock"
    state.mkdir()
    old = state / older_unix_store_name(sock)
    options = parse_args(["-L", f"unix:{sock}"])
    new = Path(options.store)
    _store_holding(new, b"mine")
    _store_holding(old, b"older")
    assert not adopt_older_unix_store(options)
    assert _uniques(new) == [b"mine"] and _uniques(old) == [b"older"]
    # Nor one whose jobs are done but that keeps a damaged one aside, for the operator.
    new.unlink()
    _store_holding(new)
    with sqlite3.connect(new) as db:
        db.execute("CREATE TABLE damaged_jobs (aside INTEGER PRIMARY KEY, uniq BLOB)")
        db.execute("INSERT INTO damaged_jobs (uniq) VALUES (x'75')")
    db.close()
    assert not adopt_older_unix_store(options)
    assert _uniques(old) == [b"older"]


@pytest.mark.timeout(30)
def test_two_servers_starting_at_once_keep_the_adopted_jobs(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B judged the new store empty; A then adopted the older one in its place; B went on
    # and unlinked the new store, A's adopted jobs with it. Judging, unlinking and the
    # rename are one starter's at a time: B, held there, leaves A's rename to after it.
    import threading
    from collections.abc import Callable
    from typing import Any

    import farm.server.legacystore as ls
    from farm.paths import older_unix_store_name
    from farm.server.options import parse_args

    sock = "/no-such-dir-here/farm-1000.sock"
    state.mkdir()
    old = state / older_unix_store_name(sock)
    options = parse_args(["-L", f"unix:{sock}"])
    new = Path(options.store)
    _store_holding(new)
    _store_holding(old, b"queued-while-downgraded")
    b_judged, a_moved = threading.Event(), threading.Event()
    warning = ls.log.warning

    def judged(message: str, *args: object) -> None:
        warning(message, *args)
        if "takes its place" in message and threading.current_thread().name == "B":
            b_judged.set()  # B between its judgement and its unlinks, until A has moved
            assert a_moved.wait(10), "A neither adopted nor waited for B"

    real: Callable[[Path], Any] | None = getattr(ls, "_one_starter", None)

    def one_starter(directory: Path) -> Any:
        if threading.current_thread().name == "A":
            a_moved.set()  # A at the lock: under it, it waits for B
        assert real is not None
        return real(directory)

    monkeypatch.setattr(ls.log, "warning", judged)
    monkeypatch.setattr(ls, "_one_starter", one_starter, raising=False)
    adopted: dict[str, object] = {}

    def start(name: str) -> None:
        try:
            adopted[name] = ls.adopt_older_unix_store(options)
        except Exception as exc:  # said by the asserts below
            adopted[name] = repr(exc)
        finally:
            if name == "A":
                a_moved.set()

    b = threading.Thread(target=start, args=("B",), name="B")
    b.start()
    assert b_judged.wait(10)
    a = threading.Thread(target=start, args=("A",), name="A")
    a.start()
    a.join(20)
    b.join(20)
    jobs = _uniques(new) if new.exists() else "no store"
    assert jobs == [b"queued-while-downgraded"] and not old.exists(), (jobs, adopted)
    assert sorted(adopted.items()) == [("A", False), ("B", True)]


@pytest.mark.timeout(30)
def test_a_state_directory_that_cannot_be_locked_still_adopts(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On NFS, Linux makes flock() an fcntl lock, which needs a file open for writing: the
    # directory's, open read-only, failed EBADF, and adoption failed where it had worked.
    import errno
    import fcntl

    from farm.paths import older_unix_store_name
    from farm.server.legacystore import adopt_older_unix_store
    from farm.server.options import parse_args

    def no_lock(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    sock = "/no-such-dir-here/farm-1000.sock"
    state.mkdir()
    old = state / older_unix_store_name(sock)
    options = parse_args(["-L", f"unix:{sock}"])
    _store_holding(old, b"queued-by-the-older-farm")
    monkeypatch.setattr(fcntl, "flock", no_lock)
    assert adopt_older_unix_store(options)
    assert not old.exists()
    assert _uniques(Path(options.store)) == [b"queued-by-the-older-farm"]
