"""The documented worker target ``farm.executor_worker:run_call``, kept for configs that
copied it; the code lives in ``farm.executor.call``."""

from farm.executor.call import DEFAULT_FUNCTION, run_call

__all__ = ["DEFAULT_FUNCTION", "run_call"]
