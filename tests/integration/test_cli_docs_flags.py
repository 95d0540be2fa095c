"""The docs' `farm COMMAND ...` lines (code blocks, synopses, prose spans) use only flags that
each command's --help lists, so a renamed or removed flag cannot linger in the docs."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from farm.cli import app
from tests.helpers import ROOT

runner = CliRunner()


COMMAND_LINE = re.compile(r"(?:^|[|;&(]|sudo -u \w+)\s*farm (\w+)(.*?)(?= [|&] |; |\)|$)")


def documented_command_lines() -> list[tuple[str, str, str]]:
    """(where, command, its line) for each `farm COMMAND ...` line of the docs' code blocks,
    run or not (a synopsis, a systemd step), continuation lines joined, comments cut, and
    of their prose's `farm COMMAND ...` spans."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        fences = re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
        blocks = [m[2] for m in fences if m[1] in ("", "sh")]
        blocks += re.findall(r"^    (farm .*)$", text, re.M)  # indented: server.md's synopsis
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        blocks += re.findall(r"`(farm [a-z][^`]*)`", prose)  # `farm reload --restart`
        for block in blocks:
            joined = re.sub(r"\n {4,}(?=\[)", " ", block)  # a synopsis wrapped in [...]
            for line in joined.splitlines():
                line = line.split(" #", 1)[0]
                for m in COMMAND_LINE.finditer(line):
                    found.append((doc.name, m[1], m[2]))
    return found


def test_the_docs_command_lines_use_flags_the_commands_have() -> None:
    # test_docs runs the examples against `make run`, not the synopses (`farm top [--sort
    # ...]`, docs/client.md's `farm worker ... [--client-id ID]`) nor the systemd steps.
    lines = documented_command_lines()
    assert len(lines) >= 100
    helps: dict[str, str] = {}
    unknown = []
    for where, command, rest in lines:
        if command not in helps:
            out = runner.invoke(app, [command, "--help"], prog_name="farm")
            assert out.exit_code == 0, f"{where}: farm {command}: {out.output}"
            helps[command] = out.stdout
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])\b", rest):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}\b", helps[command]):
                unknown.append(f"{where}: farm {command} {flag}")
    assert not unknown
