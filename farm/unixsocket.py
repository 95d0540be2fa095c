"""A Unix socket listener's own questions: who is at the other end of a connection
(``peer_credentials``: the server's and the control socket's checks of a local peer),
whether its path may be taken (``clear_socket_path``: a dead process's socket, never a
live one's nor a file that is not a socket), and its mode once bound (``set_socket_mode``).
The job server and the supervisor's control socket ask them; a client, a worker and the
executor, which only connect, never do.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

__all__ = ["peer_credentials", "clear_socket_path", "set_socket_mode"]

#: struct ucred, what SO_PEERCRED reads: pid, uid, gid.
UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as the kernel saw
    it connect or accept (SO_PEERCRED); OSError where there is none (a TCP socket)."""
    pid, uid, gid = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
    return pid, uid, gid


def clear_socket_path(path: str) -> None:
    """Make way for a listener at a Unix socket path: remove the socket a dead process left
    there, and nothing else. OSError EADDRINUSE when a process still answers on it (a
    running farm's socket must not be taken over), EEXIST when the path is not a socket
    (a file a typo in the config names must never be deleted)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket: not replacing it")
    probe = socket.socket(socket.AF_UNIX)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: left by a process that died
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"a running process answers on {path}")


def set_socket_mode(path: str, mode: int) -> int:
    """Give the socket just bound at ``path`` its ``mode``; its inode. The umask made the
    mode at bind, but a directory's default ACL overrides a umask. The name is looked at,
    not followed: in a directory others may write it may be a link by now, and a chmod
    through it changed the mode of whatever the link pointed at (as root, any file)."""
    info = os.lstat(path)
    if stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
    return info.st_ino
