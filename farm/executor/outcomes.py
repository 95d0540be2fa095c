"""A call's outcome in the worker, as it travels back: ``(OK, value)`` or ``(ERROR,
exception, traceback text)``, pickled as ProcessPoolExecutor sends one (an outcome that
cannot be pickled becomes the call's error); a batch's outcomes from a first index on.
``farm.executor.call`` runs the calls and seals what these make; a batch's part sent ahead
(``send_part``), and a result file taken back when its answer cannot leave
(``remove_if_unsent``)."""

from __future__ import annotations

import contextlib
import inspect
import pickle
import traceback
from collections.abc import Callable
from typing import Any

from farm.errors import JobError
from farm.executor import spill
from farm.executor.payload import ERROR, OK, describe, dump

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def raised(exc: BaseException) -> tuple[Any, ...]:
    """The outcome of a call that raised ``exc``. An exception that pickles but does not
    unpickle (one whose ``__init__`` wants other arguments than its ``args``: a common
    slip) is replaced here by a JobError that says so, since in a batch one outcome the
    caller cannot load would cost it the batch's others. Only calls that raised pay.

    The exception's traceback is dropped once told (``text``), as ProcessPoolExecutor's
    worker drops it: it held the frames of the worker's own loop, which hold the outcome,
    a cycle that kept each failed call's locals (a 300 MB list, a MemoryError's all) until
    a full collection, and the next call on that worker failed for the memory."""
    text = remote_traceback(exc)
    exc.__traceback__ = None
    try:
        pickled = dump(exc)
    except BaseException:
        return (ERROR, exc, text)  # it does not pickle: _dump_outcome says so, as it says why
    try:
        pickle.loads(pickled)
    except BaseException as again:  # what unpickling raises: even SystemExit
        error = JobError(
            f"the call raised {describe(exc)}, which cannot be unpickled: {describe(again)}"
        )
        return (ERROR, error, text)
    return (ERROR, exc, text)


def remote_traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop run_call's own frame: the user's code starts below it
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return f'\n"""\n{text}"""'


def dump_outcome(outcome: tuple[Any, ...]) -> bytes:
    """The outcome's pickle: plain pickle when it works (fast), else cloudpickle.

    As in ProcessPoolExecutor, an outcome that cannot be pickled becomes the
    call's exception: whatever pickling raised (any BaseException -- a
    ``__reduce__`` may raise SystemExit), with that traceback. The worker lives on.
    """
    try:
        return dump(outcome)
    except BaseException as exc:
        return pickle.dumps(unsendable(exc, outcome), protocol=_PROTOCOL)


def unsendable(exc: BaseException, outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    """The outcome that replaces one that pickling failed with ``exc``: ``exc`` itself
    (ProcessPoolExecutor's rule), or a PicklingError naming it when it will not pickle
    either; for a coroutine never run, the error that says to run it (_never_run). A
    call's own exception that failed keeps its traceback in the text."""
    text = remote_traceback(exc)
    if outcome[0] == ERROR:
        text += f"\nwhile sending the call's exception, which was:\n{outcome[2]}"
    elif (never_run := _never_run(outcome[1])) is not None:
        return (ERROR, never_run, text)
    exc.__traceback__ = None  # its frames hold the unpicklable value
    try:
        pickle.dumps(exc, protocol=_PROTOCOL)
        return (ERROR, exc, text)
    except BaseException as again:
        what = "result" if outcome[0] == OK else "exception"
        error = pickle.PicklingError(
            f"cannot pickle the call's {what}: {describe(exc)}; nor that error: {describe(again)}"
        )
        return (ERROR, error, text)


def _never_run(value: Any) -> TypeError | None:
    """The error for a result that is an ``async def`` function's coroutine (or async
    generator), or a chunk's list holding one: ``submit(fetch, url)`` with an async
    ``fetch`` failed "cannot pickle 'coroutine' object", a "never awaited" warning beside
    in the worker. Each is closed (no warning), and the error says to run it. Looked for
    only once pickling has failed: off the path of every result."""
    found = [v for v in (value if type(value) is list else [value]) if _async_made(v)]
    for made in found:
        if inspect.iscoroutine(made):
            made.close()
    if not found:
        return None
    name = getattr(found[0], "__qualname__", None) or getattr(found[0], "__name__", "it")
    if inspect.iscoroutine(found[0]):
        made, run = "a coroutine", f"e.g. def run(*args): return asyncio.run({name}(*args))"
    else:  # asyncio.run takes no async generator
        made = "an async generator"
        run = f"one that gathers what {name}(...) yields under asyncio.run"
    return TypeError(
        f"the call returned {made} of {name}, never run (it cannot be pickled): the function"
        " is called in a worker process and what it returns is sent back; submit a plain"
        f" function that runs it, {run}"
    )


def _async_made(value: object) -> bool:
    return inspect.iscoroutine(value) or inspect.isasyncgen(value)


def dump_batch(first: int, outcomes: list[Any]) -> bytes:
    """A batch's outcomes from ``first`` on; one that cannot be pickled becomes its error."""
    # BaseException throughout: an outcome whose pickling raises SystemExit is that call's
    # error, as a call that raises it is (ProcessPoolExecutor's rule); workers ignore SIGINT.
    try:
        return pickle.dumps((first, outcomes), protocol=_PROTOCOL)
    except BaseException:
        pass
    kept = []
    for outcome in outcomes:
        try:
            dump(outcome)
            kept.append(outcome)
        except BaseException as exc:
            kept.append(unsendable(exc, outcome))
    try:
        return dump((first, kept))
    except BaseException as exc:  # each pickles alone but not together: none is sent
        failure = unsendable(exc, (OK, None))
        return pickle.dumps((first, [failure] * len(kept)), protocol=_PROTOCOL)


def remove_if_unsent(job: Any, reference: bytes) -> None:
    """Have the worker remove this result file if the job's answer cannot leave: its job
    server went away mid-call (killed, restarted), so no caller will ever read the file,
    which waited for the supervisor's sweep (``spill_orphan_age_s``, an hour) otherwise.
    (``farm.Worker`` runs ``job.unsent`` then.) A batch's part sent ahead takes its file
    out again once its WORK_DATA was written (``send_part``): the server may have passed
    it on, and its caller removes it once read (or, losing the server, by its call id)."""
    earlier = getattr(job, "unsent", None)

    def unsent() -> None:
        if earlier is not None:
            earlier()
        spill.remove(reference)

    try:
        job.unsent = unsent
    except AttributeError:  # a stand-in for farm.Worker's Job without the slot (a test's)
        pass


def send_part(job: Any, seal: Callable[..., bytes], *args: Any) -> None:
    """Send a part of a batch's answer ahead (WORK_DATA), ``seal(job, *args)``. Its spill
    files stay for ``job.unsent`` only while they have not left: farm.Worker's send_data
    says whether it was written (a stand-in that says nothing is taken at its word); a
    file the server already took must not go when the final answer is lost. (A part
    sealed by call._seal_batch sends parts of its own first; one that did not leave ended the
    job's hold, so this one does not leave either, and every file stays in the hook.)"""
    earlier = getattr(job, "unsent", None)
    if job.send_data(seal(job, *args)) is not False:
        with contextlib.suppress(AttributeError):  # a stand-in's Job without the slot
            job.unsent = earlier
