"""What a worker process tells the supervisor: rare events over its report pipe (read in
whatever pieces the pipe delivers), and job by job through its shared-memory record."""

from __future__ import annotations

import os
import struct
import time

from farm.pools.record import SIZE, RecordReader, RecordWriter, create_record_fd
from farm.pools.slots import ProcState, WorkerProcess


def test_report_lines_survive_torn_reads() -> None:
    p = WorkerProcess(1, "f", 0, 0, -1, (), started=100.0)
    p.feed(b'{"ev": "re')
    assert p.state is ProcState.STARTING
    p.feed(b'ady"}\n{"ev": "recycle", "why": "max_jobs 3 reached"}\n')
    assert p.state is ProcState.IDLE and p.recycle_reason == "max_jobs 3 reached"


def test_a_loop_that_ends_unasked_is_exiting_and_no_longer_serves() -> None:
    # A recycle (max_jobs: no SIGTERM, no drain) whose exit a job's thread held stayed
    # `idle` in its slot for ever: counted as serving, never killed, never replaced.
    p = WorkerProcess(1, "f", 0, 0, -1, ())
    p.feed(b'{"ev": "ready"}\n{"ev": "recycle", "why": "max_jobs 1 reached"}\n')
    before = time.monotonic()
    p.feed(b'{"ev": "exiting"}\n')
    assert p.state is ProcState.EXITING and not p.state.serving and not p.ordered
    assert p.exiting_since is not None and before <= p.exiting_since <= time.monotonic()
    drained = WorkerProcess(2, "f", 0, 0, -1, ())
    drained.feed(b'{"ev": "ready"}\n')
    drained.state = ProcState.DRAINING  # asked to go: its drain's grace decides (lifecycle)
    drained.feed(b'{"ev": "exiting"}\n')
    assert drained.state is ProcState.DRAINING and drained.exiting
    assert drained.exiting_since is None


def test_the_record_carries_the_job_in_hand_and_the_counts() -> None:
    fd = create_record_fd("f#0")
    try:
        assert os.fstat(fd).st_size == SIZE
        writer, reader = RecordWriter(fd), RecordReader(fd)
        p = WorkerProcess(1, "f", 0, 0, -1, (), record=reader)
        p.feed(b'{"ev": "ready"}\n')
        assert (p.state, p.jobs_done, p.busy_since) == (ProcState.IDLE, 0, None)
        before = time.monotonic()
        writer.started("H:x:1")
        p.refresh()
        assert p.state is ProcState.BUSY and p.handle == "H:x:1"
        assert p.busy_since is not None and before <= p.busy_since <= time.monotonic()
        writer.ended(7, 1024)
        p.refresh()
        assert (p.state, p.jobs_done, p.rss, p.handle, p.busy_since) == (
            ProcState.IDLE,
            7,
            1024,
            "",
            None,
        )
        writer.started("H:x:2")
        p.state = ProcState.DRAINING  # asked to go: the record no longer decides its state
        p.refresh()
        assert p.state is ProcState.DRAINING and p.handle == "H:x:2" and p.ordered
    finally:
        os.close(fd)


def test_a_record_caught_mid_write_reads_as_what_it_said_last() -> None:
    fd = create_record_fd("f#1")
    try:
        writer, reader = RecordWriter(fd), RecordReader(fd)
        writer.ended(3, 10)
        assert reader.read().jobs_done == 3
        # A writer stopped between its two sequence stores leaves the sequence odd.
        writer._seq += 1
        writer._map[0:8] = writer._seq.to_bytes(8, "little")
        assert reader.read().jobs_done == 3
    finally:
        os.close(fd)


def test_handles_longer_than_the_record_are_cut_not_spilled() -> None:
    fd = create_record_fd("f#2")
    try:
        writer, reader = RecordWriter(fd), RecordReader(fd)
        writer.started("H:" + "x" * 200)
        assert reader.read().handle == "H:" + "x" * 59  # 61 bytes: the last says its server
    finally:
        os.close(fd)


def test_a_handle_that_is_not_utf8_is_recorded_not_raised_on() -> None:
    # The worker hands on the server's bytes as they came (surrogateescape, as the unique
    # key): encoding them strictly raised in the worker's loop as the job began.
    fd = create_record_fd("f#4")
    try:
        writer, reader = RecordWriter(fd), RecordReader(fd)
        writer.started(b"H:\xff:1".decode("utf-8", "surrogateescape"))
        assert reader.read().handle == "H:\ufffd:1"
    finally:
        os.close(fd)


def test_the_record_says_which_of_its_servers_the_job_came_from() -> None:
    # `farm ps` tells a job of the local server (the first) that has died since from others.
    fd = create_record_fd("f#3")
    try:
        writer, reader = RecordWriter(fd), RecordReader(fd)
        writer.started("H:x:1", 1)
        now = reader.read()
        assert (now.handle, now.server) == ("H:x:1", 1)
        # The place took the last byte of the older layout's 62-byte handle: read that way,
        # the handle is still whole (cut by its length).
        *_, length, raw = struct.unpack_from("<QQQdH62s", writer._map, 0)
        assert raw[: min(length, 62)] == b"H:x:1"
        writer.ended(1, 0)
        assert reader.read().server == 0
        writer.started("H:x:2")  # a writer that does not say
        assert reader.read().server == 0
    finally:
        os.close(fd)


# PHP's uncaught exception as a PHP worker prints it: its last line says only where.
PHP_FATAL = (
    b"worker up\n"
    b"PHP Fatal error:  Uncaught GearmanException: Failed to set exception option"
    b" in /srv/worker.php:3\n"
    b"Stack trace:\n"
    b"#0 /srv/worker.php(3): GearmanWorker->addServers()\n"
    b"#1 {main}\n"
    b"  thrown in /srv/worker.php on line 3\n"
)


def test_a_command_workers_last_words_are_the_head_of_the_trace_it_ended_with() -> None:
    # The warning of its end quoted "  thrown in /srv/worker.php on line 3": never why.
    p = WorkerProcess(1, "f", 0, 0, -1, (), command=True)
    p.out.take(PHP_FATAL, 0.0)
    assert p.last_words.startswith("PHP Fatal error:  Uncaught GearmanException: Failed")
    python = b'Traceback (most recent call last):\n  File "w.py", line 1\nValueError: bad\n'
    p.out.take(python, 0.0)
    assert p.last_words == "ValueError: bad"
    p.out.take(b"  indented first words\n\n", 0.0)
    assert p.last_words == "ValueError: bad"
    q = WorkerProcess(2, "f", 0, 0, -1, (), command=True)
    q.out.take(b"  only indented output\n", 0.0)
    assert q.last_words == "  only indented output"  # nothing better to quote
    r = WorkerProcess(3, "f", 0, 0, -1, ())
    r.out.take(b'<6>up\n<3>Traceback (most recent call last):\n<3>  File "w.py"\n', 0.0)
    assert r.last_words == "Traceback (most recent call last):"  # a journal priority is no word
