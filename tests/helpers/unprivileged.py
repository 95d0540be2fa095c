"""A child process that meets file permissions as any user does, even where the tests run
as root (CI): a directory of mode 000 then denies it, as another user's private one would."""

from __future__ import annotations

import os
import pwd
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


def homeless(argv: list[str]) -> list[str]:
    """``argv`` run as a uid the user database does not know (a container's arbitrary user),
    so that with no $HOME it has no home at all. It keeps the right to read and search every
    file (the interpreter may be under root's home), not to write one. Needs root."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as a uid with no passwd entry")
    uid = next(uid for uid in range(54321, 65000) if not _known(uid))
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    keep = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    become = ["setpriv", *ids, *keep]
    if subprocess.run([*become, "true"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("setpriv may not change uid keeping a capability here")
    return [*become, *argv]


def _known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
