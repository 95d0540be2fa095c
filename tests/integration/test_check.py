"""`farm check` as an operator runs it before `systemctl reload farm`: `python -m farm check`
in a process of its own, against real files, modules and commands. Exit 0 and one line when
`farm up` would start every pool; 2 (farm up's own lines, every bad pool) on a config it
refuses; 1 when the config reads but a pool's workers cannot load their target. What farm up
refuses once the config reads (where its files go): test_check_refusals.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT
from tests.helpers.farmcheck import config, farm, lines
from tests.helpers.farmproc import FarmUp
from tests.helpers.unprivileged import homeless
from tests.helpers.waiting import wait_for

GOOD = """
[functions.reverse]
target = "workers.text:reverse"
workers = 2
[functions.local]
target = "localwork:run"
workers = 1
[functions.cat]
command = ["cat"]
workers = 1
"""


def test_a_good_config_is_one_line_and_touches_nothing(tmp_path: Path) -> None:
    # A module of the working directory, found as the workers find it, loaded in a child.
    (tmp_path / "localwork.py").write_text(
        "import os\nopen('imported-by', 'w').write(str(os.getpid()))\n"
        "print('printed at import')\ndef run(job):\n    return job.data\n"
    )
    path = config(tmp_path, GOOD, store=f"{tmp_path}/state/queue.db")
    port = int(path.read_text().split("127.0.0.1:")[1].split('"')[0])
    with socket.create_server(("127.0.0.1", port)):  # as a running farm holds its port
        check = subprocess.Popen(
            [sys.executable, "-m", "farm", "check", "--config", "farm.toml"],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = check.communicate(timeout=60)
        finally:
            check.kill()
            check.wait()
    assert (check.returncode, err) == (0, ""), err
    assert lines(out) == [
        f"ok: 3 pool(s), 4 slot(s), from {path} (a reload applies [functions] only:"
        " [server], [supervisor] and [executor] take a restart)"
    ]
    # Imported by a process of its own (not the check's), gone with the check.
    imported_by = int((tmp_path / "imported-by").read_text())
    assert imported_by != check.pid and not psutil.pid_exists(imported_by)
    # Nothing of the farm made: no store, no state directory, no sockets.
    assert not (tmp_path / "state").exists()
    assert not any(p.is_socket() for p in tmp_path.iterdir())


def test_a_config_error_is_farm_ups_own_line_exit_2(tmp_path: Path) -> None:
    config(tmp_path, "[functions.a]\ntarget = 'workers.text:reverse'\nwrkers = 1\n")
    checked = farm(tmp_path, "check", "-c", "farm.toml")
    up = farm(tmp_path, "up", "-c", "farm.toml")
    assert (checked.returncode, up.returncode) == (2, 2)
    assert lines(checked.stderr) == [
        *lines(up.stderr),  # "functions.a.wrkers: unknown key; did you mean 'workers'?"
        "farm: 1 pool(s) refused: farm up would not start",
    ]
    assert "functions.a.wrkers: unknown key; did you mean 'workers'?" in checked.stderr
    # Outside the pools: the one line alone, as farm up says it.
    path = tmp_path / "farm.toml"
    path.write_text(path.read_text().replace('metrics = "off"', 'metrics = "off"\ncpu = 1'))
    checked = farm(tmp_path, "check", "-c", "farm.toml")
    up = farm(tmp_path, "up", "-c", "farm.toml")
    assert (checked.returncode, up.returncode) == (2, 2)
    assert lines(checked.stderr) == lines(up.stderr)
    assert "supervisor.cpu: unknown key; did you mean 'cpus'?" in checked.stderr


def test_a_target_that_raises_on_import_exit_1(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text(
        "print('loading the model')\nraise RuntimeError('no model file')\ndef f(job): pass\n"
    )
    config(tmp_path, '[functions.ocr]\ntarget = "boom:f"\nworkers = 1\n')
    done = farm(tmp_path, "check")  # ./farm.toml, as farm up finds it
    assert done.returncode == 1, done.stderr
    said = lines(done.stderr)
    assert said[0].startswith("farm: farm.toml: functions.ocr.target: boom:f does not load")
    assert f"RuntimeError: no model file at {tmp_path}/boom.py:2" in said[0]
    assert said[1:] == ["farm: the config reads, but farm up would not start everything in it"]
    assert "loading the model" not in done.stdout + done.stderr  # the worker's, not ours


def test_a_missing_module_is_a_config_error(tmp_path: Path) -> None:
    config(tmp_path, '[functions.x]\ntarget = "nosuch.module:f"\n')
    done = farm(tmp_path, "check")
    assert done.returncode == 2
    assert "farm: farm.toml: functions.x.target: no module named 'nosuch.module'" in done.stderr


def test_an_attribute_that_is_not_callable_exit_1(tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text("handler = 5\n")
    config(tmp_path, '[functions.x]\ntarget = "settings:handler"\nworkers = 1\n')
    done = farm(tmp_path, "check")
    assert done.returncode == 1
    assert "functions.x.target: settings:handler does not load in a worker:" in done.stderr
    assert "settings:handler is a int, not a function" in done.stderr


@pytest.mark.parametrize("body", ["return job.data", "yield job.data"])
def test_an_async_def_target_exit_1(tmp_path: Path, body: str) -> None:
    # It loaded, and each worker took it; then every job failed ("a worker function's
    # result must be bytes ... not coroutine"): farm check said ok, and farm up started it.
    # With yield (an async generator function), iscoroutinefunction missed it, as long.
    (tmp_path / "fetcher.py").write_text(f"async def fetch(job):\n    {body}\n")
    config(tmp_path, '[functions.x]\ntarget = "fetcher:fetch"\nworkers = 1\n')
    done = farm(tmp_path, "check")
    assert done.returncode == 1, done.stderr
    said = lines(done.stderr)
    assert said[0].startswith(
        "farm: farm.toml: functions.x.target: fetcher:fetch does not load in a worker:"
        " x: the worker function fetch is async def"
    ), said
    assert "asyncio.run" in said[0]


def test_a_command_that_is_not_executable_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "worker.sh").write_text("#!/bin/sh\nexec cat\n")
    config(tmp_path, '[functions.sh]\ncommand = ["./worker.sh"]\nworkers = 1\n')
    done = farm(tmp_path, "check")
    assert done.returncode == 2
    assert f"functions.sh.command: {tmp_path}/worker.sh is not executable; chmod +x it" in (
        done.stderr
    )


def test_several_bad_pools_are_all_named(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise ImportError('no libfoo.so')\ndef f(job): pass\n")
    (tmp_path / "settings.py").write_text("handler = None\n")
    (tmp_path / "worker.sh").write_text("#!/bin/sh\n")
    config(
        tmp_path,
        GOOD.replace('"localwork:run"', '"workers.text:reverse"')
        + '[functions.missing]\ntarget = "nosuch:f"\n'
        + '[functions.boom]\ntarget = "boom:f"\n[functions.boom2]\ntarget = "boom:f"\n'
        + '[functions.none]\ntarget = "settings:handler"\n'
        + '[functions.sh]\ncommand = ["./worker.sh"]\n',
    )
    done = farm(tmp_path, "check")
    assert done.returncode == 2  # a pool farm up refuses: farm up would not start
    said = lines(done.stderr)
    keys = [line.split(": ")[2] for line in said[:-1]]
    assert keys == [
        "functions.missing.target",
        "functions.sh.command",
        "functions.boom.target",
        "functions.boom2.target",
        "functions.none.target",
    ], said
    assert said[-1] == "farm: 2 pool(s) refused: farm up would not start"
    assert done.stdout == ""


def test_a_missing_config_file_exit_2(tmp_path: Path) -> None:
    done = farm(tmp_path, "check", "-c", "nothere.toml")
    assert done.returncode == 2
    assert lines(done.stderr) == [
        "farm: nothere.toml: no such config file (--config); check the path"
    ]


HANGS = (
    "import os, subprocess, time\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "open('pids.tmp', 'w').write(f'{os.getpid()} {child.pid}')\n"
    "os.rename('pids.tmp', 'pids')\n"
    "time.sleep(300)\ndef f(job): pass\n"
)


def start_hanging_check(tmp: Path, *args: str) -> tuple[subprocess.Popen[str], int, int]:
    """`farm check` of a pool whose import hangs, once that import is under way: the check,
    the pid loading the target and the pid of what that import started."""
    (tmp / "hang.py").write_text(HANGS)
    config(tmp, '[functions.slow]\ntarget = "hang:f"\nworkers = 1\n')
    check = subprocess.Popen(
        [sys.executable, "-m", "farm", "check", *args],
        cwd=tmp,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = tmp / "pids"
    try:
        wait_for("the target's import under way", pids.exists, timeout=20)
    except BaseException:
        check.kill()
        check.wait()
        raise
    loading, started = map(int, pids.read_text().split())
    return check, loading, started


def test_a_target_that_hangs_at_import_is_bounded_and_killed(tmp_path: Path) -> None:
    began = time.monotonic()
    check, loading, started = start_hanging_check(tmp_path, "--timeout", "3")
    try:
        # A process of its own, not titled as a worker (nothing counting workers sees it).
        assert loading != check.pid
        assert " ".join(psutil.Process(loading).cmdline()).startswith("farm: check slow#0")
        out, err = check.communicate(timeout=30)
    finally:
        check.kill()
        check.wait()
    assert check.returncode == 1 and time.monotonic() - began < 30, err
    assert "functions.slow.target: hang:f does not load in a worker: still loading after 3s" in err
    assert out == ""
    for pid in (loading, started):  # the import, and what it started: killed with it
        wait_for(f"pid {pid} killed", lambda pid=pid: _gone(pid))


def test_ctrl_c_ends_the_check_and_what_it_started(tmp_path: Path) -> None:
    check, loading, started = start_hanging_check(tmp_path)  # boot_timeout: 60 s
    try:
        check.send_signal(signal.SIGINT)
        out, err = check.communicate(timeout=10)  # not the 60 s the target was given
    finally:
        check.kill()
        check.wait()
    assert (check.returncode, out) == (130, ""), err
    assert "Traceback" not in err
    for pid in (loading, started):
        wait_for(f"pid {pid} killed", lambda pid=pid: _gone(pid))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_no_process_to_load_in_is_one_line_exit_1(tmp_path: Path) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to lower RLIMIT_NPROC")
    path = config(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    # Where that user may make the sockets, as farm up must: os.access() does not search
    # pytest's private directories with the capability that user keeps.
    run = Path(tempfile.mkdtemp(prefix="farm-check-"))
    run.chmod(0o1777)
    path.write_text(path.read_text().replace(f"{tmp_path}/", f"{run}/"))

    def one_process(argv: list[str]) -> list[str]:
        # A user of its own (root's processes are not limited) that may run one process:
        # the check, which cannot fork a child to load the target in.
        return homeless(["prlimit", "--nproc=1", *argv])

    try:
        done = farm(tmp_path, "check", wrap=one_process)
    finally:
        shutil.rmtree(run)
    assert done.returncode == 1, done.stderr
    assert lines(done.stderr) == [
        "farm: cannot start a process to load the targets in:"
        " [Errno 11] Resource temporarily unavailable"
    ]


def test_a_pool_whose_name_starts_with_a_dash_is_checked(tmp_path: Path) -> None:
    # The config allows `-` first in a name; its --check child read `--function -rev` as
    # a flag with no value and `farm check` said the pool's workers could not start.
    config(tmp_path, '[functions.-rev]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    done = farm(tmp_path, "check", "-c", "farm.toml")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert lines(done.stdout)[0].startswith("ok: 1 pool(s), 1 slot(s)")


def test_a_php_worker_dialing_the_default_port_is_named_where_the_port_moved(
    tmp_path: Path,
) -> None:
    # The seed's worker calls addServer() with no server: localhost:4730. Under a config
    # that moved the port, the check said "ok", and its workers failed at every start (or
    # served another farm's server there). One that reads FARM_SERVER_HOST/PORT is fine.
    seed = ROOT / "workers" / "php" / "worker.php"
    (tmp_path / "own.php").write_text(
        "<?php\n$w = new GearmanWorker();\n"
        '$w->addServer(getenv("FARM_SERVER_HOST"), (int)getenv("FARM_SERVER_PORT"));\n'
    )
    config(
        tmp_path,
        f'[functions.reverse]\ncommand = ["php", "{seed}"]\nworkers = 1\n'
        '[functions.own]\ncommand = "php own.php"\nworkers = 1\n',
    )
    done = farm(tmp_path, "check", "-c", "farm.toml")
    assert done.returncode == 0, done.stderr  # a warning: it may be what is meant
    said = lines(done.stderr)
    assert len(said) == 1, said
    assert said[0].startswith(
        f"farm: warning: farm.toml: functions.reverse.command: {seed} calls"
        " addServer() with no server, which dials localhost:4730, but this farm's server is"
        " at 127.0.0.1:"
    ), said
    assert 'addServer(getenv("FARM_SERVER_HOST")' in said[0]
    # At localhost:4730 (the default config's port) it reaches this farm: nothing to say.
    moved = (tmp_path / "farm.toml").read_text().split('listen = ["127.0.0.1:')[1].split('"')[0]
    path = tmp_path / "farm.toml"
    path.write_text(path.read_text().replace(f"127.0.0.1:{moved}", "127.0.0.1:4730"))
    done = farm(tmp_path, "check", "-c", "farm.toml")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_farm_up_logs_the_php_workers_default_port_at_its_start(tmp_path: Path) -> None:
    # An operator who starts the farm under systemd and never runs `farm check` reads only
    # the log: its workers failed at every start, and nothing there said why.
    seed = ROOT / "workers" / "php" / "worker.php"
    up = FarmUp(tmp_path, f'[functions.reverse]\ncommand = ["php", "{seed}"]\nworkers = 0\n')
    try:
        up.expect_notify("READY=1")
        said = f"functions.reverse.command: {seed} calls addServer() with no server"
        wait_for("the warning in farm up's log", lambda: said in up.read_log())
    finally:
        assert up.stop() == 0
