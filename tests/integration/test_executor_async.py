"""An ``async def`` function handed to farm.Executor as if it were a plain one: the worker
calls it, and what comes back is a coroutine (an async generator, for one with ``yield``),
never run. The call failed "TypeError: cannot pickle 'coroutine' object", a "coroutine ...
was never awaited" RuntimeWarning beside in the worker's log. Now the coroutine is closed
(no warning) and the call fails saying to run it; submit() itself looks at nothing (its hot
path): the worker looks only once the result did not pickle."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.calls import add, afetch, astream
from tests.helpers.executorfarm import ExecutorFarm

pytestmark = pytest.mark.timeout(90)


def test_an_async_function_s_call_fails_saying_to_run_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    made = ExecutorFarm(tmp_path, count=1)  # its worker's stderr: capfd's, from here on
    try:
        with made.executor(max_workers=1) as ex:
            with pytest.raises(TypeError) as failed:
                ex.submit(afetch, 2).result(timeout=30)
            assert str(failed.value).startswith(
                "the call returned a coroutine of afetch, never run (it cannot be pickled)"
            ), failed.value
            assert "asyncio.run(afetch(*args))" in str(failed.value)
            with pytest.raises(TypeError, match="returned an async generator of astream"):
                ex.submit(astream, 2).result(timeout=30)
            # A chunk of map's calls: the one error, for each of the chunk's calls.
            with pytest.raises(TypeError, match="returned a coroutine of afetch"):
                list(ex.map(afetch, [1, 2, 3], chunksize=3, timeout=30))
            # The same worker, after: by now the calls' results are gone from it.
            assert ex.submit(add, 1, 1).result(timeout=30) == 2
    finally:
        made.stop()
    assert "never awaited" not in capfd.readouterr().err
