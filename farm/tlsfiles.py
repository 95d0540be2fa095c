"""TLS for farm's clients: a context from CA and certificate files, with errors that name
the file (OpenSSL's do not), and the CLI's from $FARM_TLS_CA, $FARM_TLS_CERT, $FARM_TLS_KEY.
The server's own context is made in farm.server.app with ``load_tls_file``."""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Callable
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
    ctx = load_tls_file(names[0], ca, lambda: ssl.create_default_context(cafile=ca))
    if cert:
        load_tls_file(names[1], cert, lambda: ctx.load_cert_chain(cert, key), key=key)
    return ctx


def load_tls_file(
    what: str, path: str | None, load: Callable[[], T], *, key: str | None = None
) -> T:
    """Run ``load`` of ``path`` (and of ``key``, a certificate's key file where it is apart);
    a file it cannot use becomes TLSFileError naming the file (OpenSSL's own errors do not,
    and ``[Errno 2] No such file or directory`` alone helps nobody)."""
    for name in (path, key):
        if name:
            _check_regular(what, name)
    try:
        return load()
    except ssl.SSLError as exc:  # "[SSL] PEM lib (_ssl.c:3905)": OpenSSL's words for not PEM
        reason = re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc.args[-1]))
        if "PEM lib" in reason:
            reason = "not a PEM certificate, or its key is not PEM; check both files"
        raise TLSFileError(f"TLS {what} {path}: {reason}") from None
    except OSError as exc:
        raise TLSFileError(f"TLS {what} {path}: {exc.strerror or exc}") from None


def _check_regular(what: str, path: str) -> None:
    """TLSFileError where ``path`` is there and no regular file: OpenSSL's open of a FIFO
    waits for a writer, and the server's start or the CLI's call with it, for ever."""
    try:
        info = os.stat(path)  # a stat, not an open: it never waits (links followed, as ssl's)
    except OSError:
        return  # missing, or not ours to read: ``load`` says so, naming the file
    if not stat.S_ISREG(info.st_mode):
        raise TLSFileError(f"TLS {what} {path}: not a regular file; name a PEM file")


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
