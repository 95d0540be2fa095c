"""A child process that meets file permissions as any user does, even where the tests run
as root (CI): a directory of mode 000 then denies it, as another user's private one would."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run so that permissions apply to it: as root, without the capabilities that
    bypass them (a root that only drops them needs no other user, nor an interpreter that
    user may run); as any other user, as it is."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run without root's permission override")
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if subprocess.run([*drop, "true"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("setpriv may not drop capabilities here (a container without CAP_SETPCAP)")
    return [*drop, *argv]
