"""The worker's grab/sleep/wake cycle as a state machine, driven without sockets."""

from __future__ import annotations

import pytest

from farm.protocol import Decoder, ProtocolError, encode_res
from farm.protocol import PacketType as PT
from farm.protocol.events import ServerErrorNotice
from farm.protocol.worker import JobAssigned, JobNotHeld, WorkerSession, WorkerState


def sent(session: WorkerSession) -> list[tuple[int, tuple[bytes, ...]]]:
    return [(p.type, p.args) for p in Decoder().feed(session.data_to_send())]  # type: ignore[union-attr]


def test_registration_sends_client_id_and_abilities_with_timeouts() -> None:
    w = WorkerSession({"rev": None, "slow": 30}, client_id="w1")
    w.connected()
    assert sent(w) == [
        (PT.OPTION_REQ, (b"work-exception",)),
        (PT.OPTION_REQ, (b"give-back",)),
        (PT.SET_CLIENT_ID, (b"w1",)),
        (PT.CAN_DO, (b"rev",)),
        (PT.CAN_DO_TIMEOUT, (b"slow", b"30000")),
    ]
    assert w.state is WorkerState.READY


def test_grab_no_job_sleeps_and_noop_wakes() -> None:
    w = WorkerSession({"f": None})
    w.connected()
    w.data_to_send()
    w.grab()
    assert sent(w) == [(PT.GRAB_JOB_UNIQ, ())]
    assert w.receive(encode_res(PT.NO_JOB)) == []
    assert w.state is WorkerState.SLEEPING and sent(w) == [(PT.PRE_SLEEP, ())]
    w.receive(encode_res(PT.NOOP))
    assert w.state is WorkerState.READY and w.data_to_send() == b""


def test_a_connection_made_asleep_registers_then_waits_for_a_noop() -> None:
    # Made again to a server that left a grab unanswered (hung): no grab goes into it.
    w = WorkerSession({"f": None})
    w.connected(asleep=True)
    assert sent(w) == [
        (PT.OPTION_REQ, (b"work-exception",)),
        (PT.OPTION_REQ, (b"give-back",)),
        (PT.CAN_DO, (b"f",)),
        (PT.PRE_SLEEP, ()),
    ]
    assert w.state is WorkerState.SLEEPING
    w.receive(encode_res(PT.NOOP))
    assert w.state is WorkerState.READY


def test_assignment_progress_and_completion() -> None:
    w = WorkerSession({"f": None})
    w.connected()
    w.grab()
    w.data_to_send()
    events = w.receive(encode_res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"payload"))
    assert events == [JobAssigned(handle="H:1", function="f", unique="u", data=b"payload")]
    assert w.state is WorkerState.WORKING
    w.send_status(1, 2)
    w.send_data(b"d")
    w.complete(b"done")
    assert sent(w) == [
        (PT.WORK_STATUS, (b"H:1", b"1", b"2")),
        (PT.WORK_DATA, (b"H:1", b"d")),
        (PT.WORK_COMPLETE, (b"H:1", b"done")),
    ]
    assert w.state is WorkerState.READY and w.handle is None


def test_a_reset_asked_for_mid_job_follows_its_answer_with_what_was_added_since() -> None:
    w = WorkerSession({"f": None})
    w.connected()
    w.grab()
    w.receive(encode_res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"x"))
    w.data_to_send()
    w.reset_abilities()
    w.abilities = {}
    w.add_ability("g", 30)
    w.send_status(1, 2)
    assert sent(w) == [(PT.WORK_STATUS, (b"H:1", b"1", b"2"))]  # no reset mid-job
    w.complete(b"done")
    assert sent(w) == [
        (PT.WORK_COMPLETE, (b"H:1", b"done")),
        (PT.RESET_ABILITIES, ()),
        (PT.CAN_DO_TIMEOUT, (b"g", b"30000")),
    ]
    w.reset_abilities()  # no job in hand: at once
    assert sent(w) == [(PT.RESET_ABILITIES, ())]


def test_exception_ends_the_job_without_a_work_fail_where_the_server_agreed() -> None:
    w = WorkerSession({"f": None})
    w.connected()
    w.grab()
    w.receive(encode_res(PT.OPTION_RES, b"work-exception"))  # farm
    w.receive(encode_res(PT.JOB_ASSIGN, b"H:2", b"f", b"x"))
    w.data_to_send()
    w.exception("ValueError: bad input")
    assert sent(w) == [(PT.WORK_EXCEPTION, (b"H:2", b"ValueError: bad input"))]
    assert w.state is WorkerState.READY


def test_exception_ends_the_job_as_work_fail_where_the_server_does_not_know_the_option() -> None:
    # gearmand hands clients without the exceptions option a WORK_FAIL with a stray NUL:
    # the gearman CLI hung on it, Perl's Gearman::Client died ("unknown handle").
    w = WorkerSession({"f": None})
    w.connected()
    w.grab()
    gearmand = encode_res(PT.ERROR, b"UNKNOWN_OPTION", b"Server does not recognize given option")
    assert w.receive(gearmand) == [], "the answer to its own option is no error event"
    w.receive(encode_res(PT.JOB_ASSIGN, b"H:2", b"f", b"x"))
    w.data_to_send()
    w.exception("ValueError: bad input")
    assert sent(w) == [(PT.WORK_FAIL, (b"H:2",))]
    assert w.state is WorkerState.READY


def test_stale_noop_is_ignored_and_unexpected_packets_are_protocol_errors() -> None:
    w = WorkerSession({"f": None})
    w.connected()
    w.receive(encode_res(PT.NOOP))
    assert w.state is WorkerState.READY
    with pytest.raises(ProtocolError):
        w.receive(encode_res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b""))  # never grabbed
    with pytest.raises(ProtocolError):
        w.complete(b"")  # holds no job


def test_job_not_found_for_a_job_run_names_it_once_per_run() -> None:
    # gearmand requeues a job past its CAN_DO_TIMEOUT and answers each of its worker's later
    # packets for it with ERROR JOB_NOT_FOUND: the worker logged a bare "JOB_NOT_FOUND Job
    # given in work result not found" for each, naming neither the job nor its function.
    w = WorkerSession({"f": 1})
    w.connected()
    w.grab()
    w.receive(encode_res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b""))
    w.send_data(b"late")
    w.complete(b"late")
    w.grab()
    w.data_to_send()
    not_found = encode_res(PT.ERROR, b"JOB_NOT_FOUND", b"Job given in work result not found")
    again = encode_res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"")  # handed out again
    said = JobNotHeld(
        handle="H:1", function="f", code="JOB_NOT_FOUND", text="Job given in work result not found"
    )
    events = w.receive(not_found + not_found + again)
    assert events[0] == said and [type(e) for e in events] == [JobNotHeld, JobAssigned]
    w.complete(b"late")
    w.grab()
    assert w.receive(not_found) == [said]  # the next run's, said again


def test_error_packet_is_an_event_and_reset_abilities_is_sent() -> None:
    w = WorkerSession({"f": None})
    w.connected()
    w.data_to_send()
    assert w.receive(encode_res(PT.ERROR, b"JOB_NOT_FOUND", b"x")) == [
        ServerErrorNotice(code="JOB_NOT_FOUND", text="x")
    ]
    w.reset_abilities()
    assert sent(w) == [(PT.RESET_ABILITIES, ())]
    w.connection_lost()
    w.reset_abilities()
    assert w.data_to_send() == b"" and w.state is WorkerState.DISCONNECTED


def test_an_error_packet_that_is_not_utf8_is_an_event_still() -> None:
    """Its code and text are read as a client reads them (replacement characters): a
    strict decode raised out of the worker's loop, and the worker stopped serving."""
    w = WorkerSession({"f": None})
    w.connected()
    assert w.receive(encode_res(PT.ERROR, b"X\xff", b"t\xff")) == [
        ServerErrorNotice(code="X\ufffd", text="t\ufffd")
    ]


def test_an_unknown_option_answered_in_lower_case_is_taken_as_the_answer() -> None:
    # Perl's Gearman::Server says "unknown_option": the answer was not matched, every
    # later ERROR was read as news, and the options' answers never lined up.
    w = WorkerSession({"f": None})
    w.connected()
    assert w.receive(encode_res(PT.ERROR, b"unknown_option", b"Unknown option")) == []
    assert not w.exception_ok


def test_an_ability_removed_is_sent_as_cant_do_and_not_registered_again() -> None:
    w = WorkerSession({"f": None, "g": 5})
    w.remove_ability("g")  # not connected: nothing to say yet
    w.connected()
    assert (PT.CAN_DO_TIMEOUT, (b"g", b"5000")) not in sent(w)
    w.remove_ability("f")
    w.remove_ability("never")  # not ours: nothing to take back
    assert sent(w) == [(PT.CANT_DO, (b"f",))]
    w.connection_lost()
    w.connected()
    assert [p for p in sent(w) if p[0] in (PT.CAN_DO, PT.CAN_DO_TIMEOUT)] == []


def test_an_ability_removed_mid_job_is_sent_after_its_answer() -> None:
    # A CANT_DO of the job's own function makes gearmand and farm put the job back in its
    # queue, and drop its answer: it must follow the answer.
    w = WorkerSession({"f": None, "g": None, "h": None})
    w.connected()
    w.grab()
    w.receive(encode_res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"x"))
    w.data_to_send()
    w.remove_ability("f")
    w.remove_ability("g")
    w.add_ability("g", None)  # back before the answer: no CANT_DO for it after all
    assert sent(w) == [(PT.CAN_DO, (b"g",))]
    assert w.withdrawn("f") and not w.withdrawn("g")
    w.complete(b"done")
    assert sent(w) == [(PT.WORK_COMPLETE, (b"H:1", b"done")), (PT.CANT_DO, (b"f",))]


def test_a_job_of_a_function_withdrawn_while_grabbing_is_owed_nothing() -> None:
    # The server assigned it before it read our CANT_DO, which puts it back in its queue.
    w = WorkerSession({"f": None, "g": None})
    w.connected()
    w.grab()
    w.data_to_send()
    w.remove_ability("f")
    assert w.withdrawn("f") and not w.withdrawn("g")
    w.receive(encode_res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"x"))
    w.taken_back()
    assert sent(w) == [(PT.CANT_DO, (b"f",))] and w.state is WorkerState.READY
    w.add_ability("f", None)
    assert not w.withdrawn("f")
    w.remove_ability("f")
    w.connection_lost()
    w.connected()  # a fresh connection: nothing of the last one's is on its way back
    assert not w.withdrawn("f")


def test_only_a_packet_other_than_an_error_says_the_server_answered() -> None:
    # The worker resets its backoff on a read that answered: an ERROR before a close (a
    # server at its --max-connections) made it reconnect every 50 ms.
    w = WorkerSession({"f": None})
    w.connected()
    w.data_to_send()
    w.receive(encode_res(PT.ERROR, b"SERVER_BUSY", b"try again later"))
    assert not w.answered
    w.receive(encode_res(PT.ERROR, b"UNKNOWN_OPTION", b"")[:7])  # not whole yet
    assert not w.answered
    w.receive(encode_res(PT.ERROR, b"UNKNOWN_OPTION", b"")[7:])  # the answer to an option
    assert w.answered
    w.grab()
    w.receive(encode_res(PT.NO_JOB))
    assert w.answered
