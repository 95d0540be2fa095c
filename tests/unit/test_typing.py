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


CONNECT_CODE = """
import farm


async def unbounded() -> None:
    async with farm.AsyncClient("127.0.0.1:4730", connect_timeout=None) as client:
        await client.echo(b"x")


def unbounded_blocking() -> None:
    with farm.Client("127.0.0.1:4730", connect_timeout=None) as client:
        client.echo(b"x")
"""


SNIPPETS = {"user.py": USER_CODE, "data.py": DATA_CODE, "connect.py": CONNECT_CODE}


@pytest.fixture(scope="module")
def strict_mypy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """mypy --strict's report on the SNIPPETS, each importing this checkout's farm (whose
    own errors, as an installed package's, are not the user's).

    One run for all of them: a cold mypy reads farm and the stdlib's stubs first (some
    15 s here), the same for every snippet; each test reads its own file's lines. Its
    cache is kept in pytest's (.pytest_cache), so a later run re-reads only what changed
    (under a second when nothing did): mypy's incremental mode checks each module's hash
    and its dependencies', and starts over for another mypy or other options. Without
    pytest's cache (-p no:cacheprovider) it is a cold run, as before."""
    tmp_path = tmp_path_factory.mktemp("typing")
    cache = getattr(request.config, "cache", None)  # None: -p no:cacheprovider
    cache_dir = cache.mkdir("mypy-typing") if cache is not None else tmp_path / "cache"
    for name, code in SNIPPETS.items():
        (tmp_path / name).write_text(textwrap.dedent(code))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent"]
        + ["--cache-dir", str(cache_dir), "--config-file", "", *SNIPPETS],
        cwd=tmp_path,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=110,
    )
    return run.stdout + run.stderr


def issues_in(name: str, report: str) -> list[str]:
    """The lines of ``report`` about the snippet ``name``; fails unless mypy checked them all
    (a crash or a usage error reports no file's lines either)."""
    assert f"{len(SNIPPETS)} source files" in report, report
    return [line for line in report.splitlines() if line.startswith(f"{name}:")]


@pytest.mark.timeout(120)
def test_the_generators_of_map_and_stream_can_be_closed(strict_mypy: str) -> None:
    # map() and stream() were typed AsyncIterator/Iterator: aclosing(), aclose() and
    # closing() on them, which work, failed the user's type check.
    assert issues_in("user.py", strict_mypy) == []


@pytest.mark.timeout(120)
def test_data_may_be_any_bytes_like_the_calls_take(strict_mypy: str) -> None:
    # Typed bytes | str, though bytearray and memoryview are taken (as_bytes copies them).
    assert issues_in("data.py", strict_mypy) == []


@pytest.mark.timeout(120)
def test_both_clients_take_connect_timeout_none(strict_mypy: str) -> None:
    # farm.Client's None: no bound but the kernel's. AsyncClient took it at run time too,
    # and was typed float: the same argument failed the user's type check.
    assert issues_in("connect.py", strict_mypy) == []
