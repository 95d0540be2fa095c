"""What a damaged -wal loses, found before SQLite reads it, and a copy of it kept.

A server killed before a checkpoint leaves its latest jobs in the store's -wal alone. Each
frame there carries a checksum that chains those of every frame before it, and SQLite's
recovery stops at the first frame that fails its own: that frame's transaction, and every
one written after it, are dropped without a word, and the server's first checkpoint then
empties the -wal. One flipped bit of a -wal of 200 acknowledged jobs lost 140 of them, where
the same bit in the main file is caught by the row's checksum (storecheck). Here the -wal is
read as SQLite's recovery reads it (the format is SQLite's documented file format: a
32-byte header, then frames of a 24-byte header and a page), and where a committed
transaction of the same -wal lies past the first frame that fails, what is lost is said
in the log and the -wal is copied aside for the operator before the open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from dataclasses import dataclass

from farm.server.walcopy import MAX_COPIED, WAL_FRAME_HEADER, WAL_HEADER, TooLarge, copy_file

__all__ = ["MAX_READ", "WalDamage", "keep_damaged", "wal_damage"]

log = logging.getLogger("farm.server.walcheck")

#: A -wal larger than this is not read (its jobs are SQLite's to judge alone): the store
#: checkpoints at half its reserve, a few MB; one job larger than that makes a larger one.
#: The bound of the looks at a store before its open, which copy it (walcopy).
MAX_READ = MAX_COPIED

#: The header's magic: the low bit says the checksums' words are big-endian.
_MAGIC = 0x377F0682
_VERSION = 3007000
_HEADER = struct.Struct(">8I")  # magic, version, page size, checkpoint, salt 1, 2, sums 1, 2
_FRAME = struct.Struct(">6I")  # page, pages after a commit (0: none), salt 1, 2, sums 1, 2
assert (_HEADER.size, _FRAME.size) == (WAL_HEADER, WAL_FRAME_HEADER)
_MASK = 0xFFFFFFFF
_PAGE_SIZES = frozenset(1 << n for n in range(9, 17))  # 512 to 65536


@dataclass(frozen=True)
class WalDamage:
    """Frame ``frame`` (from 1) of ``frames`` fails its checksum; SQLite drops it and
    everything after it, ``commits`` transactions of the same -wal among them. Frame 0:
    the -wal's header fails (commits None: how many of its frames were checkpointed
    already, none can tell), and SQLite reads none of them."""

    frame: int
    frames: int
    commits: int | None


def _sums(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), carried on from s0, s1."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def wal_damage(store: str) -> WalDamage | None:
    """The damage of the -wal beside ``store`` that loses committed transactions, or None:
    none, no -wal or one without a frame, or one past MAX_READ."""
    try:
        with open(store + "-wal", "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_READ:
                return None
            wal = f.read(MAX_READ)
    except OSError:
        return None
    if len(wal) < WAL_HEADER + WAL_FRAME_HEADER + 512:  # no frame in it, of the least page
        return None
    magic, version, page_size, _, salt1, salt2, c0, c1 = _HEADER.unpack_from(wal)
    big = bool(magic & 1)
    if (
        magic & ~1 != _MAGIC
        or version != _VERSION
        or page_size not in _PAGE_SIZES
        or _sums(wal[:24], 0, 0, big) != (c0, c1)
    ):
        # SQLite writes a header with its checksum whenever it starts a -wal: one that
        # fails is damage, and SQLite then reads none of its frames.
        return WalDamage(0, 0, None)
    size = WAL_FRAME_HEADER + page_size
    frames = (len(wal) - WAL_HEADER) // size
    heads = [_FRAME.unpack_from(wal, WAL_HEADER + n * size) for n in range(frames)]
    s0, s1 = c0, c1
    for n, (_page, _commit, f1, f2, k0, k1) in enumerate(heads):
        at = WAL_HEADER + n * size
        if (f1, f2) == (salt1, salt2):
            s0, s1 = _sums(wal[at : at + 8] + wal[at + WAL_FRAME_HEADER : at + size], s0, s1, big)
            if (s0, s1) == (k0, k1):
                continue
        # SQLite's recovery ends here: at the end of this -wal's frames (older ones follow,
        # of other salts), or at a frame damaged. A commit of this -wal's after it is lost,
        # unless it is the last frame written: SQLite writes a frame's header, then its
        # page, and a server killed between the two left that transaction unacknowledged.
        ours = [m for m in range(n, frames) if (heads[m][2], heads[m][3]) == (salt1, salt2)]
        commits = [m for m in ours if heads[m][1]]
        if not commits or n == ours[-1]:  # only the very last frame can be torn so
            return None
        return WalDamage(n + 1, frames, len(commits))
    return None


def keep_damaged(store: str, damage: WalDamage) -> str:
    """Copy the damaged -wal aside (mode 600, a name of its own) and say what SQLite is
    about to drop of it; the copy's path ("" where it could not be made, said too)."""
    source = store + "-wal"
    for n in range(1, 1000):
        target = f"{source}.damaged" if n == 1 else f"{source}.damaged.{n}"
        if os.path.lexists(target):  # an earlier damage's copy: kept, never removed below
            continue
        try:
            copy_file(source, target, MAX_READ)
        except FileExistsError:
            continue
        except (OSError, TooLarge) as exc:
            with contextlib.suppress(OSError):  # what of it was written, if it was made
                os.unlink(target)
            target, why = "", str(exc) or "larger than it was read"
        break
    else:
        target, why = "", "every name for it is taken"
    kept = f"a copy of it is kept at {target}" if target else f"it could not be copied ({why})"
    if damage.commits is None:
        log.error(
            "the job store's -wal %s is damaged: its header fails SQLite's checksum, and SQLite"
            " reads none of its frames: the jobs acknowledged since the store's last"
            " checkpoint are lost (and its finished jobs since then run again); %s"
            " (docs/server.md, Durability)",
            source,
            kept,
        )
        return target
    log.error(
        "the job store's -wal %s is damaged: its frame %d of %d fails SQLite's checksum, and"
        " SQLite drops it and every frame after it: %d committed transaction(s), whose jobs"
        " were acknowledged to their clients and are lost (and whose finished jobs run"
        " again); the -wal's frames before it are kept; %s (docs/server.md, Durability)",
        source,
        damage.frame,
        damage.frames,
        damage.commits,
        kept,
    )
    return target
