"""The farm's secret key and the HMAC that makes pickled calls safe to accept.

``farm.Executor`` sends calls as pickles, and unpickling runs code. So a
worker unpickles a payload only when it carries an HMAC-SHA256 made with the
farm's key, a file only the farm's user can read: anyone may submit jobs to
the job server, but only holders of the key can make a worker run code.
Results come back signed the same way, so a client never unpickles bytes a
stranger put on the wire either.

Signed message layout (both directions)::

    MAGIC (4 bytes) | HMAC-SHA256(key, PURPOSE + body) (32 bytes) | body

``PURPOSE`` ("call" or "result") is mixed into the MAC, so a signed result can
never be replayed to a worker as a call.

The key file holds 64 hex digits (32 random bytes). It is created on first
use, atomically (a temp file linked into place, so a concurrent reader never
sees it half written), mode 0600 in a 0700 directory. The owner may share it with
the farm's group (``chmod 640``), so that callers of other accounts in that group
can sign calls: holding the key means running code as the farm's user, so the
group is as trusted as that user. A key file that others can read, or that the
group can write, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol

from farm.errors import FarmError
from farm.paths import make_dirs, state_dir

__all__ = [
    "KEY_ENV",
    "SignatureError",
    "KeyFileError",
    "Signer",
    "default_key_path",
    "key_path",
    "ensure_key",
    "load_key",
]

KEY_ENV = "FARM_KEY_FILE"
MAGIC = b"fx1\0"
MAC_SIZE = 32
HEADER = len(MAGIC) + MAC_SIZE
CALL = b"call"
RESULT = b"result"


class SignatureError(FarmError):
    """A payload without a valid HMAC of this farm's key: refused, never unpickled."""

    #: farm.worker logs it as one line, throttled (farm.logrepeats.Brief): anyone who reaches the
    #: server may send them by the thousand.
    log_brief = True


class KeyFileError(FarmError):
    """The key file cannot be created or read, or is readable by others."""


def default_key_path(*, make: bool = False) -> Path:
    """``executor.key`` in farm's state directory (see farm.paths.state_dir)."""
    return state_dir(make=make) / "executor.key"


def key_path(path: str | os.PathLike[str] | None = None, *, make: bool = False) -> Path:
    """The key file to use: ``path``, else ``$FARM_KEY_FILE``, else the default (``make``:
    it is about to be made, farm.paths.state_dir)."""
    if path is not None:
        return Path(path)
    env = os.environ.get(KEY_ENV)
    return Path(env) if env else default_key_path(make=make)


def ensure_key(path: str | os.PathLike[str] | None = None) -> Path:
    """Create the key file if it does not exist (what the supervisor does at start)."""
    target = key_path(path, make=True)
    if target.exists():
        return target
    make_dirs(target.parent, 0o700)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, target)  # atomic and never overwrites: the first creator wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load_key(path: str | os.PathLike[str] | None = None, *, create: bool = True) -> bytes:
    """Read the farm's key (creating it first when ``create``); raises KeyFileError."""
    target = key_path(path, make=create)
    try:
        if create:
            ensure_key(target)
        # O_NONBLOCK: a FIFO planted at the path (in /tmp, say) must not hang the open;
        # it is refused below.
        with open(os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(
                    f"key file {target} is not a regular file; set ${KEY_ENV} to the farm's key"
                )
            mode = info.st_mode
            acl = _has_acl(f.fileno())
            text = f.read().strip()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read the farm's key file {target}: {exc.strerror or exc}; "
            f"set ${KEY_ENV} to a key file this user may read"
        ) from None
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:  # first: $FARM_KEY_FILE=/etc/passwd was told to chmod 600 /etc/passwd
        raise KeyFileError(f"key file {target} must hold at least 32 hex digits")
    if mode & ((stat.S_IRWXG & ~stat.S_IRGRP) | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {target} is accessible to others or writable by its group"
            f" (mode {mode & 0o777:o}); run: chmod 600 {target} (or 640 to share it with"
            " the farm's group)"
        )
    if acl and mode & stat.S_IRGRP:
        # Its group bits then show the ACL's mask: a named user or group may read it (a
        # mask without read, as a key made in a directory with a default ACL gets, lets
        # nobody beyond the owner).
        raise KeyFileError(
            f"key file {target} has an access ACL, which may let other users read it;"
            f" run: setfacl -b {target} (share it through the farm's group instead)"
        )
    if os.getuid() == 0 and info.st_uid != 0:
        # root reads any file: one another user made (in a shared directory, before the farm
        # did) would be a key that user knows, and so their code run as root.
        raise KeyFileError(
            f"key file {target} belongs to uid {info.st_uid}, and this process runs as root;"
            f" run: chown root {target} (if you trust it), or set ${KEY_ENV} to root's key"
        )
    if info.st_uid not in (os.getuid(), 0):
        _check_placed_by_owner(target, info.st_uid)
    return key


def _check_placed_by_owner(target: Path, owner: int) -> None:
    """KeyFileError unless the key of another user (the farm's, read by a caller in its
    group) lies in a directory of that user (or root's) that nobody else may write. In one
    others may write (``/tmp``), a third user may have made the file before the farm did:
    mode 640 and a group shared with the farm's user (``users``) passed every other check,
    and that user knew the key, so could have the farm run their code."""
    try:
        parent = os.stat(target.parent)
    except OSError as exc:
        raise KeyFileError(f"key file {target}: {exc.strerror or exc}") from None
    if parent.st_uid not in (owner, 0) or parent.st_mode & 0o022:  # root's: as spill's
        raise KeyFileError(
            f"key file {target} belongs to uid {owner}, in a directory others may write"
            f" ({target.parent}): another user may have made it, and know the key; keep the"
            f" key in a directory of its owner (or root) that nobody else may write"
            f" (as {default_key_path()})"
        )


def _has_acl(fd: int) -> bool:
    """Whether the file has a POSIX access ACL beyond its mode bits (kept as an xattr)."""
    try:
        return "system.posix_acl_access" in os.listxattr(fd)
    except OSError:  # a file system without extended attributes has no ACLs
        return False


class _Mac(Protocol):
    def copy(self) -> _Mac: ...
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


def _c_level(mac: hmac.HMAC) -> _Mac:
    """The OpenSSL HMAC object under ``mac`` where it has one, else ``mac`` itself: the
    same copy, update and digest, without the Python wrapper's frames around each (3 of
    every message's 4 method calls; about 1.5 µs a message, twice per call in the caller
    and twice in the worker)."""
    inner: _Mac | None = getattr(mac, "_hmac", None)
    return mac if inner is None else inner


class Signer:
    """Signs and checks messages with one key; ``open`` never lets an unsigned body through."""

    __slots__ = ("_macs",)

    def __init__(self, key: bytes) -> None:
        # One keyed HMAC per purpose, copied per message: cheaper than re-keying.
        self._macs = {p: _c_level(hmac.new(key, p, hashlib.sha256)) for p in (CALL, RESULT)}

    def _mac(self, purpose: bytes, body: bytes | memoryview) -> bytes:
        mac = self._macs[purpose].copy()
        mac.update(body)
        return mac.digest()

    def seal(self, purpose: bytes, body: bytes) -> bytes:
        """MAGIC + MAC + body."""
        return MAGIC + self._mac(purpose, body) + body

    def open(self, purpose: bytes, message: bytes) -> memoryview:
        """The body of a message whose MAC is valid; else SignatureError (nothing unpickled)."""
        if len(message) < HEADER or message[: len(MAGIC)] != MAGIC:
            raise SignatureError(f"the {purpose.decode()} payload is not signed (no farm header)")
        body = memoryview(message)[HEADER:]
        if not hmac.compare_digest(message[len(MAGIC) : HEADER], self._mac(purpose, body)):
            raise SignatureError(
                f"the {purpose.decode()} payload is not signed with this farm's key"
                f" (${KEY_ENV}); refused without unpickling"
            )
        return body
