"""`farm reload` (or ps, scale) that finds no supervisor at the socket its config names looks
for the farm started from that file elsewhere, by process title; any local user may take
that title and answer pings as that farm. Only a supervisor of the CLI's own user is named:
root was told to steer its farm through another user's socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.farmproc import farm_cli
from tests.helpers.waiting import wait_for

NOBODY = 65534

#: A process of another user's that says it is the supervisor started from CONFIG.
IMPOSTOR = r"""
import json, os, socket, sys
from setproctitle import setproctitle
# Imports first: this interpreter lives under /root, which nobody may enter.
os.setgroups([]); os.setgid(65534); os.setuid(65534)
setproctitle("farm: supervisor")
sock = socket.socket(socket.AF_UNIX)
sock.bind(sys.argv[1])
sock.listen(8)
print("ready", flush=True)
while True:
    conn, _ = sock.accept()
    conn.recv(4096)
    reply = {"ok": True, "pid": os.getpid(), "config": sys.argv[2]}
    conn.sendall(json.dumps(reply).encode() + b"\n")
    conn.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user's process")
def test_a_supervisor_of_another_user_is_never_named(tmp_path: Path) -> None:
    config = tmp_path / "farm.toml"
    config.write_text(f'[supervisor]\ncontrol = "{tmp_path}/control.sock"\n')
    theirs = Path(tempfile.mkdtemp(prefix="impostor-"))
    os.chown(theirs, NOBODY, NOBODY)
    sock = theirs / "s"
    impostor = subprocess.Popen(
        [sys.executable, "-c", IMPOSTOR, str(sock), str(config)],
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert impostor.stdout is not None and impostor.stdout.readline() == "ready\n"
        wait_for("the impostor's socket", sock.exists)
        out = farm_cli("ps", "-c", str(config))
        assert out.returncode == 1, out.stderr
        assert str(sock) not in out.stderr, out.stderr
        assert "no supervisor answers at" in out.stderr
    finally:
        impostor.kill()
        impostor.wait()
        shutil.rmtree(theirs)
