"""`farm reload`'s wait for the pools it added (farm.cli.deploy.follow_added): a command
worker that registered other names than its pool's and asks for jobs with them is named
with them then, not after the whole wait; one that has not asked yet may register its
pool's name after a slow init: waited for, and named at the wait's end with what it
registered so far (docs/operations.md, "Command pools")."""

from __future__ import annotations

import time
from typing import Any

import pytest
import typer

from farm.cli import deploy

ROW = {"function": "rightname", "slot": 0, "cpu": 1, "restarts": 0, "last_exit": ""}
WRONG = "registered wrong, not rightname"
SO_FAR = "registered helper so far, not rightname"


def replies(*states: tuple[str, str, bool]) -> Any:
    """A `ps` callable answering each (state, not_serving, not_serving_final) in turn, the
    last one for ever."""
    answers = list(states)

    def ps() -> dict[str, Any]:
        state, why, final = answers.pop(0) if len(answers) > 1 else answers[0]
        row = {**ROW, "state": state, "not_serving": why, "not_serving_final": final}
        return {"processes": [row], "targets": {"rightname": 1}}

    return ps


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "POLL", 0.01)


def test_a_wrong_registration_it_asks_jobs_with_ends_the_wait_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    with pytest.raises(typer.Exit) as exited:
        deploy.follow_added(["rightname"], replies(("starting", WRONG, True)), began, wait=30)
    assert exited.value.exit_code == 1
    assert time.monotonic() - began < 10  # not the 30 s wait
    err = capsys.readouterr().err
    said = f"rightname#0 cpu1: added by the reload, {WRONG}: not serving (now starting)"
    assert said in err, err


def test_a_registration_before_it_asks_for_jobs_is_no_verdict() -> None:
    # CAN_DO helper read, a slow init, CAN_DO rightname: then it serves.
    ps = replies(*[("starting", SO_FAR, False)] * 30, ("running", "", False))
    deploy.follow_added(["rightname"], ps, time.monotonic(), wait=30)  # returns: it served


def test_at_the_deadline_a_registration_not_final_is_named_as_so_far(
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    with pytest.raises(typer.Exit):
        deploy.follow_added(["rightname"], replies(("starting", SO_FAR, False)), began, 0.3)
    assert time.monotonic() - began >= 0.3  # waited for it to the end
    err = capsys.readouterr().err
    assert f"added by the reload, {SO_FAR}: not serving 0.3s after it (now starting)" in err, err
