"""Requests on the control socket that no farm command sends (a broken tool, a hand-made
line): each gets a usage error naming what is wrong, never a traceback in the farm's log."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.helpers.farmproc import FarmUp

pytestmark = pytest.mark.timeout(60)


def exchange(path: str, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(line)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    answer = json.loads(reply)
    assert isinstance(answer, dict), reply
    return answer


@pytest.mark.parametrize(
    ("line", "said"),
    [
        # json.loads raised RecursionError, not ValueError: "the supervisor failed it:
        # maximum recursion depth exceeded", and a traceback in the log
        (b"[" * 60_000 + b"\n", "unknown command None"),
        # iterated: TypeError "'int' object is not iterable"; a table's keys were restarted
        (b'{"cmd": "restart", "names": 5}\n', "names"),
        (b'{"cmd": "restart", "names": true}\n', "names"),
        (b'{"cmd": "restart", "names": {"reverse": 1}}\n', "names"),
        # realpath() raised ValueError: embedded null byte
        (b'{"cmd": "ps", "config": "a\\u0000b"}\n', "not a\x00b"),
    ],
    ids=["nested-60000-deep", "names-number", "names-true", "names-table", "config-nul"],
)
def test_a_malformed_request_is_a_usage_error_not_a_traceback(
    tmp_path: Path, line: bytes, said: str
) -> None:
    up = FarmUp(
        tmp_path,
        '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n',
        metrics=False,
    )
    try:
        up.expect_notify("READY=1")
        answer = exchange(up.control, line)
        assert answer.get("ok") is False and answer.get("usage") is True, answer
        assert said in str(answer.get("error")), answer
        assert "the supervisor failed it" not in str(answer.get("error")), answer
        assert exchange(up.control, b'{"cmd": "ping"}\n').get("ok") is True
    finally:
        assert up.stop() == 0
    log = up.log_path.read_text(errors="replace")  # read_log: its file is closed by now
    assert "Traceback" not in log and "control request failed" not in log, log
    assert "restart 1" not in log, "a malformed restart restarted workers"
