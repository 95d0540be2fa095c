"""Commands ``farm worker`` (one worker process) and ``farm submit`` (one job)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from farm.cli.app import (
    SERVER_DEFAULT_HELP,
    ConfigOption,
    FarmCommand,
    app,
    fail,
    refuse_env_non_sockets,
    refuse_non_sockets,
    seconds,
    typed,
)
from farm.errors import ConfigError, FarmError, JobError, JobFailed

# farm.net, farm.discovery and farm.protocol are imported where they are used: every `farm`
# command loads this module to register these commands, and those imports (sockets, ssl,
# the packet table) were a fifth of each command's start.

ServerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--server",
        "-s",
        metavar="ADDRESS",
        help=f"Job server HOST[:PORT], [IPv6]:PORT or unix:PATH; repeat, or separate with"
        f" commas, for several. "
        f"{SERVER_DEFAULT_HELP}",
    ),
]


def _utf8(value: str, what: str) -> bytes:
    """``value`` as the UTF-8 the wire carries; an argument the locale could not decode
    (Python keeps its bytes as surrogates) is a usage error naming ``what``."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        fail(f"{what} {typed(value)} is not UTF-8 text; give it in UTF-8 (or check the locale)", 2)


def _wire_bytes(value: str, what: str) -> bytes:
    """A name or key as the bytes typed, which the library sends (``text_bytes``): one
    with a byte that is not UTF-8 (a PHP worker's function, a raw key) goes out as it is,
    as gearman's own CLI sends it. (A wrong locale shows as a name no worker serves:
    submit says so after a few seconds.) A surrogate that stands for no byte (none comes
    from a command line, where os.fsdecode made it) is a usage error, as the library's."""
    from farm.protocol.checks import sendable

    try:
        return sendable(value, what)
    except ValueError as exc:
        fail(str(exc), 2)


def _function_name(name: str, what: str) -> str:
    """A function name the job server takes (as farm.server.connection checks it): else a
    usage error now, not a refusal the server logs while the worker serves nothing."""
    from farm.protocol.codec import MAX_FUNCTION, name_problem

    raw = _wire_bytes(name, what)
    if (problem := name_problem(raw)) is None:
        return name
    code, why = problem
    if code == "ARGUMENT_TOO_LARGE":
        fail(f"{what} is {len(raw)} bytes long; job servers take at most {MAX_FUNCTION}", 2)
    if raw:
        fail(f"{what} {typed(name)} {why} (a newline, a tab); remove it", 2)
    fail(f"{what} must not be empty", 2)


@app.command(cls=FarmCommand)
def worker(
    target: Annotated[str, typer.Argument(help="The function to serve, as MODULE:FUNCTION.")],
    name: Annotated[
        str | None, typer.Option(help="Gearman function name (default: FUNCTION).")
    ] = None,
    server: ServerOpt = None,
    config: Path | None = ConfigOption,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds a job may run, at least 1 (CAN_DO_TIMEOUT).")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="Id shown by the admin 'workers'.")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log at INFO (default: warnings only).")
    ] = False,
) -> None:
    """Run one worker process serving MODULE:FUNCTION until SIGTERM or SIGINT."""
    from farm.paths import working_directory
    from farm.protocol.codec import MAX_TIMEOUT, MIN_TIMEOUT
    from farm.targets import (
        hidden_by,
        load_target,
        normal_form_hint,
        search_working_directory,
        target_shaped,
    )
    from farm.tlsfiles import tls_from_env
    from farm.worker import Worker

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s farm worker[%(process)d] %(message)s",
    )
    # The floor register() holds to (check_timeout), said here: 0.5 was refused only once
    # the target had been imported, in words that named no flag.
    seconds(timeout, "--timeout", at_most=float(MAX_TIMEOUT), at_least=float(MIN_TIMEOUT))
    if not target_shaped(target):  # farm.toml's rule (a path, '.rel': no module)
        hint = normal_form_hint(target)  # a name Python reads otherwise: ﬁ:run is fi:run
        example = f"e.g. workers.text:reverse{hint}"
        fail(f"target {typed(target)} must look like MODULE:FUNCTION, {example}", 2)
    name = _function_name(name if name is not None else target.partition(":")[2], "--name")
    if client_id is not None:
        _utf8(client_id, "--client-id")  # its bounds: Worker() checks them, as the server does
    # Like `python -m`, the working directory's modules are found; not where others may
    # write (a command pool may run this in the supervisor's /tmp), as the workers' rule.
    working_directory()  # removed: one line (main), not a worker that finds no module there
    search_working_directory()
    try:
        fn = load_target(target)
    except Exception as exc:
        # A project's own workers/ before the one farm installs: which package hides which.
        missing = isinstance(exc, ModuleNotFoundError)
        hidden = hidden_by(target.partition(":")[0], sys.path) if missing else ""
        fail(f"cannot load {target}: {type(exc).__name__}: {exc}{hidden}", 2, usage=False)
    from farm.protocol.checks import check_sync_worker  # not at start-up: the worker's alone

    try:
        check_sync_worker(name, fn)  # the target's fault, as one that does not load: no usage
    except TypeError as exc:
        fail(str(exc), 2, usage=False)
    try:
        servers = _servers(server, config)
        w = Worker(servers, client_id=client_id, tls=tls_from_env())
        w.register(name, fn, timeout)
    except (TypeError, ValueError, ConfigError) as exc:
        fail(str(exc), 2)
    except FarmError as exc:
        fail(str(exc), 1)
    # With -v, what it serves and where: the worker's own INFO lines tell only of outages,
    # and a worker that served silently could not be told from one that never connected.
    logging.getLogger("farm.worker").info(
        "serving %s (%s) from %s; SIGTERM or Ctrl-C stops it after the job in hand",
        typed(name),
        target,
        ", ".join(servers),
    )
    # The handlers only ask the loop to stop; it finishes the job in hand first.
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.siginterrupt(signal.SIGTERM, False)  # a drain breaks no C call's read (workerproc)
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    w.work()


@app.command(cls=FarmCommand)
def submit(
    function: Annotated[str, typer.Argument(help="The function to run.")],
    data: Annotated[
        str | None,
        typer.Argument(
            help="The payload; '-' reads standard input, and so does none when standard"
            " input is not a terminal (as the gearman tool does)."
        ),
    ] = None,
    background: Annotated[
        bool, typer.Option("--background", "-b", help="Print the handle; do not wait.")
    ] = False,
    priority: Annotated[str, typer.Option(help="high, normal or low.")] = "normal",
    unique: Annotated[str | None, typer.Option(help="Unique key (coalesces equal jobs).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    server: ServerOpt = None,
    config: Path | None = ConfigOption,
) -> None:
    """Submit one job; print its result (or its handle with --background).

    WORK_DATA chunks are printed as they arrive; on a terminal, WORK_STATUS is drawn as a
    progress bar; each WORK_WARNING is a line on standard error as it arrives. If no worker
    has registered FUNCTION after a few seconds, it says so.
    """
    from farm.cli.watch import LiveLine, progress_bar, warn_if_unserved
    from farm.client import Client
    from farm.logs import escape_controls
    from farm.protocol.codec import MAX_TIMEOUT
    from farm.protocol.kinds import PRIORITY_NAMES
    from farm.tlsfiles import tls_from_env

    if priority not in PRIORITY_NAMES:
        fail(f"--priority must be one of {', '.join(PRIORITY_NAMES)}, not {typed(priority)}", 2)
    # The client's own bound (farm.protocol.checks.check_timeout): past it, Client() refused
    # it in words that named no flag.
    seconds(timeout, "--timeout", at_most=float(MAX_TIMEOUT))
    _function_name(function, "FUNCTION")
    if unique is not None:
        _wire_bytes(unique, "--unique")
    servers = _servers(server, config)
    # The bytes as typed: the shell's argument, not the locale's reading of it. No DATA
    # reads a pipe or file, as `gearman -f F` does: `echo hi | farm submit F` sent nothing.
    piped = data is None and sys.stdin is not None and not sys.stdin.isatty()
    payload = sys.stdin.buffer.read() if data == "-" or piped else os.fsencode(data or "")
    try:
        client = Client(servers, tls=tls_from_env(), timeout=timeout)
    except (TypeError, ValueError, ConfigError) as exc:
        fail(str(exc), 2)
    except FarmError as exc:
        fail(str(exc), 1)
    with client:
        try:
            if background:
                task = client.submit(
                    function, payload, background=True, priority=priority, unique=unique
                )
                typer.echo(task.handle)
                return
            bar = LiveLine(sys.stderr)
            out = sys.stdout.buffer

            def on_data(chunk: bytes) -> None:
                bar.clear()
                out.write(chunk)
                out.flush()

            def on_status(numerator: int, denominator: int) -> None:
                if bar.tty:  # a log has no use for a bar redrawn in place
                    bar.show(f"{function} {progress_bar(numerator, denominator)}")

            def on_warning(chunk: bytes) -> None:
                # As it comes, a line on stderr (as the gearman CLI prints it): a farm worker
                # past kill_rss_mb says why here before it fails the job. The worker's text,
                # escaped for the terminal; the newline a farm worker ends it with is ours.
                bar.clear()
                said = escape_controls(chunk.decode("utf-8", "replace").rstrip("\r\n"))
                typer.echo(f"farm: job {function} warned: {said}", err=True)

            unserved = warn_if_unserved(client.servers, function, client.tls, timeout)
            try:
                result = client.call(
                    function,
                    payload,
                    priority=priority,
                    unique=unique,
                    timeout=timeout,
                    on_status=on_status,
                    on_data=on_data,
                    on_warning=on_warning,
                )
            finally:
                unserved.cancel()
                bar.clear()
        except (TypeError, ValueError) as exc:
            fail(str(exc), 2)
        except JobFailed as exc:  # "job H:... (f) failed...": it names the job already
            fail(escape_controls(str(exc)), 1)
        except JobError as exc:  # its text is the worker's (a raise's, a warning): escaped
            fail(f"job {function} failed: {escape_controls(str(exc))}", 1)
        except FarmError as exc:
            fail(str(exc), 1)
    out.write(result)
    if sys.stdout.isatty() and not result.endswith(b"\n"):
        out.write(b"\n")
    out.flush()


def _servers(server: list[str] | None, config: Path | None) -> list[str]:
    """``--server`` in normal form (a bad one: exit 2), else the config's farm, else the
    library's own default (farm.discovery): a bad $FARM_SERVERS is named. Each ``--server``
    may list several, comma-separated, as farm.Client's string and $FARM_SERVERS do."""
    from farm.discovery import client_servers, servers_from_env
    from farm.net import parse_servers

    try:
        if server:
            given = parse_servers(",".join(server))
            refuse_non_sockets(given, "--server")
            return given
        found = parse_servers(client_servers(config))
    except ConfigError as exc:
        fail(str(exc), 2)
    except ValueError as exc:
        env = servers_from_env() if not server and config is None else None
        source = f"${env[0]}" if env else "--server"
        fail(f"{source}: {exc}", 2)
    except FarmError as exc:  # e.g. the farm's socket where another user could have put it
        fail(str(exc), 1)
    refuse_env_non_sockets(config, found)
    return found
