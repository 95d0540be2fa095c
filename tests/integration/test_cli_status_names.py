"""`farm status` shows what a job server lists, and gearmand lists any function name a
client sent (farm's server refuses control characters: farm.protocol.codec.name_problem):
an ESC, a carriage return or a tab in such a name must not reach the operator's terminal
raw, where it would recolour or retitle it, or overwrite the row it stands in."""

from __future__ import annotations

import json
import unicodedata

from farm.protocol import PacketType as T
from tests.helpers.clirun import cli
from tests.helpers.peers import Peer
from tests.helpers.rawjobs import submit

#: Names gearmand queues as they came: each with a control character a terminal obeys.
HOSTILE = {
    "red\x1b[31m": "red\\x1b[31m",
    "title\x1b]0;owned\x07": "title\\x1b]0;owned\\x07",
    "over\rwrite": "over\\rwrite",
    "tab\tbed": "tab\\tbed",
    "nel\u0085line": "nel\\x85line",
}


def test_status_escapes_control_characters_of_names_gearmand_lists(gearmand) -> None:
    client = Peer(gearmand.addr)
    try:
        for name in HOSTILE:
            submit(client, name, b"x", ptype=T.SUBMIT_JOB_BG)
    finally:
        client.close()
    table = cli("status", "--server", gearmand.addr, timeout=30)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    # No control character of any name reaches the terminal: each is written \xNN.
    assert all(line.isprintable() for line in lines), lines
    shown = {line.split()[0] for line in lines[1:]}
    assert shown == set(HOSTILE.values()), lines
    # The columns line up: each count sits under its header, as for any other name.
    ends = {len(line) for line in lines}
    assert len(ends) == 1, lines
    # --json keeps each name as it is, in JSON's own escapes.
    listed = json.loads(cli("status", "--server", gearmand.addr, "--json").stdout)
    assert {f["function"] for f in listed["functions"]} == set(HOSTILE), listed


def _columns(text: str) -> int:
    """Terminal columns: a wide character (CJK, emoji) two, a combining one none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


#: Names that take more, or fewer, terminal columns than code points.
WIDE = ["plain", "中文", "😀x", "cafe\u0301"]


def test_status_and_jobs_columns_line_up_under_wide_names(farm_server) -> None:
    client = Peer(farm_server.addr)
    try:
        for name in WIDE:
            submit(client, name, b"x", ptype=T.SUBMIT_JOB_BG)
    finally:
        client.close()
    for command, after in (("status", "QUEUED"), ("jobs", "HANDLE")):
        out = cli(command, "--server", farm_server.addr, timeout=30)
        assert out.returncode == 0, out.stderr
        header, *lines = out.stdout.splitlines()
        # The column after FUNCTION ends (status: right-aligned counts) or starts (jobs:
        # a handle) at one terminal column in every row, whatever the name's width.
        at = _columns(header[: header.index(after)])
        edge = _columns(header[: header.index(after) + len(after)])
        assert len(lines) == len(WIDE), out.stdout
        for line in lines:
            name = next(n for n in WIDE if line.startswith(n))
            cell = line[len(name) :].lstrip(" ")
            start = _columns(line) - _columns(cell)
            if command == "status":
                end = start + len(cell.split()[0])
                assert end == edge, (header, line)
            else:
                assert start == at, (header, line)


def test_status_reads_a_name_gearmand_lists_across_lines(gearmand) -> None:
    # gearmand writes a name with a newline as it came, over two lines: `farm status` failed
    # ("bad status line 'new'") and showed no function at all, for as long as it was queued.
    client = Peer(gearmand.addr)
    try:
        for name in ("new\nline", "two\n\nblank", "plain", ".\nafter", "\nleading"):
            submit(client, name, b"x", ptype=T.SUBMIT_JOB_BG)
    finally:
        client.close()
    table = cli("status", "--server", gearmand.addr, timeout=30)
    assert table.returncode == 0, table.stderr
    shown = [line.split() for line in table.stdout.splitlines()[1:]]
    assert shown == [
        ["\\nleading", "1", "0", "0"],
        [".\\nafter", "1", "0", "0"],
        ["new\\nline", "1", "0", "0"],
        ["plain", "1", "0", "0"],
        ["two\\n\\nblank", "1", "0", "0"],
    ], table.stdout
    listed = json.loads(cli("status", "--server", gearmand.addr, "--json").stdout)
    assert [f["function"] for f in listed["functions"]] == [
        "\nleading",
        ".\nafter",
        "new\nline",
        "plain",
        "two\n\nblank",
    ]
