"""docs/server.md's table of flags names every flag `farm server --help` shows, and the help says
each flag's default."""

from __future__ import annotations

import argparse
import re

from farm.server.options import build_parser
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
