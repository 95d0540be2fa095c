"""A background job the store refused (QUEUE_ERROR) is never run.

Found in a review: with the store's disk full, a SUBMIT_JOB_BG and a GRAB_JOB read in the
same loop turn handed the job to the worker before the turn's commit failed, so the
client was told QUEUE_ERROR while the worker got the job's JOB_ASSIGN.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.disks import small_tmpfs
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, start_with_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs the test fills, so the store's next write fails for want of room."""
    with small_tmpfs(tmp_path / "tiny", "1m") as disk:
        yield disk


def test_a_job_refused_by_a_full_store_is_not_handed_to_a_worker(tiny_disk: Path) -> None:
    srv = start_with_store(tiny_disk / "q.db", free_port())
    try:
        first = Peer(srv.addr)
        first.send(T.SUBMIT_JOB_BG, "f", "stored", "small")
        assert first.recv().type == T.JOB_CREATED  # the store works until the disk is full
        room = os.statvfs(tiny_disk)
        (tiny_disk / "filler").write_bytes(b"\0" * (room.f_bavail * room.f_frsize))
        # One connection submits and grabs in one write, so both are read in one turn.
        peer = Peer(srv.addr)
        peer.send(T.CAN_DO, "g")
        both = p.encode_req(T.SUBMIT_JOB_BG, b"g", b"refused", b"x" * 200_000)
        peer.send_raw(both + p.encode_req(T.GRAB_JOB))
        refused = peer.recv()
        assert refused.type == T.ERROR and refused.args[0] == b"QUEUE_ERROR", refused
        answer = peer.recv()
        assert answer.type == T.NO_JOB, f"the refused job was handed out: {answer.type!r}"
    finally:
        srv.stop()
