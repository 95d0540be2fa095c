"""The spill's settings: where its files go, how large one may be, and where each comes from.

The directory: ``[executor] spill_dir`` (the supervisor hands it to its workers as
``$FARM_SPILL_DIR``), else ``spill`` beside the executor's key file. The limit: the
Executor's ``max_spill_mb=``, else ``$FARM_MAX_SPILL_MB``, each checked by
``mb_to_bytes`` (a whole number of MiB > 0, in a string too), else ``[executor]
max_spill_mb``, which its readers check first by a rule of their own (a TOML integer
> 0: farm.discovery's for the Executor, farm.config's parse for ``farm.toml``);
``SpillSettings`` carries which of them set it, so that ``SpillTooLarge`` names the
setting to raise. Also the defaults of the sweep's ages, which the config's
``[executor]`` table takes.

Apart from farm.executor.spill (which re-exports every name here but ``mb_to_bytes``,
which only the settings' readers use), so that what reads settings (the config, the
Executor's argument checks, the supervisor) needs none of the files' reading and
writing. ``SpillError``, the base of the spill's
errors, is here because a refused setting is the first of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from farm.errors import FarmError
from farm.executor.signing import key_path

__all__ = [
    "DEFAULT_MAX_SPILL_MB",
    "DEFAULT_MAX_AGE",
    "DEFAULT_ORPHAN_AGE",
    "SPILL_ENV",
    "MAX_SPILL_ENV",
    "CONFIG_LIMIT",
    "SpillError",
    "SpillSettings",
    "default_spill_dir",
    "mb_to_bytes",
    "worker_settings",
]

#: ``[executor] max_spill_mb`` when not set: the largest argument or result, in MiB.
DEFAULT_MAX_SPILL_MB = 4096
#: Any spill file older than this is removed by the sweep (seconds; longer than
#: flight.CALL_TTL, since an argument file is written when its call waits in the executor).
DEFAULT_MAX_AGE = 24 * 3600
#: A result file older than this, or an argument file whose writer is gone, is removed.
DEFAULT_ORPHAN_AGE = 3600
SPILL_ENV = "FARM_SPILL_DIR"
MAX_SPILL_ENV = "FARM_MAX_SPILL_MB"


class SpillError(FarmError):
    """A large argument or result could not travel through the spill directory."""


# Its public name, as docs/executor.md gives it and a traceback has always printed it.
SpillError.__module__ = "farm.executor.spill"

#: Where a worker's limit comes from: the supervisor sets $FARM_MAX_SPILL_MB from it.
CONFIG_LIMIT = "[executor] max_spill_mb"


class SpillSettings(NamedTuple):
    directory: Path
    max_bytes: int
    limit_from: str = CONFIG_LIMIT  # the setting SpillTooLarge tells the user to raise


def default_spill_dir(key_file: str | os.PathLike[str] | None = None) -> Path:
    """``spill`` beside the executor's key file (the farm's state directory by default)."""
    return key_path(key_file).parent / "spill"


def worker_settings() -> SpillSettings:
    """A worker's: ``$FARM_SPILL_DIR`` and ``$FARM_MAX_SPILL_MB`` (the supervisor sets them
    from ``[executor]``), else the defaults."""
    where, mb = os.environ.get(SPILL_ENV), os.environ.get(MAX_SPILL_ENV)
    return SpillSettings(
        Path(where) if where else default_spill_dir(),
        mb_to_bytes(mb or DEFAULT_MAX_SPILL_MB, f"${MAX_SPILL_ENV}" if mb else CONFIG_LIMIT),
        # Under `farm up`, the supervisor's [executor] max_spill_mb; by hand, the variable.
        f"{CONFIG_LIMIT}, the worker's ${MAX_SPILL_ENV}" if mb else CONFIG_LIMIT,
    )


def mb_to_bytes(mb: object, setting: str) -> int:
    """``mb`` MiB in bytes, SpillError naming ``setting`` unless a whole number > 0: the
    rule of the Executor's keyword and $FARM_MAX_SPILL_MB (the config's key, checked by
    its readers first, passes it as well)."""
    try:
        value = int(str(mb))
    except ValueError:
        value = 0
    if value <= 0:
        raise SpillError(f"{setting} must be a whole number of MiB > 0, got {mb!r}")
    return value << 20
