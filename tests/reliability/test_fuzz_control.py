"""Fuzzing a live supervisor's control socket: requests no farm command sends (any JSON in
any field a command reads, lines that are not JSON) are answered, never failed with a
traceback, and the farm goes on.

test_fuzz_server.py does this for the job server's port; tests/integration/
test_control_bad_requests.py holds the requests this found, one each.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers.farmproc import FarmUp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmUp]:
    tmp = tmp_path_factory.mktemp("control-fuzz")
    up = FarmUp(
        tmp, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n', metrics=False
    )
    up.expect_notify("READY=1")
    yield up
    assert up.proc.poll() is None, "the supervisor died during fuzzing"
    assert up.stop() == 0
    log = up.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "control request failed" not in log, log


# What the commands read: pools and slots, changes, a config's path (a NUL in one), flags.
WORDS = ["reverse", "reverse#0", "reverse#9", "reverse=1", "reverse=+1", "reverse=auto", "a\0b"]
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(WORDS)
)  # fmt: skip
# A field's value: a scalar as often as a list or a table (which hold them).
VALUES = SCALARS | st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
# Each command with a field it reads (config and named_by: every command's), or any field.
# Not "stop": it would end the farm the other examples need.
READS = [
    ("restart", "names"), ("scale", "changes"), ("ps", "config"), ("ping", "named_by"),
    ("reload", "restart"), ("restart-status", "config"), ("reload", "config"),
]  # fmt: skip
REQUESTS = st.one_of(
    st.builds(
        lambda read, value: json.dumps({"cmd": read[0], read[1]: value}).encode(),
        st.sampled_from(READS),
        VALUES,
    ),
    VALUES.map(lambda value: json.dumps(value).encode()),  # no table, or no "cmd"
    st.binary(max_size=64).map(lambda raw: raw.replace(b"\n", b"")),
    st.integers(1, 60_000).map(lambda depth: b"[" * depth),  # past json's recursion limit
)


def exchange(path: str, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(line + b"\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(line=REQUESTS)
# What this found (each a traceback in the log, "the supervisor failed it"), tried each run.
@example(line=b"[" * 60_000)
@example(line=b'{"cmd": "restart", "names": 1}')
@example(line=b'{"cmd": "ps", "config": "a\\u0000b"}')
def test_odd_requests_are_answered_and_the_farm_goes_on(farm: FarmUp, line: bytes) -> None:
    reply = json.loads(exchange(farm.control, line).partition(b"\n")[0])
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    assert "the supervisor failed it" not in str(reply.get("error")), (line, reply)


def test_the_farm_still_answers_after_the_fuzzing(farm: FarmUp) -> None:
    assert json.loads(exchange(farm.control, b'{"cmd": "ping"}'))["ok"] is True
