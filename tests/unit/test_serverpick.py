"""ServerPicker: a unique key always starts at one server, others rotate, and a server
that refused is tried last for DOWN_FOR seconds or ten times what finding it down cost (then first
again in its turn), longer each time it fails again in a row."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from farm.client import serverpick
from farm.client.serverpick import (
    DOWN_FOR,
    DOWN_MAX,
    FAR_CONNECT,
    MIN_CONNECT,
    ServerPicker,
    connect_share,
    job_key,
    key_slot,
)

SERVERS = ["a:1", "b:1", "c:1"]


def test_a_unique_key_starts_at_one_server_and_other_jobs_rotate() -> None:
    picker = ServerPicker(SERVERS)
    firsts = {picker.order("key-7")[0] for _ in range(5)}
    assert len(firsts) == 1
    assert [picker.order()[0] for _ in range(4)] == ["a:1", "b:1", "c:1", "a:1"]
    assert "b:1" not in picker.order(exclude="b:1")
    assert picker.order(exclude=("b:1", "c:1")) == ["a:1"]  # those that cut a submit short


def test_jobs_without_a_key_rotate_over_the_live_servers_alone() -> None:
    # Rotated over all three, the down server's turns each fell to the live one after it:
    # c:1 took two jobs in three.
    picker = ServerPicker(SERVERS)
    picker.mark_down("b:1")
    firsts = [picker.order()[0] for _ in range(6)]
    assert firsts.count("a:1") == firsts.count("c:1") == 3
    assert picker.order()[-1] == "b:1", "the down one still tried, last"
    # A key keeps its own order, the down server moved last: key-1 starts at b:1 (slot 0
    # would start at a:1, where the live servers' rotation starts too, and hide its loss).
    # Asked twice, as the rotation would give the live ones in both orders.
    assert key_slot("key-1", len(SERVERS)) == 1
    keyed = [picker.order("key-1") for _ in range(2)]
    assert keyed == [["c:1", "a:1", "b:1"]] * 2, "a key keeps its own order"


def test_a_server_marked_down_goes_last_for_down_for_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    # serverpick's clock alone: time.monotonic itself drives the waits around it
    monkeypatch.setattr(serverpick, "time", SimpleNamespace(monotonic=lambda: now[0]))
    picker = ServerPicker(SERVERS)
    picker.mark_down("a:1")
    assert picker.order()[-1] == "a:1"
    now[0] += DOWN_FOR - 0.1
    assert picker.order()[-1] == "a:1", "still down"
    now[0] += 0.2
    picker._rotation = 0
    assert picker.order()[0] == "a:1", "its time is up: back in its turn"
    picker.mark_down("b:1")
    picker.mark_up("b:1")
    picker._rotation = 1
    assert picker.order()[0] == "b:1", "a connection that worked clears it"
    assert DOWN_FOR == 2.0  # as docs/client.md says


def test_a_server_is_down_for_what_finding_it_down_cost_and_longer_each_time_in_a_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A connect nothing answers costs connect_timeout (5 s by default): down for DOWN_FOR
    # alone, a client calling every second paid those 5 s again every 7 s. Here one cost
    # 0.5 s: down for COST_FACTOR (10) times that.
    now = [100.0]
    # serverpick's clock alone: time.monotonic itself drives the waits around it
    monkeypatch.setattr(serverpick, "time", SimpleNamespace(monotonic=lambda: now[0]))
    picker = ServerPicker(SERVERS)

    def down_for(addr: str) -> float:
        return picker._down_until[addr] - now[0]

    picker.mark_down("a:1", spent=0.5)
    assert down_for("a:1") == 5.0, "ten times what the failed connect cost"
    picker.mark_down("a:1", spent=0.5)  # another job's connect that failed with it
    assert down_for("a:1") == 5.0, "one failure, not two: it was down already"
    now[0] += 5.0
    picker.mark_down("a:1", spent=0.5)  # tried again at once, and down still
    assert down_for("a:1") == 10.0, "twice as long for the second failure in a row"
    now[0] += 10.0
    picker.mark_down("a:1")
    assert down_for("a:1") == 20.0, "twice the last, whatever this one cost"
    for _ in range(10):
        now[0] += down_for("a:1")
        picker.mark_down("a:1", spent=0.5)
    assert down_for("a:1") == DOWN_MAX
    now[0] += down_for("a:1") + DOWN_MAX
    picker.mark_down("a:1", spent=0.5)
    assert down_for("a:1") == 5.0, "failed long after its time was up: not in a row"
    picker.mark_up("a:1")  # a connection worked: its next failure starts over
    picker.mark_down("a:1")
    assert down_for("a:1") == DOWN_FOR


def test_a_server_marked_again_while_down_keeps_its_doubled_span_for_the_next_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another job's failure while it is down is the same failure: it must not bring the span
    # the next failure in a row doubles back to DOWN_FOR (a mark at the end of a long span).
    now = [100.0]
    # serverpick's clock alone: time.monotonic itself drives the waits around it
    monkeypatch.setattr(serverpick, "time", SimpleNamespace(monotonic=lambda: now[0]))
    picker = ServerPicker(SERVERS)

    def down_for(addr: str) -> float:
        return picker._down_until[addr] - now[0]

    picker.mark_down("a:1")
    for span in (2 * DOWN_FOR, 4 * DOWN_FOR):  # 4 s, then 8 s: failures in a row
        now[0] += down_for("a:1")
        picker.mark_down("a:1")
        assert down_for("a:1") == span
    now[0] += 1.0
    picker.mark_down("a:1")  # another job's failure 1 s into the 8 s
    assert down_for("a:1") == 4 * DOWN_FOR - 1.0, "its time only made up to this one's"
    now[0] += down_for("a:1")
    picker.mark_down("a:1")  # the next failure in a row: twice the 8 s
    assert down_for("a:1") == 8 * DOWN_FOR


def test_a_busy_server_goes_after_the_live_ones_for_jobs_without_a_key() -> None:
    picker = ServerPicker(SERVERS)
    picker.mark_down("c:1")
    assert picker.order(busy=["a:1"]) == ["b:1", "a:1", "c:1"], "live, busy, then down"
    key = next(k for k in (f"k{i}" for i in range(100)) if picker.order(k)[0] == "a:1")
    assert picker.order(key, busy=["a:1"])[0] == "a:1", "a keyed job keeps its server"


def test_a_dash_key_places_a_job_by_its_payload_as_the_server_reads_it() -> None:
    # "-" makes the payload the unique key (gearmand, farm): every "-" job started at the
    # server of the literal "-", so one server of many took all of them.
    picker = ServerPicker(SERVERS)
    spread = {picker.order(job_key("-", b"payload %d" % i))[0] for i in range(30)}
    assert spread == set(SERVERS)
    same = {picker.order(job_key("-", b"one payload"))[0] for _ in range(5)}
    assert len(same) == 1, "equal payloads meet at one server, where they coalesce"
    assert job_key("key-7", b"anything") == "key-7"
    assert not job_key("-", b""), "an empty payload never coalesces: no key, it rotates"


def test_a_connect_takes_its_share_of_the_time_left() -> None:
    assert connect_share(None, 100.0, 3) is None  # no deadline: connect_timeout alone
    assert connect_share(106.0, 100.0, 3) == 102.0  # a third, two servers after it
    assert connect_share(106.0, 100.0, 1) == 106.0  # the last one: all that is left
    assert connect_share(106.0, 100.0, 0) == 106.0


def test_a_connect_gets_enough_for_a_far_server_where_the_others_keep_a_little() -> None:
    # Three servers and 0.2 s: the first may take 0.1 s (a far TLS handshake), not 0.067.
    assert connect_share(100.2, 100.0, 3) == pytest.approx(100.2 - 2 * MIN_CONNECT)
    assert connect_share(100.5, 100.0, 3) == pytest.approx(100.0 + FAR_CONNECT)  # not 0.167
    assert connect_share(101.5, 100.0, 3) == pytest.approx(100.5)  # the even share: more
    # Short of a little for each, an even share: each still gets its turn.
    assert connect_share(100.3, 100.0, 10) == pytest.approx(100.03)


def test_a_key_starts_where_perls_gearman_client_sends_it() -> None:
    # Gearman::Task::hash: (crc32(key) >> 16) & 0x7fff; Gearman::Taskset picks that modulo
    # the servers. "key-0" has CRC-32 0x79eb8fec: 0x79eb % 3 == 2 (crc32 % 3 was 0).
    assert key_slot("key-0", 3) == key_slot(b"key-0", 3) == 0x79EB % 3 == 2
    picker = ServerPicker(SERVERS)
    assert all(picker.order(f"k{i}")[0] == SERVERS[key_slot(f"k{i}", 3)] for i in range(30))
    # A key that is not UTF-8 (a raw digest, as farm.Worker hands it over) by its bytes, as
    # Perl hashes them; it raised UnicodeEncodeError.
    digest = bytes(range(200, 216))
    as_text = digest.decode("utf-8", "surrogateescape")
    assert [key_slot(as_text, n) for n in (2, 3, 5)] == [key_slot(digest, n) for n in (2, 3, 5)]


def test_a_connect_that_cost_long_keeps_its_server_last_for_ten_times_as_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Doubling from DOWN_FOR, a host that answers no connect still cost a 5 s wait at 0, 7
    # and 16 s: three stalls in its first half minute. Ten times what the failed try cost
    # keeps such tries to a tenth of the time from the first one.
    now = [100.0]
    # serverpick's clock alone: time.monotonic itself drives the waits around it
    monkeypatch.setattr(serverpick, "time", SimpleNamespace(monotonic=lambda: now[0]))
    picker = ServerPicker(SERVERS)
    picker.mark_down("a:1", spent=5.0)
    now[0] += 49.5
    assert picker.order()[-1] == "a:1", "still last"
    now[0] += 1
    picker._rotation = 0
    assert picker.order()[0] == "a:1", "its time is up"
    picker.mark_down("a:1", spent=5.0)  # and fails again: doubled, up to DOWN_MAX
    now[0] += DOWN_MAX - 0.5
    assert picker.order()[-1] == "a:1"
    picker.mark_up("a:1")
    picker.mark_down("a:1", spent=0.001)  # refused at once: DOWN_FOR
    now[0] += DOWN_FOR
    picker._rotation = 0
    assert picker.order()[0] == "a:1"
