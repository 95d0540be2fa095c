"""Load generator speaking raw Gearman: farm's server against gearmand, in one run.

    python -m bench.server_load [--jobs 20000] [--inflight 16] [--latency-jobs 2000]
        [--rounds 5] [--gearmand-threads 0,1,4] [--no-held-grab] [--no-lazy-created] [--scrape]
        [--floor] [--farm-root DIR ...]

Throughput: one client keeps ``--inflight`` 16-byte foreground jobs in flight;
two raw-protocol echo workers (separate processes) answer them. Latency: one
client doing sequential jobs, p50/p99 of submit -> WORK_COMPLETE. Beside the
throughput: the CPU the server process itself spent per job (user + system), which on
a small machine sets the rate, since the client and workers share its cores, split into
user and system time (psutil; the kernel samples the split at its clock tick). Both servers
face the same client and workers, so only the server differs. The workers ask
for farm's held grab, as farm's Worker does, and the clients for lazy-created, as
farm.Executor does (gearmand refuses both: it runs the standard protocol); farm is
compared with the best of gearmand's thread settings, figure by figure. Every
figure is the median of ``--rounds`` interleaved rounds. ``--scrape`` scrapes
this tree's farm's metrics once a second while it is measured; ``--farm-root``
adds another checkout's server (metrics on against off: a worktree of the
commit before the counting, with ``--gearmand-threads ''``). ``--floor`` adds
``bench.server_floor``, a bare Python forwarder with none of a server's rules: the
floor under any job server written in Python, beside gearmand's figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.servers import (
    Server,
    free_port,
    start_farm_server,
    start_gearmand,
    wait_connectable,
)

ROOT = Path(__file__).resolve().parent.parent
FUNC = b"echo"
PAYLOAD = b"0123456789abcdef"


def _connect(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _client(addr: str, lazy_created: bool) -> tuple[socket.socket, p.Decoder]:
    """A client connection; with ``lazy_created`` it asks for farm's option, as
    farm.Executor does (docs/held-grab.md; gearmand refuses it: nothing changes)."""
    s = _connect(addr)
    dec = p.Decoder(allow_admin=False)
    if lazy_created:
        s.sendall(p.encode_req(T.OPTION_REQ, p.OPTION_LAZY_CREATED))
        answer: list[object] = []
        while not answer:
            answer = dec.feed(s.recv(4096))  # OPTION_RES, or ERROR UNKNOWN_OPTION
    return s, dec


def echo_worker(addr: str, held_grab: bool) -> None:
    """GRAB -> JOB_ASSIGN -> WORK_COMPLETE+GRAB, sleeping on PRE_SLEEP when idle.

    With ``held_grab`` it asks for farm's extension (docs/held-grab.md), as farm's own
    Worker does; gearmand refuses it and the worker keeps the standard dance. A pushed
    job needs no JOB_ACCEPT here: its WORK_COMPLETE follows at once and counts as one.
    """
    s = _connect(addr)
    dec = p.Decoder(allow_admin=False)
    grab = p.encode_req(T.GRAB_JOB)
    held = False
    ask = p.encode_req(T.OPTION_REQ, p.OPTION_HELD_GRAB) if held_grab else b""
    s.sendall(ask + p.encode_req(T.CAN_DO, FUNC) + grab)
    while True:
        data = s.recv(65536)
        if not data:
            return
        out = bytearray()
        for pkt in dec.feed(data):
            if pkt.type == T.JOB_ASSIGN:
                out += p.encode_req(T.WORK_COMPLETE, pkt.args[0], pkt.args[2]) + grab
            elif pkt.type == T.NO_JOB:
                out += p.encode_req(T.PRE_SLEEP)
            elif pkt.type == T.NOOP and not held:
                out += grab
            elif pkt.type == T.OPTION_RES:
                held = True
        if out:
            s.sendall(out)


def throughput(addr: str, jobs: int, inflight: int, lazy_created: bool = True) -> float:
    s, dec = _client(addr, lazy_created)
    submit = p.encode_req(T.SUBMIT_JOB, FUNC, b"", PAYLOAD)
    sent = done = 0
    start = time.perf_counter()
    s.sendall(submit * inflight)
    sent = inflight
    while done < jobs:
        n = 0
        for pkt in dec.feed(s.recv(65536)):
            if pkt.type == T.WORK_COMPLETE:
                n += 1
        done += n
        more = min(n, jobs - sent)
        if more > 0:
            s.sendall(submit * more)
            sent += more
    elapsed = time.perf_counter() - start
    s.close()
    return jobs / elapsed


def latency(addr: str, jobs: int, lazy_created: bool = True) -> tuple[float, float]:
    s, dec = _client(addr, lazy_created)
    submit = p.encode_req(T.SUBMIT_JOB, FUNC, b"", PAYLOAD)
    samples = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        s.sendall(submit)
        finished = False
        while not finished:
            for pkt in dec.feed(s.recv(65536)):
                finished = finished or pkt.type == T.WORK_COMPLETE
        samples.append(time.perf_counter() - t0)
    s.close()
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def start_server(kind: str, args: argparse.Namespace) -> tuple[Server, str | None]:
    """The server a row names, and the URL to scrape while it is measured (or None)."""
    if kind.startswith("gearmand -t "):
        return start_gearmand("--threads", kind.rpartition(" ")[2]), None
    if kind == "farm":
        if not args.scrape:
            return start_farm_server(), None
        port = free_port()
        return start_farm_server(
            "--metrics", f"127.0.0.1:{port}"
        ), f"http://127.0.0.1:{port}/metrics"
    if kind == "floor":  # bench.server_floor: a bare Python forwarder, no server's rules
        root = ROOT
        argv = [sys.executable, "-m", "bench.server_floor", "--port", "{port}"]
    else:
        root = Path(kind.partition(" ")[2])  # "farm-root DIR": another checkout's server
        argv = [sys.executable, "-m", "farm.server", "--port", "{port}", "--store", "none"]
    port = free_port()
    proc = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in argv],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_connectable(f"127.0.0.1:{port}", proc, timeout=30)
    return Server("farm", f"127.0.0.1:{port}", proc, port), None


def scraping(url: str, stop: threading.Event) -> None:
    """Fetch the metrics once a second, as Prometheus would, until told to stop."""
    while not stop.wait(1.0):
        with urllib.request.urlopen(url, timeout=10) as reply:
            reply.read()


def measure(kind: str, args: argparse.Namespace) -> dict[str, float]:
    server, url = start_server(kind, args)
    held = not args.no_held_grab
    workers = [
        mp.Process(target=echo_worker, args=(server.addr, held), daemon=True) for _ in range(2)
    ]
    stop = threading.Event()
    scraper = threading.Thread(target=scraping, args=(url, stop), daemon=True) if url else None
    try:
        for w in workers:
            w.start()
        lazy = not args.no_lazy_created
        throughput(server.addr, 500, args.inflight, lazy)  # warm-up
        if scraper is not None:
            scraper.start()
        # The server's own CPU per job, beside the rate (which on a small machine the client
        # and the workers share the cores with).
        # Split into user and system time: the system time (the socket calls, and the
        # loopback delivery and wake-ups the kernel does inside them) is what no change to
        # the interpreter's share can remove.
        proc = psutil.Process(server.proc.pid)
        before = proc.cpu_times()
        rate = throughput(server.addr, args.jobs, args.inflight, lazy)
        after = proc.cpu_times()
        user_us = (after.user - before.user) / args.jobs * 1e6
        sys_us = (after.system - before.system) / args.jobs * 1e6
        p50, p99 = latency(server.addr, args.latency_jobs, lazy)
        return {
            "jobs_s": rate,
            "p50_us": p50,
            "p99_us": p99,
            "cpu_us": user_us + sys_us,
            "user_us": user_us,
            "sys_us": sys_us,
        }
    finally:
        stop.set()
        for w in workers:
            w.kill()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--latency-jobs", type=int, default=2000)
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternate the servers this many times; each figure is the median of the rounds",
    )
    ap.add_argument(
        "--gearmand-threads",
        default="0,1,4",
        help="gearmand --threads settings to run ('' for none); farm is compared with the best",
    )
    ap.add_argument(
        "--no-held-grab", action="store_true", help="workers do not ask for farm's held grab"
    )
    ap.add_argument(
        "--no-lazy-created",
        action="store_true",
        help="clients do not ask for farm's lazy-created (farm.Executor does)",
    )
    ap.add_argument(
        "--scrape",
        action="store_true",
        help="serve this tree's farm with --metrics and scrape it once a second while measured",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also measure bench.server_floor, a bare Python forwarder: the language's floor",
    )
    ap.add_argument(
        "--farm-root",
        action="append",
        default=[],
        metavar="DIR",
        help="also measure farm's server from another checkout (e.g. a git worktree)",
    )
    args = ap.parse_args()
    threads = [t for t in args.gearmand_threads.split(",") if t]
    kinds = [f"gearmand -t {t}" for t in threads] + ["farm"]
    kinds += [f"farm-root {Path(r).resolve()}" for r in args.farm_root]
    kinds += ["floor"] if args.floor else []
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            runs[kind].append(measure(kind, args))
    results = {
        kind: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for kind, rs in runs.items()
    }
    title = f"jobs/s (1 client x {args.inflight} in flight, 2 workers)"
    print(f"medians of {args.rounds} interleaved rounds\n")
    print(f"| server | {title} | server CPU µs/job (user + sys) | p50 µs | p99 µs |")
    print("|---|---:|---:|---:|---:|")
    for kind, r in results.items():
        print(
            f"| {kind} | {r['jobs_s']:,.0f} | {r['cpu_us']:.0f} ({r['user_us']:.0f} + "
            f"{r['sys_us']:.0f}) | {r['p50_us']:.0f} | {r['p99_us']:.0f} |"
        )
    f = results["farm"]

    def ratios(name: str, r: dict[str, float]) -> None:
        print(
            f"| farm / {name} | {f['jobs_s'] / r['jobs_s']:.2f}x | {f['cpu_us'] / r['cpu_us']:.2f}x"
            f" | {f['p50_us'] / r['p50_us']:.2f}x | {f['p99_us'] / r['p99_us']:.2f}x |"
        )

    for other, r in results.items():
        if other != "farm":
            ratios(other, r)
    peers = [r for kind, r in results.items() if kind.startswith("gearmand")]
    if len(peers) > 1:
        best = {
            "jobs_s": max(r["jobs_s"] for r in peers),
            "cpu_us": min(r["cpu_us"] for r in peers),
            "p50_us": min(r["p50_us"] for r in peers),
            "p99_us": min(r["p99_us"] for r in peers),
        }
        ratios("best gearmand", best)


if __name__ == "__main__":
    main()
