"""``Job.send_status`` takes the numbers WORK_STATUS carries, 0 to 2**32 - 1 (libgearman's and
PHP's sendStatus take uint32), and refuses others with ValueError in the job: a total of
bytes past 4 GiB reached no client through farm's server (it drops a denominator gearmand
would refuse) and, through gearmand, closed the worker's connection and ran the job again
until the client's timeout."""

from __future__ import annotations

from typing import Any

import pytest

import farm
from farm.protocol.checks import check_status
from tests.helpers.serving import serving

BIG = 2**32 - 1


def reports(numerator: int, denominator: int) -> Any:
    def job(j: Any) -> bytes:
        j.send_status(numerator, denominator)
        return b"done"

    return job


@pytest.mark.timeout(60)
def test_the_largest_status_reaches_the_client(any_server) -> None:
    statuses: list[tuple[int, int]] = []
    job = reports(BIG - 1, BIG)
    with farm.Client(any_server.addr, timeout=20) as c, serving(any_server.addr, {"edge": job}):
        got = c.call("edge", b"", on_status=lambda n, d: statuses.append((n, d)))
    assert got == b"done" and statuses == [(BIG - 1, BIG)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("numerator", "denominator"), [(5 * 10**10, 10**11), (-1, 10)])
def test_a_status_past_32_bits_fails_the_job_naming_the_limit(
    any_server, numerator: int, denominator: int
) -> None:
    job = reports(numerator, denominator)
    with (
        farm.Client(any_server.addr, timeout=20) as c,
        serving(any_server.addr, {"huge": job}),
        pytest.raises(farm.JobError) as failed,
    ):
        c.call("huge", b"")
    if any_server.kind == "farm":  # the traceback's last line travels (WORK_EXCEPTION)
        assert "ValueError: send_status's" in str(failed.value), failed.value
        assert "must be from 0 to 4,294,967,295" in str(failed.value), failed.value
    else:  # gearmand: the worker sends WORK_FAIL (docs/client.md), the job ends at once
        assert isinstance(failed.value, farm.JobFailed), failed.value


def test_an_infinity_is_out_of_range_too() -> None:
    # int(inf) raised OverflowError out of send_status, where the docs promise ValueError.
    for given in (float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=f"not {given}: scale the progress"):
            check_status(given, 10)
    assert check_status(2.7, 10.0) == (2, 10)  # as it always took them: int()
