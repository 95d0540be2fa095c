"""What `farm up` says of where background jobs are kept when that is memory only
(farm.pools.localserver.LocalServer.say_where_jobs_are_kept): why, in the words that fit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from farm.config import ServerConfig, load
from farm.pools.localserver import LocalServer


def said(caplog: pytest.LogCaptureFixture, *, given: bool) -> str:
    server = ServerConfig(
        listen=("unix:/nowhere.sock",), store="none", job_retries=0, store_given=given
    )
    with caplog.at_level(logging.INFO, logger="farm.supervisor"):
        LocalServer(server, {}).say_where_jobs_are_kept()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    return record.getMessage()


def test_the_defaults_fallback_to_memory_says_why_the_default_could_not_be_kept(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    message = said(caplog, given=False)
    assert message.endswith(
        f'([server] store = "none"; the default, a file in {tmp_path}/farm, needs that'
        " directory writable)"
    ), message


def test_memory_chosen_in_the_config_is_not_told_as_a_default_that_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = said(caplog, given=True)
    assert message.endswith('([server] store = "none" in the config)'), message
    assert "default" not in message


def test_a_store_written_out_as_the_default_chose_it_is_no_change_of_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reload compares the [server] tables (farm.pools.steering): a config that names the
    # store the default chose ("none" included) asked for a restart that changed nothing.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = tmp_path / "farm.toml"
    config.write_text(f'[server]\nlisten = ["unix:{tmp_path}/g.sock"]\n')
    default = load(str(config)).server
    assert not default.store_given
    config.write_text(config.read_text() + f"store = {json.dumps(default.store)}\n")
    written = load(str(config)).server
    assert written.store_given and written.store == default.store
    assert written == default
