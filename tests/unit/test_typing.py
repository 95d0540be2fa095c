"""farm's public annotations as a user's ``mypy --strict`` reads them: code that runs must
type-check too."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_CODE = """
import contextlib

import farm


async def close_early(client: farm.AsyncClient) -> None:
    async with contextlib.aclosing(client.map("reverse", [b"a", "b"])) as results:
        async for _ in results:
            break
    events = client.stream("reverse", b"a")
    await events.aclose()


def close_early_blocking(client: farm.Client) -> None:
    with contextlib.closing(client.map("reverse", [b"a", "b"])) as results:
        for _ in results:
            break
"""


DATA_CODE = """
import farm


async def send(client: farm.AsyncClient, view: memoryview) -> None:
    await client.call("reverse", bytearray(b"ab"))
    await client.submit("reverse", view, background=True)
    async for _ in client.map("reverse", [bytearray(b"a"), view, b"b", "c"]):
        pass


def send_blocking(client: farm.Client) -> None:
    client.call("reverse", memoryview(b"ab"))
    list(client.map("reverse", [bytearray(b"a"), "b"]))


def shout(job: farm.worker.Job) -> bytearray:
    job.send_data(bytearray(b"part"))
    job.send_warning(memoryview(b"careful"))
    return bytearray(job.data.upper())


farm.Worker("127.0.0.1:4730").register("shout", shout)
"""


def strict_mypy(code: str, tmp_path: Path) -> str:
    """mypy --strict's report on ``code`` importing this checkout's farm (whose own errors,
    as an installed package's, are not the user's)."""
    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent(code))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent"]
        + ["--cache-dir", str(tmp_path / "cache"), "--config-file", "", str(user)],
        cwd=tmp_path,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=110,
    )
    return run.stdout + run.stderr


@pytest.mark.timeout(120)
def test_the_generators_of_map_and_stream_can_be_closed(tmp_path: Path) -> None:
    # map() and stream() were typed AsyncIterator/Iterator: aclosing(), aclose() and
    # closing() on them, which work, failed the user's type check.
    assert "Success: no issues found" in strict_mypy(USER_CODE, tmp_path)


@pytest.mark.timeout(120)
def test_data_may_be_any_bytes_like_the_calls_take(tmp_path: Path) -> None:
    # Typed bytes | str, though bytearray and memoryview are taken (as_bytes copies them).
    assert "Success: no issues found" in strict_mypy(DATA_CODE, tmp_path)
