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


def test_only_the_added_pools_that_do_not_serve_are_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A reload added two pools: one serves, one's first process died at its import. The
    # verdict named both ("fix them, or remove them"), the serving one too.
    def ps() -> dict[str, Any]:
        good = {**ROW, "function": "good", "state": "idle", "not_serving": ""}
        bad = {**ROW, "function": "bad", "state": "starting", "restarts": 1, "not_serving": ""}
        return {
            "processes": [good, {**bad, "last_exit": "ImportError: nope"}],
            "targets": {"good": 1, "bad": 1},
        }

    with pytest.raises(typer.Exit):
        deploy.follow_added(["bad", "good"], ps, time.monotonic(), wait=30)
    err = capsys.readouterr().err
    assert "the pool(s) it added do not serve (bad):" in err, err


def test_a_restart_is_followed_past_the_farms_boot_timeout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # boot_timeout = 300 for a model's import: `farm restart` said "no progress in 150s",
    # exit 1, while the farm's restart went on to succeed.
    monkeypatch.setattr(deploy, "STALL_PAST_BOOT", 0.0)
    reply = {"restart": 1, "done": False, "total": {"m": 1}, "replaced": {}, "boot_timeout": 0.5}
    began = time.monotonic()
    with pytest.raises(typer.Exit):
        deploy.follow_restart(reply, lambda: reply)
    assert time.monotonic() - began >= 0.5
    assert "no progress in 0.5s" in capsys.readouterr().err
