"""The supervisor's control socket: one JSON request a connection, one JSON reply.

A Unix stream socket (mode 0600, so only the service's user may steer it).
The client sends one line ``{"cmd": "ps" | "scale" | "reload" | "stop", ...}``
and reads one line back: ``{"ok": true, ...}`` or ``{"ok": false, "error":
"...", "usage": true}`` (``usage`` marks a bad request: exit code 2). A request
may carry ``"config"``, the file its client named: the supervisor refuses it when it
runs another (``another_farm``). The server side never blocks the supervisor's loop:
it is driven by the loop's selector (farm.pools.controlserver).
"""

from __future__ import annotations

import json
import os
import re
import socket
import unicodedata
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any

from farm.errors import FarmError
from farm.lifetime import process_stat
from farm.paths import UnsafeDirectory, check_runtime_path
from farm.sockettrust import unsafe
from farm.unixsocket import peer_credentials

__all__ = [
    "ControlUnavailable",
    "SupervisorStopped",
    "request",
    "follow",
    "answering_elsewhere",
    "another_farm",
    "parse_scale",
    "parse_restart_name",
    "restart_picks",
    "other_form",
    "MAX_REQUEST",
]

MAX_REQUEST = 64 * 1024
# NAME: a pool's, which never holds "=" or an ASCII space (farm.config.pooltables
# .pool_name_problem), or the one function it serves, which may hold "=" (served_problem
# takes ``functions = ["k=v"]``): such a function is scaled by its pool's name, NAME ending
# at the first "=". Which it is, the supervisor says, looking it up (its length is bounded by
# the request's, MAX_REQUEST). It read only ASCII letters, digits and "_.-", and a pool
# serving Perl's App::reverse could be scaled by neither name.
_SCALE = re.compile(r"([^= \t\n\r\f\v]+)=(?:([+-]?)([0-9]+)|auto)")


class ControlUnavailable(FarmError):
    """No supervisor answers on the control socket."""


class SupervisorStopped(ControlUnavailable):
    """The supervisor on the control socket is stopped by job control (Ctrl-Z): asked nothing."""


def parse_scale(arg: str) -> tuple[str, str, int | None]:
    """``"resize=32"`` -> ("resize", "=", 32); ``"reverse=+2"`` -> ("reverse", "+", 2);
    ``"resize=auto"`` -> ("resize", "=", None): one worker per core, as ``workers = "auto"``.
    Whitespace around ``arg`` (Unicode's too) is not the name's: the config refuses a name
    that starts or ends with any (served_problem), so a pool is named alike by both."""
    match = _SCALE.fullmatch(arg.strip())
    if not match:
        raise ValueError(
            f"{arg!r} is not NAME=COUNT, NAME=+N, NAME=-N or NAME=auto (e.g. resize=32)"
        )
    name, sign, count = match.groups()
    # Judged by value (0000032 is 32), and int() is given no more than 6 digits: the request
    # stays small, and a pool has 1024 at most.
    digits = None if count is None else count.lstrip("0") or "0"
    if digits is not None and len(digits) > 6:
        raise ValueError(f"{arg!r}: {digits} workers is more than a pool may have")
    return name, sign or "=", None if digits is None else int(digits)


def parse_restart_name(arg: str) -> tuple[str, int | None]:
    """`farm restart`'s ``"reverse#1"`` -> ("reverse", 1); ``"reverse"`` -> ("reverse",
    None): every slot. The one rule for the CLI's usage error and the supervisor's answer
    to any control client: "reverse#x" read as a slot out of range, "reverse#\u00b2"
    (str.isdigit, not int's) as "invalid literal for int()"."""
    pool, hash_, slot = arg.partition("#")
    if not pool or hash_ and not (slot.isascii() and slot.isdigit()):
        raise ValueError(f"{arg!r}: not POOL or POOL#SLOT (a slot is a number, e.g. reverse#0)")
    if not hash_:
        return pool, None
    digits = slot.lstrip("0") or "0"
    # Past any pool's last slot (1024 at most), answered as out of range: int() is given
    # no more than 6 digits, not the thousands a request may hold.
    return pool, int(digits) if len(digits) <= 6 else 10**6


def restart_picks(
    names: Any, pools: Iterable[str], targets: Mapping[str, int], pool_named: Callable[[str], str]
) -> dict[str, list[int] | None]:
    """`farm restart` arguments -> the slots to restart: POOL (all its slots, None) or
    POOL#SLOT; none: every one of ``pools``. ``pool_named`` reads a pool or function name
    (ValueError if none). Not a list (a control client's: a number raised, a table's keys
    ran): ValueError."""
    if not isinstance(names, list):
        raise ValueError(f"names must be a list of POOL or POOL#SLOT, got {names!r:.80}")
    if not names:
        return {name: None for name in pools}
    picks: dict[str, list[int] | None] = {}
    for raw in names:
        name, index = parse_restart_name(str(raw))
        pool = pool_named(name)
        if index is None:
            picks[pool] = None
            continue
        if index >= (slots := targets.get(pool, 0)):
            has = f"slots 0 to {slots - 1}" if slots else "no slots (scaled to 0)"
            raise ValueError(f"{raw!r}: {pool} has {has} (POOL#SLOT, e.g. reverse#0)")
        if (chosen := picks.setdefault(pool, [])) is not None and index not in chosen:
            chosen.append(index)
    return picks


def request(path: str, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the supervisor at ``path`` and return its reply."""
    for reply in _exchange(path, message, timeout):
        return reply
    raise ControlUnavailable(f"control socket {path}: the supervisor closed early")


def answering_elsewhere(config_file: str, besides: str) -> tuple[int, str] | None:
    """A running supervisor that re-reads ``config_file`` and answers at a control socket
    other than ``besides``: its pid and that socket, else None. So a command whose config
    names a socket nobody answers on can say where its farm is: ``[supervisor] control``
    changed in the file after the farm started, and the new path takes a restart."""
    import psutil

    wanted = os.path.realpath(config_file)
    me = os.getuid()
    for proc in psutil.process_iter(["cmdline", "uids"]):
        if (proc.info["cmdline"] or [""])[0] != "farm: supervisor":  # its setproctitle
            continue
        # Any user may take that title, and root sees every user's sockets: only a farm of
        # this user's is named, or root was told to steer the farm through another's socket.
        uids = proc.info["uids"]
        if uids is None or uids.real != me:
            continue
        try:  # its listening control socket is among them; another user's: AccessDenied
            paths = [str(c.laddr) for c in proc.net_connections(kind="unix")]
        except psutil.Error:
            continue
        for path in paths:
            if not path.startswith("/") or path == besides:  # unnamed, abstract, or asked
                continue
            try:
                pong = request(path, {"cmd": "ping"}, timeout=1.0)
            except ControlUnavailable:
                continue
            # Only one that names this file: another farm of this user's (or an older
            # farm's supervisor, which does not say its file) is not the one meant.
            started_from = pong.get("config")
            if (
                pong.get("pid") == proc.pid
                and isinstance(started_from, str)
                and os.path.realpath(started_from) == wanted
            ):
                return proc.pid, path
    return None


#: What each steering command would have done, for its refusal's "nothing was ...".
_DONE = {"stop": "stopped", "scale": "scaled", "restart": "restarted", "reload": "reloaded"}


def another_farm(cmd: object, asked: str, runs: str, pid: int, named_by: str = "-c") -> str | None:
    """Why the supervisor of process ``pid``, which re-reads ``runs``, refuses a request
    whose client named the config ``asked`` (``named_by``: "-c", or "$FARM_CONFIG", which
    the refusal then names, as the one to change): that file is not ``runs``, by any of its
    names (a link, a hard link). None when it is.

    Two configs that differ only in their ports share the default control socket, so
    `farm stop -c d/farm.toml` reached the farm started from c/farm.toml, and stopped it."""
    try:
        if os.path.realpath(asked) == os.path.realpath(runs) or os.path.samefile(asked, runs):
            return None
    # One of them is not there (the built-in defaults), or not ours to see; or a name not
    # whole read against a working directory since removed (getcwd: FileNotFoundError); or
    # one with a NUL, which no path holds (ValueError), sent by no farm command.
    except (OSError, ValueError):
        pass
    env = named_by == "$FARM_CONFIG"  # else -c (a client that said nothing: -c it was)
    done = _DONE.get(str(cmd))
    notes = ["named by $FARM_CONFIG"] if env else []
    notes += [f"nothing was {done}"] if done else []
    said = f"{runs}, not {asked}" + (f" ({'; '.join(notes)})" if notes else "")
    both = (
        "to run a farm from each, give each its own [supervisor] control"
        " (docs/operations.md, Several farms on one host)"
    )
    file = os.path.isfile(runs)  # else started from none: the built-in defaults
    if cmd == "reload":  # the farm reads its own file: that is the one to edit
        fix = "edit that file" if file else "it was started from no file"
        return f"this farm re-reads {said}: {fix}; {both}"
    if file:  # found by the search, a file's name may be the supervisor's ./farm.toml
        whole = os.path.abspath(runs)
        steer = f"FARM_CONFIG={whole} (or -c {whole})" if env else f"-c {whole}"
    else:  # the user named no file on the command line: the environment named it
        steer = "unset FARM_CONFIG" if env else "name no config"
    return f"this farm (pid {pid}) runs {said}: to steer it, {steer}; {both}"


def follow(
    path: str, message: dict[str, Any], timeout: float = 30.0
) -> Generator[dict[str, Any], None, None]:
    """Send one request and yield each line of a reply that goes on until the supervisor
    closes it (``{"cmd": "stop", "follow": true}``); ``timeout`` bounds each wait."""
    yield from _exchange(path, message, timeout)


def _exchange(
    path: str, message: dict[str, Any], timeout: float
) -> Generator[dict[str, Any], None, None]:
    """One request, then each reply line as it comes; every failure is ControlUnavailable."""
    try:
        check_runtime_path(path)  # never ask a squatter's socket what our supervisor does
    except UnsafeDirectory as e:
        raise ControlUnavailable(str(e)) from None
    if why := planted(path):  # nor one another user could have put at a configured path
        raise ControlUnavailable(why)
    peer = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            peer = _peer_pid(sock)
            if peer and _stopped(peer):  # its answer would wait for `fg`: nothing is asked
                raise SupervisorStopped(_stopped_text(path, peer))
            sock.sendall(json.dumps(message).encode() + b"\n")
            buf = b""
            while data := sock.recv(65536):
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    reply = json.loads(line)
                    if not isinstance(reply, dict):
                        raise ControlUnavailable(
                            f"control socket {path}: unexpected reply {reply!r}"
                        )
                    yield reply
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlUnavailable(
            f"no supervisor answers at {path} (is `farm up` running with this config?)"
        ) from None
    except TimeoutError:
        raise ControlUnavailable(_silent(path, peer, timeout)) from None
    except OSError as e:
        raise ControlUnavailable(f"control socket {path}: {e.strerror or e}") from None
    except ValueError:
        raise ControlUnavailable(f"control socket {path}: a reply that is not JSON") from None


#: What to do about a control socket another user could have planted (``planted``).
CONTROL_FIX = (
    "set [supervisor] control to a path in a directory of the farm's user, e.g."
    " /run/farm/control.sock"
)


def planted(path: str) -> str | None:
    """Why the socket at ``path`` must not be taken for the supervisor's: another user's,
    in a directory others may write (sockettrust.unsafe), which would answer `farm scale`,
    `farm stop` and `farm ps` (and have `farm up` refuse to start) in its place."""
    return unsafe(f"unix:{path}", CONTROL_FIX, "your farm's commands")


def _peer_pid(sock: socket.socket) -> int:
    """The pid of the process that accepted on the control socket (SO_PEERCRED), else 0."""
    try:
        return peer_credentials(sock)[0]
    except OSError:
        return 0


def _stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by job control (Ctrl-Z, SIGSTOP): /proc's state ``T``. Not a
    tracer's ``t``, which a profiler's sample (py-spy) makes for a moment."""
    try:
        # SO_PEERCRED's pid is of this process's PID namespace; a /proc of another one
        # (`unshare -pf` without --mount-proc) would name another process by it.
        if os.readlink("/proc/self") != str(os.getpid()):
            return False
    except OSError:
        return False
    stat = process_stat(pid)
    return stat is not None and stat[0] == "T"


def _stopped_text(path: str, pid: int) -> str:
    """A Ctrl-Z'd `farm up` was asked and the request waited its whole timeout (30 s)."""
    return (
        f"the supervisor (pid {pid}) at {path} is stopped (Ctrl-Z in its terminal, or"
        f" SIGSTOP): nothing was asked; resume it (`fg` there, or kill -CONT {pid}) and ask"
        " again"
    )


def _silent(path: str, pid: int, timeout: float) -> str:
    """Why a request got no answer: the supervisor took it and said nothing (SIGSTOP, a hung
    loop). "timed out" alone named neither the process nor that the request may still act."""
    import psutil

    who = "the supervisor"
    if pid:
        state: str
        try:
            state = psutil.Process(pid).status()
        except psutil.Error:
            state = "gone"
        who = f"the supervisor (pid {pid}, {state})"
    return (
        f"{who} at {path} did not answer within {timeout:g}s: stopped or hung? what was asked"
        " may still happen once it runs on (systemctl status farm; the log)"
    )


def other_form(name: str, names: Iterable[str]) -> str:
    """What to add to "no pool or function ``name``" where one of ``names`` is it in another
    Unicode normal form (NFKC): a decomposed é (macOS, some keyboards), an IME's fullwidth
    letter. Both print alike, so the refusal named what the list beside it showed; their
    code points tell them apart. "" where none is."""
    normal = unicodedata.normalize("NFKC", name)
    match = next((n for n in names if unicodedata.normalize("NFKC", n) == normal), None)
    if match is None:
        return ""
    return (
        f"; it is {match!r} in another Unicode form ({ascii(name)} typed, {ascii(match)} in the"
        " config): type it as the config writes it"
    )
