"""farm.protocol.client when its connection is lost: what it owes nothing more, what it
fails, which of its submits were not written whole, and whether the server ended it."""

from __future__ import annotations

import pytest

from farm.errors import ServerUnavailable
from farm.protocol import PacketType as PT
from farm.protocol import encode_res
from farm.protocol.client import ClientSession, Task, lost_error, may_resubmit, not_again
from farm.protocol.tasks import lost_since


def test_what_was_queued_goes_nowhere_once_the_connection_is_lost() -> None:
    s = ClientSession("a:1")
    t = Task("f", b"1")
    s.submit(t)
    assert s.connection_lost() == [t]
    assert s.queued == 0 and s.data_to_send() == b""


def test_a_lost_connection_fails_its_queries_saying_how() -> None:
    s = ClientSession("a:1")
    asked = s.echo(b"a")
    s.connection_lost("broke the protocol: expected a binary packet")
    assert asked.done and isinstance(asked.error, ServerUnavailable)
    assert str(asked.error) == "job server a:1 broke the protocol: expected a binary packet"


def test_connection_lost_returns_unfinished_tasks_and_fails_queries() -> None:
    s = ClientSession("a:1")
    created, pending, bg = Task("f", b""), Task("f", b""), Task("f", b"", background=True)
    s.submit(created)
    s.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    s.submit(pending)
    s.submit(bg)
    q = s.echo(b"x")
    assert set(s.connection_lost()) == {created, pending, bg}
    assert q.done and isinstance(q.error, ServerUnavailable)
    with pytest.raises(ServerUnavailable):
        s.submit(Task("f", b""))


def test_submits_not_written_whole_when_the_connection_is_lost_are_marked_so() -> None:
    # A packet never written whole cannot have created a job: such a task goes on to the
    # next server (may_resubmit), where it failed "(not confirmed: it may have been created)".
    s = ClientSession("srv")
    whole, cut, held = Task("f", b"a"), Task("f", b"b" * 100), Task("f", b"c")
    s.submit(whole)
    status = s.get_status("H:1")
    s.submit(cut)
    handed = s.data_to_send()
    s.submit(held)  # still queued in the session
    assert handed.endswith(cut.packet())
    lost = s.connection_lost(unsent=len(cut.packet()) - 30)  # all but its first 30 bytes
    assert lost == [whole, cut, held]
    assert [t.unwritten for t in lost] == [False, True, True]
    assert [may_resubmit(t) for t in lost] == [False, True, True]
    assert status.done and isinstance(status.error, ServerUnavailable)
    assert "(not sent whole: not created)" in str(lost_error("srv", cut))
    assert "(not confirmed: it may have been created)" in str(lost_error("srv", whole))
    # Not back to the server that cut it short (one pass), a whole one's lost server alone.
    assert (not_again(cut, "srv"), not_again(whole, "srv")) == (("srv",), ("srv",))
    s2 = ClientSession("other")
    s2.submit(cut)
    s2.data_to_send()
    s2.connection_lost(unsent=1)
    assert not_again(cut, "other") == ("srv", "other")


def test_a_connection_this_process_closed_leaves_its_handles_meaning_what_they_did() -> None:
    # A fork's child or an event loop's end closes the connection, not the server: status()
    # of a task created on it asks the server (lost_since), which has not restarted.
    ours, theirs = ClientSession("a:1"), ClientSession("a:1")
    tasks = [Task("f", b"", background=True), Task("f", b"", background=True)]
    for session, task in zip((ours, theirs), tasks, strict=True):
        session.submit(task)
        session.receive(encode_res(PT.JOB_CREATED, b"H:1"))
    ours.connection_lost(by_server=False)
    theirs.connection_lost("went away")
    assert [lost_since(t) for t in tasks] == [False, True]
