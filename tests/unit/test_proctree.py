"""A process's tree as farm.pools.proctree walks it: from its own /proc entries down, the
same processes psutil's host-wide scan finds."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psutil
import pytest

from farm.pools import proctree
from tests.helpers.waiting import wait_for


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    """A shell with two children, one of which has one of its own."""
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & sh -c 'sleep 60 & wait' & wait"])
    try:
        yield shell
    finally:
        for proc in [psutil.Process(shell.pid), *psutil.Process(shell.pid).children(True)]:
            proc.kill()
        shell.wait()


def test_descendants_are_the_whole_tree_nearest_first(tree: subprocess.Popen[bytes]) -> None:
    wait_for("3 descendants", lambda: len(proctree.descendants(tree.pid)) == 3)
    walked = proctree.descendants(tree.pid)
    assert len(walked) == 3, walked  # wait_for returns truthy or raises: the walk is checked
    scanned = [p.pid for p in psutil.Process(tree.pid).children(recursive=True)]
    assert sorted(walked) == sorted(scanned)
    assert set(walked[:2]) == proctree.children(tree.pid)  # its own children first
    assert proctree.children(tree.pid) == {p.pid for p in psutil.Process(tree.pid).children()}


def test_a_kernel_that_lists_no_children_falls_back_to_psutil(
    tree: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    wait_for("3 descendants", lambda: len(proctree.descendants(tree.pid)) == 3)
    monkeypatch.setattr(proctree, "listed", lambda: False)
    monkeypatch.setattr(proctree, "children", lambda pid=None: set())  # the files missing
    assert len(proctree.descendants(tree.pid)) == 3


def test_a_process_gone_has_none() -> None:
    done = subprocess.Popen(["true"])
    done.wait()
    assert proctree.descendants(done.pid) == [] and proctree.children(done.pid) == set()
