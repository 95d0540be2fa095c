"""TLS for farm's clients: a context from CA and certificate files, with errors that name
the file (OpenSSL's do not), and the CLI's from $FARM_TLS_CA, $FARM_TLS_CERT, $FARM_TLS_KEY.
The server's own context is made in farm.server.app with ``load_tls_file``."""

from __future__ import annotations

import os
import re
import select
import ssl
import stat
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

from farm.errors import ConfigError, TLSFileError

__all__ = ["load_tls_file", "tls_context", "tls_from_env"]

T = TypeVar("T")


def tls_context(
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    *,
    names: tuple[str, str] = ("CA file", "certificate"),
) -> ssl.SSLContext:
    """A client-side TLS context: verify the server against ``ca`` (or the system's CAs),
    and present ``cert``/``key`` when the server requires client certificates; ``names``
    are the CA's and the certificate's in an error."""
    ctx = load_tls_file(names[0], ca, lambda p, _: ssl.create_default_context(cafile=p))
    if cert:
        load_tls_file(names[1], cert, lambda p, k: ctx.load_cert_chain(str(p), k), key=key)
    return ctx


#: Seconds a pipe given as a TLS file (``<(sops -d key.pem)``) may take to give it whole,
#: and the bytes it may give (a certificate chain is a few kB).
PIPE_WAIT = 5.0
PIPE_MAX = 1 << 20


def load_tls_file(
    what: str,
    path: str | None,
    load: Callable[[str | None, str | None], T],
    *,
    key: str | None = None,
) -> T:
    """Run ``load(path, key)`` (``key``: a certificate's key file where it is apart); a
    file it cannot use becomes TLSFileError naming the file (OpenSSL's own errors do not,
    and ``[Errno 2] No such file or directory`` alone helps nobody)."""
    with ExitStack() as opened:
        try:
            return load(*(_readable(what, name, opened) for name in (path, key)))
        except ssl.SSLError as exc:  # "[SSL] PEM lib (_ssl.c:3905)": OpenSSL's for not PEM
            reason = re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc.args[-1]))
            if "PEM lib" in reason:
                reason = "not a PEM certificate, or its key is not PEM; check both files"
            raise TLSFileError(f"TLS {what} {path}: {reason}") from None
        except OSError as exc:  # of the certificate or of its key: ssl's error names neither
            culprit = exc.filename or next(
                (name for name in (path, key) if name and not os.access(name, os.R_OK)), path
            )
            raise TLSFileError(f"TLS {what} {culprit}: {exc.strerror or exc}") from None


def _readable(what: str, path: str | None, opened: ExitStack) -> str | None:
    """``path`` as OpenSSL may open it: a regular file as it is; a pipe (process
    substitution keeping a key off the disk) read here within PIPE_WAIT and handed on as a
    file in memory, since OpenSSL's open of a pipe no one writes to waited for ever, and a
    pipe is read once; anything else a TLSFileError naming it."""
    try:
        info = os.stat(path) if path else None  # a stat never waits (links followed, as ssl's)
    except OSError:
        return path  # missing, or not ours to read: ``load`` says so, naming the file
    if info is None or stat.S_ISREG(info.st_mode):
        return path
    assert path is not None
    if not stat.S_ISFIFO(info.st_mode):
        raise TLSFileError(f"TLS {what} {path}: not a regular file; name a PEM file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO's open with no writer waits
    opened.callback(os.close, fd)
    data, deadline = bytearray(), time.monotonic() + PIPE_WAIT
    waiting = select.poll()  # not select(): a descriptor past 1024 is one it cannot take
    waiting.register(fd, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0 and len(data) <= PIPE_MAX:
        # A FIFO never written to polls as nothing at all; one whose writer left, as POLLHUP.
        if not waiting.poll(left * 1000):
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            if not data:
                raise TLSFileError(f"TLS {what} {path}: a pipe that ended empty; name a PEM file")
            memory = os.memfd_create("farm-tls")
            opened.callback(os.close, memory)
            os.write(memory, data)
            return f"/proc/self/fd/{memory}"
        data += chunk
    if len(data) > PIPE_MAX:  # /dev/zero's pipe took the process's memory in seconds
        raise TLSFileError(f"TLS {what} {path}: a pipe that gave over {PIPE_MAX >> 20} MiB")
    raise TLSFileError(
        f"TLS {what} {path}: a pipe that gave no whole file within {PIPE_WAIT:g}s; name a PEM file"
    )


def tls_from_env() -> ssl.SSLContext | None:
    """$FARM_TLS_CA, $FARM_TLS_CERT, $FARM_TLS_KEY, for the CLI's commands; one that cannot
    be used is a ConfigError (the CLI's exit 2) naming the variable."""
    ca, cert, key = (os.environ.get(f"FARM_TLS_{name}") for name in ("CA", "CERT", "KEY"))
    if key and not cert:  # alone it was ignored: no client certificate went with the calls
        raise ConfigError(
            "$FARM_TLS_KEY is set without $FARM_TLS_CERT: set that to the key's certificate,"
            " or unset $FARM_TLS_KEY"
        )
    if not (ca or cert):
        return None
    names = ("CA file ($FARM_TLS_CA)", "certificate ($FARM_TLS_CERT, $FARM_TLS_KEY)")
    try:
        return tls_context(ca, cert, key, names=names)
    except TLSFileError as exc:
        raise ConfigError(f"{exc}; fix the variable or unset it") from None
