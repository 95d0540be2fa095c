"""The job store at a server's start: a store larger than the file-size limit replays, and
a store file the server cannot open is refused with a fix that keeps its queued jobs.

Found in a review: the replay read every row with `ORDER BY priority, id`, which SQLite
sorts in a temporary file as large as the payloads. Under `ulimit -f 6000` (or with a full
/var/tmp) that file could not be written, and the server called a healthy store damaged at
every start, advising to move it aside: every queued job lost. And a store file made
immutable (`chattr +i`) or closed to the server's user was answered "set [server] store =
PATH, or none": both leave its queued jobs behind.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.protocol.kinds import Priority
from farm.server.store import SQLiteStore
from tests.helpers import ROOT
from tests.helpers.peers import grab_all
from tests.helpers.servers import free_port, wait_connectable
from tests.helpers.unprivileged import unprivileged

#: The server's file-size limit (RLIMIT_FSIZE, `ulimit -f`), and what the store holds: the
#: payloads together are five times the limit, as a sort of them in a temporary file is.
LIMIT = 1 << 20
PAYLOAD = 64 << 10
JOBS = 80


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before it runs the server
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_store_larger_than_the_file_size_limit_replays_in_its_order(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    store = SQLiteStore(db)
    for n in range(JOBS):  # the priorities interleaved: the replay must order them
        data = b"%d-" % n + bytes(PAYLOAD)
        store.add(b"H:t:%d" % n, b"f", b"u%d" % n, data, n % 3, None, 0.0, True)
    store.commit()
    store.close()
    assert JOBS * PAYLOAD > 4 * LIMIT
    port = free_port()
    cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", str(db)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        preexec_fn=_file_size_limit(LIMIT),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            wait_connectable(f"127.0.0.1:{port}", proc, timeout=30)
        except (RuntimeError, AssertionError):
            proc.kill()
            raise AssertionError(f"the server did not start: {proc.communicate()[1]}") from None
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert f"Max file size             {LIMIT}" in limits  # the limit really held
        got = grab_all(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        _, said = proc.communicate(timeout=15)
    # As before: priority (HIGH first), then the order the jobs came in.
    expected = sorted(range(JOBS), key=lambda n: (Priority(n % 3), n))
    assert [u for u, _ in got] == [b"u%d" % n for n in expected], said
    assert all(data.startswith(u[1:] + b"-") for u, data in got)
    assert "cannot be read" not in said and "aside" not in said, said


def _refused(store: Path, *flags: str, run: list[str] | None = None) -> str:
    """The one line of a server that refused ``store`` (exit 2); ``run``: the argv before."""
    cmd = [sys.executable, "-m", "farm.server", "-p", str(free_port()), "--store", str(store)]
    result = subprocess.run(
        [*(run or []), *cmd, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def _stored(path: Path) -> None:
    """A store holding one queued job, closed."""
    store = SQLiteStore(path)
    store.add(b"H:t:1", b"f", b"queued", b"x", 1, None, 0.0, True)
    store.commit()
    store.close()


@pytest.mark.parametrize("how", ["closed to its user", "immutable"])
def test_a_store_that_cannot_be_opened_is_not_pointed_away_from(tmp_path: Path, how: str) -> None:
    db = tmp_path / "queue.db"
    _stored(db)
    run: list[str] = []
    if how == "immutable":
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(db)], check=False).returncode:
            pytest.skip("needs chattr +i (root, and a filesystem that keeps the attribute)")
    else:
        db.chmod(0o400)  # the server's user may read it, not write it
        run = unprivileged([])
    try:
        line = _refused(db, run=run)
        in_config = _refused(db, "--hints", "config", run=run)  # as `farm up` starts it
    finally:
        if how == "immutable":
            subprocess.run(["chattr", "-i", str(db)], check=True)
    assert line.startswith(f"farm server: cannot open the job store {db}: "), line
    # The fix is the file's: another store, or none, leaves its queued job behind.
    assert "fix the permissions, attributes (lsattr; chattr -i) or owner" in line, line
    assert "--store elsewhere or none leaves its queued jobs behind" in line, line
    assert "use --store PATH" not in line, line
    assert '[server] store elsewhere or "none" leaves its queued jobs behind' in in_config
    assert 'set [server] store = "PATH"' not in in_config, in_config


def test_a_store_not_made_yet_keeps_the_advice_of_another_path(tmp_path: Path) -> None:
    # Nothing is queued there yet: another path, or none, loses no job.
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o500)
    line = _refused(closed / "queue.db", run=unprivileged([]))
    assert line.endswith("(use --store PATH, or --store none for memory only)"), line
