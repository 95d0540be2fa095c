"""The directories farm makes where they are missing, parents included: none more open
than the one it asked for. Path.mkdir(parents=True) and os.makedirs give the parents the
umask's mode, not the one asked for: under UMask=0002 (a group's shared setup) or 0000,
a parent others may write, in which another user could move our private directory aside
and put one of theirs in its place (a store, a key, a control socket they then own)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.config import ServerConfig
from farm.executor import signing, spill
from farm.pools.controlserver import ControlServer
from farm.pools.localserver import LocalServer
from farm.server.reserve import DiskReserve
from farm.server.storeopen import open_database


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o002)  # group-writable: the mode the missing parents got
    try:
        yield
    finally:
        os.umask(old)


def make_store(leaf: Path) -> None:
    db, _ = open_database(str(leaf / "queue.db"), "normal", DiskReserve(str(leaf / "queue.db")))
    db.close()


def make_control(leaf: Path) -> None:
    ControlServer(str(leaf / "control.sock")).close()


def make_server_dirs(leaf: Path) -> None:
    server = ServerConfig(listen=(f"unix:{leaf}/gearman.sock",), store="none", job_retries=0)
    LocalServer(server, {}).prepare_paths()


MAKERS: dict[str, tuple[Callable[[Path], object], int]] = {
    "store": (make_store, 0o700),
    "executor key": (lambda leaf: signing.ensure_key(leaf / "executor.key"), 0o700),
    "spill parent": (lambda leaf: spill.spill_dir(leaf / "spill"), 0o700),
    "control socket": (make_control, 0o700),
    "server socket": (make_server_dirs, 0o750),
}


@pytest.mark.parametrize("what", MAKERS)
def test_missing_parents_are_no_more_open_than_the_directory_asked_for(
    what: str, tmp_path: Path, open_umask: None
) -> None:
    make, mode = MAKERS[what]
    leaf = tmp_path / "a" / "b" / "farm"
    make(leaf)
    for made in (tmp_path / "a", tmp_path / "a" / "b", leaf):
        got = stat.S_IMODE(made.stat().st_mode)
        assert got & ~mode == 0, f"{made} made {got:o}, more than {mode:o}"
