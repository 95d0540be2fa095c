"""A store left open to others is made 600 (storefile.close_to_others) on the file itself:
a link swapped in at its path between the look and the change is never followed (found in a
review: the look was an lstat and the change a chmod by path, so a directory others may
rename in could have any file of the farm's user made 600, a directory made unenterable)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farm.server.storefile import close_to_others


def _swapping(real: Callable[..., Any], swap: Callable[[], None]) -> Callable[..., Any]:
    done = []

    def look(*args: Any, **kwargs: Any) -> Any:
        info = real(*args, **kwargs)
        if not done:  # once: right after the look, before the change
            done.append(True)
            swap()
        return info

    return look


def test_a_link_swapped_in_after_the_look_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "queue.db"
    store.write_bytes(b"farm's store")
    store.chmod(0o644)
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    aside = tmp_path / "aside.db"

    def swap() -> None:
        os.rename(store, aside)
        os.symlink(victim, store)

    # Whichever look the code takes (by path, or of a descriptor), the swap follows it.
    monkeypatch.setattr(os, "lstat", _swapping(os.lstat, swap))
    monkeypatch.setattr(os, "fstat", _swapping(os.fstat, swap))
    close_to_others(str(store))
    monkeypatch.undo()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600  # the file it looked at


def test_a_store_open_to_others_is_closed_and_one_closed_is_left_alone(tmp_path: Path) -> None:
    store = tmp_path / "queue.db"
    store.write_bytes(b"farm's store")
    store.chmod(0o664)
    close_to_others(str(store))
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    store.chmod(0o400)
    close_to_others(str(store))
    assert stat.S_IMODE(store.stat().st_mode) == 0o400


def test_a_hard_link_renamed_in_is_left_as_it_is(tmp_path: Path) -> None:
    # A security review: someone who may rename in the store's directory put a hard link to
    # another file of the farm's user at the store's path after the server opened it; that
    # file was made 600 (any file, where fs.protected_hardlinks is 0), the store left open.
    shared = tmp_path / "shared.txt"
    shared.write_bytes(b"not the store")
    shared.chmod(0o664)
    os.link(shared, tmp_path / "queue.db")
    close_to_others(str(tmp_path / "queue.db"))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664
