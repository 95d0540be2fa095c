"""A caller running as another account, a member of the farm's group, against a real `farm up`.

The shipped unit runs the farm as its own user and group (``farm``); developers
call it from their own accounts. Such a caller needs the group: to read the key
(shared with ``chmod 640``), to use the Unix socket (0660) and to write and read
spill files in ``[executor] spill_dir``. This test runs the caller as ``nobody``
with the farm's group as a supplementary group, and the spill directory without
its setgid bit, as systemd's ``RestrictSUIDSGID=`` leaves it: every file must
still take the directory's group, or the other side could not read it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from farm.executor.signing import ensure_key
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp

NOBODY = 65534


class Shared(NamedTuple):
    up: FarmUp
    key: Path
    spill: Path


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    if os.getuid() != 0:
        pytest.skip("needs root to run a caller as a second local user (CI runs as root)")
    # Open to the farm's group only, as /run/farm and /var/lib/farm are under the unit.
    top = Path(tempfile.mkdtemp(prefix="farm-group-"))
    os.chmod(top, 0o750)
    key = ensure_key(top / "state" / "executor.key")
    os.chmod(key.parent, 0o750)
    os.chmod(key, 0o640)  # shared with the farm's group, as docs/executor.md says
    spill = top / "spill"
    spill.mkdir()
    os.chmod(spill, 0o770)  # no setgid bit: what RestrictSUIDSGID= leaves
    pool = f"""
    [executor]
    spill_dir = "{spill}"

    [functions."farm.python"]
    target = "farm.executor.call:run_call"
    workers = 2
    """
    up = FarmUp(top, pool, extra_env={"FARM_KEY_FILE": str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 2})
        yield Shared(up, key, spill)
    finally:
        up.stop()
        shutil.rmtree(top, ignore_errors=True)


def run_as_nobody(shared: Shared, body: str, *, groups: list[int]) -> subprocess.CompletedProcess:
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
# Imports first: this interpreter lives under /root, which nobody may enter.
from pathlib import Path
import concurrent.futures.thread, hashlib, hmac, secrets, socket, threading
import farm, farm.executor.executor, farm.executor.pump, farm.executor.flight
from farm.executor import spill
from farm.executor.signing import KeyFileError
from tests.helpers.calls import identity, large_result
os.setgroups({groups!r}); os.setgid({NOBODY}); os.setuid({NOBODY})
SOCK, KEY, SPILL = {str(shared.up.unix)!r}, {str(shared.key)!r}, {str(shared.spill)!r}
{body}
"""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=90,
        cwd="/",
        env=dict(os.environ, HOME="/nonexistent"),
    )


@pytest.mark.timeout(120)
def test_a_caller_of_another_account_in_the_farms_group_runs_small_and_large_calls(
    shared: Shared,
) -> None:
    farm_gid = os.getgid()
    done = run_as_nobody(
        shared,
        """
with farm.Executor(2, servers=[f"unix:{SOCK}"], key_file=KEY, spill_dir=SPILL) as ex:
    assert ex.submit(pow, 2, 10).result() == 1024
    big = os.urandom(3 << 20)
    assert ex.submit(identity, big).result() == big, "a large argument and result"
    assert ex.submit(large_result, 5 << 20).result() == b"\\x01" * (5 << 20)
    print("pid", ex.submit(os.getpid).result() != os.getpid())
    print("worker uid", ex.submit(os.getuid).result())
ref = spill.write(spill.SpillSettings(Path(SPILL), 1 << 30), b"x" * 10, "a")
print("file gid", os.stat(spill.reference_path(ref)).st_gid)
spill.remove(ref)
print("left", sorted(os.listdir(SPILL)))
""",
        groups=[farm_gid],
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "pid True" in lines and "worker uid 0" in lines, lines  # ran by the farm's user
    assert f"file gid {farm_gid}" in lines, f"a spill file must take the farm's group: {lines}"
    assert "left []" in lines, "the caller removed every argument and result file"


@pytest.mark.timeout(60)
def test_a_caller_outside_the_farms_group_is_told_it_cannot_read_the_key(shared: Shared) -> None:
    done = run_as_nobody(
        shared,
        """
try:
    farm.Executor(2, servers=[f"unix:{SOCK}"], key_file=KEY)
except KeyFileError as exc:
    print("refused:", exc)
""",
        groups=[],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: cannot read the farm's key file"), done.stdout
    assert "FARM_KEY_FILE" in done.stdout
