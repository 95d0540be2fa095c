"""docs/server.md's table of flags names every flag `farm server --help` shows, with the
parser's default, and the help says each flag's default."""

from __future__ import annotations

import argparse
import logging
import re

import pytest

from farm.net import DEFAULT_PORT
from farm.server.hub import Hub
from farm.server.options import build_parser, parse_args
from farm.server.settings import log_level
from tests.helpers import ROOT


def table_flags() -> set[str]:
    text = (ROOT / "docs" / "server.md").read_text()
    start = text.index("| flag | meaning | default |")
    table = text[start : text.index("\n\n", start)]
    firsts = re.findall(r"^\| (.*?) \| ", table, flags=re.MULTILINE)
    return {flag for first in firsts for flag in re.findall(r"--[a-z0-9-]+|-[a-zA-Z]\b", first)}


def test_every_flag_of_the_help_is_in_the_table() -> None:
    # --metrics, --backlog, --log-format and --parent-pid were shown by --help alone.
    shown = {
        flag
        for action in build_parser()._actions
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
    }
    assert not shown - table_flags()
    # ... and no flag the server lacks (a renamed one).
    taken = {flag for action in build_parser()._actions for flag in action.option_strings}
    assert not table_flags() - taken


#: Flags whose default the table says in words (a path, "the server's own user", ...), or
#: that share a row whose default is another flag's (--unix's is --unix-mode's mode).
IN_WORDS = {
    *("--listen", "--store", "--worker-uid", "--daemon", "--version"),
    *("--unix", "--verbose", "--log-file", "--pid-file"),
}
UNITS = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def table_defaults() -> dict[str, str]:
    """Each flag of the table (by its long name) with the text of its default column."""
    text = (ROOT / "docs" / "server.md").read_text()
    start = text.index("| flag | meaning | default |")
    table = text[start : text.index("\n\n", start)]
    found: dict[str, str] = {}
    for first, default in re.findall(r"^\| (.*?) \| .* \| ([^|]*) \|$", table, re.M):
        for flag in re.findall(r"--[a-z0-9-]+", first):
            found[flag] = default.strip()
    return found


def documented_value(cell: str) -> object:
    """What a default cell says: "64 MiB", "0 = none", "mode `660`", "`full` (as ...)"."""
    cell = cell.replace("`", "").removeprefix("mode ")
    number = re.match(r"(\d+(?:\.\d+)?) ?(KiB|MiB|GiB)?\b", cell)
    if number:
        value = float(number[1]) * UNITS[number[2] or ""]
        return int(value) if value.is_integer() else value
    word = cell.split()[0]
    return None if word in ("off", "none") else word


def test_the_table_s_defaults_are_the_parser_s() -> None:
    # `farm server`'s defaults are written once (farm.server.settings); the table repeats them.
    cells = table_defaults()
    wrong = []
    for action in build_parser()._actions:
        long = next((f for f in action.option_strings if f.startswith("--")), None)
        hidden = action.help == argparse.SUPPRESS  # --hints, gearmand's ignored flags
        if long is None or hidden or long in IN_WORDS or long == "--help":
            continue
        default = DEFAULT_PORT if long == "--port" else action.default  # -p: None, then 4730
        said = documented_value(cells[long])
        if long == "--unix-mode":
            said = int(str(said), 8)
        if said != default and not (said is None and not default):
            wrong.append(f"{long}: the table says {cells[long]!r}, the parser {default!r}")
    assert not wrong, "\n".join(wrong)


def test_the_help_says_each_flag_s_default() -> None:
    # farm.toml's [server] keys left out keep the server's defaults, which docs/operations.md
    # sends the reader to `farm server --help` for: --store-sync, -j, --max-packet and
    # --max-queued-bytes did not say theirs.
    silent = [
        action.option_strings[-1]
        for action in build_parser()._actions
        if action.help not in (None, argparse.SUPPRESS)
        and not isinstance(action, argparse._CountAction | argparse._StoreTrueAction)
        and action.default not in (None, [], argparse.SUPPRESS)
        and "default" not in action.help
    ]
    assert not silent


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ([], "ERROR"),  # gearmand's answer at its default (docs/gearmand-probes.md)
        (["-v"], "INFO"),
        (["--verbose", "INFO"], "INFO"),
        (["--verbose", "NOTICE"], "INFO"),
        (["-vv"], "DEBUG"),
        (["--verbose", "DEBUG"], "DEBUG"),
    ],
)
def test_the_admin_verbose_names_the_level_the_server_logs_at(flags: list[str], said: str) -> None:
    # `farm server --verbose DEBUG` logged at DEBUG and answered `verbose` with NOTICE (-v,
    # which logs INFO: WARNING), counting -v along gearmand's list instead of farm's levels.
    options = parse_args(["--store", "none", *flags])
    assert Hub(options).verbose_name == said
    assert logging.getLevelName(log_level(options.verbose)) in (said, "WARNING")
