"""The server process: listeners, flags, pid and log files, `farm status` (its signals:
test_server_signals.py)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from farm.server.settings import FD_MARGIN
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, free_port, start_farm_server, wait_connectable
from tests.helpers.waiting import wait_for


def farm_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    code = "from farm.cli import main; main()"
    cmd = [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_unix_socket_listener_serves_jobs_with_owner_and_group_permissions(tmp_path: Path) -> None:
    path = str(tmp_path / "gearman.sock")
    srv = start_farm_server(unix=path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o660
        worker = Peer(f"unix:{path}")
        worker.send(T.CAN_DO, "rev")
        client = Peer(f"unix:{path}")
        client.send(T.SUBMIT_JOB, "rev", "", "abc")
        handle = client.expect(T.JOB_CREATED).args[0]
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args == (handle, b"rev", b"abc")
        worker.send(T.WORK_COMPLETE, handle, "cba")
        assert client.expect(T.WORK_COMPLETE).args == (handle, b"cba")
        # The admin `workers` line names the Unix peer.
        assert " unix - : rev\n" in Peer(f"unix:{path}").admin("workers")
    finally:
        srv.stop()
    assert not os.path.exists(path)  # removed on exit


def test_unix_socket_mode_is_configurable(tmp_path: Path) -> None:
    path = str(tmp_path / "g.sock")
    srv = start_farm_server("--unix-mode", "600", unix=path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        srv.stop()


def test_gearmand_style_command_line_is_accepted() -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "farm.server",
        "-p",
        str(port),
        "-L",
        "127.0.0.1",
        "-j",
        "3",
        "-t",
        "4",
        "--store",
        "none",
        "-l",
        "none",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    srv = Server("farm", f"127.0.0.1:{port}", proc, port)
    try:
        wait_connectable(srv.addr, proc)
        assert Peer(srv.addr).admin("version").startswith("OK ")
    finally:
        srv.stop()


def test_debians_gearmand_params_start_a_detached_server(tmp_path: Path) -> None:
    """/etc/default/gearman-job-server's PARAMS (--listen=localhost --daemon --log-file=)
    and other gearmand flags: the command returns once the server listens, and the
    server goes on in a session of its own."""
    port, pid_file, log_file = free_port(), tmp_path / "g.pid", tmp_path / "g.log"
    common = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", "none"]
    gearmand_flags = ["--listen=localhost", "--daemon", f"--log-file={log_file}", "-P"]
    more = [str(pid_file), "--verbose=INFO", "-t", "4", "-R", "-w", "1", "--keepalive"]
    out = subprocess.run(
        [*common, *gearmand_flags, *more], cwd=ROOT, capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    pid = int(pid_file.read_text())
    try:
        assert os.getsid(pid) == pid  # a session of its own: the terminal may go
        assert Peer(f"127.0.0.1:{port}").admin("version").startswith("OK ")
        log = log_file.read_text()
        assert f"listening on localhost:{port}" in log  # --verbose=INFO
        assert "gearmand's -R is ignored" in log
        assert "runs as uid" not in log  # said of -u alone, which would have dropped root
        # A second one cannot listen: the starting command says so and fails, as gearmand.
        again = subprocess.run(
            [*common, "--daemon"], cwd=ROOT, capture_output=True, text=True, timeout=20
        )
        assert again.returncode == 1 and "cannot listen" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for("the pid file removed", lambda: not pid_file.exists())


def test_libsqlite3_db_is_the_store_and_version_answers(tmp_path: Path) -> None:
    """gearmand's `-q libsqlite3 --libsqlite3-db FILE` keeps background jobs in FILE."""
    out = farm_cli("server", "-V")
    assert out.returncode == 0 and out.stdout.startswith("farm server ")
    db = tmp_path / "queue.db"

    def serve(*flags: str) -> Server:
        port = free_port()
        cmd = [sys.executable, "-m", "farm.server", "-p", str(port), *flags, "-l", "none"]
        srv = Server("farm", f"127.0.0.1:{port}", subprocess.Popen(cmd, cwd=ROOT), port)
        wait_connectable(srv.addr, srv.proc)
        return srv

    srv = serve("-q", "libsqlite3", f"--libsqlite3-db={db}")
    try:
        c = Peer(srv.addr)
        c.send(T.SUBMIT_JOB_BG, "f", "", b"kept")
        c.expect(T.JOB_CREATED)
        c.close()
    finally:
        srv.stop()
    again = serve("--libsqlite3-db", str(db))
    try:
        assert Peer(again.addr).admin("status") == "f\t1\t0\t0\n.\n"
    finally:
        again.stop()


def test_bad_flags_are_a_usage_line_and_exit_2() -> None:
    bad = (["--port", "notaport"], ["--port", "70000"], ["--bogus"], ["-j", "-1"])
    for args in (*bad, ["--wake-deadline", "0"], ["--unix-mode", "999"], ["--unix-mode", "x"]):
        out = farm_cli("server", *args)
        assert out.returncode == 2, (args, out.stderr)
        assert "usage:" in out.stderr
        assert "Traceback" not in out.stderr and "<lambda>" not in out.stderr


def test_busy_port_is_one_line_and_exit_1(farm_server: Server) -> None:
    out = farm_cli("server", "--port", str(farm_server.port), "--store", "none")
    assert out.returncode == 1
    assert "cannot listen" in out.stderr and "Traceback" not in out.stderr


def test_a_host_name_dns_cannot_carry_is_one_line_not_a_traceback() -> None:
    host = "no-such-host-" + "x" * 60 + ".invalid"  # a label over 63 bytes: IDNA refuses it
    out = farm_cli("server", "-L", f"{host}:{free_port()}", "--store", "none")
    # A usage error as -L is read (farm.hostnames), no longer "cannot listen", exit 1.
    assert out.returncode == 2, out.stderr
    assert f"-L {host}:" in out.stderr and "not a host name" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_live_unix_socket_is_not_taken_over_nor_a_file_replaced(tmp_path: Path) -> None:
    # A second server given a running one's socket path unlinked it and bound its own: the
    # first one's new workers found nobody there once the second stopped.
    path = str(tmp_path / "g.sock")
    first = start_farm_server(unix=path)
    try:
        wait_for("the socket", lambda: os.path.exists(path))
        out = farm_cli("server", "--port", str(free_port()), "--store", "none", "--unix", path)
        assert out.returncode == 1, out.stderr
        assert f"cannot listen on unix:{path}: address already in use" in out.stderr
        # The fix is another path: the hint said to take another port (-p, or in `farm up`'s
        # config "give [server] listen another port"), which changes nothing here.
        assert "(another server has it? use another --unix PATH)" in out.stderr
        argv = ["server", "--store", "none", "--unix", path, "--hints", "config"]
        out = farm_cli(*argv, "-L", f"127.0.0.1:{free_port()}")
        assert "give [server] listen another unix: path)" in out.stderr, out.stderr
        peer = Peer(f"unix:{path}")
        try:
            assert peer.admin("getpid").strip() == f"OK {first.proc.pid}"
        finally:
            peer.close()
    finally:
        first.stop()
    assert not os.path.exists(path), "the first server removes its own socket"
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    out = farm_cli("server", "--port", str(free_port()), "--store", "none", "--unix", str(precious))
    # Exit 2: a file in the way stays, retrying cannot help (the unit does not restart it).
    assert out.returncode == 2 and "not a socket" in out.stderr, out.stderr
    assert precious.read_text() == "keep me"


def test_an_address_refused_at_the_start_closes_the_listeners_made_before_it(
    tmp_path: Path,
) -> None:
    # Its TCP and Unix listeners were made, then --metrics's port was found taken: the server
    # exited with them open (a ResourceWarning each under -X dev) and its socket file left.
    path = tmp_path / "g.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = f"127.0.0.1:{taken.getsockname()[1]}"
        argv = ["--port", str(free_port()), "--store", "none", "--unix", str(path)]
        code = "from farm.cli import main; main()"
        out = subprocess.run(
            [sys.executable, "-X", "dev", "-c", code, "server", *argv, "--metrics", metrics],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on --metrics {metrics}" in out.stderr, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    assert not path.exists(), "the socket it bound goes with it"


def test_a_stop_ends_a_connection_whose_peer_reads_nothing(tmp_path: Path) -> None:
    # Past its drain's 2 s the stop logged "closing" and left such a connection to the
    # process's exit, which found it never closed (a ResourceWarning under -X dev).
    port = free_port()
    log = tmp_path / "server.log"
    argv = ["-m", "farm.server", "--port", str(port), "--store", "none"]
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-X", "dev", *argv], cwd=ROOT, stderr=err)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
        with socket.socket() as peer:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it takes little
            peer.connect(("127.0.0.1", port))
            data = b"x" * 65536
            echo = b"\0REQ" + (16).to_bytes(4, "big") + len(data).to_bytes(4, "big") + data
            peer.setblocking(False)
            sent = 0
            # Echoed to us, who read none, until it holds more than it may and stops reading
            # us: then our socket stays unwritable (for 2 s, say: a loaded machine's server
            # may pause longer than half a second and read on).
            while sent < 64 << 20 and select.select([], [peer], [], 2.0)[1]:
                try:
                    sent += peer.send(echo)
                except BlockingIOError:
                    pass
            assert sent < 64 << 20, "the server read on"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = log.read_text()
    assert "1 connections still writing after" in said, said
    assert "ResourceWarning" not in said, said


@pytest.mark.parametrize("unix", [False, True])
def test_the_word_on_tcp_admin_names_a_unix_socket_only_where_there_is_one(
    tmp_path: Path, unix: bool
) -> None:
    # A server on TCP alone was told that --tcp-admin read-only "keeps them to the Unix
    # socket": taken, that advice left the queue-changing commands nowhere.
    port = free_port()
    log = tmp_path / "server.log"
    argv = ["--port", str(port), "--store", "none", "--tcp-admin", "full", "-v"]  # INFO
    if unix:
        argv += ["--unix", str(tmp_path / "g.sock")]
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "farm.server", *argv], cwd=ROOT, stderr=err)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
        wait_for("the word on --tcp-admin", lambda: "are open to everyone" in log.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    said = log.read_text()
    where = "the Unix socket" if unix else "a Unix socket (--unix PATH; none here)"
    assert f"--tcp-admin read-only keeps them to {where}\n" in said, said


def test_farm_status_prints_the_queues_as_a_table_and_json(farm_server: Server) -> None:
    worker = Peer(farm_server.addr)
    worker.send(T.CAN_DO, "reverse")
    client = Peer(farm_server.addr)
    for _ in range(3):
        client.send(T.SUBMIT_JOB_BG, "reverse", "", "x")
        client.expect(T.JOB_CREATED)
    worker.send(T.GRAB_JOB)
    worker.expect(T.JOB_ASSIGN)
    out = farm_cli("status", "--server", farm_server.addr)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["FUNCTION", "QUEUED", "RUNNING", "WORKERS"]
    assert lines[1].split() == ["reverse", "2", "1", "1"]
    data = json.loads(farm_cli("status", "--server", farm_server.addr, "--json").stdout)
    assert data == {
        "functions": [{"function": "reverse", "queued": 2, "running": 1, "workers": 1}],
        "poison": [],
    }


def test_farm_status_against_nothing_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = farm_cli("status", "--server", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert out.stderr.startswith("farm: cannot read status from 127.0.0.1:")
    assert out.stderr.count("\n") == 1
    # A newcomer's `farm status` with no farm up said "[Errno 111] Connection refused" and
    # no more, where `farm ps` asks whether `farm up` runs; so do both admin commands now.
    hint = "(no job server listens there: is the farm up? --server or --config names another)"
    assert out.stderr.endswith(f"Connection refused {hint}\n"), out.stderr
    out = farm_cli("jobs", "--server", f"unix:{tmp_path / 'none.sock'}")
    assert out.returncode == 1
    assert out.stderr.startswith("farm: cannot read the jobs from unix:"), out.stderr
    assert out.stderr.endswith(f"{hint}\n"), out.stderr


def test_the_process_title_names_the_port_it_listens_on() -> None:
    # -L with its own port: the title named -p's default (:4730), so `pgrep -f "server :P"`
    # found the wrong process.
    port = free_port()
    argv = [sys.executable, "-m", "farm.server", "-L", f"127.0.0.1:{port}", "--store", "none"]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
        title = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert title == f"farm: server :{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_max_connections_is_lowered_to_fit_a_low_descriptor_limit(tmp_path: Path) -> None:
    # With a hard limit below --max-connections, TCP peers could take every descriptor,
    # and the share kept for the Unix socket's peers with it.
    port, log = free_port(), tmp_path / "server.log"
    argv = [sys.executable, "-m", "farm.server", "--port", str(port), "--store", "none"]
    argv += ["-l", str(log), "--max-connections", "10000"]
    proc = subprocess.Popen(["sh", "-c", 'ulimit -n 200 && exec "$@"', "sh", *argv], cwd=ROOT)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc, timeout=30)
        text = log.read_text()
        said = re.search(
            r"the descriptor limit is 200: --max-connections lowered from 10000 to (\d+)", text
        )
        assert said is not None, text
        # Kept: what it holds (about 4 here) and FD_MARGIN, not a fixed 64 (200 - 64 = 136).
        fits = int(said[1])
        assert 136 < fits <= 200 - FD_MARGIN, text
        held = []
        for _ in range(fits + 10):  # more than fit: the last are closed at once, not left hanging
            s = socket.create_connection(("127.0.0.1", port))
            held.append(s)
        held[-1].settimeout(10)
        data = b""
        while chunk := held[-1].recv(65536):  # to the close: a connection past the limit
            data += chunk
        # A bare close, as gearmand's: peers read an ERROR before it as an answer (farm's
        # worker reset its backoff on it; Perl's died, libgearman's looped). Why is logged.
        assert data == b"", data
        wait_for("the limit in the log", lambda: "past --max-connections" in log.read_text())
        for s in held:
            s.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_busy_metrics_port_names_metrics(farm_server: Server) -> None:
    port = free_port()
    out = farm_cli("server", "--port", str(port), "--store", "none", "--metrics", farm_server.addr)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"cannot listen on --metrics {farm_server.addr}" in out.stderr, out.stderr
    assert "give --metrics another" in out.stderr


def test_a_store_that_is_no_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    # Its mode was changed (600, "was open to others; closing it") before SQLite said it was
    # no database: an operator's file given by mistake, changed.
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    notes.chmod(0o644)
    out = farm_cli("server", "--port", str(free_port()), "--store", str(notes))
    assert out.returncode == 2 and "file is not a database" in out.stderr, out.stderr
    assert stat.S_IMODE(notes.stat().st_mode) == 0o644
    assert "closing it" not in out.stderr


def test_a_unix_path_that_is_not_utf8_starts_without_a_traceback(tmp_path: Path) -> None:
    # setproctitle raised UnicodeEncodeError on the title naming it.
    path = os.fsdecode(bytes(tmp_path) + b"/g\xff.sock")
    argv = [sys.executable, "-m", "farm.server", "--store", "none", "-L", f"unix:{path}"]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the socket, or the end", lambda: os.path.exists(path) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        assert Peer(f"unix:{path}").admin("getpid").startswith(f"OK {proc.pid}")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("spec", ["", "  ", "NONE", "off"])
def test_a_store_that_is_no_path_nor_none_is_a_usage_error(spec: str) -> None:
    # `--store ''` (an unset "$STORE" in a unit file) and the other spellings of none kept
    # the jobs in memory without a word, lost at the next restart; [server] store refuses them.
    out = farm_cli("server", "-p", str(free_port()), "--store", spec, "-l", "none", timeout=30)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "usage:" in out.stderr and "--store" in out.stderr and '"none"' in out.stderr
    assert "Traceback" not in out.stderr


def test_store_memory_is_a_file_as_in_the_config(tmp_path: Path) -> None:
    # `--store memory` was memory only, where [server] store = "memory" is a file's path.
    port = free_port()
    cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", "memory"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
        c = Peer(f"127.0.0.1:{port}")
        c.send(T.SUBMIT_JOB_BG, "f", "", b"kept in the file")
        c.expect(T.JOB_CREATED)
        c.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert (tmp_path / "memory").read_bytes().startswith(b"SQLite format 3\0")
