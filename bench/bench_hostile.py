"""Hostile peers against a job server: a huge ability table, huge names, half-sent bodies.

    python -m bench.bench_hostile [--only abilities,names,partial]
        [--farm] [--gearmand] [--farm-root DIR ...] [--server-cmd CMD ...]

Each item runs against a fresh server on a free 127.0.0.1 port and prints one
markdown table row per server:

* abilities: one worker connection sends ``--abilities`` CAN_DOs (distinct
  names) and an ECHO_REQ (the time to its ECHO_RES is the registration); a
  client submits one background job for one of those names; the worker's
  GRAB_JOB -> JOB_ASSIGN is timed, then ``--grabs`` GRAB_JOB -> NO_JOB one at
  a time (median); then the worker pipelines ``--burst`` GRAB_JOBs in one write
  and an ordinary client's ECHO_REQ, sent right after, is timed (how long one
  such worker stalls everyone else). A farm server that has --max-abilities
  runs twice: with its default cap (what the flood gets) and with the cap
  raised past the flood (what a grab then costs).
* names: ``--conns`` connections each send SUBMIT_JOB_BG with a distinct
  ``--name-mb`` MB function name, one after the other, each waiting for its
  answer; then the server's RSS growth (psutil) with the connections still open.
* partial: ``--conns`` connections each send a SUBMIT_JOB_BG header announcing
  a ``--body-mb`` MB body and all of that body but its last byte; then the
  server's RSS growth with the connections still open.

Servers: ``--farm`` is this tree's ``python -m farm.server --store none``;
``--farm-root DIR`` the same from another checkout (cwd and PYTHONPATH DIR, e.g.
a ``git worktree`` of an old commit); ``--gearmand`` is gearmand as the tests
start it; ``--server-cmd`` any command, ``{port}`` standing for the port.
With none of them: ``--farm --gearmand``. Every wait has a timeout, so a
server that stalls shows as ``>N s`` instead of hanging the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.servers import Target, add_target_args, targets  # noqa: E402
from farm import protocol as p  # noqa: E402
from farm.protocol import PacketType as T  # noqa: E402
from tests.helpers.peers import Peer  # noqa: E402
from tests.helpers.servers import Server  # noqa: E402

MB = 1_000_000
WAIT = 120.0  # the longest any one answer is waited for


# -- measuring ----------------------------------------------------------------


class RssWatch:
    """A process's resident set: now, and the highest seen since ``start`` (sampled)."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        return self.proc.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.now())
            except psutil.Error:
                return
            self._stop.wait(self.every)

    def settled(self, timeout: float = 30.0) -> int:
        """The RSS once it moves less than 1 MiB in half a second (or at ``timeout``)."""
        deadline = time.monotonic() + timeout
        before = self.now()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            after = self.now()
            if abs(after - before) < 2**20:
                return after
            before = after
        return self.now()

    @contextmanager
    def watching(self) -> Iterator[RssWatch]:
        self.peak = self.now()
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def fate(peer: Peer, within: float = 0.2) -> str:
    """What the server did with a peer whose request may be answered, refused or dropped."""
    try:
        if peer.nothing_within(within):
            return "held"
        pkt = peer.recv(within) if peer.pending else None
    except (ConnectionError, OSError):
        return "closed"
    if pkt is None:
        return "closed"  # nothing_within saw the end of the stream
    if pkt.type == T.ERROR:
        return f"ERROR {pkt.args[0].decode()}" + (", closed" if peer.closed_within(2) else "")
    return pkt.name


def summary(fates: list[str]) -> str:
    counts: dict[str, int] = {}
    for f in fates:
        counts[f] = counts.get(f, 0) + 1
    return "; ".join(f"{n} {f}" for f, n in counts.items())


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}" if seconds < 10 else f"{seconds * 1000:,.0f}"


def timed(peer: Peer, ptype: int, *args: bytes, want: tuple[int, ...]) -> tuple[float, p.Packet]:
    t0 = time.perf_counter()
    peer.send(ptype, *args)
    pkt = peer.recv(WAIT)
    assert pkt.type in want, f"expected {want}, got {pkt.name} {pkt.args[:2]}"
    return time.perf_counter() - t0, pkt


def register(worker: Peer, n: int) -> tuple[float, str]:
    """Send ``n`` CAN_DOs and an ECHO_REQ in one go: seconds to the echo, or what stopped it.

    Sent from a thread while this one reads, so an ERROR sent before a close is
    read before the close can reset the connection under a blocked sender.
    """
    flood = b"".join(p.encode_req(T.CAN_DO, b"ability-%06d" % i) for i in range(n))
    flood += p.encode_req(T.ECHO_REQ, b"registered")
    sender = threading.Thread(target=lambda: _send_quietly(worker, flood), daemon=True)
    t0 = time.perf_counter()
    sender.start()
    try:
        pkt = worker.recv(WAIT)
    except (ConnectionError, OSError) as exc:
        return time.perf_counter() - t0, f"closed ({type(exc).__name__})"
    finally:
        sender.join(WAIT)
    if pkt.type == T.ECHO_RES:
        return time.perf_counter() - t0, "all"
    text = b" ".join(pkt.args).decode(errors="replace")
    return time.perf_counter() - t0, f"{pkt.name} {text}" + (
        ", closed" if worker.closed_within(5) else ""
    )


def _send_quietly(peer: Peer, data: bytes | memoryview) -> bool:
    try:
        peer.send_raw(data)  # type: ignore[arg-type]
    except OSError:
        return False
    return True


ABILITIES_HEAD = (
    "| server | CAN_DOs sent: taken | register s | grab -> JOB_ASSIGN ms"
    " | grab -> NO_JOB ms (median, max) | other client's ECHO during {burst} pipelined grabs ms |"
)


def abilities(target: Target, args: argparse.Namespace) -> list[list[str]]:
    runs: list[tuple[str, tuple[str, ...]]] = [("", ())]
    if target.max_abilities:
        raised = str(2 * args.abilities)
        runs = [(" (default cap)", ()), (f" --max-abilities {raised}", ("--max-abilities", raised))]
    rows = []
    for suffix, extra in runs:
        server = target.start(*extra)
        peers: list[Peer] = []
        try:
            worker = Peer(server.addr, timeout=WAIT)
            peers.append(worker)
            took, outcome = register(worker, args.abilities)
            row = [target.label + suffix, f"{args.abilities:,}: {outcome}", f"{took:.2f}"]
            if outcome != "all":
                rows.append(row + ["-", "-", "-"])
                continue
            client = Peer(server.addr, timeout=WAIT)
            peers.append(client)
            client.send(T.SUBMIT_JOB_BG, b"ability-%06d" % (args.abilities // 2), b"", b"x")
            client.expect(T.JOB_CREATED, WAIT)
            assign, _ = timed(worker, T.GRAB_JOB, want=(T.JOB_ASSIGN,))
            idle = [timed(worker, T.GRAB_JOB, want=(T.NO_JOB,))[0] for _ in range(args.grabs)]
            row += [ms(assign), f"{ms(statistics.median(idle))} ({ms(max(idle))})"]
            row.append(stall(server.addr, worker, args.burst, peers))
            rows.append(row)
        finally:
            for peer in peers:
                peer.close()
            server.stop()
    return rows


def stall(addr: str, worker: Peer, burst: int, peers: list[Peer]) -> str:
    """``burst`` GRAB_JOBs in one write, then another client's ECHO_REQ: its round trip."""
    other = Peer(addr, timeout=WAIT)
    peers.append(other)
    other.send(T.ECHO_REQ, b"warm")
    other.expect(T.ECHO_RES)
    worker.send_raw(p.encode_req(T.GRAB_JOB) * burst)
    try:
        echo, _ = timed(other, T.ECHO_REQ, b"are you there", want=(T.ECHO_RES,))
    except TimeoutError:
        return f">{WAIT:g} s"
    for _ in range(burst):  # the worker's answers, so the server is idle again
        worker.expect(T.NO_JOB, WAIT)
    return ms(echo)


MEMORY_HEAD = "| server | {what} | RSS at start MiB | RSS growth held MiB | peak growth MiB |"


@contextmanager
def memory_run(target: Target) -> Iterator[tuple[Server, RssWatch, list[Peer]]]:
    server = target.start()
    peers: list[Peer] = []
    try:
        warm = Peer(server.addr, timeout=WAIT)
        peers.append(warm)
        warm.send(T.ECHO_REQ, b"warm")
        warm.expect(T.ECHO_RES)
        with RssWatch(server.proc.pid).watching() as rss:
            yield server, rss, peers
    finally:
        for peer in peers:
            peer.close()
        server.stop()


def names(target: Target, args: argparse.Namespace) -> list[list[str]]:
    size = int(args.name_mb * MB)
    with memory_run(target) as (server, rss, peers):
        start = rss.settled()
        fates = []
        for i in range(args.conns):
            peer = Peer(server.addr, timeout=WAIT)
            peers.append(peer)
            name = b"%02d" % i + b"n" * (size - 2)
            if not _send_quietly(peer, p.encode_req(T.SUBMIT_JOB_BG, name, b"", b"x")):
                fates.append("closed")
                continue
            fates.append(fate(peer, within=WAIT))
        held = rss.settled()
        return [
            [target.label, summary(fates), mib(start), mib(held - start), mib(rss.peak - start)]
        ]


def partial(target: Target, args: argparse.Namespace) -> list[list[str]]:
    size = int(args.body_mb * MB)
    header = p.HEADER.pack(p.REQ, T.SUBMIT_JOB_BG, size)
    body = memoryview(b"f\0\0" + b"x" * (size - 3))[: size - 1]
    with memory_run(target) as (server, rss, peers):
        start = rss.settled()
        sent = []
        for _ in range(args.conns):
            peer = Peer(server.addr, timeout=WAIT)
            peers.append(peer)
            sent.append(_send_quietly(peer, header) and _send_quietly(peer, body))
        held = rss.settled()
        fates = [
            fate(peer) if ok else "reset while sending"
            for peer, ok in zip(peers[1:], sent, strict=True)
        ]
        return [
            [target.label, summary(fates), mib(start), mib(held - start), mib(rss.peak - start)]
        ]


ITEMS = {"abilities": abilities, "names": names, "partial": partial}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default=",".join(ITEMS), help="comma-separated: %(default)s")
    add_target_args(ap)
    ap.add_argument("--abilities", type=int, default=100_000)
    ap.add_argument("--grabs", type=int, default=20)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--conns", type=int, default=15)
    ap.add_argument("--name-mb", type=float, default=20)
    ap.add_argument("--body-mb", type=float, default=50)
    args = ap.parse_args()
    chosen = targets(args)
    for item in args.only.split(","):
        measure = ITEMS[item]
        print(f"\n{item}:\n")
        if item == "abilities":
            print(ABILITIES_HEAD.format(burst=args.burst))
            print("|---|---|---:|---:|---:|---:|")
        else:
            what = (
                f"{args.conns} x {args.name_mb:g} MB names"
                if item == "names"
                else f"{args.conns} x {args.body_mb:g} MB bodies less 1 byte"
            )
            print(MEMORY_HEAD.format(what=what))
            print("|---|---|---:|---:|---:|")
        for target in chosen:
            for row in measure(target, args):
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
