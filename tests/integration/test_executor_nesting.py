"""A farm.Executor that is a module global of the module whose functions it sends (a web
app's pattern): a worker imports that module to unpickle them, inside a call, and so makes
the executor there. It sends nothing from the worker unless a call uses it, and only then
is it the nested executor that docs/executor.md warns of."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.executorfarm import ExecutorFarm


def test_an_executor_made_as_a_worker_imports_its_module_warns_only_when_it_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made at import, it warned in every worker that imported the module ("farm.Executor
    # made inside a call running on 'farm.python' sends its calls to the same pool"): a
    # RuntimeWarning in the farm's log for an executor that sends nothing there.
    small = ExecutorFarm(tmp_path, count=0)
    try:
        # The module's executor finds the farm by $FARM_SERVERS, in the workers and here.
        monkeypatch.setenv("FARM_SERVERS", f"unix:{small.unix}")
        for _ in range(2):  # one runs the outer call, the other its inner one
            small.add_worker(small.key)
        from tests.helpers import importtimeexecutor

        assert importtimeexecutor.IMPORT_WARNINGS == []  # this process serves no pool
        with small.executor() as ex:
            assert ex.submit(importtimeexecutor.import_warnings).result(timeout=60) == []
            warned, value = ex.submit(importtimeexecutor.send_from_here).result(timeout=60)
        assert value == 2
        assert len(warned) == 1 and "sends its calls to the same pool" in warned[0]
    finally:
        small.stop()
