"""`farm admin`: one admin line to the farm's job server, on its Unix socket, where the
commands that change the queues are accepted (gearadmin reaches TCP only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers.clirun import cli, one_line_error
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer

# A function no pool serves: its background job stays queued until it is cancelled.
REVERSE = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[FarmUp]:
    up = FarmUp(tmp_path, REVERSE, metrics=False)
    up.expect_notify("READY=1")
    yield up
    up.stop()


def queued_job(farm: FarmUp, function: str) -> str:
    client = Peer(farm.addr)
    client.send(T.SUBMIT_JOB_BG, function, "", "x")
    handle = client.expect(T.JOB_CREATED).args[0].decode()
    assert handle in admin_query(farm.addr, "show jobs")
    return handle


def test_farm_admin_cancels_a_queued_job_on_the_farm_s_unix_socket(farm: FarmUp) -> None:
    handle = queued_job(farm, "unserved")
    # Over TCP (`farm up`'s tcp_admin = "read-only"): refused, and the refusal names the
    # tool that reaches the Unix socket, in gearmand's +-escaped form, ERR code kept.
    refused = admin_query(farm.addr, f"cancel job {handle}")
    assert refused.startswith("ERR PERMISSION_DENIED ") and "(farm+admin)" in refused, refused
    over_tcp = cli("admin", "--server", farm.addr, f"cancel job {handle}", timeout=30)
    said = one_line_error(over_tcp.stderr)
    assert over_tcp.returncode == 1 and over_tcp.stdout == "", over_tcp
    assert said.startswith("farm: ERR PERMISSION_DENIED this command is accepted only on the")
    assert "(farm admin)" in said and "--server unix:PATH" in said, said
    assert handle in admin_query(farm.addr, "show jobs")
    # The farm's config names its Unix socket: the cancel is accepted there.
    done = cli("admin", "--config", str(farm.config), "cancel", "job", handle, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "OK\n", ""), done
    assert handle not in admin_query(farm.addr, "show jobs")
    again = cli("admin", "--config", str(farm.config), f"cancel job {handle}", timeout=30)
    assert again.returncode == 1 and again.stdout == "", again
    assert one_line_error(again.stderr) == "farm: ERR UNKNOWN_JOB"
    # A listing is printed as the server gives it, up to its "." line.
    listing = cli("admin", "-c", str(farm.config), "status", timeout=30)
    assert listing.returncode == 0 and listing.stdout.endswith("\n.\n"), listing
    assert "reverse\t0\t0\t1\n" in listing.stdout, listing.stdout
    # The longest line the server reads (8191 bytes and its newline) is sent and answered.
    longest = cli("admin", "-c", str(farm.config), "x" * 8191, timeout=30)
    assert longest.returncode == 1, longest
    assert one_line_error(longest.stderr).startswith("farm: ERR UNKNOWN_COMMAND"), longest


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ([], "give the admin command to send"),
        ([" ", "\t"], "give the admin command to send"),
        (["status\nshow jobs"], "holds a newline"),
        (["cancel job H\r"], "holds a carriage return"),
        # The server closes a line over MAX_ADMIN_LINE unanswered: it was blamed on TLS.
        (["claim 5", "x" * 8184], "8192 bytes, longer than the server reads (8191"),
    ],
)
def test_farm_admin_usage_errors_exit_2_in_one_line(args: list[str], why: str) -> None:
    # Checked before any server is looked for or asked: nothing listens at this one.
    run = cli("admin", "--server", "127.0.0.1:1", *args, timeout=30)
    assert run.returncode == 2 and run.stdout == "", run
    assert why in one_line_error(run.stderr), run.stderr
