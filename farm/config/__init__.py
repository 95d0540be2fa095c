"""farm.toml -> validated, frozen dataclasses.

Every mistake becomes one :class:`~farm.errors.ConfigError` whose message names
the file, the key and the fix, so ``farm up`` can print one line and exit 2
before any process starts.

Search order (:func:`find_config`): ``--config``, ``$FARM_CONFIG``,
``./farm.toml``, ``/etc/farm/farm.toml``, then built-in defaults that serve the
functions in ``workers/``.

The package, top down: ``parse`` reads a document's tables (``pooltables`` its
``[functions.NAME]`` tables; both on ``reader``'s checks of single values) into
``model``'s dataclasses, then checks the rules across tables (``rules``);
``servertune`` turns the ``[server]`` keys that tune the local server into its flags;
``defaults`` is the built-in document; ``capacity`` holds the host's cores and memory
and the rule on pool sizes that ``farm scale`` applies too.
"""

from __future__ import annotations

import os
from pathlib import Path

from farm.config.capacity import capacity_problem
from farm.config.defaults import DEFAULTS_SOURCE, builtin
from farm.config.model import (
    RESTART_TABLES,
    RESTART_TABLES_SAID,
    Config,
    ExecutorConfig,
    FunctionConfig,
    ServerConfig,
    SupervisorConfig,
)
from farm.config.parse import Validator
from farm.discovery import config_folder, control_path, find_config, read_config_file
from farm.errors import ConfigError

__all__ = [
    "Config",
    "ServerConfig",
    "ExecutorConfig",
    "SupervisorConfig",
    "FunctionConfig",
    "find_config",
    "load",
    "load_config",
    "control_path",
    "capacity_problem",
    "DEFAULTS_SOURCE",
    "RESTART_TABLES",
    "RESTART_TABLES_SAID",
]


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find and load the config by the search order."""
    return load(find_config(explicit))


def load(
    path: str | os.PathLike[str] | None,
    pool_errors: list[ConfigError] | None = None,
    *,
    locate_targets: bool = True,
) -> Config:
    """Read and validate one file (None: the built-in defaults). With ``pool_errors``, a
    ``[functions.NAME]`` table that does not read is added to it and left out of the config
    returned, so that every bad pool is said at once (`farm check`); without, it raises.
    ``locate_targets=False``: the pools' modules are not looked for (this process's path
    is not the farm's)."""
    if path is None:
        # The defaults hold no relative path (their sockets and store are absolute), so no
        # folder is read against: not the working directory, which a running farm's reload
        # must not need (it may have been removed). Their targets are found through
        # farm.targets.workers_path, as any file's are.
        validator = Validator(DEFAULTS_SOURCE, Path("/"))
        validator.pool_errors = pool_errors
        validator.locate_targets = locate_targets
        return validator.config(builtin())
    path = Path(path)
    validator = Validator(str(path), config_folder(path))
    validator.pool_errors = pool_errors
    validator.locate_targets = locate_targets
    return validator.config(read_config_file(path))
