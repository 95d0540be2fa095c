"""A store file of 0 bytes (a `cp` of a backup cut short by a full disk) is opened by SQLite
as a new, empty store: the server says so, once, rather than start without a word."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from farm.server.store import SQLiteStore

BLANK = "was an empty file (0 bytes): it is a new store now"


def opened(path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings of opening (and closing) the store at ``path``."""
    caplog.clear()
    caplog.set_level(logging.WARNING, "farm.server")
    SQLiteStore(str(path)).close()
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_empty_file_opened_as_a_store_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"")
    path.chmod(0o600)  # as the server makes it: no warning of its mode besides
    said = opened(path, caplog)
    assert len(said) == 1 and BLANK in said[0] and str(path) in said[0], said
    assert path.stat().st_size > 0  # a store now: said at this start alone
    assert not any(BLANK in line for line in opened(path, caplog))


def test_a_new_store_is_not_said_to_be_blank(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not any(BLANK in line for line in opened(tmp_path / "new.db", caplog))
