"""Large arguments and results: a file in the spill directory, a signed reference on the wire.

A call body (the pickled arguments) or a result (the pickled outcome) longer than
``SPILL_THRESHOLD`` does not cross the job server: its sender writes it to a
fresh file in the spill directory and sends, inside the signed payload, only a
reference::

    size (8 bytes, little endian) | sha256 of the bytes (32 bytes) | path (utf-8)

The receiver opens the file (never following a link), checks its size and
digest, and only then unpickles: a file changed or swapped after it was
written is refused with ``SpillRefused`` (a ``SignatureError``). The reference
cannot be forged, since it travels inside the HMAC.

Files are created with O_EXCL, mode 0600, and given 0640 (the farm's group may read them)
once their data is in, so that the sweep tells a part its writer left from a whole file;
named ``farm-spill-KIND-PID-RANDOM.NS`` (NS: the pid's namespace, farm.executor.spillsweep):
KIND ``a`` for arguments (written and deleted by the caller), ``r`` for results (written
by the worker, deleted by the caller once read; named ``farm-spill-r-PID-CALLID-RANDOM``,
so that a caller that lost the call with its job server removes them too), ``k`` for what
an executor keeps while it lives (its initializer, a large function its calls share); PID
is the writer's. The directory is created 2770 (setgid, so its
files take its group) and refused when others may write to it. Each file is
also given the directory's group explicitly, since a setgid bit may be missing:
systemd's ``RestrictSUIDSGID=`` (set by the shipped unit) refuses to set it, and
a caller of another account would otherwise write files of its own group that
the farm's user cannot read.

``sweep`` is the supervisor's cleanup of what a killed process left behind
(farm/supervisor.py runs it every ``sweep_every`` seconds), farm.executor.spillsweep's,
re-exported here.

The settings (the directory, the limit and where each comes from, the sweep's
default ages) are farm.executor.spillsettings'; this module re-exports them, all but
``mb_to_bytes``, which only the settings' readers use.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farm.executor import bytecode
from farm.executor.signing import SignatureError
from farm.executor.spillsettings import (
    CONFIG_LIMIT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_SPILL_MB,
    DEFAULT_ORPHAN_AGE,
    MAX_SPILL_ENV,
    SPILL_ENV,
    SpillError,
    SpillSettings,
    default_spill_dir,
    worker_settings,
)
from farm.executor.spillsweep import PREFIX, name_mark, sweep, sweep_every, unlinked
from farm.paths import make_dirs

__all__ = [
    "SPILL_THRESHOLD",
    "DEFAULT_MAX_SPILL_MB",
    "DEFAULT_MAX_AGE",
    "DEFAULT_ORPHAN_AGE",
    "SPILL_ENV",
    "MAX_SPILL_ENV",
    "CONFIG_LIMIT",
    "RESULT_MARK",
    "SpillError",
    "SpillRefused",
    "SpillTooLarge",
    "SpillDirError",
    "SpillSettings",
    "default_spill_dir",
    "spill_dir",
    "write",
    "read",
    "remove",
    "ByFile",
    "load_pickled",
    "reference_path",
    "result_tag",
    "remove_results",
    "sweep",
    "sweep_every",
    "worker_settings",
]

#: Bodies and results longer than this (bytes) travel as a file, not through the server.
SPILL_THRESHOLD = 1 << 20
#: First byte of a result body that is a reference (a pickle starts with 0x80).
RESULT_MARK = b"S"
_HEAD = 8 + 32


class SpillRefused(SignatureError):
    """A spill file is missing, or not the bytes its signed reference names: refused unread."""


class SpillTooLarge(SpillError, ValueError):
    """An argument or result larger than the limit (``[executor] max_spill_mb``, or the
    Executor's ``max_spill_mb=``, or ``$FARM_MAX_SPILL_MB``: the message names which)."""


class SpillDirError(SpillError):
    """The spill directory cannot be created, or others may write to it."""


#: Directories already checked in this process, and their group.
_checked: dict[Path, int] = {}


def spill_dir(path: Path) -> Path:
    """``path``, created 2770 if missing; SpillDirError when it is not a directory or
    others may write to it. Checked once per process."""
    if path in _checked:
        return path
    try:
        make_dirs(path.parent, 0o700)
        path.mkdir(mode=0o770)
        try:
            os.chmod(path, 0o2770)  # whatever the umask; files take the directory's group
        except PermissionError:  # RestrictSUIDSGID=: write() gives each file the group
            os.chmod(path, 0o770)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SpillDirError(
            f"cannot create the spill directory {path}: {exc.strerror or exc};"
            " set [executor] spill_dir (or $FARM_SPILL_DIR) to a directory the farm's group shares"
        ) from None
    try:
        info = path.lstat()
    except OSError as exc:
        raise SpillDirError(f"spill directory {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SpillDirError(f"spill directory {path} is not a directory (a link or a file)")
    if info.st_mode & stat.S_IWOTH:
        raise SpillDirError(
            f"spill directory {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o});"
            f" run: chmod o-rwx {path}"
        )
    if info.st_uid not in (os.geteuid(), 0) and info.st_gid not in {os.getegid(), *os.getgroups()}:
        # Another user made it first: as its owner they could read (or, with a default ACL,
        # be given) every argument and result spilled there.
        raise SpillDirError(
            f"spill directory {path} belongs to uid {info.st_uid}, gid {info.st_gid}: neither"
            " you nor a group of yours; remove it, or set [executor] spill_dir (or"
            " $FARM_SPILL_DIR) to a directory of the farm's user and group"
        )
    if info.st_uid not in (os.geteuid(), 0):
        # The farm's, used by a caller of its group: only where its owner put it. In a
        # directory others may write (/tmp), a third user who shares a group with us may
        # have made it first, 2770, and then read every argument and result spilled there.
        parent = os.stat(path.parent)
        if parent.st_uid not in (info.st_uid, 0) or parent.st_mode & 0o022:
            raise SpillDirError(
                f"spill directory {path} belongs to uid {info.st_uid}, in a directory others"
                f" may write ({path.parent}): another user may have made it; set"
                " [executor] spill_dir (or $FARM_SPILL_DIR) to one in a directory of the farm's"
            )
    _checked[path] = info.st_gid
    return path


def write(
    settings: SpillSettings,
    data: bytes | bytearray | memoryview,
    kind: str,
    tag: str = "",
    record: Callable[[bytes], None] | None = None,
) -> bytes:
    """Write ``data`` to a fresh file (``kind``: "a" argument, "r" result, "k" kept for an
    executor's life; ``tag``, a result's ``result_tag``, in its name); its reference.
    ``record`` is given the reference before the file is let go: whatever interrupts the
    write after it, the file is either removed here or known to the caller, who removes
    it. SpillTooLarge past the limit (nothing written), SpillDirError, OSError."""
    size = len(data)
    if size > settings.max_bytes:
        what = {"a": "argument", "r": "result"}.get(kind, "function or initializer")
        raise SpillTooLarge(
            f"the call's {what} is {size / 2**20:.1f} MiB pickled, over the farm's limit of"
            f" {settings.max_bytes >> 20} MiB ({settings.limit_from})"
        )
    directory = spill_dir(settings.directory)
    # Before the file exists: hashing a large argument takes a while, and a Ctrl-C then
    # would otherwise leave a file that no one knows of (the sweep takes it an hour later).
    digest = hashlib.sha256(data).digest()
    tagged = f"{tag}-" if tag else ""
    name = f"{PREFIX}{kind}-{os.getpid()}-{tagged}{secrets.token_hex(12)}{name_mark()}"
    path = directory / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = -1
    try:
        # Inside the guard: a Ctrl-C is raised as os.open() returns, before the name is
        # bound, and the file was left (its descriptor still is then, until the exit).
        fd = os.open(path, flags, 0o600)  # the group's read once whole: see sweep
        if os.fstat(fd).st_gid != _checked[directory]:
            # No setgid bit took effect: a member of the directory's group may still hand
            # the file to that group, so that the farm's user (or the caller) can read it.
            os.fchown(fd, -1, _checked[directory])
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        os.fchmod(fd, 0o640)  # whole (whatever the umask): the farm's group reads it
        reference = size.to_bytes(8, "little") + digest + os.fsencode(path)
        if record is not None:
            record(reference)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        if not isinstance(exc, FileExistsError):  # O_EXCL: that name is another's file
            path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return reference


def result_tag(call_id: bytes) -> str:
    """What a call's result files are named by (``farm-spill-r-PID-TAG-RANDOM``), so that
    its caller can find them when the call was lost with its job server (remove_results)."""
    return call_id.hex()


def remove_results(directory: Path, call_ids: list[bytes]) -> tuple[int, int]:
    """Remove the result files of these calls (lost with their job server); the number
    removed, and the number of result files seen, any call's. A worker's answer that
    reached its server just before the server died (killed while it hung, say) never
    reaches the caller, which alone knows that no one will read the file; it waited for
    the sweep (``spill_orphan_age_s``) otherwise."""
    tags = {result_tag(call_id) for call_id in call_ids}
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no spill directory (yet): no large result was written
        return 0, 0
    removed = seen = 0
    for entry in entries:
        parts = entry.name[len(PREFIX) :].split("-")
        if entry.name.startswith(PREFIX) and len(parts) == 4 and parts[0] == "r":
            seen += 1
            if parts[2] not in tags:
                continue
            removed += unlinked(entry.path)
    return removed, seen


def reference_path(reference: bytes | memoryview) -> Path:
    return Path(os.fsdecode(bytes(reference[_HEAD:])))


def read(reference: bytes | memoryview) -> bytearray:
    """The bytes a (signed) reference names, checked; SpillRefused, before any unpickling."""
    if len(reference) <= _HEAD:
        raise SpillRefused("a spill reference too short to name a file: refused")
    size = int.from_bytes(reference[:8], "little")
    digest = bytes(reference[8:_HEAD])
    path = reference_path(reference)
    if not path.name.startswith(PREFIX):
        raise SpillRefused(f"{path} is not a spill file: refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SpillRefused(
            f"cannot read spill file {path}: {exc.strerror or exc} (do the caller and the"
            " farm's workers share [executor] spill_dir, and its group?)"
        ) from None
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            raise SpillRefused(
                f"spill file {path} is {info.st_size} bytes, not the {size} signed for:"
                " changed or swapped; refused without unpickling"
            )
        data = bytearray(size)
        got = f.readinto(data)
        if got != size or f.read(1):
            raise SpillRefused(f"spill file {path} changed while read; refused")
    if hashlib.sha256(data).digest() != digest:
        raise SpillRefused(
            f"spill file {path} does not hold the bytes signed for (changed or swapped):"
            " refused without unpickling"
        )
    return data


def remove(reference: bytes | memoryview | Path) -> None:
    """Delete a spill file (by its reference or path); gone already is fine."""
    path = reference if isinstance(reference, Path) else reference_path(reference)
    if path.name.startswith(PREFIX):
        try:
            path.unlink()
        except OSError:
            pass


class ByFile:
    """Stands in, in a call's pickle, for a large function (a closure over big data) or
    initializer: its own pickle is in a spill file, and unpickling this in the worker
    gives the object itself (``load_pickled``), so each job carries only the reference.
    The reference is inside the signed payload, as for spilled arguments."""

    __slots__ = ("reference",)

    def __init__(self, reference: bytes) -> None:
        self.reference = reference

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return load_pickled, (self.reference,)


#: Bytes of spill files that ``load_pickled`` read in this process: what a kept function
#: read from its file is what it holds (farm.executor.functions weighs it so).
loaded_bytes = 0


def load_pickled(reference: bytes) -> Any:
    """The object a ByFile stands for: the spill file's bytes, checked (its signed reference,
    then the Python that pickled its code: farm.executor.bytecode), then unpickled."""
    global loaded_bytes
    data = read(reference)
    bytecode.check(data, "this call's large function or initializer")
    loaded_bytes += len(data)
    return pickle.loads(data)
