"""What `farm status` and `farm jobs` say of the farm's own job server when it is not up."""

from __future__ import annotations

from farm.cli.server import server_why


def test_a_server_starting_for_the_first_time_replays_its_store() -> None:
    # Not "restarted 0 times; the log says why": the warning log has nothing on a replay.
    said = server_why({"state": "starting", "restarts": 0, "last_exit": None, "replaying": True})
    assert said == "starting (replaying its store; farm ps)"


def test_a_server_starting_with_no_store_to_replay_is_not_said_to_replay_one() -> None:
    # store = "none" (or its replay done, the server about to listen): no replay goes on.
    said = server_why({"state": "starting", "restarts": 0, "last_exit": None, "replaying": False})
    assert said == "starting"


def test_a_restarted_server_is_counted_in_english_and_sent_to_the_log() -> None:
    once = server_why({"state": "backoff", "restarts": 1, "last_exit": "exited with code 2"})
    assert once.startswith("backoff, restarted 1 time; the last exited with code 2;"), once
    assert "the log says why" in once
    again = server_why({"state": "starting", "restarts": 3, "last_exit": "exited with code 2"})
    assert again.startswith("starting, restarted 3 times; the last exited with code 2;"), again
