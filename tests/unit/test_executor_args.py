"""farm.Executor's constructor takes ProcessPoolExecutor's arguments, in its order.

Nothing here connects: the pump thread starts on the first submit.
"""

from __future__ import annotations

import inspect
import multiprocessing
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import farm
from farm import cgroups
from farm.executor.signing import ensure_key

SERVER = "127.0.0.1:1"


@pytest.fixture
def key(tmp_path: Path) -> str:
    return str(ensure_key(tmp_path / "executor.key"))


def test_the_pools_parameters_come_first_in_its_order() -> None:
    pool = list(inspect.signature(ProcessPoolExecutor).parameters.values())
    ours = list(inspect.signature(farm.Executor).parameters.values())
    assert [(p.name, p.kind) for p in ours[: len(pool)]] == [(p.name, p.kind) for p in pool]


def test_first_positional_argument_is_max_workers(key: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an int is no deprecated spelling
        assert farm.Executor(4, servers=SERVER, key_file=key)._max_workers == 4
        assert farm.Executor(max_workers=2, servers=SERVER, key_file=key)._max_workers == 2
        # No server answers SERVER: None falls back to the cores, as ProcessPoolExecutor's
        # (those this process may use: its affinity set within its CPU quota, as loky's).
        default = farm.Executor(servers=SERVER, key_file=key)._max_workers
        cores = cgroups.usable_cpus()
        assert farm.Executor(None, servers=SERVER, key_file=key)._max_workers == default == cores


def test_max_in_flight_is_an_alias(key: str) -> None:
    assert farm.Executor(servers=SERVER, key_file=key, max_in_flight=8)._max_workers == 8
    with pytest.raises(TypeError, match="max_in_flight"):
        farm.Executor(4, servers=SERVER, key_file=key, max_in_flight=8)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_must_be_positive(key: str, bad: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        farm.Executor(bad, servers=SERVER, key_file=key)


def test_max_workers_must_be_an_int(key: str) -> None:
    with pytest.raises(TypeError, match="max_workers"):
        farm.Executor(2.5, servers=SERVER, key_file=key)  # type: ignore[arg-type]


@pytest.mark.parametrize("servers", [SERVER, [SERVER, "unix:/run/farm/gearman.sock"], (SERVER,)])
def test_servers_as_first_argument_still_work_but_are_deprecated(
    key: str, servers: str | list[str] | tuple[str, ...]
) -> None:
    with pytest.warns(DeprecationWarning, match="servers="):
        ex = farm.Executor(servers, key_file=key)  # type: ignore[arg-type]
    expected = [servers] if isinstance(servers, str) else list(servers)
    assert ex._pump.servers == expected
    assert ex._max_workers == cgroups.usable_cpus()  # nobody answers: the cores


@pytest.mark.parametrize("bad", ["4", SERVER, [SERVER], (SERVER,)])
def test_a_keyword_max_workers_is_never_taken_for_servers(key: str, bad: object) -> None:
    # ProcessPoolExecutor(max_workers="4") is a TypeError; the servers-first form is the
    # positional one alone: "4" by keyword became the server "4:4730", silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not warned about as the old form
        with pytest.raises(TypeError, match=re.escape(repr(bad))):
            farm.Executor(max_workers=bad, servers=SERVER, key_file=key)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="max_workers"):
            farm.Executor(max_workers=bad, key_file=key)  # type: ignore[arg-type]


def test_servers_twice_is_an_error(key: str) -> None:
    with pytest.raises(TypeError, match="servers"):
        farm.Executor(SERVER, servers=SERVER, key_file=key)  # type: ignore[arg-type]


def test_mp_context_is_accepted_and_ignored(key: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    ex = farm.Executor(2, ctx, servers=SERVER, key_file=key)
    assert ex._max_workers == 2


def test_initializer_must_be_callable(key: str) -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        farm.Executor(2, None, "not callable", servers=SERVER, key_file=key)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bad", "error"), [("2", TypeError), (0, ValueError)])
def test_max_tasks_per_child_is_checked_as_the_pools(
    key: str, bad: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="max_tasks_per_child"):
        farm.Executor(servers=SERVER, key_file=key, max_tasks_per_child=bad)  # type: ignore[arg-type]


def test_initializer_and_max_tasks_per_child_are_taken(key: str) -> None:
    ex = farm.Executor(2, None, print, ("hello",), servers=SERVER, key_file=key)
    flags, sections = ex._pump.setup
    assert flags and sections and ex._pump.max_batch > 1
    ex = farm.Executor(servers=SERVER, key_file=key, max_tasks_per_child=5)
    assert ex._pump.max_batch == 1  # a worker counts jobs: one call each


def test_an_unpicklable_initarg_is_refused_at_once(key: str) -> None:
    import threading

    with pytest.raises(TypeError):
        farm.Executor(2, None, print, (threading.Lock(),), servers=SERVER, key_file=key)
