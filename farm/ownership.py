"""Whether what a path names is another user's to choose: the rules for a ./farm.toml, the
working directory searched for modules, the state directory and the $TMPDIR fallback
(farm.paths). One rule for who else may write a file or directory (``other_writers``)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal

__all__ = ["untrusted_because", "controlled_by_another", "other_writers", "InSticky"]


def untrusted_because(info: os.stat_result) -> str | None:
    """Why what ``info`` describes (a ./farm.toml, the working directory searched for
    modules) is not read as the farm's own, or None: it must be this user's or root's, and
    not every user's to write, nor its group's where the farm runs as root (a member of
    the group chose what ran as root) unless that group is root's own (gid 0: umask 002
    makes root's files so). One rule for both."""
    if info.st_uid not in (os.getuid(), 0):
        return f"belongs to uid {info.st_uid}"
    return other_writers(info)


#: What ``controlled_by_another`` does with a name not made yet in a sticky directory.
InSticky = Literal["refuse", "make", "assume"]


def controlled_by_another(
    path: Path, *, in_sticky: InSticky = "refuse", open_parents: bool = False
) -> str | None:
    """Why another user could choose what is at ``path`` (made or not), or None; said as
    what follows the path ("/x/farm depends on …"). `su` without `-` keeps the first
    user's $XDG_STATE_HOME (`sudo -E`, $HOME): root's store went into their
    ~/.local/state/farm, where a store file of theirs passed check_own_file, and they read
    every job's payload. The path is walked as the kernel will walk it, a name at a time
    with lstat (its realpath alone passed a link of theirs, which they could point at their
    own directory later): a link on the way that is theirs, a directory on the way that is
    theirs or others may write and is not sticky (they could move what is below aside), a
    name not there yet in a directory others may write, sticky or not (they could make it
    first). Others: as ``untrusted_because`` counts them. A name that cannot be looked at
    (not to be searched) is a reason too; a file on the way is none (what makes the path
    fails there, and says so). A link of another user counts
    only where they may change it: in a directory of theirs, or one others may write (`tar
    -p` or `rsync -a` as root leaves links of the archive's users in root's 0755
    directories, which they cannot touch).

    ``in_sticky="make"``: a name not made yet in a sticky directory is made here (mode 0700)
    and looked at as made: HOME=/tmp, a 1777 tmpfs home, $XDG_STATE_HOME under /var/tmp had
    no state directory on the first run (no store, no Executor key). Nobody else can move
    ours aside there, and one another user made first is theirs, so refused as any other.
    ``"assume"``: taken as made by this user, nothing made (a description, a check: root's
    `farm server --help` with HOME=/tmp made a root 0700 /tmp/.local that every other
    HOME=/tmp account could then not use).
    ``open_parents``: a directory on the way that others may write is no reason (the
    operator's own $STATE_DIRECTORY under a container's chmod 777: the way out named when
    every home there is passed over); its owner and its links still are."""
    full = os.fspath(path)
    full = full if os.path.isabs(full) else os.path.join(os.getcwd(), full)
    pending = list(reversed(full.split("/")))
    here, links = "/", 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":  # ``here`` has no link in it: its parent is the kernel's
            here = os.path.dirname(here)
            continue
        above, here = here, os.path.join(here, name)
        try:
            info = os.lstat(here)
        except FileNotFoundError:
            parent = os.stat(above)
            writers = other_writers(parent)
            if not writers:
                return None
            sticky = parent.st_mode & stat.S_ISVTX and in_sticky != "refuse"
            if sticky and in_sticky == "assume":
                return None  # to be made by this user, 0700, when it is used ("make")
            made = _made(here) if sticky else None
            if made is None:
                return f"depends on {here}, not made yet in {above}, which {writers}"
            info = made  # ours, or another user's made first: looked at below
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                # A file on the way: nobody's to choose, and whatever makes the path fails
                # there with a line of its own (the Executor's key names the variable).
                return None
            # Not to be searched (EACCES): counted as no reason, an unreachable
            # $STATE_DIRECTORY was chosen and `farm server` failed on its store.
            return f"cannot be used ({here}: {e.strerror})"
        kind = "a link" if stat.S_ISLNK(info.st_mode) else _KINDS.get(stat.S_IFMT(info.st_mode))
        if info.st_uid not in (os.getuid(), 0) and _may_change(info, above):
            return f"depends on {here}, {kind or 'an entry'} of uid {info.st_uid}"
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_LINKS:  # ELOOP for whoever uses it too
                return None
            target = os.readlink(here)
            pending.extend(reversed(target.split("/")))
            here = "/" if target.startswith("/") else above
            continue
        writers = None if open_parents else other_writers(info)
        if writers and not info.st_mode & stat.S_ISVTX:
            return f"depends on {here}, which is not sticky and {writers}"
    return None


def _made(path: str) -> os.stat_result | None:
    """What is at ``path`` now (lstat), made here with mode 0700 or by someone else first;
    None where it cannot be made."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        return os.lstat(path)
    except OSError:
        return None


def _may_change(info: os.stat_result, above: str) -> bool:
    """Whether the owner of what ``info`` describes (in ``above``) may change it: always for
    a directory or file (its mode is theirs), for a link only by replacing it, so where
    they own ``above`` or others may write there."""
    if not stat.S_ISLNK(info.st_mode):
        return True
    parent = os.stat(above)
    return parent.st_uid == info.st_uid or other_writers(parent) is not None


#: What a name on the way is, as said in a reason ("depends on /x/y, a file of uid 1000").
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFREG: "a file"}

#: Links followed at most in one path, as Linux follows (ELOOP past it).
_MAX_LINKS = 40


def other_writers(info: os.stat_result) -> str | None:
    """Who besides its owner may write what ``info`` describes, as a predicate ("may be
    written by every user"), or None: every user, or its group where the farm runs as root
    (a member of the group chooses what runs as root) unless that group is root's own (gid
    0: umask 002 makes root's files so). The one rule of ``untrusted_because`` and
    ``controlled_by_another``."""
    if info.st_mode & stat.S_IWOTH:
        return "may be written by every user"
    if info.st_mode & stat.S_IWGRP and os.geteuid() == 0 and info.st_gid != 0:
        return f"may be written by its group (gid {info.st_gid}), and the farm runs as root"
    return None
