"""TLS files as the server and the clients are given them: named when missing, refused in
one line when they are no file OpenSSL can read (a FIFO no one writes to hung for ever),
read whole from a pipe (process substitution, which keeps a key off the disk), and warned of
at the server's start where its certificate has expired (or soon will) or every user may read
its key."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import farm
from farm.errors import TLSFileError
from farm.tlsfiles import tls_context
from tests.helpers import ROOT
from tests.helpers.servers import free_port, start_farm_server
from tests.helpers.tlspki import dated_certificate, pki

pytestmark = pytest.mark.slow
__all__ = ["pki"]  # a fixture, imported for pytest to find


def server_start(cert: str, key: str) -> subprocess.CompletedProcess[str]:
    """`farm server` given ``cert`` and ``key``, as far as it gets (a refusal: it exits)."""
    return subprocess.run(
        [sys.executable, "-m", "farm.server", "-p", str(free_port()), "--store", "none"]
        + ["--tls-cert", cert, "--tls-key", key],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(farm.FarmError, match=f"TLS certificate {missing}: No such file"):
        tls_context(None, missing, missing)
    result = server_start(missing, missing)
    assert result.returncode == 2 and missing in result.stderr, result.stderr


def test_a_missing_key_is_named_not_its_certificate(tmp_path: Path, pki: Path) -> None:
    # The certificate was named for the key that was missing: "server.pem: No such file".
    cert, missing = str(pki / "server.pem"), str(tmp_path / "nokey.key")
    with pytest.raises(farm.FarmError, match=f"{missing}: No such file") as refused:
        tls_context(None, cert, missing)
    assert cert not in str(refused.value)
    result = server_start(cert, missing)
    assert result.returncode == 2, result.stderr
    assert f"{missing}: No such file" in result.stderr and cert not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("argv", "variables", "said"),
    [
        (["status"], {"FARM_TLS_CA": "fifo"}, "TLS CA file ($FARM_TLS_CA) {fifo}"),
        (["status"], {"FARM_TLS_CERT": "fifo"}, "($FARM_TLS_CERT, $FARM_TLS_KEY) {fifo}"),
        (["status"], {"FARM_TLS_CERT": "server.pem", "FARM_TLS_KEY": "fifo"}, "$FARM_TLS_KEY"),
        (["server", "--tls-cert", "fifo", "--tls-key", "fifo"], {}, "--tls-cert/--tls-key {fifo}"),
        (["server", "--tls-cert", "server.pem", "--tls-key", "fifo"], {}, "--tls-key {fifo}"),
        (
            ["server", "--tls-cert", "server.pem", "--tls-key", "server.key", "--tls-ca", "fifo"],
            {},
            "--tls-ca {fifo}",
        ),
    ],
)
def test_a_fifo_as_a_tls_file_is_refused_not_waited_on(
    tmp_path: Path, pki: Path, argv: list[str], variables: dict[str, str], said: str
) -> None:
    # OpenSSL's open of a FIFO waited for a writer: `farm status` with $FARM_TLS_CA on one,
    # and `farm server --tls-cert` on one, hung for ever.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    files = {"fifo": str(fifo), **{name: str(pki / name) for name in ("server.pem", "server.key")}}
    argv = [files.get(arg, arg) for arg in argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "GEARMAN_"))}
    env.update(PYTHONPATH=str(ROOT), FARM_SERVERS="127.0.0.1:1")  # nothing to reach
    env.update({name: files[file] for name, file in variables.items()})
    if argv[0] == "server":
        argv += ["-p", str(free_port()), "--store", "none", "-l", "none"]
    out = subprocess.run(
        [sys.executable, "-m", "farm", *argv],
        capture_output=True, text=True, timeout=30, env=env, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and said.format(fifo=fifo) in lines[0], out.stderr
    assert "a pipe that gave no whole file within 5s" in lines[0], out.stderr


def test_a_pem_file_through_a_pipe_is_read_as_process_substitution_hands_it(
    tmp_path: Path, pki: Path
) -> None:
    # `--tls-key <(sops -d key.pem)` keeps a key off the disk: a pipe with a writer, read
    # once. Refusing every file that is not regular refused these too.
    pipes = {}
    for name in ("ca.pem", "client.pem", "client.key"):
        pipes[name] = tmp_path / f"pipe-{name}"
        os.mkfifo(pipes[name])

    def write(name: str) -> None:
        with open(pipes[name], "wb") as pipe:  # waits for the reader, as bash's writer does
            pipe.write((pki / name).read_bytes())

    writers = [threading.Thread(target=write, args=(n,), daemon=True) for n in pipes]
    for writer in writers:
        writer.start()
    ctx = tls_context(
        ca=str(pipes["ca.pem"]), cert=str(pipes["client.pem"]), key=str(pipes["client.key"])
    )
    assert ctx.get_ca_certs(), "the CA read from its pipe"
    for writer in writers:
        writer.join(10)
        assert not writer.is_alive()


@pytest.mark.parametrize(
    ("gives", "said"),
    [(b"", "a pipe that ended empty"), (b"0" * (3 << 20), "a pipe that gave over 1 MiB")],
)
def test_a_pipe_that_gives_nothing_or_too_much_is_one_line(
    tmp_path: Path, gives: bytes, said: str
) -> None:
    # `<(cat /dev/zero)` took the process's memory in seconds: a pipe is read to 1 MiB at most.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), open(pipe, "wb") as out:
            out.write(gives)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(TLSFileError, match=said) as raised:
        tls_context(ca=str(pipe))
    assert str(pipe) in str(raised.value)
    writer.join(10)
    assert not writer.is_alive()


def started_log(tmp_path: Path, cert: Path, key: Path) -> list[str]:
    """The WARNING lines of a TLS server's log, from its start to its stop."""
    log = tmp_path / "server.log"
    srv = start_farm_server("--tls-cert", str(cert), "--tls-key", str(key), "-l", str(log))
    srv.stop()
    return [line for line in log.read_text().splitlines() if " WARNING " in line]


def utc_stamp(seconds: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(seconds))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("begins", "ends", "said"),
    [
        (-400, -300, "expired on {ends}: clients refuse its handshake; renew it and restart"),
        (300, 400, "is not valid until {begins}: clients refuse its handshake until then"),
        (-10, 3, "expires on {ends} (in 3.0 days); renew it and restart the server"),
    ],
)
def test_a_certificate_out_of_its_dates_is_warned_of_at_start(
    tmp_path: Path, pki: Path, begins: int, ends: int, said: str
) -> None:
    # It started as if all were well: its operator heard of the expiry from every client's
    # refused handshake ("certificate has expired"), and certificates are read at start.
    now = time.time()
    dates = {"begins": now + begins * 86400, "ends": now + ends * 86400}
    cert, key = dated_certificate(pki, tmp_path, *(utc_stamp(t) for t in dates.values()))
    shown = {k: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) for k, t in dates.items()}
    warnings = started_log(tmp_path, cert, key)
    assert [line for line in warnings if said.format(**shown) in line], warnings
    assert str(cert) in warnings[0], warnings


@pytest.mark.timeout(120)
def test_a_key_every_user_may_read_is_warned_of_at_start(tmp_path: Path, pki: Path) -> None:
    cert, key = pki / "server.pem", tmp_path / "server.key"
    key.write_bytes((pki / "server.key").read_bytes())
    key.chmod(0o640)  # Debian's root:ssl-cert 0640 is by design: no word
    assert started_log(tmp_path, cert, key) == []  # nor of the pki's dates (30 days)
    key.chmod(0o644)
    (warning,) = started_log(tmp_path, cert, key)
    assert f"TLS key {key} may be read by every user on this host (mode 0644)" in warning
    assert f"chmod o-r {key}" in warning
