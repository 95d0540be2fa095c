"""The disk reserve kept from an earlier run is used when the disk is already full at start.

Found in a review: the server stopped with its STORE-reserve held, the disk then filled,
and the server started again. It did not open the reserve (too little free to make one),
so when the deletes of the jobs it replayed and ran failed it had nothing to give back:
every one of them ran again at the next start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers.disks import small_tmpfs
from tests.helpers.peers import Peer, grab_all
from tests.helpers.servers import free_port, start_with_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MB tmpfs (its reserve: 1%, about 330 kB) that the test fills."""
    with small_tmpfs(tmp_path / "small", "32m") as disk:
        yield disk


def test_a_reserve_left_by_the_last_run_frees_room_for_deletes(small_disk: Path) -> None:
    db, port = small_disk / "q.db", free_port()
    srv = start_with_store(db, port)
    client = Peer(srv.addr)
    for i in range(5):
        client.send(T.SUBMIT_JOB_BG, "f", f"job-{i}", b"x" * 3000)
        assert client.recv().type == T.JOB_CREATED
    srv.stop()
    assert (small_disk / "q.db-reserve").stat().st_size > 0
    room = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (room.f_bavail * room.f_frsize))
    srv = start_with_store(db, port)
    try:
        assert len(grab_all(srv.addr)) == 5
    finally:
        srv.stop()
    srv = start_with_store(db, port)
    try:
        assert grab_all(srv.addr) == [], "finished jobs ran again"
    finally:
        srv.stop()
