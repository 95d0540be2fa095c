"""A test PKI (a CA, a server certificate for 127.0.0.1, a client certificate) and a farm
server on TLS, for the TLS tests (tests/integration/test_tls*.py) to share: fixtures, which
a test module imports for pytest to find them."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from tests.helpers.servers import Server, start_farm_server

__all__ = [
    "dated_certificate",
    "mutual_tls_server",
    "openssl",
    "pki",
    "serve_reverse",
    "tls_server",
]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    # A CA as RFC 5280 has one: Python 3.13's default contexts verify strictly
    # (VERIFY_X509_STRICT), and refused the bare `req -x509` CA ("CA cert does not include
    # key usage extension") that 3.11 and 3.12 took.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            "-subj", "/CN=farm-test-ca", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "subjectAltName=DNS:client"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
                cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_server(pki: Path) -> Iterator[Server]:
    srv = start_farm_server(
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")
    )
    yield srv
    srv.stop()


@pytest.fixture
def mutual_tls_server(pki: Path) -> Iterator[Server]:
    """A TLS server that requires client certificates signed by the test CA (``--tls-ca``)."""
    srv = start_farm_server(
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--tls-ca", str(pki / "ca.pem"),
    )  # fmt: skip
    yield srv
    srv.stop()


def serve_reverse(addr: str, ctx: ssl.SSLContext) -> tuple[farm.Worker, threading.Thread]:
    worker = farm.Worker(addr, tls=ctx)
    worker.register("reverse", lambda job: job.data[::-1])
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    return worker, thread


def dated_certificate(pki: Path, d: Path, begins: str, ends: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by ``pki``'s CA, valid from ``begins`` to ``ends``
    (``YYYYMMDDHHMMSSZ``, past dates too, which `openssl x509 -days` cannot make), and its key
    (mode 600), in ``d``."""
    (d / "index.txt").touch()
    (d / "serial").write_text("01\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nserial = serial\n"
        "new_certs_dir = .\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
        "[p]\ncommonName = supplied\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=dated",
            "-keyout", "dated.key", "-out", "dated.csr", cwd=d)  # fmt: skip
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", str(pki / "ca.pem"),
            "-keyfile", str(pki / "ca.key"), "-in", "dated.csr", "-out", "dated.pem",
            "-startdate", begins, "-enddate", ends, cwd=d)  # fmt: skip
    (d / "dated.key").chmod(0o600)
    return d / "dated.pem", d / "dated.key"
