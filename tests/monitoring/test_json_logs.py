"""`[supervisor] log_format = "json"`: the supervisor, the server and the workers of a real
`farm up` write one JSON object a line, a worker's traceback included as one record."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import farm
from farm.client.admin import admin_query
from farm.config import load
from farm.errors import ConfigError, JobException, JobFailed
from farm.logs import JsonFormatter
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import free_port, wait_connectable
from tests.helpers.waiting import wait_for

POOLS = """
[functions.alpha]
target = "tests.helpers.monitored:work"
workers = 1

[functions.beta]
target = "tests.helpers.monitored:work"
workers = 1
timeout = 1
"""


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def json_farm(tmp_path: Path) -> FarmUp:
    """POOLS under `farm up` with ``log_format = "json"`` in its file, started."""
    up = FarmUp(tmp_path, POOLS, start=False)
    up.config.write_text(
        up.config.read_text().replace("[supervisor]\n", '[supervisor]\nlog_format = "json"\n', 1)
    )
    up.start()
    return up


@pytest.mark.timeout(90)
def test_every_process_of_the_farm_logs_json_lines(tmp_path: Path) -> None:
    up = json_farm(tmp_path)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 1, "beta": 1})
        with farm.Client(up.addr) as client:
            with pytest.raises(JobException):
                client.call("alpha", "raise")
            with pytest.raises(JobFailed):
                client.call("beta", "sleep", timeout=30)  # the server logs the timeout

        def logged() -> list[dict] | None:
            found = records(up.read_log())  # every line must parse, or this raises
            roles = {r["role"] for r in found}
            return found if {"supervisor", "server", "worker"} <= roles else None

        wait_for("a record from each role", logged, timeout=20)
        # The timed-out job's worker is killed a second after the server failed the job.
        wait_for(
            "the supervisor to kill beta's worker",
            lambda: any("killing worker beta" in r["message"] for r in records(up.read_log())),
            timeout=20,
        )
        # And to reap it: a farm stopped before that reaps it as one retired, and that
        # line is not about the killed job.
        wait_for(
            "the supervisor to log the end of beta's worker",
            lambda: any(
                r["role"] == "supervisor"
                and r["message"].startswith("worker beta")
                and "restarting" in r["message"]
                for r in records(up.read_log())
            ),
            timeout=20,
        )
    finally:
        assert up.stop() == 0
    found = records(up.log_path.read_text())
    for record in found:
        assert {"time", "level", "role", "pid", "message"} <= set(record), record
    raised = [r for r in found if r["role"] == "worker" and "exc_info" in r]
    assert len(raised) == 1, raised
    (worker,) = raised
    assert worker["function"] == "alpha" and worker["slot"] == 0
    assert worker["job"].startswith("H:") and worker["level"] == "WARNING"
    assert worker["exc_info"].startswith("Traceback (most recent call last)")
    assert "Refused: asked to fail" in worker["exc_info"]
    timed_out = [r for r in found if r["role"] == "server" and "timed out" in r["message"]]
    assert len(timed_out) == 1
    # One job's records select alike whichever process wrote them (`jq 'select(.job == H)'`):
    # the server's timeout, the supervisor's kill and the end of the worker it killed.
    handle = timed_out[0].get("job")
    assert handle and handle.startswith("H:") and timed_out[0]["function"] == "beta"
    about = [r for r in found if r["role"] == "supervisor" and r.get("job") == handle]
    assert [r["message"].split(" ")[0] for r in about] == ["killing", "worker"], about
    assert {(r["function"], r["slot"]) for r in about} == {("beta", 0)}
    assert any(r["role"] == "supervisor" and "stopped" in r["message"] for r in found)


@pytest.mark.timeout(60)
def test_what_a_python_worker_writes_past_its_logger_is_a_json_record_too(
    tmp_path: Path,
) -> None:
    # A line on the worker's descriptor 2 (a C library's, or a child program's such as
    # ImageMagick's warnings) was relayed raw: not JSON, and `journalctl -o cat | jq` stops
    # at the first line it cannot parse, so every record after it went unseen.
    up = json_farm(tmp_path)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 1, "beta": 1})
        with farm.Client(up.addr) as client:
            assert client.call("alpha", "fd") == b"written"
        said = wait_for(
            "the line in the log",
            lambda: [r for r in records(up.read_log()) if "past sys.stderr" in r["message"]],
        )
    finally:
        assert up.stop() == 0
    records(up.log_path.read_text())  # every line parses
    assert [(r["function"], r["slot"], r["level"]) for r in said] == [("alpha", 0, "INFO")]


def test_the_server_alone_takes_log_format_json() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "farm.server", "--port", str(port), "--store", "none"]
    server = subprocess.Popen(
        [*argv, "-vv", "--log-format", "json"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_connectable(f"127.0.0.1:{port}", server)
        # Answered only once it serves, its signal handlers set: a SIGTERM between its
        # listen() and its first log line ended it by Python's default, and said nothing.
        assert admin_query(f"127.0.0.1:{port}", "version", timeout=10).startswith("OK")
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    found = records(err)
    assert found and all(r["role"] == "server" for r in found)
    bad = subprocess.run([*argv, "--log-format", "xml"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--log-format" in bad.stderr


@pytest.mark.timeout(60)
def test_a_reload_under_log_format_json_from_the_command_line_changes_nothing(
    tmp_path: Path,
) -> None:
    # `farm up --log-format json` with a file that leaves log_format at "text": every
    # reload (systemctl reload, a cron's) said "not applied: [supervisor] changed; that
    # takes a restart", and a restart changed nothing: the flag is not the file's to undo.
    up = FarmUp(tmp_path, POOLS, start=False)
    up.up_args = ["--log-format", "json"]
    up.start()
    try:
        up.expect_notify("READY=1")
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stderr
        assert "not applied" not in out.stdout + out.stderr, out.stdout + out.stderr
        assert not [r for r in records(up.read_log()) if "takes a restart" in r["message"]]
    finally:
        assert up.stop() == 0


def test_log_format_in_the_config_is_text_or_json(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    pool = '[functions.f]\ntarget = "tests.helpers.serving:reverse"\n'
    path.write_text('[supervisor]\nlog_format = "xml"\n' + pool)
    with pytest.raises(ConfigError, match="supervisor.log_format"):
        load(path)
    path.write_text('[supervisor]\nlog_format = "json"\n' + pool)
    assert load(path).supervisor.log_format == "json"


def test_a_record_is_one_line_with_the_fields_a_call_adds() -> None:
    formatter = JsonFormatter("worker", slot=3, function="resize")
    try:
        raise ValueError("two\nlines")
    except ValueError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "job %s", ("x",), sys.exc_info()
        )
    record.job = b"H:host:7"
    line = formatter.format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["slot"] == 3 and out["function"] == "resize" and out["job"] == "H:host:7"
    assert out["message"] == "job x" and "ValueError: two\nlines" in out["exc_info"]


@pytest.mark.timeout(60)
def test_a_command_workers_output_names_its_pool_and_slot(tmp_path: Path) -> None:
    # Its lines were logged with extra "pool", which the JSON format does not write: a PHP
    # worker's output had a slot and no function, so `select(.function == "talk")` missed it.
    script = tmp_path / "talk.sh"
    script.write_text("echo said-on-stdout\nexec sleep 600\n")
    pool = f'[functions.talk]\ncommand = ["sh", "{script}"]\nworkers = 1\ngraceful_timeout = 1\n'
    up = FarmUp(tmp_path, pool, start=False)
    up.config.write_text(
        up.config.read_text().replace("[supervisor]\n", '[supervisor]\nlog_format = "json"\n', 1)
    )
    up.start()
    try:  # no READY=1: it never connects to the server
        said = wait_for(
            "its output in the log",
            lambda: [r for r in records(up.read_log()) if "said-on-stdout" in r["message"]],
        )
    finally:
        assert up.stop() == 0
    assert [(r["role"], r["function"], r["slot"]) for r in said] == [("supervisor", "talk", 0)]


def _refused(tmp_path: Path, config: str, *args: str) -> list[dict]:
    """`farm up` refusing ``config``: what it wrote, each line a JSON record (or this
    raises), and its exit 2."""
    path = tmp_path / "farm.toml"
    path.write_text(config)
    out = farm_cli("up", "--config", str(path), *args)
    assert out.returncode == 2, out.stderr
    assert not out.stdout and out.stderr.strip(), out
    return records(out.stderr)


BAD_POOL = '[functions.x]\ntarget = "no_such_module_here:work"\n'


@pytest.mark.parametrize("where", ["flag", "file"])
def test_a_config_farm_up_refuses_under_json_logs_is_a_json_record(
    tmp_path: Path, where: str
) -> None:
    # It was one plain line ("farm: farm.toml: functions.x.target: no module named ..."):
    # `journalctl -u farm -o cat | jq 'select(.level == "ERROR")'` stopped at it, and every
    # line after it went unseen. Asked by --log-format, or by the file that does not load.
    if where == "flag":
        (said,) = _refused(tmp_path, BAD_POOL, "--log-format", "json")
    else:
        (said,) = _refused(tmp_path, '[supervisor]\nlog_format = "json"\n' + BAD_POOL)
    assert (said["level"], said["role"]) == ("ERROR", "supervisor")
    assert "functions.x.target: no module named 'no_such_module_here'" in said["message"]
    # The text format stays, where it is asked (the flag outranks the file).
    text = farm_cli("up", "--config", str(tmp_path / "farm.toml"), "--log-format", "text")
    assert text.returncode == 2 and text.stderr.startswith("farm: "), text.stderr


def test_a_refusal_after_farm_ups_logging_started_is_a_json_record_too(tmp_path: Path) -> None:
    # The supervisor's own refusal once its log is set up (a listen name that resolves to
    # no address, refused before anything starts) went the same plain way.
    config = (
        f'[server]\nlisten = "no-such-host.invalid:{free_port()}"\nstore = "none"\n'
        '[supervisor]\nmetrics = "off"\n[functions.x]\ntarget = "json:dumps"\n'
    )
    (said,) = _refused(tmp_path, config, "--log-format", "json")
    assert said["level"] == "ERROR" and "server.listen: no-such-host.invalid" in said["message"]


def test_a_usage_error_of_farm_up_under_json_logs_is_a_json_record(tmp_path: Path) -> None:
    # click's usage text is four lines: a typo in a unit's ExecStart broke `jq` as well.
    (said,) = _refused(tmp_path, BAD_POOL, "--log-format", "json", "--verbos")
    assert said["level"] == "ERROR" and "No such option: --verbos" in said["message"]
    out = farm_cli("up", "--verbos")
    assert out.returncode == 2 and out.stderr.startswith("Usage: "), out.stderr


def test_what_python_itself_prints_past_the_json_logger_is_a_record() -> None:
    # A warning, and a traceback no code caught (its lines each a raw line), in a process
    # that logs JSON (`farm up`, the server, a worker: one setup_logging).
    script = (
        "import threading, warnings\n"
        "from farm.logs import setup_logging\n"
        "setup_logging(role='server', log_format='json', text_format='%(message)s')\n"
        "warnings.warn('careful')\n"
        "thread = threading.Thread(target=lambda: 1 / 0)\n"
        "thread.start(); thread.join()\n"
        "class Leaky:\n"
        "    def __del__(self): raise OSError('in __del__')\n"
        "Leaky()\n"
        "raise RuntimeError('nobody caught me')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    said = records(out.stderr)
    assert [(r["level"], r["role"]) for r in said] == [
        ("WARNING", "server"),
        ("CRITICAL", "server"),
        ("ERROR", "server"),
        ("CRITICAL", "server"),
    ]
    assert "careful" in said[0]["message"]
    assert said[1]["exc_info"].endswith("ZeroDivisionError: division by zero")
    assert said[2]["message"].startswith("Exception ignored in")
    assert said[2]["exc_info"].endswith("OSError: in __del__")
    assert said[3]["exc_info"].endswith("RuntimeError: nobody caught me")
