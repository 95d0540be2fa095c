"""The supervisor's policy without processes: backoff, exit classification, pinning, reports."""

from __future__ import annotations

import io
import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from farm.pools import sdnotify
from farm.pools.control import parse_scale
from farm.pools.slots import (
    EXIT_BOOT_ERROR,
    EXIT_RECYCLE,
    Slot,
    WorkerProcess,
    boot_delay,
    core_for,
    crash_delay,
)
from workers import hashing, image


def status(code: int = 0, sig: int = 0) -> int:
    """A wait status as os.waitpid returns it."""
    return sig if sig else code << 8


def proc(started: float = 100.0) -> WorkerProcess:
    return WorkerProcess(1, "f", 0, 0, -1, (), started=started)


def test_crash_backoff_starts_immediate_and_is_capped() -> None:
    assert [crash_delay(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert crash_delay(50) == 30.0
    # a target that never boots: a handful of tries a minute, never a hot loop
    waited, tries = 0.0, 0
    while waited < 60:
        tries += 1
        waited += boot_delay(tries)
    assert tries <= 6


def test_exits_are_told_apart() -> None:
    slot = Slot("f", 0, 0)
    how, delay = slot.note_exit(proc(), status(sig=signal.SIGKILL), now=101)
    assert (how, delay, slot.failures, slot.failing) == (
        "crashed: was killed by SIGKILL",
        0,
        1,
        False,
    )
    how, delay = slot.note_exit(proc(), status(EXIT_BOOT_ERROR), now=102)
    assert "failed to boot" in how and delay >= 2 and slot.failing
    ordered = proc()
    ordered.kill_reason = "job H:1 ran past its 5s timeout"
    how, delay = slot.note_exit(ordered, status(sig=signal.SIGKILL), now=103)
    assert delay == 0 and slot.failures == 2 and "timeout" in how
    how, delay = slot.note_exit(proc(), status(EXIT_RECYCLE), now=104)
    assert delay == 0 and slot.failures == 2 and "recycled" in how
    slot.note_exit(proc(), status(1), now=105)
    assert slot.failing and slot.failures == 3  # FAILING_AFTER consecutive crashes
    slot.note_exit(proc(started=0.0), status(1), now=100)  # lived 100 s: history starts over
    assert slot.failures == 1 and not slot.failing


def test_slots_are_stable_and_spread() -> None:
    cpus = [0, 1, 2, 3]
    assert [core_for(cpus, 0, k) for k in range(6)] == [0, 1, 2, 3, 0, 1]
    assert [core_for(cpus, 2, k) for k in range(3)] == [2, 3, 0]  # the next pool continues


def test_reports_survive_torn_reads() -> None:
    p = proc()
    p.feed(b'{"ev": "ready"}\n{"ev": "job", "ha')
    assert p.state == "idle"
    p.feed(b'ndle": "H:x:1"}\n')
    assert p.state == "busy" and p.handle == "H:x:1" and p.busy_since is not None
    p.feed(b'{"ev": "done", "jobs": 7, "rss": 1024}\n')
    assert (p.state, p.jobs_done, p.rss, p.busy_since) == ("idle", 7, 1024, None)
    p.state = "draining"
    p.feed(b'{"ev": "done", "jobs": 8, "rss": 1}\n')
    assert p.state == "draining" and p.ordered


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [("resize=32", ("resize", "=", 32)), ("a.b=+2", ("a.b", "+", 2)), ("t=-1", ("t", "-", 1))],
)
def test_parse_scale(arg: str, parsed: tuple[str, str, int]) -> None:
    assert parse_scale(arg) == parsed


def test_sd_notify_reaches_the_socket_and_children_never_see_it(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert sdnotify.notify("READY=1", "STATUS=ok", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    assert not sdnotify.notify("READY=1", environ={})
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/bin"}
    assert sdnotify.child_environ(env) == {"PATH": "/bin"}
    dog = sdnotify.Watchdog({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert dog.interval == 2.0
    assert sdnotify.Watchdog({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).interval is None


def png(width: int, height: int, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), "red").save(out, "PNG")
    return out.getvalue()


def test_image_resize_and_thumbnail() -> None:
    out = image.resize(SimpleNamespace(data=image.envelope(30, 10, png(100, 100))))
    assert Image.open(io.BytesIO(out)).size == (30, 10)
    out = image.thumbnail(SimpleNamespace(data=image.envelope(50, 50, png(200, 100), "jpeg")))
    img = Image.open(io.BytesIO(out))
    assert img.format == "JPEG" and img.size == (50, 25)
    for bad in (b"no header", b"0x10\n" + png(2, 2), b"10x10 gif\n", b"10x10\nnot an image"):
        with pytest.raises(ValueError):
            image.resize(SimpleNamespace(data=bad))


def test_hashing_functions() -> None:
    import hashlib
    import zlib

    out = hashing.pbkdf2(SimpleNamespace(data=b"1000 0a0b\npassword"))
    assert out == hashlib.pbkdf2_hmac("sha256", b"password", b"\n\x0b", 1000).hex().encode()
    with pytest.raises(ValueError):
        hashing.pbkdf2(SimpleNamespace(data=b"lots zz\npw"))
    assert zlib.decompress(hashing.compress(SimpleNamespace(data=b"a" * 1000))) == b"a" * 1000


def test_sd_notify_never_hangs_on_a_reader_that_does_not_read(tmp_path: Path) -> None:
    import time

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        start = time.monotonic()
        sent = [sdnotify.notify(f"STATUS={i}", environ={"NOTIFY_SOCKET": path}, wait=0)
                for i in range(5000)]  # fmt: skip
        assert time.monotonic() - start < 5
        assert sent[0] and not sent[-1]  # the queue filled up and the rest were dropped
