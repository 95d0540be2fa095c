"""A command pool's process, as farm.toml describes it: ``command``, ``cwd``, ``env``, ``user``.

``[functions.NAME] command = ["php", "/srv/workers/worker.php"]`` (or one string,
split as a shell would) runs any executable as the pool's worker. Everything
that can be checked before a process starts is checked here, so ``farm up``
stops with one line naming the file, the key and the fix: the executable is
found on ``PATH`` (or in ``cwd``) now, ``cwd`` exists, ``env`` holds strings,
and ``user`` exists and is allowed (only a supervisor running as root may
change user). The spawn helper (farm.pools.spawn) then needs no lookups in
the forked child.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from farm.errors import ConfigError

__all__ = [
    "CommandSpec",
    "RunAs",
    "parse_command",
    "parse_stop_signal",
    "base_environ",
    "dials_php_default",
]

Fail = Callable[[str, str], ConfigError]


@dataclass(frozen=True, kw_only=True)
class RunAs:
    """The account a command pool's processes run as (resolved when the config is read)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass(frozen=True, kw_only=True)
class CommandSpec:
    """What to exec for each slot of a command pool."""

    argv: tuple[str, ...]  # argv[0] an absolute path, found when the config was read
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # added to the supervisor's environment
    user: RunAs | None = None
    pass_env: tuple[str, ...] = ()  # more of the supervisor's variables, for another user


#: What a command run as another user keeps of the supervisor's environment, as sudo's
#: env_reset keeps it: PATH (commands are found by it), the locale, the time zone, and
#: GEARMAN_SERVERS (a client's setting, which farm leaves alone), and the TLS files of
#: `farm worker` and `farm submit` (paths: without them a command spoke plain text).
_KEPT_FOR_USER = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "GEARMAN_SERVERS"}
    | {"FARM_TLS_CA", "FARM_TLS_CERT", "FARM_TLS_KEY"}
)
#: An environment variable's name, as POSIX shells take it (pass_env).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: PHP's addServer() or addServers() given no server: the extension's default,
#: localhost:4730, whatever FARM_SERVERS says (the seed's workers/php/worker.php).
_PHP_DEFAULT_DIAL = re.compile(rb"->\s*addServers?\s*\(\s*\)")
#: Of a script, what dials_php_default reads: a worker's setup is at its top.
_SCRIPT_HEAD = 1 << 20


def base_environ(spec: CommandSpec, inherited: Mapping[str, str]) -> dict[str, str]:
    """What a command's process starts from, before farm's FARM_* variables and the pool's
    ``env``: the supervisor's environment (``inherited``), and under ``user`` that user's
    HOME, USER and LOGNAME. A command run as another user keeps only ``_KEPT_FOR_USER``,
    ``LC_*`` and the pool's ``pass_env`` of it: the rest (a token root exported where it
    started ``farm up``, a unit's ``Environment=``) was readable by every process of that
    user, in /proc/PID/environ. The pool's ``env`` gives it what else it needs."""
    user = spec.user
    if user is None:
        return dict(inherited)
    if user.uid == os.geteuid():
        env = dict(inherited)
    else:
        kept = _KEPT_FOR_USER.union(spec.pass_env)
        env = {k: v for k, v in inherited.items() if k in kept or k.startswith("LC_")}
    env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    return env


def dials_php_default(spec: CommandSpec) -> str | None:
    """The PHP script ``spec`` runs when it calls addServer() with no server, which dials
    localhost:4730 only (the seed's worker): its path, else None. An unreadable script is
    passed over (the pool's start says what is wrong with it)."""
    for arg in spec.argv[1:]:
        if not arg.endswith(".php"):
            continue
        path = os.path.join(spec.cwd or os.getcwd(), os.path.expanduser(arg))
        try:
            with open(path, "rb") as f:
                head = f.read(_SCRIPT_HEAD)
        except OSError:
            continue
        if _PHP_DEFAULT_DIAL.search(head):
            return os.path.normpath(path)
    return None


def parse_command(raw: dict[str, Any], key: str, base: str, fail: Fail) -> CommandSpec:
    """``command``, ``cwd``, ``env``, ``pass_env`` and ``user`` of the table ``key``;
    relative paths are relative to ``base`` (the config file's directory)."""
    command = raw["command"]
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise fail(
                f"{key}.command", f"cannot split {command!r} as a shell would: {e}"
            ) from None
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise fail(f"{key}.command", 'must be a list like ["php", "worker.php"] or one string')
    if not argv or not argv[0]:
        raise fail(f"{key}.command", 'is empty; name a program, e.g. ["php", "worker.php"]')
    if any("\0" in a for a in argv):  # exec refuses it: every start failed, exit 127
        raise fail(f"{key}.command", "holds a NUL character, which no argument can; remove it")
    cwd = raw.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise fail(f"{key}.cwd", "must be a directory path")
        cwd = os.path.normpath(os.path.join(base, os.path.expanduser(cwd)))
        if not os.path.isdir(cwd):
            raise fail(f"{key}.cwd", f"{cwd} is not a directory; create it or fix the path")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise fail(f"{key}.env", 'must be a table of strings, e.g. env = { APP_ENV = "prod" }')
    for name in env:  # a TOML key is a string: what is left to say is why it is no name
        # Looser than pass_env's rule (names a shell can export): a program may read any name
        # without "=", and env took such names before; "A=B" would set another variable.
        if not name or "=" in name:
            raise fail(f"{key}.env", f"{name!r} is not an environment variable name (empty, or =)")
    if any("\0" in k + v for k, v in env.items()):
        raise fail(f"{key}.env", "holds a NUL character, which no environment can; remove it")
    argv[0] = _executable(argv[0], key, cwd or base, env.get("PATH"), fail)
    return CommandSpec(
        argv=tuple(argv),
        cwd=cwd,
        env=tuple(sorted(env.items())),
        user=_user(raw.get("user"), f"{key}.user", fail),
        pass_env=_pass_env(raw.get("pass_env", []), f"{key}.pass_env", fail),
    )


def _pass_env(raw: Any, key: str, fail: Fail) -> tuple[str, ...]:
    """The names of ``pass_env``: a list of environment variable names, nothing else."""
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise fail(key, 'must be a list of variable names, e.g. pass_env = ["DATABASE_URL"]')
    for name in raw:
        _env_name(name, key, fail)
    return tuple(raw)


def _env_name(name: str, key: str, fail: Fail) -> None:
    """pass_env's rule on a name: letters, digits and _, not first a digit (what a shell can
    export; "A=B" would set another variable)."""
    if not _ENV_NAME.fullmatch(name):
        raise fail(key, f"{name!r} is not an environment variable name (letters, digits, _)")


def _executable(program: str, key: str, cwd: str, path: str | None, fail: Fail) -> str:
    """``program`` as an absolute path: looked up on PATH, or relative to the pool's cwd."""
    if "/" in program:
        found = os.path.normpath(os.path.join(cwd, os.path.expanduser(program)))
        if os.path.isfile(found) and not os.access(found, os.X_OK):
            raise fail(f"{key}.command", f"{found} is not executable; chmod +x it")
        if not os.path.isfile(found):
            raise fail(f"{key}.command", f"{found} is not an executable file; fix the path")
        return found
    where = shutil.which(program, path=path or os.environ.get("PATH", os.defpath))
    if where is None:
        raise fail(
            f"{key}.command",
            f"{program!r} is not on PATH; install it or give its full path",
        )
    return os.path.abspath(where)


def _user(raw: Any, key: str, fail: Fail) -> RunAs | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise fail(key, 'must be a user name, e.g. user = "www-data"')
    if "\0" in raw:  # getpwnam() raised ValueError: a traceback, as root, not this line
        raise fail(key, f"{raw!r} holds a NUL character, which no user name can; remove it")
    if os.geteuid() != 0:
        raise fail(
            key,
            f"only a supervisor running as root may change user (it runs as uid"
            f" {os.geteuid()}); remove it, or run farm up as root",
        )
    try:
        entry = pwd.getpwnam(raw)
    except KeyError:
        raise fail(key, f"no user {raw!r} on this host; create it or fix the name") from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return RunAs(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir,
    )


def parse_stop_signal(raw: Any, key: str, fail: Fail) -> int:
    """``"SIGTERM"``, ``"TERM"``, ``"INT"``, ``"QUIT"`` or a number -> the signal number."""
    if raw is None:
        return int(signal.SIGTERM)
    name = raw.upper() if isinstance(raw, str) else None
    if name is not None and not name.startswith("SIG"):
        name = "SIG" + name
    try:
        if name is None and type(raw) is not int:  # Signals(true) is SIGHUP, 15.0 SIGTERM
            raise ValueError(raw)
        sig = signal.Signals[name] if name else signal.Signals(raw)
    except (KeyError, ValueError):
        raise fail(key, f'must be a signal name like "SIGTERM" or "SIGQUIT", got {raw!r}') from None
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        raise fail(key, f"{sig.name} cannot be caught; use SIGTERM (SIGKILL follows anyway)")
    return int(sig)
