"""Fixtures: real servers (farm's and gearmand) on free ports, and raw-protocol peers.

What they are built from lives in tests/helpers/; test modules import it from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server, start_gearmand


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
