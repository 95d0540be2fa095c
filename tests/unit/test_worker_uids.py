"""Who may serve the reserved farm.* functions by default: the server's own user, as the
Unix socket's SO_PEERCRED names a peer, by its effective uid (farm.server.workerside)."""

from __future__ import annotations

import os

import pytest

from farm.server.options import parse_args
from farm.server.settings import ServerOptions

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def setuid_process(monkeypatch: pytest.MonkeyPatch) -> int:
    # A setuid program (or one that dropped its effective uid alone) has a real uid other
    # than its effective one; an unprivileged test cannot become one, so the real uid is
    # made to differ here. Its workers connect with the effective uid, which is what
    # SO_PEERCRED reports.
    monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1)
    return os.geteuid()


def test_the_default_worker_uid_is_the_effective_one(setuid_process: int) -> None:
    assert parse_args(["--store", "none"]).worker_uids == {setuid_process}
    assert ServerOptions().worker_uids == {setuid_process}


def test_worker_uids_given_replace_the_default(setuid_process: int) -> None:
    options = parse_args(["--store", "none", "--worker-uid", "4242"])
    assert options.worker_uids == {4242}
