"""A site's wrapper around the Executor's target: its own set-up first (logging, tracing),
then farm.executor.call.run_call, whose result is signed as the Executor's own target's."""

from __future__ import annotations

from typing import Any

from farm.executor.call import run_call as _run_call


def run_call(job: Any) -> bytes:
    return _run_call(job)
