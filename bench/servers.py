"""The job servers a bench runs against, chosen by its options: this tree's farm server,
another checkout's (``--farm-root``), gearmand, or any command (``--server-cmd``), each on a
free 127.0.0.1 port (bench.bench_hostile, bench.bench_churn)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.servers import (
    Server,
    free_port,
    start_farm_server,
    start_gearmand,
    wait_connectable,
)

__all__ = ["ROOT", "Target", "add_target_args", "farm_at", "targets"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    """How to start one server under test, and what to call it in the tables."""

    label: str
    start: Callable[..., Server]  # extra server arguments -> a running server
    max_abilities: bool = False  # a farm server that knows --max-abilities


def _git_short(root: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


def _start_command(label: str, argv: list[str], cwd: Path | None = None, **env: str) -> Server:
    """``argv`` with ``{port}`` replaced by a free port, once it accepts connections."""
    port = free_port()
    cmd = [a.replace("{port}", str(port)) for a in argv]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    addr = f"127.0.0.1:{port}"
    try:
        wait_connectable(addr, proc, timeout=30)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Server(label, addr, proc, port)


def farm_at(root: Path) -> Target:
    """farm's server as checked out in ``root`` (its own ``farm`` package, not this one)."""
    argv = [sys.executable, "-m", "farm.server", "--port", "{port}", "--store", "none"]
    env = {"PYTHONPATH": str(root)}
    helptext = subprocess.run(
        argv[:3] + ["--help"], cwd=root, env={**os.environ, **env}, capture_output=True, text=True
    ).stdout

    def start(*extra: str) -> Server:
        return _start_command("farm", argv + list(extra), cwd=root, **env)

    return Target(f"farm {_git_short(root)}", start, "--max-abilities" in helptext)


def _this_tree(*extra: str) -> Server:
    return start_farm_server("--log-file", "none", *extra)  # its refusals are logged otherwise


def targets(args: argparse.Namespace) -> list[Target]:
    chosen: list[Target] = []
    if args.farm or not (args.gearmand or args.farm_root or args.server_cmd):
        here = farm_at(ROOT)
        label = f"farm {_git_short(ROOT)} (this tree)"
        chosen.append(Target(label, _this_tree, here.max_abilities))
    chosen += [farm_at(Path(r).resolve()) for r in args.farm_root]
    for cmd in args.server_cmd:
        argv = shlex.split(cmd)
        chosen.append(Target(cmd, lambda *extra, a=argv: _start_command(a[0], a + list(extra))))
    if args.gearmand or not (args.farm or args.farm_root or args.server_cmd):
        chosen.append(Target("gearmand", start_gearmand))
    return chosen


def add_target_args(ap: argparse.ArgumentParser) -> None:
    """The options that choose the servers under test (read back by ``targets``)."""
    ap.add_argument("--farm", action="store_true", help="this tree's farm server")
    ap.add_argument("--gearmand", action="store_true", help="gearmand, as the tests start it")
    ap.add_argument(
        "--farm-root",
        action="append",
        default=[],
        metavar="DIR",
        help="farm's server from another checkout (repeatable)",
    )
    ap.add_argument(
        "--server-cmd",
        action="append",
        default=[],
        metavar="CMD",
        help="any server command; {port} is replaced (repeatable)",
    )
