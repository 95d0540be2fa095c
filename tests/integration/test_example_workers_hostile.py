"""The default farm's functions (workers/: reverse, resize, thumbnail, pbkdf2) on a real
`farm up`, given what an application sends by mistake or a local user on purpose: each
such job fails with a message that says what is wrong (WORK_EXCEPTION, which PHP's
GearmanClient asks for), and the workers that ran them serve on, none replaced."""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image

import farm
from farm.errors import JobException
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import need

DEFAULT_FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1

[functions.resize]
target = "workers.image:resize"
workers = 1
timeout = 60

[functions.pbkdf2]
target = "workers.hashing:pbkdf2"
workers = 1
timeout = 60
"""


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 100))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def a_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(out, "PNG")
    return out.getvalue()


HOSTILE = [
    ("resize", b"10x10\n", "no image after the header line"),
    ("resize", b"10x10\nhello", "unknown format"),
    ("resize", b"10x10\n" + a_png()[:60], "truncated"),
    ("resize", b"10x10\n" + png_declaring(50_000, 50_000), "decompression bomb"),
    ("resize", b"1000000000x10\n" + a_png(), "each side must be 1..10000"),
    ("resize", b"axb\n" + a_png(), "bad header"),
    ("pbkdf2", b"1000000000000 0a0b\npw", "ITERATIONS must be 1..10000000"),
    ("pbkdf2", b"1000 \npw", "no salt"),
    ("pbkdf2", b"1000 0a0b", "no newline"),
]


@pytest.fixture
def up(tmp_path: Path):
    up = FarmUp(tmp_path, DEFAULT_FUNCTIONS, metrics=False)
    try:
        up.expect_notify("READY=1", timeout=30)
        yield up
    finally:
        up.stop()


def test_hostile_jobs_fail_with_a_reason_and_the_workers_serve_on(up: FarmUp) -> None:
    before = {r["function"]: r["pid"] for r in up.workers()}
    with farm.Client(up.addr) as client:
        for function, payload, reason in HOSTILE:
            with pytest.raises(JobException, match=reason):
                client.call(function, payload, timeout=30)
        # Then each answers a good job, the stray byte of text cut mid-character kept.
        assert client.call("reverse", "naïve café".encode()[:-1], timeout=30) == (
            b"\xc3" + "fac evïan".encode()
        )
        resized = client.call("resize", b"32x24 jpeg\n" + a_png(), timeout=30)
        assert Image.open(io.BytesIO(resized)).size == (32, 24)
    after = {r["function"]: r["pid"] for r in up.workers()}
    assert after == before, up.read_log()
    assert all(r["restarts"] == 0 for r in up.workers()), up.ps()


PHP_CLIENT = """
$c = new GearmanClient();
$c->addServer("127.0.0.1", {port});
$c->setTimeout(30000);
foreach (["resize" => "10x10\\n", "pbkdf2" => "1000 \\npw"] as $f => $d) {{
    @$c->doNormal($f, $d);
    echo $f, ":", $c->returnCode() == GEARMAN_WORK_EXCEPTION ? "exception" : $c->error(), "\\n";
}}
echo "reverse:", $c->doNormal("reverse", "abc"), "\\n";
"""


@pytest.mark.interop
def test_a_php_application_s_bad_upload_fails_its_call_alone(up: FarmUp) -> None:
    php = need("php")
    run = subprocess.run(
        [php, "-r", PHP_CLIENT.format(port=up.port)], capture_output=True, text=True, timeout=60
    )
    assert run.stdout.split() == ["resize:exception", "pbkdf2:exception", "reverse:cba"], run
