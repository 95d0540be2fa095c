"""`farm reload`'s wait for the pools it added (farm.cli.deploy.follow_added): a command
worker that registered other names than its pool's is named with them once that held
MISREGISTERED_SETTLE, not after the whole wait; one whose right name came after a first
look serves, and the reload goes on (docs/operations.md, "Command pools")."""

from __future__ import annotations

import time
from typing import Any

import pytest
import typer

from farm.cli import deploy

ROW = {"function": "rightname", "slot": 0, "cpu": 1, "restarts": 0, "last_exit": ""}
WRONG = "registered wrong, not rightname"


def replies(*states: tuple[str, str]) -> Any:
    """A `ps` callable answering each (state, not_serving) in turn, the last one for ever."""
    answers = list(states)

    def ps() -> dict[str, Any]:
        state, why = answers.pop(0) if len(answers) > 1 else answers[0]
        row = {**ROW, "state": state, "not_serving": why}
        return {"processes": [row], "targets": {"rightname": 1}}

    return ps


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "POLL", 0.01)
    monkeypatch.setattr(deploy, "MISREGISTERED_SETTLE", 0.2)


def test_a_wrong_registration_that_holds_ends_the_wait_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    with pytest.raises(typer.Exit) as exited:
        deploy.follow_added(["rightname"], replies(("starting", WRONG)), began, wait=30)
    assert exited.value.exit_code == 1
    assert time.monotonic() - began < 10  # not the 30 s wait
    err = capsys.readouterr().err
    said = f"rightname#0 cpu1: added by the reload, {WRONG}: not serving (now starting)"
    assert said in err, err


def test_a_first_look_between_two_registrations_is_no_verdict() -> None:
    # CAN_DO wrong read, CAN_DO rightname not yet: then it serves.
    ps = replies(("starting", WRONG), ("starting", WRONG), ("running", ""))
    deploy.follow_added(["rightname"], ps, time.monotonic(), wait=30)  # returns: it served


def test_at_the_deadline_a_wrong_registration_not_settled_yet_is_named_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy, "MISREGISTERED_SETTLE", 60.0)
    with pytest.raises(typer.Exit):
        deploy.follow_added(["rightname"], replies(("starting", WRONG)), time.monotonic(), 0.3)
    assert f"added by the reload, {WRONG}: not serving" in capsys.readouterr().err
