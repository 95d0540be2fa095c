"""A control socket another local user put at the configured path, in a directory others
may write (/tmp): it answered `farm scale`, `farm stop` and `farm ps` in the supervisor's
place (its made-up reply printed, exit 0), and `farm up` refused to start for "another
supervisor". The job server's socket was refused so already (farm.sockettrust)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.farmcheck import farm
from tests.helpers.unprivileged import homeless

pytestmark = pytest.mark.timeout(60)

#: Another user's process answering every request as a supervisor would.
SQUATTER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(json.dumps({"ok": True, "pid": 1, "targets": {"reverse": 99}}).encode() + b"\\n")
    c.close()
"""


@pytest.fixture
def planted() -> Iterator[Path]:
    """The path of a socket another uid answers on, in a sticky directory all may write
    (in /tmp: pytest's temp tree is closed to other users)."""
    shared = Path(tempfile.mkdtemp(prefix="farm-shared-"))
    shared.chmod(0o1777)
    sock = shared / "control.sock"
    proc = subprocess.Popen(
        homeless([sys.executable, "-c", SQUATTER, str(sock)]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield sock
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(shared, ignore_errors=True)


def test_a_control_socket_another_user_planted_is_not_asked(planted: Path, tmp_path: Path) -> None:
    for command in (["ps"], ["scale", "reverse=0"], ["stop"]):
        run = farm(tmp_path, *command, "--control", str(planted))
        assert run.returncode == 1, (command, run.stdout, run.stderr)
        assert "reverse=99" not in run.stdout and "belongs to uid" in run.stderr, run.stderr
        assert "set [supervisor] control to a path in a directory of the farm's user" in (
            run.stderr
        )
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[server]\nlisten = ["unix:{tmp_path}/gearman.sock"]\nstore = "none"\n'
        f'[supervisor]\ncontrol = "{planted}"\nmetrics = "off"\n'
    )
    up = farm(tmp_path, "up", "-c", str(config))
    assert up.returncode == 1 and "not starting:" in up.stderr, up.stderr
    assert "another supervisor" not in up.stderr and "belongs to uid" in up.stderr
