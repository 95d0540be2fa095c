"""The built-in farm.toml: what ``farm up`` runs with no file, and the defaults a file's
tables are laid over. It never needs root: runtime files go to ``$XDG_RUNTIME_DIR/farm``
(else ``/tmp/farm-$UID``) and durable jobs to ``$XDG_STATE_HOME/farm`` (else
``~/.local/state/farm``), or stay in memory when that is not writable.
"""

from __future__ import annotations

import os
from typing import Any

from farm.config.model import TCP_ADMIN
from farm.discovery import default_control, default_listen
from farm.executor.call import DEFAULT_FUNCTION as EXECUTOR_FUNCTION
from farm.executor.call import TARGET as EXECUTOR_TARGET
from farm.net import Address
from farm.paths import NoStateDirectory, default_store

__all__ = ["DEFAULTS_SOURCE", "PLAIN_WORKERS", "builtin", "server_store"]

DEFAULTS_SOURCE = "<built-in defaults>"
#: The modules of the plain workers farm ships in workers/ (the built-in pools' among
#: them): each function takes a Job and returns its own bytes, signed by nothing.
PLAIN_WORKERS = ("workers.text", "workers.image", "workers.hashing")


def builtin() -> dict[str, Any]:
    """The built-in document as a TOML reader gives it; a fresh copy each call."""
    return {
        "server": {
            "listen": default_listen(),
            "store": None,  # the server's own file in the state directory: server_store
            "job_retries": 3,
            "tcp_admin": TCP_ADMIN,
        },
        "supervisor": {
            "control": default_control(),
            "cpus": "all",
            "servers": [],
            "local_server": None,  # default: when servers is empty
            "memory_budget_mb": "auto",
            "metrics": "127.0.0.1:9730",
            "log_format": "text",
        },
        "functions": {
            "reverse": {"target": "workers.text:reverse", "workers": 1},
            "resize": {"target": "workers.image:resize", "workers": "auto", "timeout": 60},
            "thumbnail": {"target": "workers.image:thumbnail", "workers": 1, "timeout": 60},
            "pbkdf2": {"target": "workers.hashing:pbkdf2", "workers": 1, "timeout": 60},
            # farm.Executor's pool.
            EXECUTOR_FUNCTION: {"target": EXECUTOR_TARGET, "workers": "auto"},
        },
    }


def server_store(addresses: tuple[Address, ...]) -> str:
    """The server's own file (keyed by its TCP port, else its Unix path), or "none" when
    farm's state directory cannot be made."""
    tcp = next((a.port for a in addresses if a.kind == "tcp"), None)
    unix = next((a.path for a in addresses if a.kind == "unix"), None)
    try:
        path = default_store(tcp, unix)
    except NoStateDirectory:  # no home to keep it in: said at start (say_where_jobs_are_kept)
        return "none"
    existing = path.parent
    try:
        while not existing.exists():  # the nearest ancestor decides whether we may create it
            existing = existing.parent
    except PermissionError:  # under a directory this user may not enter (a HOME of root's)
        return "none"
    return str(path) if os.access(existing, os.W_OK) else "none"
