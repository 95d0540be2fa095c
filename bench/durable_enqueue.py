"""Durable background enqueue rate: farm's SQLite store against gearmand's, in one run.

    python -m bench.durable_enqueue [--jobs 20000] [--window 256]

One client pipelines 16-byte SUBMIT_JOB_BG packets (``--window`` in flight) and
counts JOB_CREATED replies; no worker runs, so every job stays queued. Rows:
gearmand with ``-q libsqlite3`` (its durable queue), farm with its default
SQLite store, farm with ``--store none`` (memory only), gearmand in memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.servers import (
    Server,
    connect,
    free_port,
    start_farm_server,
    start_gearmand,
    wait_connectable,
)

PAYLOAD = b"0123456789abcdef"


def enqueue_rate(addr: str, jobs: int, window: int) -> float:
    sock = connect(addr, timeout=60)
    decoder = p.Decoder(allow_admin=False)
    packets = [p.encode_req(T.SUBMIT_JOB_BG, b"durable", b"u%d" % i, PAYLOAD) for i in range(jobs)]
    start = time.perf_counter()
    sent = min(window, jobs)
    sock.sendall(b"".join(packets[:sent]))
    created = 0
    while created < jobs:
        for pkt in decoder.feed(sock.recv(1 << 16)):
            assert pkt.type == T.JOB_CREATED, pkt
            created += 1
        more = min(created + window, jobs) - sent
        if more > 0:
            sock.sendall(b"".join(packets[sent : sent + more]))
            sent += more
    elapsed = time.perf_counter() - start
    sock.close()
    return jobs / elapsed


def farm_with_store(db: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "farm.server", "--port", str(port), "--store", str(db)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    wait_connectable(f"127.0.0.1:{port}", proc)
    return Server("farm", f"127.0.0.1:{port}", proc, port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        setups = {
            "gearmand -q libsqlite3": lambda: start_gearmand(
                "-q", "libsqlite3", "--libsqlite3-db", f"{tmp}/gearmand.db"
            ),
            "farm --store FILE (SQLite, default)": lambda: farm_with_store(Path(tmp) / "farm.db"),
            "farm --store none": start_farm_server,
            "gearmand (memory)": start_gearmand,
        }
        for name, start in setups.items():
            srv = start()
            try:
                rows.append((name, enqueue_rate(srv.addr, args.jobs, args.window)))
            finally:
                srv.stop()
    base = rows[0][1]
    title = f"jobs/s ({args.jobs} x 16 B, {args.window} in flight)"
    print(f"| server | durable? | {title} | vs gearmand+sqlite |")
    print("|---|---|---:|---:|")
    for name, rate in rows:
        durable = "yes" if "sqlite" in name.lower() or "FILE" in name else "no"
        print(f"| {name} | {durable} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
