"""Function names that are not UTF-8, or hold quotes and backslashes, through the metrics.

Names are bytes on the wire, and a PHP or C worker may register a Latin-1 one. Each such
function must be a series of its own, labelled the same way in every scrape (a label is
UTF-8), and the server must treat its jobs as any other's: a timeout fails them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.client.admin import server_metrics
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value (KeyError when the series is absent)."""
    return dict(sample_values(text))[(name, tuple(sorted(labels.items())))]


def sample_values(text: str) -> list[tuple[tuple[str, tuple[tuple[str, str], ...]], float]]:
    return [
        ((s.name, tuple(sorted(s.labels.items()))), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


@pytest.mark.timeout(60)
def test_names_that_are_not_utf8_are_distinct_series(peer_factory: Callable[[str], Peer]) -> None:
    srv = start_farm_server()
    try:
        worker = peer_factory(srv.addr)
        # Two Latin-1 names that "replace" decoding made one label, and one with the
        # characters a label value must escape.
        for name in (b"caf\xe9", b"caf\xef", b'q"uo\\te'):
            worker.send(T.CAN_DO, name)
        worker.send(T.ECHO_REQ, "registered")  # answered once the CAN_DOs before it are read
        worker.expect(T.ECHO_RES)
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB_BG, b"caf\xe9", "", "x")
        client.expect(T.JOB_CREATED)
        text = server_metrics(srv.addr, timeout=10)
        keys = [key for key, _ in sample_values(text)]  # duplicates kept: a dict hides them
        twice = [key for key, n in Counter(keys).items() if n > 1]
        assert not twice, f"series twice in one scrape (Prometheus keeps one): {twice[:3]}"
        labelled = {dict(labels)["function"] for name, labels in keys if name == "farm_workers"}
        # A backslash of the name's own is written \x5c, so no label is two names'.
        assert labelled == {"caf\\xe9", "caf\\xef", 'q"uo\\x5cte'}
        assert value(text, "farm_jobs_queued", function="caf\\xe9", priority="normal") == 1
        assert value(text, "farm_jobs_queued", function="caf\\xef", priority="normal") == 0
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_job_of_a_name_that_is_not_utf8_times_out(peer_factory: Callable[[str], Peer]) -> None:
    """The timeout's log line decoded the name strictly: it raised in the timer, and the job
    was never failed (its client waited for ever) nor counted."""
    srv = start_farm_server()
    try:
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO_TIMEOUT, b"caf\xe9", "1")
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB, b"caf\xe9", "", "x")
        handle = client.expect(T.JOB_CREATED).args[0]
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == handle
        assert client.expect(T.WORK_FAIL, timeout=10).args[0] == handle
        text = server_metrics(srv.addr, timeout=10)
        labels = {"function": "caf\\xe9", "priority": "normal"}
        assert value(text, "farm_jobs_timed_out_total", **labels) == 1
        assert value(text, "farm_jobs_failed_total", **labels) == 1
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_name_spelled_as_another_names_label_is_a_series_of_its_own(
    peer_factory: Callable[[str], Peer],
) -> None:
    # b"caf\xe9" (Latin-1) is labelled caf\xe9, and so was the ASCII name spelled caf\xe9:
    # one series, their counts added, where the docs promise two names two series.
    srv = start_farm_server()
    try:
        worker = peer_factory(srv.addr)
        latin1, ascii_spelled = b"caf\xe9", b"caf\\xe9"
        for name in (latin1, ascii_spelled):
            worker.send(T.CAN_DO, name)
        worker.send(T.ECHO_REQ, "registered")
        worker.expect(T.ECHO_RES)
        client = peer_factory(srv.addr)
        for name, jobs in ((latin1, 1), (ascii_spelled, 2)):
            for _ in range(jobs):
                client.send(T.SUBMIT_JOB_BG, name, "", "x")
                client.expect(T.JOB_CREATED)
        text = server_metrics(srv.addr, timeout=10)
        keys = [key for key, _ in sample_values(text)]
        labelled = {dict(labels)["function"] for name, labels in keys if name == "farm_workers"}
        assert labelled == {"caf\\xe9", "caf\\x5cxe9"}
        assert value(text, "farm_jobs_queued", function="caf\\xe9", priority="normal") == 1
        assert value(text, "farm_jobs_queued", function="caf\\x5cxe9", priority="normal") == 2
    finally:
        srv.stop()
