"""The record beside the control socket that a supervisor of the farm runs (``record_path``).

farm.pools.leftbehind looks through /proc at start for what a killed supervisor left
running, which reads the environment of every process of the farm's user (as root, of its
command pools' users too): at each `farm up`, though after a clean stop nothing can be
left. So a supervisor, once it holds the control socket, writes its ``FARM_INSTANCE``
(which names its pid and start time) here (``write``), and removes it when it has stopped
cleanly, each worker and what it started ended (``remove``): a record found at start names
a supervisor that did not (killed -9, the OOM killer, a crash), and only then is /proc
looked through. The file lives in the control socket's directory, under its rules (made
0700 where missing, the shared /tmp fallback private: farm.paths), mode 600; none is
followed through a link, and one another user may have made is not believed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from farm.paths import check_own_file

__all__ = ["MAX_RECORD", "Unreadable", "read", "record_path", "remove", "write"]

log = logging.getLogger("farm.supervisor")

#: A record holds one FARM_INSTANCE: a control socket's path (107 bytes at most) and three
#: numbers. Anything longer is not one; it is read no further.
MAX_RECORD = 4096


class Unreadable(str):
    """Why the record there could not be read (its text is the reason)."""


def record_path(control: str) -> str:
    """The record of the supervisor holding the control socket at ``control``."""
    return f"{control}.supervisor"


def read(path: str) -> str | Unreadable | None:
    """The FARM_INSTANCE in the record at ``path``; None where there is none; ``Unreadable``
    where something is there that is not a record this user wrote (a link, a FIFO, another
    user's file, one too long), or could not be read."""
    # O_NONBLOCK: a FIFO there must not hang the start; O_NOFOLLOW: a link is not ours.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Unreadable(exc.strerror or str(exc))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Unreadable("not a regular file")
        check_own_file(path, info)  # PermissionError: another user's, or another link's
        data = os.read(fd, MAX_RECORD + 1)
    except OSError as exc:
        return Unreadable(exc.strerror or str(exc))
    finally:
        os.close(fd)
    if len(data) > MAX_RECORD or not data.endswith(b"\n"):
        return Unreadable("not a record (cut off, or too long)")  # written whole, in one write
    try:
        return data[:-1].decode()
    except UnicodeDecodeError:
        return Unreadable("not a record (not UTF-8)")


def write(path: str, instance: str) -> None:
    """This supervisor's record, in place of whatever was there: made anew (O_EXCL), so that
    it is this user's, mode 600, whatever was at the path. One that cannot be written is
    said: a kill -9 of this supervisor then leaves what its workers started to run on."""
    data = f"{instance}\n".encode()
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a link is removed, never what it names
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            if os.write(fd, data) != len(data):  # a short write: ENOSPC on the next
                raise OSError("short write")
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning(
            "cannot write %s (%s): if this supervisor is killed, the next farm up does not"
            " look for what its workers left running",
            path,
            exc.strerror or exc,
        )
        with contextlib.suppress(OSError):
            os.unlink(path)  # a partial record would be read as unreadable: a look anyway


def remove(path: str, instance: str) -> None:
    """The record removed at a clean stop, where it is still this supervisor's (``instance``):
    one a later supervisor wrote (its control socket was removed under this one, and another
    `farm up` took the path) is that one's to remove."""
    if read(path) == instance:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
