"""The supervisor's admin lines that name functions (``poolfunctions``, ``claim``) are cut
to the server's line limit in bytes, not characters (farm.protocol.admin.named_lines),
against a real server: pool names may be any UTF-8 since 6 December 2026, and a line of
``€`` names measured in characters came to 10,273 bytes, which the server closed
unanswered. The supervisor logged it at debug and asked again every 5 s for ever."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from farm.client.admin import admin_query
from farm.config import ServerConfig
from farm.pools.localserver import NAMING_RETRY, NAMING_WARN_AFTER, LocalServer
from farm.protocol import MAX_ADMIN_LINE
from farm.protocol.admin import named_lines
from tests.helpers.servers import start_farm_server

pytestmark = pytest.mark.timeout(60)

#: 80 names of 303 bytes but 103 characters: counted in characters, 78 of them went on
#: one line of 23,725 bytes, nearly three times the server's 8,192.
EUROS = [f"{'€' * 100}{i:03d}" for i in range(80)]


def local_server(sock: str) -> LocalServer:
    """The supervisor's view of a server at ``sock``, which answered: ready."""
    local = LocalServer(ServerConfig(listen=(f"unix:{sock}",), store="none", job_retries=0), {})
    local.ready = True
    return local


def test_a_reloads_functions_with_multibyte_names_are_all_named_to_the_server(
    unix_sock: str,
) -> None:
    srv = start_farm_server(unix=unix_sock)
    try:
        local = local_server(unix_sock)
        local.pool_functions = lambda: EUROS
        local.name_new_functions(0.0)
        assert local.named == frozenset(EUROS), "a line was not answered: asked again later"
        assert local.name_after == 0.0 and local.naming_failures == 0
    finally:
        srv.stop()


@pytest.mark.parametrize("command", ["poolfunctions", f"claim 1.000 {os.geteuid()}"])
def test_each_line_naming_multibyte_names_is_answered(unix_sock: str, command: str) -> None:
    lines = named_lines(command, EUROS)
    assert [n for line in lines for n in line.split()[len(command.split()) :]] == EUROS
    srv = start_farm_server(unix=unix_sock)
    try:
        for line in lines:  # a line past the limit: ConnectionError, closed unanswered
            assert admin_query(f"unix:{unix_sock}", line, timeout=10).startswith("OK")
    finally:
        srv.stop()
    assert all(len(line.encode()) <= MAX_ADMIN_LINE - 2 for line in lines)


def test_poolfunctions_never_answered_is_said_once_above_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No server at the socket's path: each ask fails. It was logged at debug, every 5 s.
    local = local_server(f"{tmp_path}/none.sock")
    local.pool_functions = lambda: ["resize"]
    caplog.set_level(logging.DEBUG, logger="farm.supervisor")
    for turn in range(NAMING_WARN_AFTER * 3):
        local.name_new_functions(turn * NAMING_RETRY)
    asks = [r for r in caplog.records if "admin poolfunctions" in r.getMessage()]
    assert len(asks) == NAMING_WARN_AFTER * 3, "asked each time the retry came"
    warned = [r for r in asks if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0] is asks[NAMING_WARN_AFTER - 1], asks
    assert f"({NAMING_WARN_AFTER} in a row: " in warned[0].getMessage()
    assert local.named == frozenset()
