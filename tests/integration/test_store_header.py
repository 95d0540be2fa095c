"""A store file that begins with a part of SQLite's header gets one verdict from `farm check`
and from the server (farm.server.storetables.not_sqlite), and is left as it was.

Found in a review: a store file holding just ``b"SQLite"`` was "not a SQLite database: name
another file" to `farm check` and `farm up`, and damaged ("restore it from a backup") to
the server's open: the two read the header by rules of their own. Such a file is a store cut
off (SQLite writes a new store's header in one write), whose -wal may hold its jobs: damage
to both, never another program's file, whose fix, another path, strands them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.farmcheck import config, farm, lines, serve_store
from tests.helpers.servers import free_port

REVERSE = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'


def _cut_in_its_name(path: Path) -> None:
    path.write_bytes(b"SQLite")


def _cut_before_its_nul(path: Path) -> None:
    path.write_bytes(b"SQLite format 3")


def _cut_with_its_wal_beside(path: Path) -> None:
    """farm's store, its server killed with jobs in the -wal alone, its file then cut to 6
    bytes: the -wal does not hold the first page, so SQLite cannot read it."""
    made = (
        "import os, sys\n"
        "from farm.server.store import SQLiteStore\n"
        "store = SQLiteStore(sys.argv[1])\n"
        "for n in range(5):\n"
        "    store.add(b'H:t:%d' % n, b'reverse', b'u%d' % n, b'x', 1, None, 0.0, True)\n"
        "store.commit()\n"
        "os._exit(0)\n"
    )
    path.parent.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", made, str(path)], env=env, check=True, timeout=60)
    os.truncate(path, 6)
    copy = path.parent / "copy"  # read elsewhere: a read of its own makes a -shm beside it
    copy.mkdir()
    for name in (path.name, f"{path.name}-wal"):
        shutil.copy(path.parent / name, copy / name)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        db = sqlite3.connect(copy / path.name)
        try:
            db.execute("SELECT count(*) FROM jobs").fetchone()
        finally:
            db.close()
    shutil.rmtree(copy)


def _header_zeroed_its_reserve_beside(path: Path) -> None:
    """farm's store, stopped cleanly with jobs, its first sector then zeroed on disk: its
    -reserve beside it says it was a farm's store (found by an operator's look at a damaged
    store: "not a database: use --store PATH, or --store none", and the farm started empty)."""
    made = (
        "import sys\n"
        "from farm.server.store import SQLiteStore\n"
        "store = SQLiteStore(sys.argv[1])\n"
        "store.add(b'H:t:0', b'reverse', b'u0', b'x', 1, None, 0.0, True)\n"
        "store.commit()\n"
        "store.close()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", made, str(path)], env=env, check=True, timeout=60)
    assert path.with_name(path.name + "-reserve").is_file()
    with path.open("r+b") as f:
        f.write(bytes(16))


def _whole_sector_zeroed_its_reserve_beside(path: Path) -> None:
    """As above, a whole 512-byte sector zeroed: the header's fixed bytes went with it."""
    _header_zeroed_its_reserve_beside(path)
    with path.open("r+b") as f:
        f.write(bytes(512))


def _a_dump_put_where_a_store_was(path: Path) -> None:
    """An operator's `.dump` text of the store put at its path, the store's -reserve left
    beside it: another file, not a store that lost its header (found in a review)."""
    _header_zeroed_its_reserve_beside(path)
    path.write_bytes(b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCOMMIT;\n")


def _a_gzip_put_where_a_store_was(path: Path) -> None:
    _header_zeroed_its_reserve_beside(path)
    path.write_bytes(gzip.compress(bytes(4096)))


def _sixteen_nuls_then_no_header(path: Path) -> None:
    """16 NULs, then bytes no SQLite header has at 18 to 23: another program's file."""
    _header_zeroed_its_reserve_beside(path)
    path.write_bytes(bytes(16) + b"\x10\x00not sqlite" + bytes(200))


def _another_programs_text(path: Path) -> None:
    path.write_bytes(b"SQLite is fast\n")  # "SQLite " is not "SQLite f": no part of it


def files(where: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(where.iterdir())}


def check_verdict(said: subprocess.CompletedProcess[str]) -> str:
    assert said.returncode == 2, said.stdout + said.stderr
    (line,) = lines(said.stderr)
    if "not a SQLite database: name another file" in line:
        return "another's"
    assert "restore it from a backup" in line, line
    return "damaged"


def server_verdict(said: subprocess.CompletedProcess[str]) -> str:
    assert said.returncode == 2, said.stderr
    (line,) = lines(said.stderr)
    if ": file is not a database (use --store PATH" in line:
        return "another's"
    assert "restore it from a backup" in line, line
    return "damaged"


@pytest.mark.parametrize(
    ("made", "verdict"),
    [
        (_cut_in_its_name, "damaged"),
        (_cut_before_its_nul, "damaged"),
        (_cut_with_its_wal_beside, "damaged"),
        (_header_zeroed_its_reserve_beside, "damaged"),
        (_whole_sector_zeroed_its_reserve_beside, "damaged"),
        (_a_dump_put_where_a_store_was, "another's"),
        (_a_gzip_put_where_a_store_was, "another's"),
        (_sixteen_nuls_then_no_header, "another's"),
        (_another_programs_text, "another's"),
    ],
)
def test_farm_check_and_the_server_give_a_store_file_one_verdict(
    tmp_path: Path, made: Callable[[Path], None], verdict: str
) -> None:
    store = tmp_path / "data" / "queue.db"
    store.parent.mkdir()
    made(store)
    before = files(store.parent)
    config(tmp_path, REVERSE, store=str(store))
    checked = farm(tmp_path, "check")
    served = serve_store(store)
    assert (check_verdict(checked), server_verdict(served)) == (verdict, verdict)
    assert files(store.parent) == before  # its bytes, and no file beside it: no job lost


OTHER = 54321  # the farm's user, not root (no passwd entry needed)


def test_roots_check_of_the_farm_users_damaged_store_says_what_its_server_says(
    tmp_path: Path,
) -> None:
    # Found in a review: the -reserve was taken as the farm's only where it was the
    # checking user's, so root's `farm check` on the farm's user's store whose header was
    # zeroed said "name another file" (the fix that strands its jobs), where that user's
    # server said it was damaged.
    if os.getuid() != 0:
        pytest.skip("needs root to check a second local user's store (CI runs as root)")
    top = Path(tempfile.mkdtemp(prefix="farm-store-"))  # pytest's own is root's alone
    try:
        os.chown(top, OTHER, OTHER)  # the farm user's state directory
        store = top / "queue.db"
        _header_zeroed_its_reserve_beside(store)
        for name in (store.name, f"{store.name}-reserve"):
            os.chown(top / name, OTHER, OTHER)
        before = files(top)
        config(tmp_path, REVERSE, store=str(store))
        checked = farm(tmp_path, "check")
        as_farm_user = (  # farm imported as root: the farm's user may not read /root
            "import os, sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from farm.server.app import main\n"
            f"os.setgroups([]); os.setgid({OTHER}); os.setuid({OTHER})\n"
            f"sys.exit(main(['-L', '127.0.0.1:{free_port()}', '--store', {str(store)!r}]))\n"
        )
        served = subprocess.run(
            [sys.executable, "-c", as_farm_user],
            env=dict(os.environ, HOME=str(top)),
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert (check_verdict(checked), server_verdict(served)) == ("damaged", "damaged")
        assert files(top) == before
    finally:
        shutil.rmtree(top, ignore_errors=True)
