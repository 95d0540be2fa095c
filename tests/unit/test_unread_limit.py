"""--max-unread-bytes (farm.server.backpressure.check_unread): which TCP peers that leave
their replies unread are disconnected once all of them together are past it. Stand-ins for
the connections and the hub: what check_unread reads of them."""

from __future__ import annotations

from types import SimpleNamespace

from farm.server.backpressure import BackPressure

MIB = 1 << 20


class Reader:
    """A TCP peer owed ``owed`` bytes that its transport holds."""

    def __init__(self, name: str, owed: int) -> None:
        self.ip = name
        self.fd = 7
        self.tcp = True
        self.closed = False
        self.unsent = self.held_counted = 0
        self.transport = SimpleNamespace(get_write_buffer_size=lambda: owed)

    def abort(self) -> None:
        self.closed = True


def test_the_peer_owed_the_most_goes_first_and_only_until_all_are_within_the_limit() -> None:
    # One peer that reads nothing holds 10 MiB, two slow ones 1 MiB each: the hog goes, and
    # the 2 MiB left are within a 2 MiB limit. Taken smallest first, the two that do read
    # would be cut and the hog would keep its 10 MiB, the limit passed still.
    hog, slow, slower = Reader("hog", 10 * MIB), Reader("slow", MIB), Reader("slower", MIB)
    hub = SimpleNamespace(
        slow_readers={hog, slow, slower},
        dirty=set(),
        holding=set(),
        options=SimpleNamespace(max_unread_bytes=2 * MIB),
    )
    BackPressure.check_unread(SimpleNamespace(hub=hub))  # type: ignore[arg-type]
    assert [r.ip for r in (hog, slow, slower) if r.closed] == ["hog"]


def test_replies_held_behind_a_store_commit_are_checked_against_the_limit_as_they_grow() -> None:
    # A background submit's JOB_CREATED waits for the store's commit, and the replies
    # behind it with it: they count as owed (count_held), and past the limit the peers owed
    # the most go at once, not at some later write.
    checked: list[bool] = []
    hub = SimpleNamespace(tcp_unsent=0, tcp_held=0, options=SimpleNamespace(max_unread_bytes=MIB))
    conn = SimpleNamespace(hub=hub, held_counted=0, check_unread=lambda: checked.append(True))
    BackPressure.count_held(conn, MIB)  # type: ignore[arg-type]
    assert not checked  # within it
    BackPressure.count_held(conn, 1)  # type: ignore[arg-type]
    assert checked == [True] and hub.tcp_held == conn.held_counted == MIB + 1
