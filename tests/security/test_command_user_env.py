"""A command pool's ``user`` (``farm up`` as root) gets none of the supervisor's secrets.

Its processes started from the supervisor's whole environment: a token or password that
root had exported where it started ``farm up`` (or a root unit's ``Environment=``) was in
each of them, where every process of that user may read it (/proc/PID/environ), as the
other services that share ``nobody`` or ``www-data`` do. As sudo's env_reset (and
systemd's ``User=``), a command run as another user now keeps only PATH, the locale, the
time zone and GEARMAN_SERVERS of it, beside its own HOME, USER and LOGNAME, farm's
FARM_* variables and the pool's ``env``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

POOL = """
[functions.envdump]
command = ["/bin/sh", "-c", "env; echo END-OF-ENV; exec sleep 600"]
user = "nobody"
workers = 1
env = { POOL_SETTING = "the pool's" }
pass_env = ["APP_TOKEN"]
"""


@pytest.mark.timeout(60)
def test_a_command_run_as_another_user_gets_none_of_the_supervisors_secrets(
    tmp_path: Path,
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a command as another user (CI runs as root)")
    secrets = {"DATABASE_PASSWORD": "s3cret", "AWS_SECRET_ACCESS_KEY": "k3y"}
    up = FarmUp(
        tmp_path,
        POOL,
        extra_env={
            **secrets,
            **{"LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC"},
            "APP_TOKEN": "the one it needs",
            "FARM_TLS_CA": "/etc/farm/ca.pem",
        },
    )
    try:
        log = wait_for("the command's environment", lambda: _ended(up.read_log()), 30)
    finally:
        up.stop()
    # "worker envdump#0 cpu0 (pid N): NAME=value": one logged line per variable
    names = {
        line.partition("): ")[2].partition("=")[0]: line.partition("): ")[2].partition("=")[2]
        for line in log.splitlines()
        if "worker envdump#0" in line and "=" in line.partition("): ")[2]
    }
    leaked = sorted(set(secrets) & set(names))
    assert not leaked, f"root's environment reached the command run as nobody: {leaked}"
    assert names["USER"] == "nobody" and names["HOME"] == "/nonexistent", names
    assert names["POOL_SETTING"] == "the pool's", "the pool's env is the command's"
    assert names["FARM_FUNCTION"] == "envdump" and names["FARM_SERVERS"] == up.addr
    assert names["LANG"] == "C.UTF-8" and names["LC_TIME"] == "C" and names["TZ"] == "UTC"
    assert names["PATH"] == os.environ["PATH"], "PATH stays: commands are found by it"
    # A path, not a secret: a `farm worker` command without it spoke plain text to a TLS farm.
    assert names["FARM_TLS_CA"] == "/etc/farm/ca.pem"
    assert names["APP_TOKEN"] == "the one it needs", "pass_env hands it on by name"


def _ended(log: str) -> str | None:
    return log if "END-OF-ENV" in log else None
