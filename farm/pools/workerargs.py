"""What each kind of worker process is started with: a Python pool's ``python -m
farm.pools.workerproc`` command line, a command pool's environment. The supervisor's
WorkerStart spawns them (farm.pools.spawn); this only says what they are told."""

from __future__ import annotations

import os
import secrets

from farm.commandspec import base_environ
from farm.config import Config, FunctionConfig
from farm.logs import journal_priorities
from farm.net import parse_address
from farm.pools.slots import Slot
from farm.pools.spawn import exec_text, python_module

__all__ = ["command_env", "log_mark", "python_argv"]


def log_mark() -> tuple[str, int]:
    """A fresh mark for a Python worker's log lines (farm.logrelay.relay_lines), and the read
    end of a pipe that holds it, inheritable, for its ``--mark-fd``: not on its command
    line, which every user may read in /proc, nor in its environment, which its jobs'
    children inherit and may print."""
    mark = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, mark.encode())  # far under PIPE_BUF: whole, and never waits
        os.set_inheritable(read_fd, True)
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return mark, read_fd


def python_argv(
    config: Config,
    pool: FunctionConfig,
    slot: Slot,
    report_fd: int,
    record_fd: int,
    mark_fd: int,
) -> tuple[list[str], tuple[str, ...]]:
    """A Python worker's command line for ``slot``, and the servers it is told to serve."""
    # -P: not the working directory on sys.path, where another user may have put a
    # module of the same name (farm.targets.search_working_directory decides).
    # --flag=VALUE for every value the config chooses: a name may start with "-" (the
    # config allows it), which argparse read as a flag, and the workers died at each start.
    # Names and a traceback's text as exec_text, which workerproc reads back (exec_read).
    argv = python_module("farm.pools.workerproc") + [f"--function={exec_text(pool.name)}"]
    argv += [f"--target={pool.target}", "--slot", str(slot.index), "--cpu", str(slot.core)]
    argv += ["--report-fd", str(report_fd), "--record-fd", str(record_fd)]
    argv += ["--mark-fd", str(mark_fd)]
    for served in pool.serves:
        argv += [f"--serve={exec_text(served)}"]
    if config.supervisor.log_format != "text":
        argv += ["--log-format", config.supervisor.log_format]
    if journal_priorities():  # its lines reach the journal through the supervisor, as they are
        argv += ["--journal"]
    servers = config.servers_for(pool)
    for server in servers:
        argv += [f"--server={server}"]
    for flag, value in (
        ("--timeout", pool.timeout),
        ("--max-jobs", pool.max_jobs),
        ("--max-rss-mb", pool.max_rss_mb),
        ("--kill-rss-mb", pool.kill_rss_mb),
        ("--last-boot-error", exec_text(slot.boot_error) or None),  # once, not per try
    ):
        if value is not None:
            argv += [f"{flag}={value}"]  # a traceback may start with "-" too
    return argv, servers


def command_env(
    config: Config,
    pool: FunctionConfig,
    slot: Slot,
    supervisor_env: dict[str, str],
    instance: str = "",
) -> dict[str, str]:
    """A command worker's environment for ``slot``: the base one (none of the supervisor's
    secrets when it runs as another user), what tells it where to serve, then its own.
    ``instance``: the supervisor's FARM_INSTANCE (farm.pools.leftbehind), set where given."""
    spec = pool.command
    assert spec is not None, "a command pool's"
    env = base_environ(spec, supervisor_env)
    servers = config.command_servers
    if servers:  # the config refuses a command pool with none (config.rules)
        # The first server's host and port apart: libgearman (PHP's addServers, the gearman
        # CLI) reads "[::1]:4730" as host "[" on port 4730, and an IPv6-only farm's PHP
        # workers connected nowhere; addServer(host, port) takes "::1" as it is.
        first = parse_address(servers[0])
        env.update(FARM_SERVER_HOST=first.host, FARM_SERVER_PORT=str(first.port))
    env.update(
        FARM_SERVERS=",".join(servers),
        # The UTF-8 that the job server knows the names by, whatever the locale (exec_text).
        FARM_FUNCTION=exec_text(",".join(pool.functions)),
        FARM_SLOT=str(slot.index),
        FARM_CPU=str(slot.core),
        FARM_WORKER_ID=exec_text(f"farm:{pool.name}#{slot.index}:{slot.spawned}"),
    )
    if instance:  # so what it starts is known to the next supervisor if this one is killed
        env["FARM_INSTANCE"] = instance
    env.update(spec.env)
    return env
