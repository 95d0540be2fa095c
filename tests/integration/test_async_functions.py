"""What an asyncio developer hands farm that it cannot run: an ``async def`` worker function
(``farm.Worker``, ``farm worker MODULE:FUNCTION``) and an ``async def`` callback of a call
(``farm.AsyncClient``, ``farm.Client``). Each was taken, then every job of the function
failed ("a worker function's result must be bytes ... not coroutine"), or the callback never
ran (a "never awaited" RuntimeWarning alone). Now each is refused where it is given, before
anything is sent. A farm.toml pool's async target: test_check.py."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import farm
from farm.worker import Job
from tests.helpers.clirun import cli, one_line_error
from tests.helpers.servers import Server
from tests.helpers.serving import serving


async def fetch(job: Job) -> bytes:
    await asyncio.sleep(0)
    return job.data


async def stream(job: Job) -> AsyncIterator[bytes]:
    yield job.data  # async def with yield: an async generator function


async def fetch_with(session: str, job: Job) -> bytes:
    return job.data


class Handler:
    async def __call__(self, job: Job) -> bytes:
        return job.data

    async def run(self, job: Job) -> bytes:
        return job.data


class Plain:
    def __call__(self, job: Job) -> bytes:
        return job.data[::-1]


ASYNC_FORMS: dict[str, tuple[Callable[..., Any], str]] = {
    "function": (fetch, "the worker function fetch is async def"),
    "method": (Handler().run, "the worker function Handler.run is async def"),
    "object": (Handler(), "the worker function a Handler object (its __call__) is async def"),
    "partial": (functools.partial(fetch), "the worker function fetch is async def"),
    # inspect.iscoroutinefunction is False for one: it was taken, and each job failed.
    "async generator": (stream, "the worker function stream is async def"),
    "partial of a partial of an object": (
        functools.partial(functools.partial(Handler())),
        "the worker function a Handler object (its __call__) is async def",
    ),
}


@pytest.mark.parametrize("form", ASYNC_FORMS)
def test_a_worker_refuses_an_async_function(farm_server: Server, form: str) -> None:
    fn, said = ASYNC_FORMS[form]
    with serving(farm_server.addr, {"plain": Plain()}) as worker:
        with pytest.raises(TypeError, match="asyncio.run") as refused:
            worker.register("fetch", fn)
        assert str(refused.value).startswith(f"fetch: {said}"), refused.value
        # Nor is it served: its job would have failed; the worker's other functions serve on.
        with farm.Client(farm_server.addr) as client:
            assert client.call("plain", b"abc", timeout=30) == b"cba"
            with pytest.raises(farm.Timeout):
                client.call("fetch", b"abc", timeout=0.5)


def test_the_worker_decorator_refuses_an_async_function() -> None:
    worker = farm.Worker("127.0.0.1:1")
    with pytest.raises(TypeError, match="fetch: the worker function fetch is async def"):
        worker.function(fetch)
    with pytest.raises(TypeError, match="served: the worker function fetch is async def"):
        worker.function("served")(fetch)
    # A plain function that runs it is what the refusal offers, and is taken.
    worker.register("fetch", lambda job: asyncio.run(fetch(job)))
    worker.register("sync partial", functools.partial(Plain()))


def test_a_partial_s_wrapper_keeps_its_bound_arguments() -> None:
    # Offered as asyncio.run(fetch_with(job)), it dropped "session".
    worker = farm.Worker("127.0.0.1:1")
    with pytest.raises(TypeError) as refused:
        worker.register("f", functools.partial(fetch_with, "session"))
    assert str(refused.value).startswith("f: the worker function fetch_with is async def")
    assert str(refused.value).endswith("e.g. lambda job: asyncio.run(fn(job))"), refused.value


def test_farm_worker_refuses_an_async_target_in_one_line() -> None:
    out = cli(
        "worker",
        "tests.integration.test_async_functions:fetch",
        "--server",
        "127.0.0.1:1",
        timeout=30,
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    said = one_line_error(out.stderr)
    assert said.startswith("farm: fetch: the worker function fetch is async def"), said
    assert said.endswith("e.g. lambda job: asyncio.run(fetch(job))"), said


def _chatty(ran: list[bytes]) -> Callable[[Job], bytes]:
    def chatty(job: Job) -> bytes:
        ran.append(job.data)
        job.send_status(1, 2)
        job.send_data(b"part")
        job.send_warning(b"careful")
        return job.data.upper()

    return chatty


async def _seen(*args: object) -> None:
    raise AssertionError("an async callback ran")


ASYNC_CALLBACKS: dict[str, object] = {
    "on_status": _seen,
    "on_data": functools.partial(_seen, "data"),
    "on_warning": Handler(),
}


@pytest.mark.parametrize("which", ASYNC_CALLBACKS)
def test_an_async_client_refuses_an_async_callback(farm_server: Server, which: str) -> None:
    ran: list[bytes] = []
    seen: list[object] = []
    callback = ASYNC_CALLBACKS[which]

    async def main() -> bytes:
        async with farm.AsyncClient(farm_server.addr) as client:
            with pytest.raises(TypeError, match=f"^{which}: .* is async def") as refused:
                await client.call("chatty", b"refused", timeout=30, **{which: callback})
            assert "asyncio.create_task" in str(refused.value)
            # A plain callback is called, as before; the refused call's job never went out.
            plain = {which: lambda *a: seen.append(a)}
            return await client.call("chatty", b"plain", timeout=30, **plain)

    with serving(farm_server.addr, {"chatty": _chatty(ran)}):
        assert asyncio.run(main()) == b"PLAIN"
    assert ran == [b"plain"] and len(seen) == 1


@pytest.mark.parametrize("which", ASYNC_CALLBACKS)
def test_a_client_refuses_an_async_callback(farm_server: Server, which: str) -> None:
    ran: list[bytes] = []
    seen: list[object] = []
    callback = ASYNC_CALLBACKS[which]
    plain = {which: lambda *a: seen.append(a)}
    with serving(farm_server.addr, {"chatty": _chatty(ran)}), farm.Client(farm_server.addr) as c:
        with pytest.raises(TypeError, match=f"^{which}: .* is async def"):
            c.call("chatty", b"refused", timeout=30, **{which: callback})
        assert c.call("chatty", b"plain", timeout=30, **plain) == b"PLAIN"
    assert ran == [b"plain"] and len(seen) == 1


def test_an_async_callback_is_refused_before_the_client_connects() -> None:
    with farm.Client("127.0.0.1:1") as client, pytest.raises(TypeError):  # no ServerUnavailable
        client.call("f", b"", on_status=_seen)


def test_an_async_generator_callback_is_refused() -> None:
    refused = pytest.raises(TypeError, match="^on_data: stream is async def .*an async generator")
    with farm.Client("127.0.0.1:1") as client, refused:
        client.call("f", b"", on_data=stream)


def test_a_coroutine_a_plain_worker_function_returns_fails_its_job_saying_what_to_do(
    farm_server: Server,
) -> None:
    # register() cannot see that a plain function returns a coroutine: its job fails, and
    # the error said only "must be bytes ... not coroutine", a "never awaited" warning beside.
    served = serving(farm_server.addr, {"fetch": lambda job: fetch(job)})
    refused = pytest.raises(farm.JobException)
    with served, farm.Client(farm_server.addr) as client, refused as failed:
        client.call("fetch", b"abc", timeout=30)
    assert str(failed.value).startswith("TypeError: fetch (tests.integration.")  # its target
    assert str(failed.value).endswith(
        " returned a coroutine; return bytes, str or None: run it in the function, e.g."
        " return asyncio.run(fetch(job))"
    )


def test_an_async_generator_a_plain_worker_function_returns_fails_its_job_naming_it(
    farm_server: Server,
) -> None:
    served = serving(farm_server.addr, {"stream": lambda job: stream(job)})
    refused = pytest.raises(farm.JobException)
    with served, farm.Client(farm_server.addr) as client, refused as failed:
        client.call("stream", b"abc", timeout=30)
    said = "returned an async generator; return bytes, str or None: run it to its end in"
    assert str(failed.value).startswith("TypeError: stream (tests.integration.")
    assert f"{said} the function" in str(failed.value)
    assert "stream(job) yields under asyncio.run" in str(failed.value)
