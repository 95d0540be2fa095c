"""Fixtures: real servers (farm's and gearmand) on free ports, and raw-protocol peers.

What they are built from lives in tests/helpers/; test modules import it from there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server, start_gearmand


def _claims_dirs() -> set[Path]:
    """The Executor's replay records of this user in shared memory (farm.executor.replay)."""
    shm = Path("/dev/shm")
    return set(shm.glob(f"farm-{os.getuid()}-claims-*")) if shm.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def _no_claims_left() -> Iterator[None]:
    """Remove the replay records this session's farms left in /dev/shm.

    Each test's farm has a key of its own, so a record of its own (some 15 KB of memory
    each, hundreds a run), which outlives the farm as it must for users (a restarted farm
    still refuses a replayed call); a test's key is gone with its temporary directory, so
    nothing would ever sweep its record. Those that were there before the session are kept.
    """
    before = _claims_dirs()
    yield
    for left in _claims_dirs() - before:
        shutil.rmtree(left, ignore_errors=True)


@pytest.fixture
def farm_server() -> Iterator[Server]:
    srv = start_farm_server()
    yield srv
    srv.stop()


@pytest.fixture
def gearmand() -> Iterator[Server]:
    srv = start_gearmand()
    yield srv
    srv.stop()


@pytest.fixture(params=["farm", "gearmand"])
def any_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The same test against farm's server and against gearmand."""
    srv = start_farm_server() if request.param == "farm" else start_gearmand()
    yield srv
    srv.stop()


@pytest.fixture
def peer_factory() -> Iterator[Callable[[str], Peer]]:
    """Make Peers to an address; every one is closed at teardown."""
    peers: list[Peer] = []

    def make(addr: str) -> Peer:
        peer = Peer(addr)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()
