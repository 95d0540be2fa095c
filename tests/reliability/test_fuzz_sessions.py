"""Mutated replays of real peers' sessions never hurt the server, its jobs or other peers.

tests/fuzz/sessions/ holds what real peers sent a farm server (recorded through a proxy):
PHP's GearmanWorker and GearmanClient, the `gearman` CLI and `gearadmin`, Perl's
Gearman::Worker and Gearman::Client, farm's Worker (held grab, JOB_ACCEPT), Client and
Executor (OPTION_REQs). Each batch replays some of them at once, over TCP and the Unix
socket, with seeded mutations of their packets: bits flipped, packets cut short, sent
twice, swapped, dropped or split at every byte, length fields off by one or huge, wrong
magic or type, a NUL put in, admin lines mixed into the binary stream, another peer's
job handle put in, options asked mid-session, the connection closed or reset. A job
handle the recording names is replaced by the one this server gave the replay, so
workers' news of their jobs reaches the job model rather than stopping at its lookup.

Meanwhile a farm Client calls a farm Worker on other connections, and submits background
jobs now and then. The server keeps background jobs in memory, then in a store (where
replies wait for its commits). After each batch: the server lives, every one of those
calls came back right and every background job it acknowledged ran, the fuzzed
connections are gone from `workers` (their registrations from `status`), nothing is left
running, a worker gets every job left queued and then none is left at all (`status`,
`show jobs`, `show unique jobs`), the server's descriptors are back to what they were,
and its log holds no internal error.

test_fuzz_server.py throws bytes at fresh connections one at a time; this walks the
sessions real peers have, deep into them.
"""

from __future__ import annotations

import itertools
import random
import re
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import farm
from farm import protocol as p
from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.peers import grab_every_job
from tests.helpers.servers import Server, connect, unix_farm_server
from tests.helpers.serving import serving
from tests.helpers.waiting import wait_for

pytestmark = [
    pytest.mark.timeout(120),
    # A replay thread that broke would fuzz less without saying so: that fails the test.
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

SESSIONS = ROOT / "tests" / "fuzz" / "sessions"
SEED = 20261205
BATCHES = 6
REPLAYS = 10  # sessions replayed at once in a batch
MUTATION_RATE = 0.2  # chance of a (further) mutation of each packet
#: Job handles in the recordings (the recording server's host was "vm").
RECORDED_HANDLE = re.compile(rb"H:vm:\d+")
#: After a packet that a real peer would wait on the answer of (a grab, a sleep, an admin
#: line), the replay reads for this long before it goes on, so that the assignments it is
#: sent arrive and later packets name them; after others, for a moment only. A pace, not
#: a wait for a condition: the mutated session may well get no answer at all.
ANSWER_WAIT = 0.05
PACE = 0.002
WAITS_FOR_ANSWER = {T.GRAB_JOB, T.GRAB_JOB_UNIQ, T.GRAB_JOB_ALL, T.PRE_SLEEP, T.SUBMIT_JOB}
ADMIN_LINES = [
    b"status\n",
    b"workers\r\n",
    b"show jobs\n",
    b"show unique jobs\n",
    b"prioritystatus\n",
    b"\n",
    b"maxqueue reverse 2\n",
    b"maxqueue reverse\n",
    b"cancel job H:vm:1\n",
    b"create function zz\n",
    b"drop function zz\n",
    b"show poison jobs\n",
    b"bogus\n",
]
OPTIONS = [b"held-grab", b"read-accept", b"lazy-created", b"work-exception", b"exceptions", b"x"]


def split_packets(data: bytes) -> list[bytes]:
    """A recorded stream cut into its binary packets and admin lines."""
    packets, pos = [], 0
    while pos < len(data):
        if data[pos] == 0:
            end = pos + p.HEADER.size + int.from_bytes(data[pos + 8 : pos + 12], "big")
        else:
            end = data.index(b"\n", pos) + 1
        packets.append(data[pos:end])
        pos = end
    return packets


def with_body(packet: bytes, body: bytes) -> bytes:
    return packet[:8] + len(body).to_bytes(4, "big") + body


class Replay:
    """One recorded session replayed on a connection of its own, mutated as it goes."""

    def __init__(self, addr: str, packets: list[bytes], rng: random.Random, seen: list[bytes]):
        self.addr = addr
        self.packets = packets
        self.rng = rng
        self.seen = seen  # job handles any replay was given (shared: "steal" uses them)
        self.given: list[bytes] = []  # handles this server gave this replay, in order
        self.handles: dict[bytes, bytes] = {}  # recorded handle -> this server's
        self.decoder = p.Decoder(allow_admin=False)
        self.sock: socket.socket | None = None
        self.mutations: dict[str, Callable[[bytes, bytes | None], list[bytes] | None]] = {
            "flip": self.flip,
            "cut": lambda pkt, _: [pkt[: self.rng.randrange(len(pkt))]],
            "twice": lambda pkt, _: [pkt, pkt],
            "swap": lambda pkt, nxt: [nxt, pkt] if nxt else [pkt],
            "drop": lambda pkt, _: [],
            "split": lambda pkt, _: [pkt[i : i + 1] for i in range(len(pkt))],
            "length": self.length,
            "magic": lambda pkt, _: [b"\0RES" + pkt[4:]],
            "type": lambda pkt, _: [
                pkt[:4] + self.rng.randrange(1, 43).to_bytes(4, "big") + pkt[8:]
            ],
            "nul": self.nul,
            "admin": lambda pkt, _: [self.rng.choice(ADMIN_LINES), pkt],
            "option": lambda pkt, _: [p.encode_req(T.OPTION_REQ, self.rng.choice(OPTIONS)), pkt],
            "steal": self.steal,
            "close": lambda pkt, _: None,
        }

    def flip(self, pkt: bytes, _: bytes | None) -> list[bytes]:
        data = bytearray(pkt)
        data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return [bytes(data)]

    def length(self, pkt: bytes, _: bytes | None) -> list[bytes]:
        size = int.from_bytes(pkt[8:12], "big")
        size = self.rng.choice([size - 1, size + 1, size + 2, 65537, 1 << 31, 0xFFFFFFFF])
        size = min(max(size, 0), 0xFFFFFFFF)  # a length mutated again may pass either end
        return [pkt[:8] + size.to_bytes(4, "big") + pkt[12:]]

    def nul(self, pkt: bytes, _: bytes | None) -> list[bytes]:
        data = bytearray(pkt)
        data[self.rng.randrange(p.HEADER.size, len(data))] = 0
        return [bytes(data)]

    def steal(self, pkt: bytes, _: bytes | None) -> list[bytes]:
        """Another replay's job handle in place of this one's (or in front of the body)."""
        other = self.rng.choice(self.seen)
        body = RECORDED_HANDLE.sub(lambda _: other, pkt[12:], count=1)
        return [with_body(pkt, body if body != pkt[12:] else other + b"\0" + body)]

    def live_handles(self, pkt: bytes) -> bytes:
        """``pkt`` with each recorded handle replaced by this server's, in the order given."""
        if pkt[:1] != b"\0":
            return pkt

        def mapped(match: re.Match[bytes]) -> bytes:
            recorded = match.group(0)
            if recorded not in self.handles:
                free = [h for h in self.given if h not in self.handles.values()]
                self.handles[recorded] = free[0] if free else recorded
            return self.handles[recorded]

        return with_body(pkt, RECORDED_HANDLE.sub(mapped, pkt[12:]))

    def mutate(self, pkt: bytes, nxt: bytes | None) -> list[bytes] | None:
        chunks: list[bytes] | None = [pkt]
        while chunks and any(chunks) and self.rng.random() < MUTATION_RATE:
            whole = b"".join(chunks)  # not empty: a packet cut to nothing is left as it is
            binary = whole[:1] == b"\0" and len(whole) > p.HEADER.size
            names = [
                name
                for name in self.mutations
                if (binary or name not in ("length", "nul", "steal"))
                and (self.seen or name != "steal")
            ]
            chunks = self.mutations[self.rng.choice(names)](whole, nxt)
        return chunks

    def read_answers(self, seconds: float) -> bool:
        """Read what the server sends for ``seconds``; False once it closed the connection."""
        assert self.sock is not None
        readable, _, _ = select.select([self.sock], [], [], seconds)
        if not readable:
            return True
        try:
            data = self.sock.recv(65536)
        except OSError:
            return False
        try:
            for pkt in self.decoder.feed(data):
                if pkt.type in (T.JOB_CREATED, T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL):
                    self.given.append(pkt.args[0])  # type: ignore[union-attr]
                    self.seen.append(pkt.args[0])  # type: ignore[union-attr]
        except p.ProtocolError:  # an admin reply (text): read past it
            self.decoder = p.Decoder(allow_admin=False)
        return bool(data)

    def run(self) -> None:
        try:
            self.sock = connect(self.addr)
        except OSError:
            return
        with self.sock:
            try:
                self.play()
            except OSError:
                pass  # the server closed on a mutated packet: an allowed answer

    def play(self) -> None:
        assert self.sock is not None
        packets = self.packets
        i = 0
        while i < len(packets):
            pkt = self.live_handles(packets[i])
            nxt = self.live_handles(packets[i + 1]) if i + 1 < len(packets) else None
            chunks = self.mutate(pkt, nxt)
            if chunks is None:  # "close": sometimes as a reset, the way a killed peer goes
                if self.rng.random() < 0.5:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1" + b"\0" * 7)
                return
            i += 2 if nxt is not None and chunks[:1] == [nxt] else 1
            for chunk in chunks:
                self.sock.sendall(chunk)
            waits = pkt[:1] != b"\0" or int.from_bytes(pkt[4:8], "big") in WAITS_FOR_ANSWER
            if not self.read_answers(ANSWER_WAIT if waits else PACE):
                return
        self.read_answers(ANSWER_WAIT)


@pytest.fixture(params=["memory", "store"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """farm's server, its background jobs in memory or (the default) in a store, where a
    JOB_CREATED and what follows it wait for the commit (the connection's held replies)."""

    def in_dir(name: str) -> Callable[[Path], str]:  # a file in the server's own directory
        return lambda sockdir: str(sockdir / name)

    store = in_dir("queue.db") if request.param == "store" else "none"
    flags = ("--max-packet", "65536", "--job-retries", "2", "--log-file", in_dir("server.log"))
    flags += ("--store", store)
    with unix_farm_server(*flags, prefix="farm-fuzz-") as srv:
        yield srv


class Healthy:
    """A well-behaved client and worker of fz.healthy beside the fuzzing: foreground calls
    whose results are checked, and now and then a background job, which once acknowledged
    (JOB_CREATED) must run."""

    def __init__(self) -> None:
        self.ran: set[bytes] = set()  # what the worker was given
        self.acknowledged: set[bytes] = set()  # background jobs the server took
        self.wrong: list[str] = []
        self.numbers = itertools.count()  # each job's data its own, across batches

    def run(self, job: Any) -> bytes:
        self.ran.add(job.data)
        return bytes(job.data[::-1])

    def call_until(self, addr: str, stop: threading.Event) -> int:
        """Calls until ``stop``, each checked; how many were made."""
        done = 0
        with farm.Client(addr) as client:
            while not stop.is_set():
                data = f"call {next(self.numbers)}".encode()
                try:
                    if done % 5 == 4:
                        client.submit("fz.healthy", data, background=True)
                        self.acknowledged.add(data)
                    elif (result := client.call("fz.healthy", data, timeout=20)) != data[::-1]:
                        self.wrong.append(f"{data!r} -> {result!r}")
                except farm.FarmError as exc:
                    self.wrong.append(f"{data!r}: {exc!r}")
                    return done
                done += 1
        return done


def listing(addr: str, command: str) -> list[str]:
    return [line for line in admin_query(addr, command).splitlines() if line != "."]


def running_jobs(addr: str) -> dict[str, int]:
    rows = (line.split("\t") for line in listing(addr, "status"))
    return {row[0]: int(row[2]) for row in rows if int(row[2])}


def registered_workers(addr: str) -> dict[str, int]:
    rows = (line.split("\t") for line in listing(addr, "status"))
    return {row[0]: int(row[3]) for row in rows if int(row[3])}


def run_what_is_left(srv: Server) -> list[bytes]:
    """A worker on the Unix socket (so it may take farm.* jobs too) of every function in
    `status` gets every job left queued, and completes it; their handles."""
    functions = [row.split("\t")[0] for row in listing(srv.addr, "status")]
    return [handle for handle, _, _ in grab_every_job(f"unix:{srv.unix}", functions)]


def replay_batch(srv: Server, healthy: Healthy, replays: list[Replay]) -> int:
    """Run ``replays`` at once while ``healthy`` calls; how many calls it made."""
    stop, calls = threading.Event(), []
    caller = threading.Thread(target=lambda: calls.append(healthy.call_until(srv.addr, stop)))
    caller.start()
    threads = [threading.Thread(target=r.run) for r in replays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    caller.join(30)
    hung = sum(t.is_alive() for t in threads)
    assert not hung, f"{hung} replays still running after 30 s: the server stopped answering"
    assert not caller.is_alive(), "the healthy caller hung"
    assert not healthy.wrong, healthy.wrong
    return calls[0]


def test_mutated_real_sessions_leave_the_server_whole(server: Server) -> None:
    recorded = {f.name: split_packets(f.read_bytes()) for f in sorted(SESSIONS.glob("*.bin"))}
    assert len(recorded) >= 10
    proc = psutil.Process(server.proc.pid)
    rng = random.Random(SEED)
    seen: list[bytes] = []
    healthy = Healthy()
    with serving(server.addr, {"fz.healthy": healthy.run}):
        wait_for("the healthy worker", lambda: len(listing(server.addr, "workers")) == 2)
        connections = len(listing(server.addr, "workers"))  # the worker's and this query's
        fds = proc.num_fds()
        for batch in range(BATCHES):
            names = [rng.choice(sorted(recorded)) for _ in range(REPLAYS)]
            addrs = [f"unix:{server.unix}" if rng.random() < 0.5 else server.addr for _ in names]
            replays = [
                Replay(addr, recorded[name], random.Random(rng.random()), seen)
                for addr, name in zip(addrs, names, strict=True)
            ]
            what = f"batch {batch} of seed {SEED} ({names})"
            assert replay_batch(server, healthy, replays) > 0, f"no healthy call in {what}"
            assert server.proc.poll() is None, f"the server died in {what}"
            wait_for(
                f"the acknowledged background jobs of {what} to run",
                lambda: healthy.acknowledged <= healthy.ran,
            )
            wait_for(
                f"the fuzzed connections of {what} to be gone",
                lambda: len(listing(server.addr, "workers")) == connections,
            )
            assert running_jobs(server.addr) == {}, f"jobs left running after {what}"
            run_what_is_left(server)
            assert all(row.split("\t")[1] == "0" for row in listing(server.addr, "status")), what
            assert listing(server.addr, "show jobs") == [], what
            assert listing(server.addr, "show unique jobs") == [], what
            wait_for(  # the worker above is gone too: only the healthy one is registered
                f"the registrations of {what}'s workers to go",
                lambda: registered_workers(server.addr) == {"fz.healthy": 1},
            )
            assert healthy.acknowledged, f"no healthy background job by {what}"
            wait_for(f"the server's descriptors after {what}", lambda: proc.num_fds() <= fds)
            # A bug the server caught costs only its connection (Connection.data_received),
            # and no other check here would see it: its log would.
            log = (Path(server.unix).parent / "server.log").read_text()
            assert "internal error" not in log and "Traceback" not in log, f"{what}: {log}"
