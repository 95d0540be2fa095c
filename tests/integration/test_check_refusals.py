"""`farm check` against what `farm up` refuses once the config reads (its listen name, the
control socket's place, the store's and the Unix socket's), and what it only warns of: the
same rules as `farm up` (one home each), the same line, the same exit code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.server.store import SQLiteStore
from tests.helpers import ROOT
from tests.helpers.farmcheck import config, farm, lines
from tests.helpers.unprivileged import homeless, unprivileged

REVERSE = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'


def both(tmp: Path) -> tuple[int, list[str]]:
    """`farm check` and `farm up` of ./farm.toml, each refusing it: the same code and lines
    (run without root's permission override, as the farm's user meets them)."""
    checked = farm(tmp, "check", wrap=unprivileged)
    up = farm(tmp, "up", wrap=unprivileged)
    assert "Traceback" not in checked.stderr + up.stderr, checked.stderr + up.stderr
    assert (checked.returncode, lines(checked.stderr)) == (up.returncode, lines(up.stderr))
    assert checked.stdout == ""
    return checked.returncode, lines(checked.stderr)


def test_a_listen_name_that_names_no_address_is_farm_ups_line(tmp_path: Path) -> None:
    path = config(tmp_path, REVERSE)
    # A label over 63 characters: no resolver is asked, the refusal is the same everywhere
    # (as the file is read: farm.hostnames; it was farm up's resolver check's, which said
    # "not a host name DNS can carry").
    host = "a" * 64 + ".example"
    path.write_text(path.read_text().replace('"127.0.0.1:', f'"{host}:', 1))
    code, said = both(tmp_path)
    assert code == 2
    assert said[0].startswith(f"farm: farm.toml: server.listen: '{host}:"), said
    assert f"'{host}' is not a host name or address: a label of 64 characters" in said[0], said


def test_a_control_path_that_is_a_file_is_farm_ups_line(tmp_path: Path) -> None:
    config(tmp_path, REVERSE)
    (tmp_path / "control.sock").write_text("not a socket")
    code, said = both(tmp_path)
    assert code == 2  # a config's mistake, as a listen path's; in its form: file, key, fix
    assert said == [
        f"farm: farm.toml: supervisor.control: {tmp_path}/control.sock exists and is not a"
        " socket: not replacing it; set it to a path for the control socket, e.g."
        " /run/farm/control.sock"
    ]
    assert (tmp_path / "control.sock").read_text() == "not a socket"


@pytest.mark.parametrize("there", ["file", "directory"])
def test_a_listen_path_that_is_no_socket_is_farm_ups_line_exit_2(
    tmp_path: Path, there: str
) -> None:
    # `farm check` said ok, and `farm up` met the server's "cannot listen on unix:...: the
    # path exists and is not a socket", exit 1, which systemd restarted every 2 s.
    config(tmp_path, REVERSE)
    placed = tmp_path / "gearman.sock"
    if there == "file":
        placed.write_text("not a socket")
    else:
        placed.mkdir()
    code, said = both(tmp_path)
    assert code == 2
    assert said == [
        f"farm: farm.toml: server.listen: unix:{placed} exists and is not a socket: not"
        " replacing it; name a path for the socket where no file is, e.g."
        " unix:/run/farm/gearman.sock"
    ]
    assert placed.is_dir() if there == "directory" else placed.read_text() == "not a socket"


def test_a_store_directory_this_user_cannot_write_is_farm_ups_line_exit_2(
    tmp_path: Path,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    tmp_path.chmod(0o755)  # the unprivileged run reads its way to the config
    config(tmp_path, REVERSE, store=f"{locked}/farm/queue.db")
    code, said = both(tmp_path)
    assert code == 2
    assert said[0].startswith("farm: farm.toml: server.store: cannot create"), said
    assert f"{locked} is not writable by this user" in said[0]


def test_a_store_this_user_cannot_read_is_farm_ups_line_exit_2(tmp_path: Path) -> None:
    store = tmp_path / "queue.db"
    store.write_bytes(b"")
    store.chmod(0o200)  # writable, not readable: the server could not replay it
    tmp_path.chmod(0o755)
    config(tmp_path, REVERSE, store=str(store))
    code, said = both(tmp_path)
    assert code == 2
    assert f"{store} is not readable and writable by this user" in said[0], said


def test_a_store_with_jobs_this_user_cannot_write_is_not_pointed_away_from(
    tmp_path: Path,
) -> None:
    # The store is there and may hold queued jobs: "name a file it may write (or none)"
    # left them behind; the fix is the file's (its mode, `chattr +i`, its owner).
    store = tmp_path / "queue.db"
    held = SQLiteStore(store)
    held.add(b"H:t:1", b"reverse", b"queued", b"x", 1, None, 0.0, True)
    held.commit()
    held.close()
    store.chmod(0o400)
    tmp_path.chmod(0o755)
    config(tmp_path, REVERSE, store=str(store))
    code, said = both(tmp_path)
    assert code == 2
    assert f"{store} is not readable and writable by this user" in said[0], said
    assert "it may hold queued jobs: fix the permissions" in said[0], said
    assert 'another store or "none" leaves its queued jobs behind' in said[0], said
    assert "name a file it may write" not in said[0], said


def test_a_control_directory_this_user_cannot_write_is_farm_ups_line_exit_2(
    tmp_path: Path,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    tmp_path.chmod(0o755)
    path = config(tmp_path, REVERSE)
    path.write_text(path.read_text().replace(f"{tmp_path}/control.sock", f"{locked}/c.sock"))
    code, said = both(tmp_path)
    assert code == 2
    assert said[0].startswith(
        f"farm: farm.toml: supervisor.control: cannot make the socket {locked}/c.sock:"
    ), said
    assert f"{locked} is not writable by this user" in said[0]


def test_a_control_directory_on_a_read_only_file_system_says_so(tmp_path: Path) -> None:
    # The unit's ProtectSystem=strict: "is not writable by this user (uid 0)" sent root
    # looking at modes, where the OSError had said "Read-only file system".
    read_only = tmp_path / "ro"
    read_only.mkdir()
    mount = 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"'
    wrap = ["unshare", "-m", "sh", "-c", mount, str(read_only)]
    if os.getuid() != 0 or subprocess.run([*wrap, "true"], capture_output=True).returncode:
        pytest.skip("needs root and unshare -m to mount a read-only file system")
    path = config(tmp_path, REVERSE)
    path.write_text(path.read_text().replace(f"{tmp_path}/control.sock", f"{read_only}/c.sock"))
    for command in ("check", "up"):
        done = farm(tmp_path, command, wrap=lambda argv: [*wrap, *argv])
        assert done.returncode == 2, done.stderr
        said = lines(done.stderr)[0]
        assert said.endswith(
            f"{read_only} is on a read-only file system (ProtectSystem? ReadWritePaths=);"
            " set it to a path in a directory the farm may write, e.g. /run/farm/control.sock"
        ), said


def test_a_socket_answering_in_a_directory_this_user_cannot_write_is_another_process(
    tmp_path: Path,
) -> None:
    # A running farm of another user there: `farm up` asks it, cannot replace it, and says
    # who answers (exit 1, as before the rule of places), not that the config is wrong.
    locked = tmp_path / "locked"
    locked.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(str(locked / "c.sock"))
        listener.listen(8)  # never accepts: a busy supervisor, to `farm up`
        locked.chmod(0o555)
        tmp_path.chmod(0o755)
        path = config(tmp_path, REVERSE)
        path.write_text(path.read_text().replace(f"{tmp_path}/control.sock", f"{locked}/c.sock"))
        done = farm(tmp_path, "up", wrap=unprivileged)
    assert done.returncode == 1, done.stderr
    said = lines(done.stderr)
    assert said[-1].startswith(f"farm: another process answers at {locked}/c.sock"), said


def test_a_socket_nobody_listens_on_in_a_directory_this_user_cannot_write_is_exit_2(
    tmp_path: Path,
) -> None:
    # A leftover socket (its farm gone): `farm check` said ok, as it does of any socket
    # there, and `farm up` "another process answers ... Permission denied" (exit 1), though
    # nothing answered. Nothing listens: it is the directory's fault, as with no socket.
    locked = tmp_path / "locked"
    locked.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(locked / "c.sock"))
    locked.chmod(0o555)
    tmp_path.chmod(0o755)
    path = config(tmp_path, REVERSE)
    path.write_text(path.read_text().replace(f"{tmp_path}/control.sock", f"{locked}/c.sock"))
    code, said = both(tmp_path)
    assert code == 2, said
    assert said[0].startswith(
        f"farm: farm.toml: supervisor.control: cannot make the socket {locked}/c.sock:"
    ), said
    assert (locked / "c.sock").exists()


def test_places_the_unit_makes_are_a_warning_not_a_failure(tmp_path: Path) -> None:
    # Outside the unit, before its first start, /run/farm (RuntimeDirectory=farm) and
    # /var/lib/farm (StateDirectory=farm) are not there, and the farm's user cannot make
    # them: systemd does, for farm up.
    for made in ("/run/farm", "/var/lib/farm"):
        if os.path.exists(made):  # a farm installed here: nothing to show, not a failure
            pytest.skip(f"{made} exists here (a farm's unit ran): nothing to show")
    path = config(tmp_path, REVERSE, store="/var/lib/farm/queue.db")
    text = path.read_text().replace(f"{tmp_path}/control.sock", "/run/farm/control.sock")
    path.write_text(text.replace(f"unix:{tmp_path}/gearman.sock", "unix:/run/farm/g.sock"))
    done = farm(tmp_path, "check", wrap=homeless)  # root may write /run and /var/lib
    assert done.returncode == 0, done.stderr
    said = lines(done.stderr)
    assert len(said) == 2 and all(line.startswith("farm: warning: ") for line in said), said
    assert "/run/farm does not exist" in said[0] and "RuntimeDirectory=farm" in said[0]
    assert "/var/lib/farm does not exist" in said[1] and "StateDirectory=farm" in said[1]
    assert not os.path.exists("/run/farm") and not os.path.exists("/var/lib/farm")


def test_a_target_leaving_a_thread_running_is_ok_at_once(tmp_path: Path) -> None:
    # farm up serves it: the worker's own loop runs beside the thread. The check waited for
    # the interpreter's exit, which waits on the thread, and failed at --timeout.
    (tmp_path / "threaded.py").write_text(
        "import threading\nthreading.Thread(target=threading.Event().wait).start()\n"
        "def f(job):\n    return job.data\n"
    )
    config(tmp_path, '[functions.t]\ntarget = "threaded:f"\nworkers = 1\n')
    began = time.monotonic()
    done = farm(tmp_path, "check", "--timeout", "30")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert time.monotonic() - began < 25


def test_a_parent_ignoring_sigchld_does_not_fail_the_check(tmp_path: Path) -> None:
    # An ignored SIGCHLD is inherited across exec: the kernel then reaps the children
    # itself, and waitpid said "[Errno 10] No child processes".
    config(tmp_path, REVERSE)

    def ignoring(argv: list[str]) -> list[str]:
        code = "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN);"
        return [sys.executable, "-c", code + " os.execv(sys.argv[1], sys.argv[1:])", *argv]

    done = farm(tmp_path, "check", wrap=ignoring)
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout)[0].startswith("ok: 1 pool(s), 1 slot(s)")


def test_pythonpath_warnings_are_said_as_farm_up_logs_them(tmp_path: Path) -> None:
    config(tmp_path, REVERSE)
    done = subprocess.run(
        [sys.executable, "-m", "farm", "check"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}::"),  # an empty entry: the working directory
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    said = lines(done.stderr)
    assert len(said) == 1 and said[0].startswith("farm: warning: PYTHONPATH entries"), said
    assert "dropped for the server and workers" in said[0]


def test_a_pool_of_no_workers_whose_target_does_not_load_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise RuntimeError('no model file')\ndef f(job): pass\n")
    config(tmp_path, REVERSE + '[functions.ocr]\ntarget = "boom:f"\nworkers = 0\n')
    done = farm(tmp_path, "check")
    assert done.returncode == 0, done.stderr
    said = lines(done.stderr)
    assert len(said) == 1, said
    assert said[0].startswith("farm: warning: farm.toml: functions.ocr.target: boom:f does")
    assert "RuntimeError: no model file" in said[0] and "workers = 0" in said[0]
    assert lines(done.stdout)[0].startswith("ok: 2 pool(s), 1 slot(s)")


def test_the_loading_child_is_killed_before_it_is_reaped(tmp_path: Path) -> None:
    # Its pid names its process group only until it is reaped: a killpg after that could
    # reach another group that took the pid meanwhile.
    from farm.config import load
    from farm.pools import bootcheck

    (tmp_path / "quick.py").write_text("def f(job):\n    return job.data\n")
    path = config(tmp_path, '[functions.q]\ntarget = "quick:f"\nworkers = 1\n')
    calls: list[tuple[str, int]] = []
    real_waitpid, real_killpg = os.waitpid, os.killpg

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        got = real_waitpid(pid, options)
        if got[0]:
            calls.append(("reaped", pid))
        return got

    def killpg(pgid: int, sig: int) -> None:
        calls.append(("killed", pgid))
        real_killpg(pgid, sig)

    cwd = os.getcwd()
    os.chdir(tmp_path)
    os.waitpid, os.killpg = waitpid, killpg
    try:
        cfg = load(path)
        failed = bootcheck.target_failures(cfg, 30, bootcheck.children_environ(cfg.executor)[1])
    finally:
        os.waitpid, os.killpg = real_waitpid, real_killpg
        os.chdir(cwd)
    assert failed == {}
    assert [what for what, _ in calls] == ["killed", "reaped"], calls
    assert calls[0][1] == calls[1][1]
