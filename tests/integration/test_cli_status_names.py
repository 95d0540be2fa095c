"""`farm status` shows what a job server lists, and gearmand lists any function name a
client sent (farm's server refuses control characters: farm.protocol.codec.name_problem):
an ESC, a carriage return or a tab in such a name must not reach the operator's terminal
raw, where it would recolour or retitle it, or overwrite the row it stands in."""

from __future__ import annotations

import json

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
