"""farm.server.endedpeers.EndedPeers: the closed worker connections admin `served` counts,
kept ENDED_KEPT_FOR seconds, ENDED_KEPT names at most, and only those their supervisor
named (``watched``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from farm.server import endedpeers
from farm.server.endedpeers import ENDED_KEPT, ENDED_KEPT_FOR, EndedPeers


@dataclass
class Conn:
    peer_port: int
    fd: int = 9
    ip: str = "127.0.0.1"
    peer_pid: int = 0
    watched: bool = True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(endedpeers, "monotonic", lambda: now[0])
    return now


def test_an_end_is_kept_for_its_time_then_forgotten(clock: list[float]) -> None:
    ended = EndedPeers()
    ended.note(Conn(5000), 3, 0)
    ended.note(Conn(5000), 2, 1)  # a second connection of the same name adds up
    assert ended.jobs("tcp:127.0.0.1:5000") == (5, 1)
    clock[0] += ENDED_KEPT_FOR + 0.1
    assert ended.jobs("tcp:127.0.0.1:5000") == (0, 0)


def test_only_watched_named_ends_with_jobs_are_kept(clock: list[float]) -> None:
    ended = EndedPeers()
    ended.note(Conn(5001, watched=False), 3, 0)
    ended.note(Conn(0, peer_pid=0), 3, 0)  # fd:N names the next connection on that fd
    ended.note(Conn(5002), 0, 0)
    assert ended.jobs("tcp:127.0.0.1:5001") == (0, 0)
    assert ended._jobs == {}


def test_at_most_ended_kept_names_the_oldest_going_first(clock: list[float]) -> None:
    ended = EndedPeers()
    for port in range(ENDED_KEPT + 1):
        ended.note(Conn(10000 + port), 1, 0)
    assert len(ended._jobs) == ENDED_KEPT
    assert ended.jobs("tcp:127.0.0.1:10000") == (0, 0)
    assert ended.jobs(f"tcp:127.0.0.1:{10000 + ENDED_KEPT}") == (1, 0)
