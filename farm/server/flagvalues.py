"""What the job server's flag values become (farm.server.options): a file mode, the -L
addresses and --metrics in normal form, and the store a server keeps by default. Each
refusal goes through the parser's ``error``: a usage line, or farm.config's one line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from farm.net import AddressError, parse_address
from farm.paths import NoStateDirectory
from farm.server.settings import default_store_path


def octal_mode(text: str) -> int:
    """A file mode in octal, as chmod takes it (660, 0660)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mode from 000 to 777")
    if not mode & 0o200:  # else the farm's own workers, of the socket's user, never connect
        raise argparse.ArgumentTypeError(
            f"{text!r} gives its owner no write, which a connect needs; e.g. 600 or 660"
        )
    return mode


def default_store(ap: argparse.ArgumentParser, listen: list[str], unix: list[str]) -> str:
    try:
        return default_store_path(listen, unix, make=True)  # the server's own store
    except NoStateDirectory as exc:
        ap.error(f"{exc}, or give --store PATH (--store none: memory only)")


def metrics_address(ap: argparse.ArgumentParser, text: str | None) -> str | None:
    """--metrics HOST:PORT in normal form (a port is required: there is no default)."""
    if text is None:
        return None
    try:
        addr = parse_address(text, default_port=0)
    except AddressError as exc:
        ap.error(f"--metrics {text}: {exc.reason}")
    if addr.kind == "unix" or not addr.port:
        ap.error(f"--metrics {text}: give HOST:PORT, for example 127.0.0.1:9731")
    return str(addr)


def listen_addresses(
    ap: argparse.ArgumentParser, texts: Sequence[str], port: int
) -> tuple[list[str], list[str]]:
    """The -L values as (TCP addresses in normal form, Unix socket paths).

    As in gearmand, ``-L HOST`` without a port listens on the ``-p`` port.
    """
    tcp: list[str] = []
    unix: list[str] = []
    for text in texts:
        try:
            addr = parse_address(text, default_port=port)
        except AddressError as exc:
            ap.error(f"-L {text}: {exc.reason}")
        if addr.kind == "unix":
            unix.append(addr.path)
        elif str(addr) not in tcp:
            tcp.append(str(addr))
    return tcp, unix
