"""What a server keeps of functions that come and go, and of a stream nobody reads.

    python -m bench.bench_churn [--only churn,stream] [--farm] [--gearmand]
        [--farm-root DIR ...] [--server-cmd CMD ...]

Servers are chosen as in ``bench.bench_hostile`` (this tree's farm, another
checkout's, gearmand, any command). Each item runs against a fresh server:

* churn: one connection registers ``--names`` distinct 500-byte function names
  (CAN_DO, in rounds of 4,000, below farm's --max-abilities) and drops each
  again (CANT_DO); then how many functions ``status`` still lists, and the
  server's RSS growth.
* stream: a client submits a job and never reads; its worker streams
  ``--stream-mb`` 1 MiB WORK_DATA packets; how much of the stream the server
  takes from the worker before it stops reading it (2 s without progress),
  and the server's RSS growth.
"""

from __future__ import annotations

import argparse
import select
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import Target, add_target_args, targets
from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer

MIB = 1 << 20
ROUND = 4000


def churn(target: Target, args: argparse.Namespace) -> Iterator[list[str]]:
    srv = target.start()
    try:
        proc = psutil.Process(srv.proc.pid)
        before = proc.memory_info().rss
        w = Peer(srv.addr, timeout=120)
        for start in range(0, args.names, ROUND):
            names = [b"%07d" % i + b"n" * 493 for i in range(start, min(start + ROUND, args.names))]
            w.send_raw(b"".join(p.encode_req(T.CAN_DO, n) for n in names))
            w.send_raw(b"".join(p.encode_req(T.CANT_DO, n) for n in names))
        w.send(T.ECHO_REQ, "done")
        w.expect(T.ECHO_RES, timeout=120)
        kept = len(w.admin("status", timeout=120).splitlines()) - 1
        grown = (proc.memory_info().rss - before) // MIB
        yield [target.label, f"{kept:,}", f"+{grown} MiB"]
    finally:
        srv.stop()


def stream(target: Target, args: argparse.Namespace) -> Iterator[list[str]]:
    srv = target.start()
    try:
        proc = psutil.Process(srv.proc.pid)
        before = proc.memory_info().rss
        client = Peer(srv.addr)
        client.send(T.SUBMIT_JOB, "stream", "", "go")
        handle = client.expect(T.JOB_CREATED).args[0]
        worker = Peer(srv.addr)
        worker.send(T.CAN_DO, "stream")
        worker.send(T.GRAB_JOB)
        worker.expect(T.JOB_ASSIGN)
        packet = p.encode_req(T.WORK_DATA, handle, b"d" * MIB)
        chunk = memoryview(packet * 8)
        total, taken = len(packet) * args.stream_mb, 0
        worker.sock.setblocking(False)
        while taken < total:
            if not select.select([], [worker.sock], [], 2.0)[1]:
                break  # the server stopped reading the worker
            taken += worker.sock.send(chunk[taken % len(chunk) :][: total - taken])
        time.sleep(0.5)  # let the server settle what it took
        grown = (proc.memory_info().rss - before) // MIB
        yield [target.label, f"{taken // MIB} of {total // MIB} MiB", f"+{grown} MiB"]
    finally:
        srv.stop()


ITEMS: dict[str, tuple[str, Callable[[Target, argparse.Namespace], Iterator[list[str]]]]] = {
    "churn": ("| server | functions still listed | RSS growth |", churn),
    "stream": ("| server | taken from the worker | RSS growth |", stream),
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default=",".join(ITEMS), help="comma-separated: %(default)s")
    add_target_args(ap)
    ap.add_argument("--names", type=int, default=100_000)
    ap.add_argument("--stream-mb", type=int, default=96)
    args = ap.parse_args()
    chosen = targets(args)
    for item in args.only.split(","):
        head, measure = ITEMS[item]
        print(f"\n{item}:\n\n{head}\n|---|---:|---:|")
        for target in chosen:
            for row in measure(target, args):
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
