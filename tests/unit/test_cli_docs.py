"""README.md and docs/*.md name every `farm` command and each of its flags, and only flags
the commands take; README.md says what each benchmark `make bench` runs measures.

The commands and their flags are asked of the CLI itself (the click command typer builds;
`farm server`'s flags of its argparse parser), so a flag added, renamed or dropped in the
code shows here. A flag counts as documented where a paragraph names it beside
``farm COMMAND`` (a command line in a code block, or prose that says what it does).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

from farm.cli import app
from farm.cli.app import SERVER_DEFAULT_HELP
from farm.discovery import client_servers
from farm.server.options import build_parser
from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands() -> dict[str, set[str]]:
    """Each command of `farm --help` with its flags (long and short; --help left out)."""
    group = typer.main.get_command(app)
    found: dict[str, set[str]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        flags = {flag for p in command.params for flag in (*p.opts, *p.secondary_opts)}
        found[name] = {flag for flag in flags if flag.startswith("-")}
    # `farm server` hands its arguments to the server's own (gearmand-compatible) parser,
    # whose flags docs/server.md's table documents (tests/unit/test_server_docs.py).
    found["server"] = {flag for a in build_parser()._actions for flag in a.option_strings}
    return found


def paragraphs() -> list[str]:
    return [p for doc in DOCS for p in re.split(r"\n[ \t]*\n", doc.read_text())]


def test_every_command_is_in_the_docs() -> None:
    text = "\n".join(paragraphs())
    missing = [name for name in commands() if not re.search(rf"`farm {name}\b", text)]
    assert not missing, f"commands the docs never name: {missing}"


def test_every_flag_is_documented_beside_its_command() -> None:
    # `farm status --json` and `farm jobs --function` were shown by --help alone.
    paras = paragraphs()
    missing = []
    for name, flags in commands().items():
        if name == "server":
            continue  # its table: test_server_docs
        beside = [p for p in paras if re.search(rf"\bfarm {name}\b", p)]
        for flag in sorted(f for f in flags if f.startswith("--") and f != "--help"):
            if not any(re.search(rf"{re.escape(flag)}(?![\w-])", p) for p in beside):
                missing.append(f"farm {name} {flag}")
    assert not missing, "flags no paragraph naming their command mentions:\n" + "\n".join(missing)


def written_command_lines() -> Iterator[tuple[str, str, str]]:
    """(doc, command, what follows it) for each ``farm COMMAND ...`` the docs write as code:
    a `code` span or a line of a fenced block, up to a comment or a shell separator."""
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"^```\w*\n(.*?)^```", text, re.M | re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
        for code in [line for b in blocks for line in b.splitlines()] + spans:
            code = code.split(" #", 1)[0]
            for m in re.finditer(r"(?<![\w/-])farm (\w+)([^;|&]*)", code):
                yield doc.name, m[1], m[2]


def test_the_docs_write_only_flags_the_commands_take() -> None:
    known = commands()
    wrong = []
    seen = 0
    for doc, name, rest in written_command_lines():
        if name not in known:
            continue  # "farm stops", a path: prose, not a command
        seen += 1
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
            if flag not in known[name] | {"-h", "--help"}:
                wrong.append(f"{doc}: farm {name} {flag}")
    assert seen >= 50
    assert not wrong, "flags the commands do not take:\n" + "\n".join(wrong)


def test_the_readme_says_what_each_benchmark_of_make_bench_measures() -> None:
    # "each measures farm beside its peer" was false of server_cost, hop_floor and
    # bench_supervisor, which measure farm (or bare Python) alone.
    makefile = (ROOT / "Makefile").read_text()
    benches = re.search(r"^BENCHES := (.*)$", makefile, re.M)
    assert benches
    readme = (ROOT / "README.md").read_text()
    missing = [b for b in benches[1].split() if f"`bench.{b}`" not in readme]
    assert not missing, f"make bench runs these, which README.md does not name: {missing}"


def test_the_server_default_the_help_gives_is_the_order_the_code_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `farm status --help` said "Default: $FARM_SERVERS, else ..., else the farm the config
    # describes", but a config named with --config outranks the variables.
    config = tmp_path / "farm.toml"
    config.write_text('[server]\nlisten = ["127.0.0.1:4999"]\n[functions.a]\ntarget = "x:f"\n')
    monkeypatch.setenv("FARM_SERVERS", "10.0.0.9:4730")
    assert client_servers(config) == ["127.0.0.1:4999"]
    assert client_servers() == "10.0.0.9:4730"
    assert SERVER_DEFAULT_HELP.index("--config") < SERVER_DEFAULT_HELP.index("$FARM_SERVERS")
