"""A pool named or serving what the old rule refused (ASCII letters, digits, _ . -), against a
real `farm up`: its workers start and serve it, and `farm scale` finds it by either name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp

pytestmark = pytest.mark.timeout(90)

#: A job that prints: its line is the worker's log line, in the format its pool's name is in.
LOUD = """
def reverse(job):
    print("reversing", job.text)
    return job.data[::-1]
"""

POOLS = """
[functions."rév%s"]
target = "loud:reverse"
workers = 1

[functions.perl]
target = "workers.text:upper"
workers = 1
functions = ["App::upper"]
"""


def test_pools_of_names_the_server_takes_serve_them(tmp_path: Path) -> None:
    # "rév%s": a "%" in the pool's name went into the workers' %-style log format, and each
    # of their lines was a "--- Logging error ---"; App::upper (Perl's prefix joined with
    # ':') and é were refused by the config.
    (tmp_path / "loud.py").write_text(LOUD)  # tmp_path is on the workers' PYTHONPATH
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"rév%s": 1, "perl": 1})
        with Client(up.addr) as client:
            assert client.call("rév%s", b"abc", timeout=20) == b"cba"
            assert client.call("App::upper", b"abc", timeout=20) == b"ABC"
        reply = up.ask({"cmd": "scale", "changes": ["App::upper=2", "rév%s=+1"]})
        assert reply["ok"], reply
        assert (reply["targets"]["perl"], reply["targets"]["rév%s"]) == (2, 2)
        up.wait_idle({"rév%s": 2, "perl": 2})
        # Typed in another Unicode form (a decomposed é, as macOS and some keyboards give
        # it): "no pool 'rév%s' (pools: rév%s, perl)" named, twice, what looked the same.
        reply = up.ask({"cmd": "scale", "changes": ["re\u0301v%s=1"]})
        assert not reply["ok"], reply
        assert "'re\\u0301v%s' typed, 'r\\xe9v%s' in the config" in reply["error"], reply
        reply = up.ask({"cmd": "restart", "names": ["ｒév%s"]})  # fullwidth r, an IME's
        assert not reply["ok"] and "'\\uff52\\xe9v%s' typed" in reply["error"], reply
        log = up.read_log()
        assert re.search(r"farm-worker rév%s#0\[\d+\] [A-Z]+ reversing abc$", log, re.M), log
        assert "Traceback" not in log, log
    finally:
        assert up.stop() == 0
