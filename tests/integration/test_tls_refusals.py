"""A TLS handshake that fails says why in words of its fix: a client given a CA that dials a
plain port got OpenSSL's "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
and one whose CA did not sign the server's certificate "certificate verify failed: unable
to get local issuer certificate", naming neither the cause nor what to change; the same
from farm.Client, farm.AsyncClient and the CLI (`farm status` with $FARM_TLS_CA)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.servers import Server, ipv6_loopback_problem, start_farm_server
from tests.helpers.serving import working
from tests.helpers.tlspki import mutual_tls_server, openssl, pki, tls_server
from tests.helpers.waiting import wait_for

__all__ = ["mutual_tls_server", "pki", "tls_server"]  # fixtures, imported for pytest to find

PLAIN = "does not speak TLS there (WRONG_VERSION_NUMBER): a plain Gearman port?"
UNTRUSTED = "its TLS certificate is not trusted (unable to get local issuer certificate)"


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
            "-keyout", "other.key", "-out", "other.pem", cwd=tmp_path)  # fmt: skip
    return tmp_path / "other.pem"


def refusals(addr: str, ca: Path) -> list[str]:
    """What the blocking client, the asyncio client and `farm status` say, with ``ca``."""
    ctx = ssl.create_default_context(cafile=str(ca))
    said = []
    with pytest.raises(farm.ServerUnavailable) as blocking:
        farm.Client(addr, tls=ctx, timeout=10).echo(b"x")
    said.append(str(blocking.value))

    async def echo() -> None:
        async with farm.AsyncClient(addr, tls=ctx) as client:
            await client.echo(b"x")

    with pytest.raises(farm.ServerUnavailable) as aio:
        asyncio.run(echo())
    said.append(str(aio.value))
    cli = subprocess.run(
        [sys.executable, "-m", "farm.cli", "status", "-s", addr],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, FARM_TLS_CA=str(ca)),
    )
    assert cli.returncode == 1, cli.stderr
    said.append(cli.stderr)
    return said


@pytest.mark.timeout(120)
def test_a_tls_client_on_a_plain_port_is_told_so(farm_server: Server, pki: Path) -> None:
    for said in refusals(farm_server.addr, pki / "ca.pem"):
        assert PLAIN in said and "_ssl.c" not in said, said


@pytest.mark.timeout(120)
def test_a_certificate_the_ca_did_not_sign_is_told_so(tls_server: Server, other_ca: Path) -> None:
    for said in refusals(tls_server.addr, other_ca):
        assert UNTRUSTED in said and "$FARM_TLS_CA" in said and "_ssl.c" not in said, said


@pytest.mark.timeout(120)
def test_a_plain_call_to_a_tls_port_is_told_it_may_be_tls(tls_server: Server) -> None:
    # `farm submit` said "job server ... went away while holding job up (not confirmed: it
    # may have been created)", with no word of TLS, as did both clients.
    with pytest.raises(farm.ServerUnavailable) as blocking:
        farm.Client(tls_server.addr, timeout=10).call("up", b"x")

    async def call() -> None:
        async with farm.AsyncClient(tls_server.addr) as client:
            await client.call("up", b"x")

    with pytest.raises(farm.ServerUnavailable) as aio:
        asyncio.run(call())
    for said in (str(blocking.value), str(aio.value)):
        assert "closed the connection before answering (a TLS server?" in said, said


@pytest.mark.timeout(120)
def test_a_missing_client_certificate_is_suspected_by_both_clients(
    mutual_tls_server: Server, pki: Path
) -> None:
    # farm.Client said so; farm.AsyncClient said "went away".
    addr = mutual_tls_server.addr
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))  # no certificate of ours
    with pytest.raises(farm.ServerUnavailable) as blocking:
        farm.Client(addr, tls=ctx, timeout=10).call("up", b"x")

    async def call() -> None:
        async with farm.AsyncClient(addr, tls=ctx) as client:
            await client.call("up", b"x")

    with pytest.raises(farm.ServerUnavailable) as aio:
        asyncio.run(call())
    for said in (str(blocking.value), str(aio.value)):
        assert "requires client certificates" in said and "$FARM_TLS_CERT" in said, said


@pytest.mark.timeout(120)
def test_the_log_says_tls_of_the_ipv6_twin_too(pki: Path, tmp_path: Path) -> None:
    # "listening on 127.0.0.1:P (TLS)", then "listening on [::1]:P (localhost's IPv6
    # address)", which served TLS as well and did not say so.
    if (problem := ipv6_loopback_problem()) is not None:
        pytest.skip(f"no [::1] twin here: {problem}")
    log = tmp_path / "server.log"
    srv = start_farm_server(
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "-L", "127.0.0.1", "-l", str(log), "-v",
    )  # fmt: skip
    srv.stop()
    lines = [line for line in log.read_text().splitlines() if "listening on" in line]
    assert len(lines) == 2 and all(line.endswith("(TLS)") for line in lines), lines


@pytest.mark.timeout(120)
def test_a_worker_without_its_certificate_is_told_what_to_suspect(
    mutual_tls_server: Server, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `farm worker` logged "closed the connection; reconnecting" each few seconds, for
    # ever, with no word of the certificate a --tls-ca server requires.
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    worker = farm.Worker(mutual_tls_server.addr, tls=ctx)
    worker.register("up", lambda j: j.data.upper())

    def refusal_said() -> bool:
        return any("requires client certificates" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="farm.worker"), working(worker):
        wait_for("the worker's word of its refused certificate", refusal_said, timeout=30)
