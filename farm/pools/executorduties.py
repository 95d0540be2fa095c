"""What the supervisor does for farm.Executor's calls: the signing key made before any
worker needs it, the spill directory and limit its workers are started with, and, now and
then, the spill files a killed caller or worker left behind removed."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from farm.config import Config, ExecutorConfig

__all__ = ["ExecutorDuties", "spill_environ", "workers_spill_dir"]

log = logging.getLogger("farm.supervisor")


class ExecutorDuties:
    """A mixin of the Supervisor: its steps for the Executor."""

    config: Config
    next_spill_sweep: float  # monotonic; 0.0 at start: the first turn sweeps

    def ensure_executor_key(self) -> None:
        """farm.Executor's calls are signed with a key only the farm's user can read;
        make it before any worker needs it (workers would race to create it)."""
        from farm.executor.signing import KeyFileError, ensure_key, key_path, load_key
        from farm.paths import NoStateDirectory, passed_over_state_directory

        try:
            passed = passed_over_state_directory()
        except OSError as exc:  # the walk of its path: a warning, never a stopped `farm up`
            log.warning("$STATE_DIRECTORY could not be looked at: %s", exc)
            passed = None
        if passed is not None:  # whatever the store: the key and spill files move with it
            log.warning(
                "$STATE_DIRECTORY %s %s, so it is passed over: the Executor's key, its spill"
                " files and the default stores are kept elsewhere (docs/operations.md)",
                passed[0],
                passed[1].removeprefix("($STATE_DIRECTORY) "),
            )
        try:
            # Read back as the workers will: $FARM_KEY_FILE naming a directory, or a file
            # that is no key or others may read, was taken without a word at start.
            load_key(ensure_key(), create=False)
            log.info("executor key: %s", key_path())
        except (KeyFileError, NoStateDirectory) as exc:
            log.error("%s; farm.Executor calls will be refused", exc)
        except OSError as exc:  # a state directory that cannot be made (read-only, a file)
            log.error(
                "cannot create farm.Executor's key file %s: %s (set $FARM_KEY_FILE, or"
                " $STATE_DIRECTORY / $XDG_STATE_HOME, to a writable place); farm.Executor"
                " calls will be refused",
                key_path(),
                exc.strerror or exc,
            )

    def note_spill_env(self) -> None:
        """A $FARM_SPILL_DIR that `farm up` was started with is not what its workers use
        (``workers_spill_dir``): said once, so that whoever set it is not misled."""
        from farm.executor.spillsettings import SPILL_ENV

        stray = os.environ.get(SPILL_ENV)
        where = workers_spill_dir(self.config.executor)
        if stray and where and os.path.abspath(stray) != os.path.abspath(where):
            log.warning(
                "$%s=%s is for farm.Executor's callers; the workers use %s ([executor]"
                " spill_dir sets it)",
                SPILL_ENV,
                stray,
                where,
            )

    def sweep_spill(self) -> None:
        """Now and then, remove the Executor's spill files that a killed caller or worker
        left behind (farm.executor.spill.sweep); a cheap time check otherwise."""
        now = time.monotonic()
        if now < self.next_spill_sweep:
            return
        from farm.executor import spill

        settings = self.config.executor
        self.next_spill_sweep = now + spill.sweep_every(settings.spill_orphan_age_s)
        where = workers_spill_dir(settings)
        if not where:
            return
        removed = spill.sweep(Path(where), settings.spill_max_age_s, settings.spill_orphan_age_s)
        if removed:
            log.info("removed %d stale spill file(s) from %s", removed, where)


def workers_spill_dir(executor: ExecutorConfig) -> str:
    """Where the Executor's workers write and the supervisor sweeps: ``[executor] spill_dir``,
    else the default beside the key file. Never ``$FARM_SPILL_DIR`` of `farm up`'s own
    environment (a caller's setting, left in the operator's shell): the workers took it
    while the sweep looked here, and the files a killed worker left were never removed.
    "" where there is no state directory to hold the default (nor the key: no Executor)."""
    from farm.executor.spillsettings import default_spill_dir
    from farm.paths import NoStateDirectory

    try:
        return executor.spill_dir or str(default_spill_dir())
    except NoStateDirectory:  # said with the key (ensure_executor_key)
        return ""


def spill_environ(executor: ExecutorConfig) -> dict[str, str]:
    """What the Executor's workers read their spill directory and limit from: both set, so
    that nothing of `farm up`'s environment decides them."""
    from farm.executor.spillsettings import MAX_SPILL_ENV, SPILL_ENV

    return {MAX_SPILL_ENV: str(executor.max_spill_mb), SPILL_ENV: workers_spill_dir(executor)}
