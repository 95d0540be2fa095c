"""Where farm keeps state when nothing else is said: one rule for the store, the key, …"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["state_dir", "default_store"]


def state_dir() -> Path:
    """systemd's ``$STATE_DIRECTORY`` (StateDirectory=farm), else ``$XDG_STATE_HOME/farm``,
    else ``~/.local/state/farm``."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "farm"


def default_store() -> Path:
    """The durable job store when nothing else is said (``farm server`` and ``farm up``)."""
    return state_dir() / "queue.db"
