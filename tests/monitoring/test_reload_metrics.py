"""What the metrics say of a reload: whether it applied the file, when one last did, and
whether part of the file waits for the farm's next start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm.pools.control import ControlUnavailable
from tests.helpers import scraping
from tests.helpers.clirun import one_line_error
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.scraping import Samples
from tests.helpers.waiting import wait_for

POOLS = """
[functions.reverse]
target = "tests.helpers.serving:reverse"
workers = 1
"""
PENDING = ("farm_config_restart_pending", ())


def scrape(up: FarmUp) -> Samples:
    return scraping.scrape(up.metrics_url)


@pytest.mark.timeout(90)
def test_a_failed_reload_shows_until_a_reload_succeeds(tmp_path: Path) -> None:
    # A reload of a bad file keeps the running config and logs why, and nothing else said
    # so: the bad edit went unseen until the next start failed (Prometheus' own
    # prometheus_config_last_reload_successful is for this).
    ok, at = (
        "farm_config_last_reload_successful",
        "farm_config_last_reload_success_timestamp_seconds",
    )
    before_start = time.time()
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        first = scrape(up)
        assert first[(ok, ())] == 1, "the config read at start is a success"
        started = first[(at, ())]
        assert before_start - 1 <= started <= time.time()

        good = up.config.read_text()
        up.config.write_text(good + "[functions.broken\n")
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 2, out.stdout + out.stderr
        failed = scrape(up)
        assert failed[(ok, ())] == 0
        assert failed[(at, ())] == started, "when the config last did load"

        up.config.write_text(good)
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        again = scrape(up)
        assert again[(ok, ())] == 1
        assert again[(at, ())] > started
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_a_reload_that_waits_for_a_restart_shows_until_the_file_and_the_farm_agree(
    tmp_path: Path,
) -> None:
    # A reload that changed [supervisor] applied the pools and said "not applied" for the
    # rest, while the metrics said only "applied" (farm_config_last_reload_successful 1):
    # an operator's alerting never learnt that the running farm is not what its file says.
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        assert scrape(up)[PENDING] == 0, "the config read at start is the one running"
        good = up.config.read_text()
        up.config.write_text(good.replace("graceful_timeout = 10", "graceful_timeout = 11"))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[supervisor] changed" in out.stdout + out.stderr
        waiting = scrape(up)
        assert waiting[("farm_config_last_reload_successful", ())] == 1
        assert waiting[PENDING] == 1

        up.config.write_text(good + "[functions.broken\n")
        assert farm_cli("reload", "--control", up.control).returncode == 2
        assert scrape(up)[PENDING] == 1, "a refused file says nothing of what the farm runs"

        up.config.write_text(good)  # back to what the farm started with
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        assert scrape(up)[PENDING] == 0
    finally:
        up.stop()


@pytest.mark.timeout(120)
def test_a_reload_by_its_config_file_reaches_the_farm_when_the_file_does_not_parse(
    tmp_path: Path,
) -> None:
    # The unit's reload is `farm reload --config FILE`: a FILE that did not parse (or was
    # emptied, or removed) stopped it before it asked the farm, exit 2 and nothing else:
    # no "reload failed" in the farm's log, farm_config_last_reload_successful stayed 1 and
    # the alert on it never fired, while the farm's next start would refuse the file.
    ok = ("farm_config_last_reload_successful", ())
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        good = up.config.read_text()
        for case, broken, said in (
            ("bad TOML", good + "[functions.broken\n", "farm.toml"),
            ("empty", "", "has no settings"),
            ("removed", None, "farm.toml"),
        ):
            if broken is None:
                up.config.unlink()
            else:
                up.config.write_text(broken)
            out = farm_cli("reload", "--config", str(up.config))
            assert out.returncode == 2, out.stdout + out.stderr
            line = one_line_error(out.stderr)
            assert said in line, line
            assert scrape(up)[ok] == 0, f"{case}: the farm was not asked"
            up.config.write_text(good)
            out = farm_cli("reload", "--config", str(up.config))
            assert out.returncode == 0, out.stdout + out.stderr
            assert scrape(up)[ok] == 1
        assert up.read_log().count("reload failed") == 3
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_a_reload_whose_new_target_does_not_boot_shows_as_failed(tmp_path: Path) -> None:
    # `farm reload` to a module that raises on import exits 1, "the old one stays", and the
    # farm goes on with the old target: the metrics said nothing of it (the boot failure
    # was not counted, the reload read as successful), so no alert fired for a deploy that
    # did not happen, `systemctl reload` or a SIGHUP's alike.
    (tmp_path / "goodmod.py").write_text("def fast(job):\n    return b'old'\n")
    (tmp_path / "badmod.py").write_text("raise RuntimeError('broken deploy')\ndef fast(job): ...\n")
    ok, at = (
        "farm_config_last_reload_successful",
        "farm_config_last_reload_success_timestamp_seconds",
    )
    boot_failures = ("farm_pool_restarts_total", (("cause", "boot_failure"), ("pool", "fast")))
    pool = '[functions.fast]\ntarget = "{}:fast"\nworkers = 1\n'
    up = FarmUp(tmp_path, pool.format("goodmod"))
    try:
        up.expect_notify("READY=1")
        (before,) = up.wait_idle({"fast": 1})
        started = scrape(up)[(at, ())]
        up.write_config(pool.format("badmod"))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "failed to boot" in out.stderr and "stays" in out.stderr, out.stderr
        failed = scrape(up)
        assert failed[boot_failures] == 1
        assert failed[(ok, ())] == 0, "the file's pool runs its old target: not applied"
        assert failed[(at, ())] == started, "when a config file last applied whole"
        (row,) = up.workers("fast")
        assert row["pid"] == before["pid"], "the old worker serves on"
        # FarmConfigReloadFailed sends one to `journalctl -u farm -g "reload failed"` for why.
        (said,) = [line for line in up.read_log().splitlines() if "reload failed" in line]
        assert "broken deploy" in said, said

        up.write_config(pool.format("goodmod"))  # put back: nothing to replace
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        again = scrape(up)
        assert again[(ok, ())] == 1
        assert again[(at, ())] > started
        assert again[boot_failures] == 1, "a counter: the failed boot stays counted"
    finally:
        up.stop()


def loading(up: FarmUp) -> list[dict] | None:
    """The pool `fast`'s workers still loading; None while the supervisor does not listen."""
    try:
        return up.workers("fast", "starting")
    except ControlUnavailable:
        return None


@pytest.mark.timeout(90)
def test_a_reload_of_a_pool_with_no_serving_worker_shows_as_failed_when_it_does_not_boot(
    tmp_path: Path,
) -> None:
    # The pool's worker still loads its target (or its slot backs off) when a reload changes
    # it: no new process starts beside it, the slot's next one runs the new target. That one
    # not booting went through the slot's backoff alone, and the metrics read "applied".
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(60)\ndef fast(job): ...\n")
    (tmp_path / "badmod.py").write_text("raise RuntimeError('broken deploy')\ndef fast(job): ...\n")
    ok = ("farm_config_last_reload_successful", ())
    boot_failures = ("farm_pool_restarts_total", (("cause", "boot_failure"), ("pool", "fast")))
    pool = '[functions.fast]\ntarget = "{}:fast"\nworkers = 1\n'
    up = FarmUp(tmp_path, pool.format("slowmod"))
    try:
        wait_for("the worker loading", lambda: loading(up), timeout=30)
        up.write_config(pool.format("badmod"))
        out = farm_cli("reload", "--control", up.control)
        assert "not seen serving" in out.stdout + out.stderr, out.stdout + out.stderr
        wait_for("the boot failure", lambda: scrape(up)[boot_failures] == 1, timeout=30)
        assert scrape(up)[ok] == 0, "the file's pool does not boot: not applied"
        (said,) = [line for line in up.read_log().splitlines() if "reload failed" in line]
        assert "broken deploy" in said, said
    finally:
        up.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("running", "broken"),
    [
        # A command pool whose new command exits (a deploy's PHP fatal error).
        ('command = ["sleep", "60"]', 'command = ["sh", "-c", "echo broken deploy; exit 1"]'),
        # A Python target that leaves by os._exit(1) on import: no boot report, a "crash".
        ('target = "slowmod:fast"', 'target = "exitmod:fast"'),
    ],
    ids=["command", "os-exit"],
)
def test_a_reload_of_a_pool_with_no_serving_worker_fails_when_its_new_target_ends_unserved(
    tmp_path: Path, running: str, broken: str
) -> None:
    # Its first process of the new target ended before it served, as a crash, not a boot
    # failure (no boot report, no EXIT_BOOT_ERROR): the reload read as applied.
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(60)\ndef fast(job): ...\n")
    (tmp_path / "exitmod.py").write_text(
        "import os, sys\ndef fast(job): ...\n"
        "print('broken deploy', file=sys.stderr, flush=True)\nos._exit(1)\n"
    )
    ok = ("farm_config_last_reload_successful", ())
    crashes = ("farm_pool_restarts_total", (("cause", "crash"), ("pool", "fast")))
    pool = "[functions.fast]\n{}\nworkers = 1\n"
    up = FarmUp(tmp_path, pool.format(running))
    try:
        wait_for("the worker loading", lambda: loading(up), timeout=30)
        up.write_config(pool.format(broken))
        out = farm_cli("reload", "--control", up.control)
        assert "not seen serving" in out.stdout + out.stderr, out.stdout + out.stderr
        wait_for("the new target's end", lambda: scrape(up)[crashes] >= 1, timeout=30)
        # Its end is counted before the reload is judged: a scrape may fall between them.
        wait_for("the reload counted failed", lambda: scrape(up)[ok] == 0, timeout=10)
        (said,) = [line for line in up.read_log().splitlines() if "reload failed" in line]
        assert "broken deploy" in said and "exited with code 1" in said, said
    finally:
        up.stop()
