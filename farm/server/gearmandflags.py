"""gearmand's flags that farm's server has no use for, and the few it reads its own way.

An init script or unit written for gearmand -- Debian's
``/etc/default/gearman-job-server`` passes ``--listen=localhost --daemon
--log-file=...`` -- must start farm's server unchanged. So each flag of gearmand
1.1 is either farm's own (``-p``, ``-L``, ``-j``, ``-b``, ``-l``, ``-P``,
``--exceptions``, ``--keepalive-idle``/``-interval``/``-count``), read here
(``-v``/``--verbose LEVEL``, ``-V``, ``-d``, ``--libsqlite3-db``), or accepted and ignored,
which the server logs once at start-up.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from farm.version import __version__

__all__ = ["add_gearmand_flags", "IGNORED"]

#: Flags accepted and ignored: (their spellings, whether they take a value, why).
IGNORED: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (("-t", "--threads"), True, "one event loop"),
    (("-q", "--queue-type"), True, "the store is SQLite (--store)"),
    (("-f", "--file-descriptors"), True, "the limit follows --max-connections"),
    (("-u", "--user"), True, "run the server as that user instead"),
    (("-R", "--round-robin"), False, "jobs go oldest first across a worker's functions"),
    (("-w", "--worker-wakeup"), True, "one sleeping worker is woken per job"),
    (("-r", "--protocol"), True, "farm speaks the Gearman protocol only"),
    (("--keepalive",), False, "TCP keepalive is always on (--keepalive-idle and the others)"),
    (("--syslog",), False, "logs go to --log-file (or the journal)"),
    (("--coredump",), False, "not supported"),
    (("--hashtable-buckets",), True, "not needed"),
    (("--job-handle-prefix",), True, "handles are H:host:N"),
    (("--libsqlite3-table",), True, "farm takes over any table of gearmand's queue"),
    (("--store-queue-on-shutdown",), False, "background jobs are stored as they come"),
    (("--config-file",), True, "give the flags on the command line"),
)

#: gearmand's --verbose levels, as farm's -v count (0: warnings and worse).
_LEVELS = {
    "FATAL": 0,
    "ALERT": 0,
    "CRITICAL": 0,
    "ERROR": 0,
    "WARNING": 0,
    "NOTICE": 1,
    "INFO": 1,
    "DEBUG": 2,
}


class _Ignored(argparse.Action):
    """Records that a flag was given, with its reason, and nothing else."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        namespace.ignored = [*namespace.ignored, (option_string, self.const)]


class _Verbose(argparse.Action):
    """``--verbose`` alone is ``-v``; ``--verbose LEVEL`` (gearmand's) sets the level."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            namespace.verbose += 1
            return
        level = _LEVELS.get(str(values).upper())
        if level is None:
            parser.error(f"--verbose {values}: give one of {', '.join(_LEVELS)}")
        namespace.verbose = level


def add_gearmand_flags(ap: argparse.ArgumentParser) -> None:
    """Give ``ap`` gearmand's flags that are not farm's own (those it ignores, and
    ``--libsqlite3-db``, hidden from --help)."""
    ap.add_argument(
        "-v", action="count", dest="verbose", default=0, help="more logging, repeatable"
    )
    ap.add_argument(
        "--verbose",
        nargs="?",
        action=_Verbose,
        dest="verbose",
        metavar="LEVEL",
        help="-v, or gearmand's level: ERROR (the default), INFO or DEBUG",
    )
    ap.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"farm server {__version__} (gearmand 1.1's protocol)",
    )
    ap.add_argument(
        "-d", "--daemon", action="store_true", help="detach once listening (as gearmand's -d)"
    )
    ap.add_argument("--libsqlite3-db", metavar="FILE", help=argparse.SUPPRESS)  # = --store
    ap.set_defaults(ignored=[])
    for flags, takes_value, why in IGNORED:
        ap.add_argument(
            *flags,
            nargs=1 if takes_value else 0,
            action=_Ignored,
            const=why,
            help=argparse.SUPPRESS,
        )
