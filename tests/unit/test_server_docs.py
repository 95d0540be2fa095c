"""docs/server.md's table of flags names every flag `farm server --help` shows."""

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
