"""`farm top`: the farm live in a terminal, from what it already reports.

Each second it asks the supervisor for ``ps`` (control socket) and reads the metrics
endpoint once; it computes nothing the farm does not count. Rates (jobs/s, CPU %) and
recent run-time quantiles are the difference between two readings a few seconds apart;
p50/p99 come from the run-time histogram's buckets, as PromQL's histogram_quantile.

Keys: ``q`` quits, ``s`` cycles the sort key, a letter picks one (farm.cli.rows).
Without a terminal (a pipe, a test) each frame is printed in turn. When the farm stops
under the view it says so and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from farm.cli.app import (
    MAX_INTERVAL,
    ConfigOption,
    FarmCommand,
    app,
    control_socket,
    fail,
    metrics_url,
    named_config,
)
from farm.cli.rows import (
    SORT_KEYS,
    SORT_LETTERS,
    FunctionRow,
    Samples,
    answered,
    buckets,
    held_as,
    quantile,
    total,
)
from farm.cli.terminal import no_keys, terminal_keys

__all__ = ["Sampler", "Sample", "live_view"]

#: How far back rates and recent quantiles look.
WINDOW = 5.0
#: How long one reading of the endpoint may take: longer than the supervisor waits for its
#: server (farm.pools.metrics.SERVER_TIMEOUT, 2 s, one request shared by the scrapes that
#: come meanwhile, so other scrapers do not add to it), so a hung server costs the reading
#: only the server's part (farm_server_up 0), not the supervisor's too.
SCRAPE_TIMEOUT = 5.0
#: The width a frame is drawn at when it goes to no terminal: wider than any row.
UNCUT_WIDTH = 1000


@dataclass
class Sample:
    """One reading of the farm: its processes, and its numbers when the endpoint answered."""

    when: float
    processes: list[dict[str, Any]]
    metrics: Samples | None
    metrics_url: str | None
    note: str = ""
    serves: dict[str, list[str]] = field(default_factory=dict)  # pool -> its functions
    server: bool = False  # whether ``metrics`` holds the job server's part


class ControlRefused(Exception):
    """The supervisor refused to say: it runs another config than the one named."""


class Sampler:
    """Reads the farm each time it is asked and keeps the last few seconds of readings."""

    def __init__(
        self,
        control: str,
        metrics_url: str | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        self.control = control
        self.metrics_url = metrics_url  # None: the address the supervisor reports
        self.history: deque[Sample] = deque()
        # The config the user named (farm.cli.app.named_config): another farm's is refused.
        self.ask: dict[str, Any] = {"cmd": "ps", **(config or {})}

    def sample(self) -> Sample:
        """Raises ControlUnavailable when no supervisor answers, ControlRefused when it
        answers for another config."""
        import http.client  # here, as scrape's urllib: they cost every other command's start
        import urllib.error

        from farm.pools.control import request

        reply = request(self.control, self.ask, timeout=5.0)
        if not reply.get("ok"):
            raise ControlRefused(str(reply.get("error", "the supervisor refused")))
        url = self.metrics_url
        if url is None and reply.get("metrics"):
            url = f"http://{reply['metrics']}/metrics"
        metrics, note = None, "metrics: off ([supervisor] metrics)"
        if reply.get("metrics_error"):  # asked for, and not served: not "off"
            note = f"metrics: {reply['metrics_error']}"
        if url is not None:
            try:
                metrics, note = scrape(url), ""
            except NotPrometheusText:
                # It answered: "did not answer (ValueError('invalid metric name:<!DOCTYPE"
                # sent the operator after a server that was up, at the wrong address.
                note = f"metrics: {url} answered with something that is not Prometheus text"
            except urllib.error.HTTPError as exc:  # an OSError, though it answered
                why = "is the path /metrics?" if exc.code == 404 else exc.reason
                note = f"metrics: {url} answered HTTP {exc.code} ({why})"
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # HTTPException: not an HTTP server there, or a reply cut off by a restart.
                note = f"metrics: {url} did not answer ({exc!r})"
        if metrics is not None and not any(name.startswith("farm_") for name, _ in metrics):
            # Another program's endpoint (Prometheus's own /metrics): its numbers are none
            # of the farm's, not a farm whose job servers are remote.
            metrics, note = None, f"metrics: {url} serves no farm metrics"
        # The supervisor answers without the server's part while its server is down or
        # restarting, and always when its job servers are remote (`servers`): the jobs'
        # numbers are unknown then, not 0. A bare server's endpoint (--metrics) is all
        # server's part, with no farm_server_up.
        up = None if metrics is None else metrics.get(("farm_server_up", ()))
        server = up == 1.0 or (
            up is None and metrics is not None and ("farm_server_start_time_seconds", ()) in metrics
        )
        if up == 0.0:
            note = "metrics: the job server did not answer (farm_server_up 0)"
        elif metrics is not None and not server:
            note = "metrics: no job server's numbers here (its job servers are remote)"
        processes, serves = list(reply.get("processes", [])), dict(reply.get("serves", {}))
        now = Sample(time.monotonic(), processes, metrics, url, note, serves, server)
        if metrics is not None:
            self.history.append(now)
            while len(self.history) > 2 and now.when - self.history[1].when >= WINDOW:
                self.history.popleft()
        return now

    def before(self, now: Sample) -> Sample | None:
        """The oldest reading in the window, to difference ``now`` against."""
        first = self.history[0] if self.history else None
        return first if first is not None and first is not now else None

    def functions(self, now: Sample) -> list[FunctionRow]:
        """One row per function the server counts or the supervisor runs a pool for."""
        m = now.metrics or {}
        # A pool is named by its table, and may serve other functions (a PHP pool `php_rev`
        # with function = "reverse") or several: its processes count under each of them.
        # (A supervisor that does not say what its pools serve: each serves its own name.)
        processes: dict[str, list[dict[str, Any]]] = {}
        for r in now.processes:
            if r.get("slot") is not None:
                for fn in now.serves.get(r["function"]) or [r["function"]]:
                    processes.setdefault(fn, []).append(r)
        names = set(processes) | {
            dict(labels)["function"]
            for name, labels in m
            if name == "farm_jobs_submitted_total" and "function" in dict(labels)
        }
        then = self.before(now)
        if then is not None and not (then.server and now.server):
            then = None  # a reading without the server's numbers differences to nothing
        seconds = now.when - then.when if then is not None else 0.0
        # A server restarted between the readings counts from 0 again: what it counts now
        # all came after the earlier reading (a reset, as Prometheus reads a counter that
        # went down). Differenced against the old server's counts, it read as 0 jobs/s.
        start = ("farm_server_start_time_seconds", ())
        if (
            then is not None
            and then.metrics is not None
            and then.metrics.get(start) != m.get(start)
        ):
            then = Sample(then.when, then.processes, {}, then.metrics_url, server=True)
        rows = []
        for fn in sorted(names):
            held = [held_as(r) for r in processes.get(fn, ())]
            rate = None
            if then is not None and then.metrics is not None and seconds > 0:
                rate = max(0.0, answered(m, fn) - answered(then.metrics, fn)) / seconds
            run = buckets(m, "farm_job_run_seconds", fn)
            if then is not None and then.metrics is not None:
                earlier = dict(buckets(then.metrics, "farm_job_run_seconds", fn))
                recent = [(le, count - earlier.get(le, 0.0)) for le, count in run]
                if recent and recent[-1][1] > 0:
                    run = recent  # what ran in the window; else since the server started
            queued, running, workers, failures, refused, dropped, p50, p99 = (
                (
                    int(total(m, "farm_jobs_queued", fn)),
                    int(total(m, "farm_jobs_running", fn)),
                    int(total(m, "farm_workers", fn)),
                    int(
                        total(m, "farm_jobs_failed_total", fn)
                        + total(m, "farm_jobs_exceptions_total", fn)
                    ),
                    int(total(m, "farm_jobs_refused_total", fn)),  # every reason and priority
                    int(total(m, "farm_jobs_dropped_total", fn)),
                    quantile(run, 0.5),
                    quantile(run, 0.99),
                )
                if now.server
                else (None,) * 8  # shown as "-": unknown, not 0
            )
            rows.append(
                FunctionRow(
                    name=fn,
                    queued=queued,
                    running=running,
                    workers=workers,
                    idle=held.count("idle"),
                    busy=held.count("busy"),
                    rate=rate,
                    p50=p50,
                    p99=p99,
                    failures=failures,
                    refused=refused,
                    dropped=dropped,
                )
            )
        return rows

    def cpu(self, now: Sample) -> dict[tuple[str, int], float]:
        """CPU % of each slot's worker over the window (a replaced process is left out)."""
        then = self.before(now)
        if then is None or then.metrics is None or now.metrics is None:
            return {}
        seconds = now.when - then.when
        # The counter starts over with each process of a slot: two readings are of one
        # process only where the slot has the same pid in both (a lower reading is not
        # enough: a successor may have used more than the process before it).
        pids_then, pids_now = slot_pids(then), slot_pids(now)
        out = {}
        for (name, labels), value in now.metrics.items():
            if name != "farm_worker_cpu_seconds_total" or seconds <= 0:
                continue
            where = dict(labels)
            slot = (where["pool"], int(where["slot"]))
            earlier = then.metrics.get((name, labels))
            same = bool(pids_now.get(slot)) and pids_now.get(slot) == pids_then.get(slot)
            if earlier is not None and value >= earlier and same:
                out[slot] = 100.0 * (value - earlier) / seconds
        return out


def slot_pids(sample: Sample) -> dict[tuple[str, int], int]:
    """The pid of each (pool, slot)'s process in a reading's `ps`: its first row, as `ps`
    lists a slot's own process before a `farm restart` successor and the retiring ones,
    which may name the slot too (an empty slot's row has no pid: None)."""
    pids: dict[tuple[str, int], int] = {}
    for r in sample.processes:
        if r.get("slot") is not None:
            pids.setdefault((r["function"], int(r["slot"])), r["pid"])
    return pids


class NotPrometheusText(ValueError):
    """The endpoint answered with something else (an HTML page, a binary body)."""


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus endpoint, by (name, sorted labels); NotPrometheusText
    when what it answered does not parse as the text format."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as reply:
        body = reply.read()
    # Parsed apart from the reading: a ValueError here is the answer's, not the network's.
    try:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise NotPrometheusText(str(exc)) from exc


def live_view(
    control: str,
    metrics_url: str | None = None,
    *,
    interval: float = 1.0,
    iterations: int | None = None,
    sort: str = "name",
    processes_only: bool = False,
    config: dict[str, str] | None = None,
) -> int:
    """Draw the farm every ``interval`` seconds until `q`, ``iterations`` frames, or the farm
    stops; the exit code. `farm ps --watch` is this with ``processes_only``. ``config``:
    the one the user named, which the supervisor refuses if it runs another (exit 2)."""
    from rich.console import Console
    from rich.live import Live

    from farm.cli.liveview import frame
    from farm.pools.control import ControlUnavailable, SupervisorStopped

    sampler = Sampler(control, metrics_url, config)
    try:
        now = sampler.sample()  # no farm at all is an error; a farm that goes away is not
    except ControlUnavailable as exc:
        fail(str(exc), 1)
    except ControlRefused as exc:  # the supervisor's own line: --help would not fix it
        fail(str(exc), 2, usage=False)
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Into a pipe or a file (grep, a cron job's mail): there is no screen to fit, and
        # rich's 80 columns cut names and numbers short ("a_poo…").
        console = Console(width=UNCUT_WIDTH)
    interactive = console.is_terminal and sys.stdin.isatty()
    live = Live(console=console, screen=True, auto_refresh=False) if interactive else None
    shown, gone = 0, ""
    with terminal_keys(interactive) as keys, live or contextlib.nullcontext():
        while True:
            status = f"farm · {time.strftime('%H:%M:%S')} · sort: {sort}"
            if now.note:
                status += f" · {now.note}"
            view = frame(
                None if processes_only else sampler.functions(now),
                now.processes,
                sort=sort,
                cpu=sampler.cpu(now),
                status=status,
                height=console.size.height if interactive else None,
                width=console.width,
                keys=interactive,
            )
            if live is not None:
                live.update(view, refresh=True)
            else:
                console.print(view)
            shown += 1
            if iterations is not None and shown >= iterations:
                break
            key = keys.wait(interval) if keys is not None else no_keys(interval)
            if key == "q":
                break
            if key == "s":
                sort = SORT_KEYS[(SORT_KEYS.index(sort) + 1) % len(SORT_KEYS)]
            sort = SORT_LETTERS.get(key, sort)
            try:
                now = sampler.sample()
            except SupervisorStopped:  # Ctrl-Z'd: the farm serves on; drawn again at `fg`
                now.note = "the supervisor is stopped (Ctrl-Z): waiting for it"
                continue
            except (ControlUnavailable, ControlRefused) as exc:  # Refused: another farm's now
                gone = f"the farm stopped: {exc}"
                break
    if gone:
        console.print(gone)
    return 0


@app.command(cls=FarmCommand)
def top(
    config: Path | None = ConfigOption,
    control: Annotated[str | None, typer.Option("--control", help="control socket")] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="HOST:PORT|URL",
            help="the metrics endpoint (default: where the supervisor says it serves them)",
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.1, max=MAX_INTERVAL, help="seconds between frames"),
    ] = 1.0,
    iterations: Annotated[
        int | None, typer.Option("--iterations", min=1, help="stop after this many frames")
    ] = None,
    sort: Annotated[str, typer.Option("--sort", help=f"one of {', '.join(SORT_KEYS)}")] = "name",
) -> None:
    """A live view: each function's queue, rate, run times and failures, and each process."""
    if sort not in SORT_KEYS:
        fail(f"--sort {sort}: one of {', '.join(SORT_KEYS)}", 2)
    if once and iterations is not None:  # which count was meant? (--once won, unsaid)
        fail("--once draws one frame, --iterations N frames: give one of them", 2)
    url = None if metrics is None else metrics_url(metrics)
    control = control_socket(config, control)
    code = live_view(
        control,
        url,
        interval=interval,
        iterations=1 if once else iterations,
        sort=sort,
        config=named_config(config),
    )
    raise typer.Exit(code)
