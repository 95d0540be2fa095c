"""The CLI's look at a ``unix:`` server or ``--control`` path before it connects there."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farm.cli.app import control_socket, refuse_non_sockets


@pytest.mark.parametrize(
    "look",
    [
        lambda path: refuse_non_sockets([f"unix:{path}"], "--server"),
        lambda path: control_socket(None, str(path)),
    ],
    ids=["--server", "--control"],
)
def test_a_socket_removed_while_it_is_looked_at_is_left_to_the_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, look: Callable[[Path], object]
) -> None:
    # A server restarting unlinks its socket: between the CLI's exists() and its stat() that
    # was a FileNotFoundError traceback. Here the socket goes right after the first look.
    path = tmp_path / "gearman.sock"
    gone: list[str] = []

    def then_gone(real: Callable[..., Any]) -> Callable[..., Any]:
        def first_look(where: Any, *args: Any, **kwargs: Any) -> Any:
            seen = real(where, *args, **kwargs)
            if os.fspath(where) == str(path) and not gone:
                gone.append(str(path))
                path.unlink()
            return seen

        return first_look

    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        monkeypatch.setattr(os.path, "exists", then_gone(os.path.exists))
        monkeypatch.setattr(os, "stat", then_gone(os.stat))
        look(path)  # no SystemExit: a socket when looked at, and the connect says the rest
        monkeypatch.undo()
    assert gone and not path.exists()
