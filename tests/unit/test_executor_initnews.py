"""initnews.InitWatch: which of a job's initializer news break the executor. Two workers
of the job dead in the initializer do; one (a kill from outside may end a worker in a
healthy initializer) does not, nor a worker lost after the initializer ended."""

from __future__ import annotations

import pytest

from farm.executor.initnews import InitializerFailed, InitWatch
from farm.executor.payload import INIT_ENDS, INIT_STARTS

S, E = INIT_STARTS, INIT_ENDS


def watch(*marks: bytes) -> InitWatch:
    init = InitWatch()
    for mark in marks:
        init.heard(mark, "H:1")
    return init


@pytest.mark.parametrize(
    "marks",
    [(), (S,), (S, E), (S, S), (S, E, S, E), (S, S, E), (S, S, E, S)],
)
def test_one_death_in_the_initializer_does_not_break(marks: tuple[bytes, ...]) -> None:
    watch(*marks)  # the retry's start after one death in it: run on, as any dead worker


@pytest.mark.parametrize("marks", [(S,), (S, E), (S, S, E), (), (S, E, S, E)])
def test_a_job_lost_with_at_most_one_death_in_the_initializer_is_worker_lost(
    marks: tuple[bytes, ...],
) -> None:
    # (S,): one worker died in it (its last, or one before a worker that had run it
    # already and sent nothing, which died in the call); the caller's WorkerLost follows.
    watch(*marks).lost("H:1")


def test_a_third_start_breaks_the_executor() -> None:
    init = watch(S, S)
    with pytest.raises(InitializerFailed, match="2 workers running job H:1 died"):
        init.heard(S, "H:1")


def test_a_job_lost_after_a_death_and_a_start_with_no_end_breaks_the_executor() -> None:
    with pytest.raises(InitializerFailed, match="2 workers"):
        watch(S, S).lost("H:1")
    with pytest.raises(InitializerFailed):
        watch(S, S, E, S).lost("H:1")  # A died in it, B ended it and died later, C in it
