"""The /tmp/farm-$UID fallback for sockets cannot be squatted by another local user.

Without $XDG_RUNTIME_DIR, farm puts its control and job-server sockets in
/tmp/farm-$UID. Another user who creates that directory first would receive
them: `farm ps` would talk to the attacker and `farm stop` report success while
the real supervisor runs on. farm creates it 0700 and refuses one that is not
its own or is writable by others, as OpenSSH and tmux do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from farm.paths import UnsafeDirectory, fallback_runtime_dir, private_dir
from tests.helpers import ROOT

NOBODY = 65534


def _default_port_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 4730), timeout=1).close()
    except OSError:
        return False
    return True


def farm_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no config file and no XDG_RUNTIME_DIR: the /tmp fallback is used."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(TMPDIR=str(tmp), PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp / "state"))
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def squatted(tmp_path: Path) -> Path:
    if os.getuid() != 0:
        pytest.skip("needs root to create a directory owned by another user (CI runs as root)")
    path = tmp_path / f"farm-{os.getuid()}"
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    os.chown(path, NOBODY, NOBODY)
    return path


def test_farm_ps_refuses_a_runtime_dir_of_another_user(tmp_path: Path, squatted: Path) -> None:
    result = farm_cli(tmp_path, "ps")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"belongs to uid {NOBODY}" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_farm_up_refuses_a_runtime_dir_of_another_user(tmp_path: Path, squatted: Path) -> None:
    result = farm_cli(tmp_path, "up")
    assert result.returncode == 1, result.stderr
    assert f"belongs to uid {NOBODY}" in result.stderr and "Traceback" not in result.stderr
    assert list(squatted.iterdir()) == [], "nothing of ours was put in it"


def test_a_world_writable_runtime_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(UnsafeDirectory, match="writable by others"):
        private_dir(path)


def test_a_link_in_place_of_the_runtime_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        private_dir(link)


def test_the_fallback_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    path = private_dir(fallback_runtime_dir())
    assert path.parent == tmp_path
    assert path.stat().st_mode & 0o777 == 0o700 and path.stat().st_uid == os.getuid()


@pytest.mark.serial  # nothing may answer on port 4730 meanwhile, where a client tries next
def test_clients_and_the_executor_refuse_a_job_server_socket_in_a_squatted_dir(
    tmp_path: Path, squatted: Path
) -> None:
    # The squatter's socket, where a farm without $XDG_RUNTIME_DIR puts its own: a caller
    # must not send it the Executor's calls (readable arguments) nor a client's jobs.
    if _default_port_answers():  # a developer's own `farm up`, or another test's farm
        pytest.skip("a server answers on 127.0.0.1:4730, where a client tries next")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(squatted / "gearman.sock"))
    listener.listen()
    os.chmod(squatted / "gearman.sock", 0o777)
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp_path / "s"))
    try:
        for code in ("farm.Executor(2, key_file='k')", "farm.Client().echo()"):
            probe = subprocess.run(
                [sys.executable, "-c", f"import farm; {code}"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert probe.returncode == 1, (code, probe.stderr)
            assert f"belongs to uid {NOBODY}" in probe.stderr, (code, probe.stderr)
        # The CLI says why it does not use the socket, and (a client may) tries TCP instead
        for args in (["submit", "reverse", "x"], ["status"]):
            out = farm_cli(tmp_path, *args)
            assert f"belongs to uid {NOBODY}" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr, out.stderr
        # A farm that listens on that socket alone: no client goes to the default TCP port
        # instead (the squatter may hold it too); it refuses, in one line.
        (tmp_path / "farm.toml").write_text(
            f'[server]\nlisten = ["unix:{squatted}/gearman.sock"]\n'
        )
        out = farm_cli(tmp_path, "submit", "reverse", "x")
        assert out.returncode == 1 and f"belongs to uid {NOBODY}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "4730" not in out.stderr, out.stderr
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected to it
    finally:
        listener.close()


@pytest.mark.parametrize("owner_or_mode", ["nobody", "0o666", "0o664"])
def test_a_farm_toml_of_another_user_in_the_working_directory_is_not_read(
    tmp_path: Path, owner_or_mode: str
) -> None:
    # Another user's file in a shared directory would choose where our calls go (and for
    # `farm up` what runs): read only when named (--config), as git refuses such a repo.
    config = tmp_path / "farm.toml"
    config.write_text('[server]\nlisten = ["unix:/tmp/attacker.sock"]\n')
    if owner_or_mode == "nobody":
        if os.getuid() != 0:
            pytest.skip("needs root to give a file to another user (CI runs as root)")
        os.chown(config, NOBODY, NOBODY)
        why = f"belongs to uid {NOBODY}"
    elif owner_or_mode == "0o666":
        os.chmod(config, 0o666)
        why = "may be written by every user"
    else:  # its group's members would choose what a farm run as root runs
        if os.geteuid() != 0:
            pytest.skip("a group-writable file is refused for a farm run as root only")
        os.chmod(config, 0o664)
        os.chown(config, 0, NOBODY)  # nogroup (65534): root's own group would be root's
        why = f"may be written by its group (gid {NOBODY})"
    refused = farm_cli(tmp_path, "status")
    assert refused.returncode == 2, refused.stderr
    assert why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    named = farm_cli(tmp_path, "status", "--config", str(config))
    assert "/tmp/attacker.sock" in named.stderr, named.stderr  # named: read, and used


@pytest.mark.parametrize("variable", ["XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY"])
def test_a_runtime_dir_of_another_user_named_in_the_environment_is_not_used(
    tmp_path: Path, variable: str, no_local_farm: Path
) -> None:
    # `su` (without -) keeps the first user's XDG_RUNTIME_DIR: a farm started then put its
    # sockets under a directory that user owns, who may rename our `farm` in it and make
    # their own, and `farm ps`/`farm stop` (and the Executor, by the socket's owner) trusted
    # the sockets found there. The XDG spec: the directory MUST be owned by the user.
    # (no_local_farm: the other variable names a directory of the test's, where no farm runs;
    # `farm ps` answered by a farm of this user at its $XDG_RUNTIME_DIR exited 0.)
    if os.getuid() != 0:
        pytest.skip("needs root to create a directory owned by another user (CI runs as root)")
    theirs = tmp_path / "run-user"
    (theirs / "farm").mkdir(parents=True)
    named = theirs if variable == "XDG_RUNTIME_DIR" else theirs / "farm"
    for path in (theirs, theirs / "farm"):
        os.chmod(path, 0o700)
        os.chown(path, NOBODY, NOBODY)
    asked: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as fake:  # a supervisor of theirs
        fake.bind(str(theirs / "farm" / "control.sock"))
        fake.listen()
        fake.settimeout(0.2)

        done = threading.Event()

        def answer() -> None:
            while not done.is_set():
                try:
                    conn, _ = fake.accept()
                except TimeoutError:
                    continue
                with conn:
                    asked.append(conn.recv(1000))
                    conn.sendall(b'{"ok": true, "pid": 1, "processes": []}\n')

        thread = threading.Thread(target=answer)
        thread.start()
        env = {variable: str(named), "TMPDIR": str(tmp_path)}
        result = subprocess.run(
            [sys.executable, "-m", "farm.cli", "ps"],
            cwd=tmp_path,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        done.set()
        thread.join()
    assert asked == [], "farm ps asked another user's socket"
    assert result.returncode == 1, result.stdout


def _fallback_with_tmpdir(tmpdir: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(TMPDIR=str(tmpdir), PYTHONPATH=str(ROOT))
    code = "from farm.paths import runtime_dir; print(runtime_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip())


def test_the_fallback_is_not_made_in_a_tmpdir_anyone_may_swap(tmp_path: Path) -> None:
    # $TMPDIR every user may write, not sticky: another user could move our farm-$UID
    # aside between a check and a connect, and put theirs (with their sockets) there.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert _fallback_with_tmpdir(shared) == Path(f"/tmp/farm-{os.getuid()}")


def test_the_fallback_is_not_made_in_the_tmpdir_of_the_user_who_ran_su(tmp_path: Path) -> None:
    # `su` without `-` keeps the first user's $TMPDIR (pam_tmpdir's /tmp/user/1000, say):
    # root's sockets then lay in a directory that user may rename and fill.
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory of another user (CI runs as root)")
    theirs = tmp_path / "user"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    tmp_path.chmod(0o755)
    assert _fallback_with_tmpdir(theirs) == Path(f"/tmp/farm-{os.getuid()}")


def test_the_fallback_is_not_made_through_a_tmpdir_link_of_another_user(tmp_path: Path) -> None:
    # Their $TMPDIR, a link of theirs to a directory of root's: its realpath passed, and the
    # fallback kept the path through the link, which they could point at a directory of
    # theirs once the farm had checked it.
    if os.getuid() != 0:
        pytest.skip("needs root to make a link of another user (CI runs as root)")
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o755)
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chown(home, NOBODY, NOBODY)
    link = home / "tmp"
    link.symlink_to(roots)
    os.lchown(link, NOBODY, NOBODY)
    tmp_path.chmod(0o755)
    assert _fallback_with_tmpdir(link) == Path(f"/tmp/farm-{os.getuid()}")
    # Theirs in root's 0755 directory (`tar -p`, `rsync -a` as root): they cannot change it
    untouchable = tmp_path / "tmp"
    untouchable.symlink_to(roots)
    os.lchown(untouchable, NOBODY, NOBODY)
    assert _fallback_with_tmpdir(untouchable) == untouchable / f"farm-{os.getuid()}"
    os.lchown(link, 0, 0)  # root's own link, in their directory: they could replace it
    assert _fallback_with_tmpdir(link) == Path(f"/tmp/farm-{os.getuid()}")


def test_a_farm_toml_under_a_directory_anyone_may_swap_is_not_read(tmp_path: Path) -> None:
    # The farm's own file, in a directory of its own, but under one every user may write
    # (not sticky): its relative paths (a store, a socket, a pool's cwd) are read against
    # the folder's path, where another user could meanwhile have put a folder of theirs.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proj = shared / "proj"
    proj.mkdir(mode=0o755)
    (proj / "farm.toml").write_text('[server]\nlisten = ["unix:/tmp/attacker.sock"]\n')
    refused = farm_cli(proj, "status")
    assert refused.returncode == 2, refused.stderr
    assert f"depends on {shared}, which is not sticky and may be written by every user" in (
        refused.stderr
    ), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
