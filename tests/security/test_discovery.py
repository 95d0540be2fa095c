"""A client or an Executor given no servers finds the farm the CLI would, Unix socket first.

The Executor never falls back to TCP: its calls would go to a port every local
user can reach. Discovery reads only addresses from the config, so a caller
without the workers' modules still finds the farm.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from farm import discovery
from farm.errors import ServerUnavailable
from farm.executor.signing import ensure_key
from farm.net import DEFAULT_SERVER, parse_servers
from farm.paths import UnsafeDirectory
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.farmproc import FarmUp


@pytest.fixture
def clean_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_local_farm: Path
) -> Iterator[Path]:
    # The defaults in a directory of the test's (no_local_farm): a farm of this user running
    # at them made the defaults' tests fail.
    monkeypatch.chdir(tmp_path)  # no ./farm.toml but the one a test writes
    yield tmp_path


def write_config(tmp: Path, sock: Path) -> Path:
    cfg = tmp / "farm.toml"
    cfg.write_text(
        f'[server]\nlisten = ["0.0.0.0:4999", "unix:{sock}"]\n'
        '[functions.a]\ntarget = "not.importable.here:fn"\n'  # never imported by discovery
    )
    return cfg


def test_the_environment_comes_first(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEARMAN_SERVERS", "10.0.0.1:4730")
    assert discovery.client_servers() == "10.0.0.1:4730"
    sock = clean_env / "x.sock"
    monkeypatch.setenv("FARM_SERVERS", f"unix:{sock}")
    assert discovery.client_servers() == f"unix:{sock}"
    with socket.socket(socket.AF_UNIX) as listener:  # the Executor's is checked: it is there
        listener.bind(str(sock))
        assert discovery.executor_servers() == [f"unix:{sock}"]


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_a_blank_variable_is_unset(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    # FARM_SERVERS=" " (a unit's `Environment=FARM_SERVERS= `, a shell's quoted blank) was
    # "the server list is empty", where an empty one fell back to $GEARMAN_SERVERS.
    monkeypatch.setenv("FARM_SERVERS", blank)
    monkeypatch.setenv("GEARMAN_SERVERS", "10.0.0.1:4730")
    assert discovery.client_servers() == "10.0.0.1:4730"
    monkeypatch.setenv("GEARMAN_SERVERS", blank)
    assert discovery.client_servers() == [DEFAULT_SERVER], "then the defaults"


def test_a_client_uses_the_socket_when_it_may_else_tcp(clean_env: Path) -> None:
    sock = clean_env / "gearman.sock"
    write_config(clean_env, sock)
    assert discovery.client_servers() == ["127.0.0.1:4999"], "no socket yet: TCP, loopback"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        assert discovery.client_servers() == [f"unix:{sock}"]
        assert discovery.executor_servers() == [f"unix:{sock}"]


def test_the_executor_refuses_to_fall_back_to_tcp(clean_env: Path) -> None:
    write_config(clean_env, clean_env / "absent.sock")
    with pytest.raises(farm.ServerUnavailable, match="does not fall back to TCP"):
        farm.Executor()


def test_the_executor_takes_only_the_unix_sockets_of_remote_servers(clean_env: Path) -> None:
    # A host whose workers serve other job servers ([supervisor] servers, no local one):
    # farm.Executor() with no servers sent its calls to the TCP ones, which the docs say it
    # never does (any peer on that network could read them; a farm server never hands them
    # to a TCP worker, so they waited for good). Its farm.python pool registers only on the
    # unix: entries (docs/operations.md), and the Executor goes only there.
    sock = clean_env / "remote.sock"
    (clean_env / "farm.toml").write_text(
        f'[supervisor]\nservers = ["10.0.0.1:4730", "unix:{sock}"]\n'
        '[functions.a]\ntarget = "not.importable.here:fn"\n'
    )
    assert discovery.client_servers() == ["10.0.0.1:4730", f"unix:{sock}"]
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        assert discovery.executor_servers() == [f"unix:{sock}"]
    (clean_env / "farm.toml").write_text(
        '[supervisor]\nservers = ["10.0.0.1:4730"]\n[functions.a]\ntarget = "x:fn"\n'
    )
    # No farm.* pool serves there (the config's rules allow none on TCP servers), so the
    # fix is in the file it names, not servers= (those calls would wait for good).
    with pytest.raises(farm.ServerUnavailable) as info:
        farm.Executor()
    said = str(info.value)
    assert said.startswith("farm.toml: [supervisor] servers names no unix:"), said
    assert "local_server = true" in said and "servers=" not in said, said


def test_the_executor_refuses_remote_unix_sockets_that_are_missing(clean_env: Path) -> None:
    # The docs say it refuses in one line when the socket is missing; for [supervisor]
    # servers it took the missing socket and its calls timed out instead.
    sock = clean_env / "nothere.sock"
    (clean_env / "farm.toml").write_text(
        f'[supervisor]\nservers = ["10.0.0.1:4730", "unix:{sock}"]\n'
        '[functions.a]\ntarget = "x:fn"\n'
    )
    with pytest.raises(farm.ServerUnavailable, match=f"no job server answers on {sock}"):
        farm.Executor()


def test_a_relative_unix_server_of_the_config_is_taken_from_its_folder(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `servers = ["unix:run/x.sock"]`: the workers connect to run/x.sock beside the file
    # ("relative paths in a file are relative to that file"), but a client or Executor run
    # from another directory read it against its own working directory: another socket.
    folder = clean_env / "etc"
    folder.mkdir()
    (folder / "farm.toml").write_text(
        '[supervisor]\nservers = ["unix:run/x.sock"]\n[functions.a]\ntarget = "x:fn"\n'
    )
    monkeypatch.setenv("FARM_CONFIG", str(folder / "farm.toml"))
    expected = [f"unix:{folder}/run/x.sock"]
    (folder / "run").mkdir()
    with socket.socket(socket.AF_UNIX) as listener:  # the Executor takes only one that is there
        listener.bind(str(folder / "run" / "x.sock"))
        assert discovery.client_servers() == discovery.executor_servers() == expected


def test_an_executor_with_no_servers_finds_a_running_farm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "state" / "executor.key"
    functions = '[functions."farm.python"]\ntarget = "farm.executor.call:run_call"\nworkers = 1\n'
    up = FarmUp(tmp_path, functions, extra_env={"FARM_KEY_FILE": str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 1})
        for name in ("FARM_SERVERS", "GEARMAN_SERVERS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("FARM_CONFIG", str(up.config))
        with farm.Executor(key_file=str(key)) as ex:
            assert ex.submit(os.getpid).result(timeout=30) != os.getpid()
        with farm.Client() as client:
            assert client.servers == [f"unix:{up.unix}"]
            assert client.echo(b"hi") == b"hi"
    finally:
        assert up.stop() == 0


def test_the_no_local_farm_fixture_hides_the_system_config(no_local_farm: Path) -> None:
    # /etc/farm/farm.toml of a farm installed on the host was read by the defaults' tests.
    assert discovery.SYSTEM_CONFIG.is_relative_to(no_local_farm)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_another_users_socket_where_others_could_have_put_it_is_refused(clean_env: Path) -> None:
    # Any local user may make a directory in /tmp and bind a socket at a configured path
    # before the farm does: the Executor would have sent its calls (in clear) to them.
    made = clean_env / "made-by-another"  # under /tmp, which everyone may write
    made.mkdir()
    sock = made / "gearman.sock"
    write_config(clean_env, sock)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        os.chmod(sock, 0o666)
        assert discovery.executor_servers() == [f"unix:{sock}"], "ours: used"
        os.chown(sock, 65534, 65534)  # nobody's, as if they bound it first
        os.chown(made, 65534, 65534)  # in a directory of theirs
        with pytest.raises(UnsafeDirectory, match="could have let another user put it there"):
            farm.Executor()
        assert discovery.client_servers() == ["127.0.0.1:4999"], "a client uses TCP instead"
    # The farm user's own directory, under directories only root may write: trusted.
    home = Path(tempfile.mkdtemp(dir="/var/lib", prefix="farm-test-"))
    try:
        os.chmod(home, 0o755)
        run = home / "run"
        run.mkdir(mode=0o755)
        sock = run / "gearman.sock"
        write_config(clean_env, sock)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(sock))
            os.chown(sock, 65534, 65534)
            os.chown(run, 65534, 65534)
            assert discovery.executor_servers() == [f"unix:{sock}"]
    finally:
        shutil.rmtree(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_a_client_skips_a_remote_socket_another_user_could_have_planted(clean_env: Path) -> None:
    # The same check as for the local server's socket, for [supervisor] servers' unix:
    # entries: a client took another user's socket in /tmp silently, and sent its calls there.
    made = clean_env / "made-by-another"
    made.mkdir()
    sock = made / "gearman.sock"
    config = clean_env / "farm.toml"
    config.write_text(f'[supervisor]\nservers = ["unix:{sock}"]\n[functions.a]\ntarget = "x:fn"\n')
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        assert discovery.client_servers() == [f"unix:{sock}"], "ours: used"
        os.chown(sock, 65534, 65534)
        os.chown(made, 65534, 65534)
        with pytest.raises(UnsafeDirectory, match="could have let another user put it there"):
            discovery.client_servers()
        with pytest.raises(UnsafeDirectory):
            farm.Worker()
        config.write_text(
            f'[supervisor]\nservers = ["10.0.0.1:4730", "unix:{sock}"]\n'
            '[functions.a]\ntarget = "x:fn"\n'
        )
        assert discovery.client_servers() == ["10.0.0.1:4730"], "the TCP one instead"


def test_the_executor_passes_over_tcp_in_gearman_servers(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $GEARMAN_SERVERS is set host-wide for PHP and the gearman tools: its TCP address sent
    # farm.Executor()'s signed calls over TCP, queued behind any local user's jobs there.
    sock = clean_env / "gearman.sock"
    write_config(clean_env, sock)
    monkeypatch.setenv("GEARMAN_SERVERS", "127.0.0.1:4999")
    assert discovery.client_servers() == "127.0.0.1:4999", "a client still takes it"
    with pytest.raises(ServerUnavailable, match=r"GEARMAN_SERVERS names only TCP"):
        discovery.executor_servers()  # no socket yet: refused, never TCP
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        listener.listen()
        assert discovery.executor_servers() == [f"unix:{sock}"], "the config's socket"
    monkeypatch.setenv("GEARMAN_SERVERS", f"10.0.0.1:4730, unix:{sock}")
    assert discovery.executor_servers() == [f"unix:{sock}"], "its unix: entries are taken"
    # Checked as the config's unix: entries are: a missing one was taken, and the
    # Executor's calls timed out, where the config's is refused in one line.
    monkeypatch.setenv("GEARMAN_SERVERS", f"unix:{clean_env}/nothere.sock")
    with pytest.raises(ServerUnavailable, match=r"nothere.sock \(\$GEARMAN_SERVERS\)"):
        discovery.executor_servers()


def test_the_executor_refuses_a_unix_server_that_is_no_socket(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any file there was taken for a socket: farm.Executor() waited on connects it refused,
    # then said "no job server is reachable; tried unix:... (Connection refused)", where
    # `farm submit` refuses the same $GEARMAN_SERVERS at once ("not a socket").
    plain = clean_env / "notsock"
    plain.write_text("")
    (clean_env / "link").symlink_to(plain)
    for path in (plain, clean_env / "link", clean_env):  # a file, a link to one, a directory
        monkeypatch.setenv("GEARMAN_SERVERS", f"unix:{path}")
        with pytest.raises(ServerUnavailable, match=rf"{re.escape(f'{path}: not a socket')}"):
            farm.Executor()
    # Nor among [supervisor] servers: the one that is a socket is taken, the file passed over.
    monkeypatch.delenv("GEARMAN_SERVERS")
    sock = clean_env / "remote.sock"
    servers = f'servers = ["unix:{plain}", "unix:{sock}"]'
    (clean_env / "farm.toml").write_text(f"[supervisor]\n{servers}\n")
    with pytest.raises(ServerUnavailable, match=rf"{re.escape(f'{plain}: not a socket')}"):
        discovery.executor_servers()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        assert discovery.executor_servers() == [f"unix:{sock}"]
        (clean_env / "to-sock").symlink_to(sock)  # a link to a socket is one, as connect goes
        monkeypatch.setenv("GEARMAN_SERVERS", f"unix:{plain}, unix:{clean_env / 'to-sock'}")
        assert discovery.executor_servers() == [f"unix:{clean_env / 'to-sock'}"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
@pytest.mark.parametrize("variable", ["GEARMAN_SERVERS", "FARM_SERVERS"])
def test_the_executor_refuses_a_planted_socket_in_the_servers_variables(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # The same check as for the config's sockets: another user's socket in a directory
    # anyone may write, named in $GEARMAN_SERVERS (or $FARM_SERVERS), received the
    # Executor's signed calls.
    made = clean_env / "made-by-another"
    made.mkdir()
    sock = made / "gearman.sock"
    write_config(clean_env, clean_env / "absent.sock")
    monkeypatch.setenv(variable, f"unix:{sock}")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        assert discovery.executor_servers() == [f"unix:{sock}"], "ours: used"
        os.chown(sock, 65534, 65534)  # nobody's, as if they bound it first
        os.chown(made, 65534, 65534)  # in a directory of theirs
        with pytest.raises(UnsafeDirectory, match="could have let another user put it there"):
            farm.Executor()


def test_the_executor_refuses_farm_servers_where_no_socket_can_answer_as_it_is_made(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only what can never answer is refused as it is made: a file there (or a socket this
    # user may not use). A socket not there yet is the farm not up yet: kept (below).
    missing, plain = clean_env / "missing.sock", clean_env / "notsock"
    plain.write_text("")
    monkeypatch.setenv("FARM_SERVERS", f"unix:{plain}")
    with pytest.raises(ServerUnavailable, match=rf"{re.escape(f'{plain}: not a socket')}"):
        farm.Executor()
    monkeypatch.setenv("FARM_SERVERS", f"unix:{missing}, unix:{plain}")
    assert discovery.executor_servers() == [f"unix:{missing}"], "the file passed over"
    # A TCP entry is not looked at (its server may come up later), nor refused: $FARM_SERVERS
    # is the place to choose TCP knowingly.
    monkeypatch.setenv("FARM_SERVERS", f"unix:{missing}, 127.0.0.1:1")
    assert parse_servers(discovery.executor_servers()) == [f"unix:{missing}", "127.0.0.1:1"]


def test_an_executor_made_before_the_farm_is_up_waits_for_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An app that makes its Executor as it is imported, before `farm up`: $FARM_SERVERS'
    # socket not there yet was refused ("no job server answers on ..."), and the app failed
    # to import. Its first call waits connect_timeout for the farm, as before.
    (clean_env / "f").mkdir()
    key = ensure_key(clean_env / "f" / "executor.key")
    monkeypatch.setenv("FARM_SERVERS", f"unix:{clean_env / 'f' / 'gearman.sock'}")
    with farm.Executor(key_file=str(key), connect_timeout=60) as ex:
        first = ex.submit(abs, -7)
        served = ExecutorFarm(clean_env / "f", count=1)
        try:
            assert first.result(timeout=60) == 7
        finally:
            served.stop()


def test_farm_workers_is_none_where_no_farm_answers(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its docstring says "or None"; it raised ServerUnavailable where the Executor is
    # refused as it is made (the config's socket missing), and so did joblib's n_jobs=-1.
    pytest.importorskip("joblib")
    from farm.joblib import farm_workers

    write_config(clean_env, clean_env / "absent.sock")
    assert farm_workers() is None
    monkeypatch.setenv("FARM_SERVERS", f"unix:{clean_env / 'absent.sock'}")
    assert farm_workers() is None


def test_the_executor_passes_over_what_is_no_socket_in_farm_servers(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A file there was taken for a socket, and every connect to it was refused for as long as
    # the Executor ran. One missing among the others stays: its server may be starting.
    missing, plain, sock = clean_env / "missing.sock", clean_env / "notsock", clean_env / "s"
    plain.write_text("")
    monkeypatch.setenv("FARM_SERVERS", f"unix:{plain}, unix:{missing}, unix:{sock}")
    with socket.socket(socket.AF_UNIX) as listener, caplog.at_level(logging.WARNING, "farm"):
        listener.bind(str(sock))
        assert discovery.executor_servers() == [f"unix:{missing}", f"unix:{sock}"]
    assert f"not using unix:{plain}: not a socket" in caplog.text


def test_one_missing_socket_among_farm_servers_leaves_the_others_serving(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As gearmand's clients fail over: a server whose socket is not made yet (starting, or
    # down) is no reason to refuse the Executor, and holds none of its calls.
    (clean_env / "f").mkdir()
    served = ExecutorFarm(clean_env / "f", count=1)
    try:
        monkeypatch.setenv("FARM_SERVERS", f"unix:{clean_env / 'missing.sock'}, unix:{served.unix}")
        with farm.Executor(key_file=str(served.key)) as ex:
            assert list(ex.map(abs, [-1, -2, -3], timeout=60)) == [1, 2, 3]
    finally:
        served.stop()
