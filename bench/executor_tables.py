"""bench_executor's figures: one executor's results, medians of rounds, and the tables.

Kept apart from the measuring (bench/bench_executor.py) so that what is printed,
and how the best pool of a row is chosen, reads in one place.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.bench_executor import Workload

FARM, PPE, LOKY, MP = "farm", "ProcessPoolExecutor", "loky", "mp.Pool"
POOLS = (PPE, LOKY, MP)
LATENCY = "single calls"  # the latency run's row in the CPU table


@dataclass
class Results:
    """One executor's numbers: calls/s per workload, latency, CPU µs per call per role."""

    rate: dict[str, float] = field(default_factory=dict)
    p50: float = math.nan
    p99: float = math.nan
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


def median_of(rounds: list[Results]) -> Results:
    """Each figure the median of the rounds' (a noisy machine: see ``--rounds``)."""
    out = Results()
    for label in dict.fromkeys(k for r in rounds for k in r.rate):
        out.rate[label] = statistics.median(r.rate[label] for r in rounds if label in r.rate)
    for q in ("p50", "p99"):
        values = [getattr(r, q) for r in rounds if not math.isnan(getattr(r, q))]
        setattr(out, q, statistics.median(values) if values else math.nan)
    for label in dict.fromkeys(k for r in rounds for k in r.cpu):
        roles = dict.fromkeys(role for r in rounds for role in r.cpu.get(label, {}))
        out.cpu[label] = {
            role: statistics.median(
                r.cpu[label][role] for r in rounds if role in r.cpu.get(label, {})
            )
            for role in roles
        }
    return out


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    if digits == 0 and abs(value) < 10:
        return f"{value:.1f}"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def pct(value: float | None, ideal: float | None) -> str:
    if value is None or ideal is None or math.isnan(value):
        return "-"
    return f"{100 * value / ideal:.0f}%"


def best_pools(res: dict[str, Results], loads: list[Workload]) -> dict[str, str]:
    """Row -> the pool that did best on it (highest calls/s; lowest p50 for latency)."""
    pools = [p for p in POOLS if p in res]
    best = {}
    for w in loads:
        rated = [p for p in pools if w.label in res[p].rate]
        if rated:
            best[w.label] = max(rated, key=lambda p: res[p].rate[w.label])
    timed = [p for p in pools if not math.isnan(res[p].p50)]
    if timed:
        best[LATENCY] = min(timed, key=lambda p: res[p].p50)
    return best


def print_tables(
    res: dict[str, Results], loads: list[Workload], workers: int, best: dict[str, str]
) -> None:
    empty = Results()
    get = {name: res.get(name, empty) for name in (FARM, *POOLS)}
    f = get[FARM]
    print("\n### Throughput (calls/s, higher is better)\n")
    print(
        f"| workload | farm | {PPE} | loky | mp.Pool | farm/best pool"
        " | farm % ideal | best pool % ideal |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in loads:
        cells = [fmt(get[n].rate.get(w.label)) for n in (FARM, *POOLS)]
        b = best.get(w.label)
        bv = get[b].rate.get(w.label) if b else None
        versus = f"{ratio(f.rate.get(w.label), bv)} ({b})" if b else "-"
        ideal = w.ideal(workers)
        print(
            f"| {w.label} | {' | '.join(cells)} | {versus}"
            f" | {pct(f.rate.get(w.label), ideal)} | {pct(bv, ideal)} |"
        )

    print("\n### Single `submit(tiny).result()` latency (µs, lower is better)\n")
    print(f"| | farm | {PPE} | loky | mp.Pool | farm/{PPE} |")
    print("|---|---:|---:|---:|---:|---:|")
    for q in ("p50", "p99"):
        cells = [fmt(getattr(get[n], q)) for n in (FARM, *POOLS)]
        print(f"| {q} | {' | '.join(cells)} | {ratio(getattr(f, q), getattr(get[PPE], q))} |")

    print("\n### CPU per call (µs of user+sys CPU, summed over the processes in each role)\n")
    print(
        "| workload | farm supervisor | farm server | farm caller | farm workers"
        f" | farm busiest worker | farm total | {PPE} caller | {PPE} workers | {PPE} total |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in [w.label for w in loads] + [LATENCY]:
        c, p = f.cpu.get(label, {}), get[PPE].cpu.get(label, {})
        ftotal = sum(c.get(k, math.nan) for k in ("supervisor", "server", "caller", "workers"))
        ptotal = p.get("caller", math.nan) + p.get("workers", math.nan)
        values: list[float | None] = [
            c.get(k) for k in ("supervisor", "server", "caller", "workers", "busiest")
        ]
        values += [ftotal, p.get("caller"), p.get("workers"), ptotal]
        print(f"| {label} | {' | '.join(fmt(v) for v in values)} |")
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    print(
        "\n(busiest worker: the farm worker that used the most CPU, per call it ran."
        f" The kernel counts CPU time in {tick:,.0f} µs ticks per process: divide by the"
        " calls for the resolution of a cell. Ideal: N workers doing only the CPU work.)"
    )


def print_hog_table(
    base: dict[str, Results],
    hogged: dict[str, Results],
    loads: list[Workload],
    best: dict[str, str],
    count: int,
) -> None:
    print(f"\n### With {count} busy-loop hog processes running (farm vs the row's best pool)\n")
    print("| workload | farm | best pool | that pool | farm/pool | farm vs no hogs |")
    print("|---|---:|---|---:|---:|---:|")
    f = hogged.get(FARM, Results())
    for w in loads:
        b = best.get(w.label)
        bv = hogged[b].rate.get(w.label) if b and b in hogged else None
        mine = f.rate.get(w.label)
        calm = base[FARM].rate.get(w.label) if FARM in base else None
        print(
            f"| {w.label} (calls/s) | {fmt(mine)} | {b or '-'} | {fmt(bv)} | {ratio(mine, bv)}"
            f" | {ratio(mine, calm)} |"
        )
    b = best.get(LATENCY)
    for q in ("p50", "p99"):
        mine = getattr(f, q)
        bv = getattr(hogged[b], q) if b and b in hogged else None
        calm = getattr(base[FARM], q) if FARM in base else None
        print(
            f"| single call {q} (µs, lower is better) | {fmt(mine)} | {b or '-'} | {fmt(bv)}"
            f" | {ratio(mine, bv)} | {ratio(mine, calm)} |"
        )
