"""What `farm up` says of where background jobs are kept when that is memory only
(farm.pools.localserver.LocalServer.say_where_jobs_are_kept): why, in the words that fit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from farm.config import ServerConfig
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
