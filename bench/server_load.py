"""Load generator speaking raw Gearman: farm's server against gearmand, in one run.

    python -m bench.server_load [--jobs 20000] [--inflight 16] [--latency-jobs 2000]

Throughput: one client keeps ``--inflight`` 16-byte foreground jobs in flight;
two raw-protocol echo workers (separate processes) answer them. Latency: one
client doing sequential jobs, p50/p99 of submit -> WORK_COMPLETE. Both servers
face the same client and workers, so only the server differs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.servers import start_farm_server, start_gearmand

FUNC = b"echo"
PAYLOAD = b"0123456789abcdef"


def _connect(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def echo_worker(addr: str) -> None:
    """GRAB -> JOB_ASSIGN -> WORK_COMPLETE+GRAB, sleeping on PRE_SLEEP when idle."""
    s = _connect(addr)
    dec = p.Decoder(allow_admin=False)
    grab = p.encode_req(T.GRAB_JOB)
    s.sendall(p.encode_req(T.CAN_DO, FUNC) + grab)
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
            elif pkt.type == T.NOOP:
                out += grab
        if out:
            s.sendall(out)


def throughput(addr: str, jobs: int, inflight: int) -> float:
    s = _connect(addr)
    dec = p.Decoder(allow_admin=False)
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


def latency(addr: str, jobs: int) -> tuple[float, float]:
    s = _connect(addr)
    dec = p.Decoder(allow_admin=False)
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


def measure(kind: str, args: argparse.Namespace) -> dict[str, float]:
    server = start_farm_server() if kind == "farm" else start_gearmand()
    workers = [mp.Process(target=echo_worker, args=(server.addr,), daemon=True) for _ in range(2)]
    try:
        for w in workers:
            w.start()
        throughput(server.addr, 500, args.inflight)  # warm-up
        rate = throughput(server.addr, args.jobs, args.inflight)
        p50, p99 = latency(server.addr, args.latency_jobs)
        return {"jobs_s": rate, "p50_us": p50, "p99_us": p99}
    finally:
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
        "--rounds", type=int, default=2, help="alternate the servers this many times; keep the best"
    )
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for kind in ("gearmand", "farm"):
            r = measure(kind, args)
            best = results.setdefault(kind, r)
            best["jobs_s"] = max(best["jobs_s"], r["jobs_s"])
            best["p50_us"] = min(best["p50_us"], r["p50_us"])
            best["p99_us"] = min(best["p99_us"], r["p99_us"])
    g, f = results["gearmand"], results["farm"]
    title = f"jobs/s (1 client x {args.inflight} in flight, 2 workers)"
    print(f"| server | {title} | p50 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for kind, r in results.items():
        print(f"| {kind} | {r['jobs_s']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |")
    print(
        f"| farm / gearmand | {f['jobs_s'] / g['jobs_s']:.2f}x | "
        f"{f['p50_us'] / g['p50_us']:.2f}x | {f['p99_us'] / g['p99_us']:.2f}x |"
    )


if __name__ == "__main__":
    main()
