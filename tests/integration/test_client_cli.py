"""`farm submit` through typer's CliRunner: results, handles and exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

import farm
import farm.cli.watch
from farm.cli import app
from farm.client.admin import admin_query
from farm.protocol.admin import parse_status
from tests.helpers import ROOT
from tests.helpers.hintcheck import held_past_the_hint
from tests.helpers.servers import free_port, stop_process
from tests.helpers.serving import reverse, serving
from tests.helpers.waiting import wait_for

runner = CliRunner()


def boom(job: Any) -> None:
    raise RuntimeError("no way")


def test_submit_prints_result_handle_and_exit_codes(any_server) -> None:
    s = ["--server", any_server.addr]
    with serving(any_server.addr, {"reverse": reverse, "boom": boom}):
        ok = runner.invoke(app, ["submit", "reverse", "hello", *s])
        assert (ok.exit_code, ok.stdout) == (0, "olleh")
        piped = runner.invoke(app, ["submit", "reverse", "-", *s], input="from stdin")
        assert (piped.exit_code, piped.stdout) == (0, "nidts morf")
        failed = runner.invoke(app, ["submit", "boom", "x", *s])
        # The exception's text through farm; through gearmand the worker sends WORK_FAIL
        # (docs/held-grab.md, work-exception).
        said = "RuntimeError: no way" if any_server.kind == "farm" else "sent WORK_FAIL"
        assert failed.exit_code == 1 and said in failed.stderr
        # The bytes typed, not the locale's reading of them (\udcff: a \xff byte): once a
        # UnicodeEncodeError
        raw = runner.invoke(app, ["submit", "reverse", "a\udcff", *s])
        assert (raw.exit_code, raw.stdout_bytes) == (0, b"\xffa"), raw.output
        bg = runner.invoke(app, ["submit", "reverse", "x", "--background", "--priority", "low", *s])
        assert bg.exit_code == 0 and bg.stdout.startswith("H:")
    late = runner.invoke(app, ["submit", "nobody", "x", "--timeout", "0.2", *s])
    assert late.exit_code == 1 and "not done within" in late.stderr
    stop_process(any_server.proc.pid)  # a hung server: --timeout holds for -b too
    try:
        hung = runner.invoke(app, ["submit", "reverse", "x", "-b", "--timeout", "0.3", *s])
    finally:
        os.kill(any_server.proc.pid, signal.SIGCONT)
    assert hung.exit_code == 1 and "(not confirmed: it may have been created)" in hung.stderr, (
        hung.stderr
    )


def test_submit_usage_errors_exit_2_in_one_line() -> None:
    bad = runner.invoke(app, ["submit", "f", "x", "--priority", "urgent"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "priority" in bad.stderr
    port = runner.invoke(app, ["submit", "f", "x", "--server", "h:99999"])
    assert port.exit_code == 2 and "port" in port.stderr
    down = runner.invoke(app, ["submit", "f", "x", "--server", f"127.0.0.1:{free_port()}"])
    assert down.exit_code == 1 and "no job server is reachable" in down.stderr


def test_worker_bad_target_exits_2() -> None:
    for target in ["no-colon", "workers.text:nope", "no_such_module_xyz:f"]:
        result = runner.invoke(app, ["worker", target, "--server", "127.0.0.1:1"])
        assert result.exit_code == 2, target
        assert "Traceback" not in result.stderr and result.stderr.startswith("farm: ")


def test_submit_without_data_reads_a_pipe_as_the_gearman_tool_does(farm_server) -> None:
    # `echo hello | farm submit reverse` sent an empty payload (and printed nothing), where
    # `gearman -f reverse` reads its standard input when given no data.
    def submit(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "farm", "submit", *args, "--server", farm_server.addr]
        return subprocess.run(argv, capture_output=True, timeout=30, **kw)

    with serving(farm_server.addr, {"reverse": reverse}):
        piped = submit("reverse", input=b"hello\n")
        assert (piped.returncode, piped.stdout) == (0, b"\nolleh"), piped.stderr
        given = submit("reverse", "typed", input=b"ignored")  # DATA given: stdin unread
        assert (given.returncode, given.stdout) == (0, b"depyt"), given.stderr
        empty = submit("reverse", stdin=subprocess.DEVNULL)
        assert (empty.returncode, empty.stdout) == (0, b""), empty.stderr


@pytest.mark.timeout(60)
def test_names_and_keys_that_are_not_utf8_go_out_as_the_bytes_typed(
    farm_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `farm worker --name`, `farm submit FUNCTION` and `--unique` refused a byte the locale
    # could not decode ("is not UTF-8 text"), though the library sends such a name as its
    # bytes (a PHP worker's function): the CLI could not reach it. They go out as typed.
    s = ["--server", farm_server.addr]
    worker = subprocess.Popen(
        [sys.executable, "-m", "farm", "worker", "workers.text:reverse", "--name", b"r\xff", *s],
        cwd=ROOT,
    )
    try:
        name = b"r\xff".decode("utf-8", "surrogateescape")  # as Python reads argv
        with farm.Client(farm_server.addr) as c:  # (queued until the worker registers)
            assert c.call(name, "up", timeout=20) == b"pu"
        out = runner.invoke(app, ["submit", name, "hello", "--unique", "k\udcfe", *s])
        assert (out.exit_code, out.stdout) == (0, "olleh"), out.output
    finally:
        worker.terminate()
        assert worker.wait(20) == 0

    # Nor is such a function said to wait for a worker while one serves it: the admin
    # status lists it with U+FFFD, which its surrogates never matched.
    held, _ = held_past_the_hint(monkeypatch)

    def registered() -> bool:  # before the submit: the hint's check looks 50 ms into it
        rows = parse_status(admin_query(farm_server.addr, "status", timeout=10))
        return any(row.function == "r\ufffd" and row.workers for row in rows)

    with serving(farm_server.addr, {name: held}):
        wait_for("the worker registered", registered)
        out = runner.invoke(app, ["submit", name, "x", *s])
    assert (out.exit_code, out.stdout, out.stderr) == (0, "done", "")


@pytest.mark.timeout(60)
def test_a_worker_target_named_in_any_script_python_takes_serves(farm_server, tmp_path) -> None:
    # PEP 3131 identifiers: `farm worker ñandu:correr` said "must look like MODULE:FUNCTION"
    # (exit 2), though Python imports the module and farm.toml's pools take the same rule.
    (tmp_path / "ñandu.py").write_text("def correr(job):\n    return job.data[::-1]\n")
    s = ["--server", farm_server.addr]
    worker = subprocess.Popen(
        [sys.executable, "-m", "farm", "worker", "ñandu:correr", *s],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        with farm.Client(farm_server.addr) as c:  # (queued until the worker registers)
            assert c.call("correr", "hola", timeout=20) == b"aloh"
    finally:
        worker.terminate()
        assert worker.wait(20) == 0


@pytest.mark.timeout(60)
def test_a_name_that_is_not_utf8_is_matched_and_shown_as_its_bytes(
    farm_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The no-worker hint matched names after every byte that is not UTF-8 became U+FFFD, so
    # a worker of r\xfe kept it quiet for a job of r\xff; and it and the CLI's usage errors
    # showed such a name as 'r\udcff' (its surrogate), where the user typed r\xff.
    monkeypatch.setattr(farm.cli.watch, "NO_WORKER_AFTER", 0.05)

    def registered() -> bool:
        rows = parse_status(admin_query(farm_server.addr, "status", timeout=10))
        return any(row.function == "r\ufffd" and row.workers for row in rows)

    with serving(farm_server.addr, {"r\udcfe": reverse}):
        wait_for("the worker registered", registered)
        farm.cli.watch.warn_if_unserved([farm_server.addr], "r\udcff").join(10)
    hint = capsys.readouterr().err
    assert f"no worker has registered 'r\\xff' at {farm_server.addr};" in hint, hint
    tab = runner.invoke(app, ["submit", "r\udcff\t", "x", "--server", farm_server.addr])
    assert tab.exit_code == 2 and "FUNCTION 'r\\xff\\t' " in tab.stderr, tab.output
    none = runner.invoke(app, ["submit", "f", "x", "--unique", "k\ud800", "-s", farm_server.addr])
    assert none.exit_code == 2, none.output  # a surrogate that stands for no byte: usage
    assert "--unique 'k\\ud800' holds a surrogate that stands for no byte" in none.stderr


@pytest.mark.timeout(60)
def test_the_no_worker_hint_says_nothing_once_the_call_has_ended(
    farm_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Timer.cancel() stops only a look that has not begun: one asking the server as the call
    # gave up printed "the job waits until one does" after "not done within 3.0s". A
    # stopped server holds the look in the middle: connected (its kernel accepts), unanswered.
    monkeypatch.setattr(farm.cli.watch, "NO_WORKER_AFTER", 0.01)
    port = int(farm_server.addr.rsplit(":", 1)[1])

    def asking() -> bool:
        return any(c.raddr and c.raddr.port == port for c in psutil.Process().net_connections())

    stop_process(farm_server.proc.pid)
    try:
        hint = farm.cli.watch.warn_if_unserved([farm_server.addr], "nobody")
        wait_for("the hint's look to connect", asking)
        hint.cancel()  # the call ended, as the look waits for its answer
    finally:
        os.kill(farm_server.proc.pid, signal.SIGCONT)
    wait_for("the look answered", lambda: not asking())  # "nobody" has no worker there
    hint.join(10)
    assert capsys.readouterr().err == ""


@pytest.mark.timeout(60)
def test_a_submit_that_gives_up_before_the_hint_would_look_never_looks(
    farm_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --timeout no longer than the hint's wait: the hint could only come after the call had
    # failed, or race its line; no look is started at all.
    _, checks = held_past_the_hint(monkeypatch)  # the looks started (at 0.05 s)
    out = runner.invoke(app, ["submit", "nobody", "x", "--timeout", "0.05", "-s", farm_server.addr])
    assert out.exit_code == 1 and "not done within" in out.stderr, out.output
    assert all(t.ident is None for t in checks), checks  # none started
    assert "no worker" not in out.stderr, out.stderr


@pytest.mark.timeout(60)
def test_jobs_function_matches_a_name_that_is_not_utf8_by_its_bytes(farm_server) -> None:
    # `farm jobs -f $'r\xff'` compared the name typed (r\udcff) with the listing read as
    # U+FFFD, and listed nothing; nor may r\xfe's job be taken for it.
    with farm.Client(farm_server.addr) as c:
        c.submit("r\udcff", b"x", background=True)
        c.submit("r\udcfe", b"x", background=True)
    got = runner.invoke(app, ["jobs", "-f", "r\udcff", "--json", "-s", farm_server.addr])
    assert got.exit_code == 0, got.output

    rows = json.loads(got.stdout)
    assert [(r["function"], r["state"]) for r in rows] == [("r\ufffd", "queued")], rows
