"""`farm restart`: replace the running workers with fresh processes, a few at a time.

The supervisor does the work (farm.pools.rollout); this command starts it over
the control socket and follows its progress (``restart-status``) until every
slot named is replaced, or a replacement fails to boot (exit code 1: the old
process keeps that slot). `farm reload --restart` follows the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from farm.cli.app import (
    ConfigOption,
    ControlOption,
    FarmCommand,
    app,
    ask_supervisor,
    fail,
    own_row,
    typed,
)

__all__ = ["restart", "follow_restart", "follow_added"]

#: How often the progress is asked for.
POLL = 0.2
#: Seconds without progress after which the command stops following (the supervisor goes
#: on), past the supervisor's own limit for a new process to serve (``boot_timeout``, which
#: the reply says; a model's import may take minutes): something else holds the restart,
#: e.g. a job server that is down.
STALL_PAST_BOOT = 90.0


@app.command(cls=FarmCommand)
def restart(
    names: Annotated[
        list[str] | None, typer.Argument(help="POOL or POOL#SLOT (default: every pool)")
    ] = None,
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
) -> None:
    """Replace workers with fresh processes (new code) without downtime: each new process
    serves before the old one drains, a few slots of a pool at a time."""
    from farm.pools.control import parse_restart_name

    for name in names or []:
        # Here too, before the farm is asked: a usage error (exit 2) with no farm to reach.
        try:
            parse_restart_name(name)
        except ValueError as error:
            fail(str(error).replace(repr(name), typed(name), 1), 2)
    reply = ask_supervisor(config, control, {"cmd": "restart", "names": names or []})
    follow_restart(reply, lambda: ask_supervisor(config, control, {"cmd": "restart-status"}))


def follow_restart(
    reply: dict[str, Any],
    status: Callable[[], dict[str, Any]],
    until: float | None = None,
    what: str = "restart",
) -> None:
    """Print "reverse: 7/16 replaced" as it changes until the restart ends, then the slots
    counted as replaced that no one saw serve the new code; exit 1 if a replacement failed,
    or (`farm reload --timeout`) the restart goes on at monotonic ``until``. ``what`` is
    the command it ends, in its verdicts: "restart incomplete", "reload incomplete"."""
    number = reply.get("restart")
    tty = sys.stdout.isatty()
    shown = ""
    moved = time.monotonic()
    while True:
        line = ", ".join(
            f"{name}: {reply['replaced'].get(name, 0)}/{total} replaced"
            for name, total in reply["total"].items()
        )
        if line != shown:
            typer.echo(("\r\x1b[K" if tty else "") + line, nl=not tty)
            shown, moved = line, time.monotonic()
        if reply.get("done") or reply.get("restart") != number:
            break
        if until is not None and time.monotonic() > until:
            if tty:
                typer.echo()
            fail(f"{what} incomplete: the restart goes on past --timeout (farm ps shows it)", 1)
        stall = float(reply.get("boot_timeout", 60.0)) + STALL_PAST_BOOT
        if time.monotonic() - moved > stall:
            if tty:
                typer.echo()
            fail(f"no progress in {stall:g}s (is the job server up? farm ps); it goes on", 1)
        time.sleep(POLL)  # polling the supervisor's progress
        reply = status()
    if tty:
        typer.echo()
    # Imported here: the `farm` command's start does not load the supervisor's parts.
    from farm.logs import escape_controls

    for problem in reply.get("failed", []):
        # A boot error quotes the worker's exception text: the worker's, escaped for the terminal.
        typer.echo(f"farm: {escape_controls(problem)}", err=True)
    for name, count in reply.get("unseen", {}).items():
        # An empty slot (backing off after crashes) counts as replaced: its next process
        # runs the new code. Whether that one serves is not known yet: say so.
        typer.echo(
            f"farm: {name}: {count} slot(s) had no serving process (empty after crashes, or"
            " starting): not seen serving the new code (farm ps shows whether they do)",
            err=True,
        )
    if reply.get("failed"):
        fail(f"{what} incomplete after {reply.get('seconds', 0):g}s", 1)
    typer.echo(f"restarted in {reply.get('seconds', 0):g}s")


def follow_added(
    pools: list[str], ps: Callable[[], dict[str, Any]], began: float, wait: float
) -> None:
    """After a reload (begun at monotonic ``began``) that added ``pools``: wait until each of
    their slots (as many as the ``ps`` reply's targets) has served once, or its first
    process ended before it served (a module that raises at import, a command that exits);
    exit 1 naming each slot that did not serve and how its process ended, that it still
    starts ``wait`` seconds after the reload, or that none started (the job server not
    ready). A command worker that registered other names than its pool's and asks for jobs
    with them (``not_serving_final``) is named with them then, not after the whole wait:
    the supervisor logged it at once, and the reload said only "not serving 62s after it".
    One that has not asked yet may register its pool's name after a slow init (a reload
    failed such a worker 2 s in as it served 4 s in): waited for, and named at the wait's
    end with what it registered so far. The pools stay either way, retried with backoff."""
    # Imported here: the `farm` command's start does not load the supervisor's parts.
    from farm.logs import escape_controls
    from farm.pools.slots import ProcState, worker_name

    # A worker's states in `farm ps` once it serves (a command worker's: "running"), and
    # once asked to go (not a new pool's process): the supervisor's own.
    serving = {s.value for s in ProcState if s.serving}
    retiring = {s.value for s in ProcState if s.ordered}
    served: set[tuple[str, int]] = set()
    wrong: dict[tuple[str, int], str] = {}  # registered other names (so far, or for good)
    final: list[tuple[str, int]] = []  # ... and asks for jobs with them
    deadline = began + wait
    while True:
        reply = ps()
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for r in reply["processes"]:
            if (
                r["function"] in pools
                and r.get("slot") is not None
                and r["state"] not in retiring  # a pool of that name removed before, draining
            ):
                rows.setdefault((r["function"], r["slot"]), r)  # the slot's own, then a successor
        served.update(key for key, r in rows.items() if r["state"] in serving)
        # A slot with no row yet is waited on too: slots are made once the job server is
        # ready, and an added pool whose slots were not made yet was "reloaded" at once.
        slots = [(p, i) for p in pools for i in range(reply["targets"].get(p, 0))]
        waiting = [key for key in slots if key not in served]
        ended = [key for key in waiting if key in rows and rows[key]["restarts"]]  # unasked
        if not waiting:
            return
        wrong = {k: rows[k]["not_serving"] for k in waiting if rows.get(k, {}).get("not_serving")}
        final = [k for k in wrong if rows[k].get("not_serving_final")]
        if len(set(ended) | set(final)) == len(waiting) or time.monotonic() > deadline:
            break
        time.sleep(POLL)  # polling the supervisor's table
    server = own_row(reply["processes"], "server")
    for key in waiting:  # each: one that ended, one still starting, one not started
        row = rows.get(key)
        if row is None:
            why = f"no process started {wait:g}s after it"
            if server is not None and server["state"] != "ready":
                why = f"no process started: the job server is not ready ({server['state']})"
            typer.echo(f"farm: {key[0]}#{key[1]}: added by the reload, {why}", err=True)
            continue
        name = worker_name(row["function"], row["slot"], row["cpu"])
        # Its last output, or its exception's text, or the names it registered: the
        # worker's, escaped for the terminal.
        if key in ended:
            why = escape_controls(row["last_exit"])
        elif key in final:
            why = f"{escape_controls(wrong[key])}: not serving"
        elif key in wrong:  # "registered helper so far, not rev"
            why = f"{escape_controls(wrong[key])}: not serving {wait:g}s after it"
        else:
            why = f"not serving {wait:g}s after it"
        typer.echo(f"farm: {name}: added by the reload, {why} (now {row['state']})", err=True)
    failing = sorted({pool for pool, _ in waiting})  # not those whose every slot served
    fail(
        f"reload incomplete: the pool(s) it added do not serve ({', '.join(failing)}): they stay,"
        " retried with backoff; fix them, or remove them and reload (farm ps, the log)",
        1,
    )
