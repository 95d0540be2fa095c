"""A command worker's memory and CPU, as `farm ps` and the metrics show them: its slot's
whole process tree (a wrapper's shell and the worker it started, helpers they left)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers.farmproc import FarmUp
from tests.helpers.scraping import get, scrape
from tests.helpers.waiting import wait_for


def test_a_wrappers_worker_memory_and_cpu_are_its_slots(tmp_path: Path) -> None:
    # `sh -c "php worker.php"` (no exec): `farm ps` RSS and farm_worker_rss_bytes read the
    # shell's 1.6 MiB, however far the PHP worker it started leaked, and its CPU seconds
    # (farm top's CPU %) the shell's 0: an operator watching a leaking or spinning PHP pool
    # (or alerting on the metrics) saw nothing. The slot's whole process tree counts.
    held, burnt = 64 << 20, 0.5
    (tmp_path / "big.py").write_text(
        "import time\nfrom pathlib import Path\n"
        f"while time.process_time() < {burnt}:\n    pass\n"
        f"block = bytearray({held})\nblock[::4096] = b'x' * len(block[::4096])\n"
        "Path('holding').touch()\ntime.sleep(600)\n"
    )
    wrapper = f'["sh", "-c", "{sys.executable} big.py; echo done"]'
    up = FarmUp(
        tmp_path,
        f'[functions.big]\ncommand = {wrapper}\ncwd = "{tmp_path}"\nworkers = 1\n'
        "graceful_timeout = 1\n",
        supervisor="ready_wait = 1",  # it never connects: READY=1 without it
    )
    try:
        up.expect_notify("READY=1")
        wait_for("the wrapper's worker holding its memory", (tmp_path / "holding").exists)
        (row,) = up.workers("big")
        assert row["rss"] >= held, row
        numbers = scrape(up.metrics_url)
        assert get(numbers, "farm_worker_rss_bytes", pool="big", slot="0") >= held
        assert get(numbers, "farm_worker_cpu_seconds_total", pool="big", slot="0") >= burnt
    finally:
        up.stop()


def test_a_worker_tree_s_cpu_counter_does_not_fall_as_a_helper_detaches(tmp_path: Path) -> None:
    # A helper a PHP worker started in the background (`exec("cmd &")`: a double fork) is in
    # its tree while the shell between them lives; adopted by the supervisor once that
    # shell exits, it took its seconds out of the slot's sum, and the counter fell (3.03
    # then 2.04): Prometheus reads a fall as a reset, and rate() drew a false spike.
    (tmp_path / "w.py").write_text(
        "import os, time\nfrom pathlib import Path\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"
        "        while time.process_time() < 0.6:\n            pass\n"
        "        Path('spun').touch()\n        time.sleep(600)\n"
        "    while not Path('looked').exists():\n        time.sleep(0.02)\n"
        "    os._exit(0)\n"
        "os.wait()\nPath('reaped').touch()\ntime.sleep(600)\n"
    )
    up = FarmUp(
        tmp_path,
        f'[functions.c]\ncommand = ["{sys.executable}", "w.py"]\ncwd = "{tmp_path}"\n'
        "workers = 1\ngraceful_timeout = 1\n",
        supervisor="ready_wait = 1",  # it never connects: READY=1 without it
    )
    try:
        up.expect_notify("READY=1")
        wait_for("the helper's CPU spent", (tmp_path / "spun").exists)
        before = get(scrape(up.metrics_url), "farm_worker_cpu_seconds_total", pool="c", slot="0")
        assert before >= 0.6  # the helper counts while the shell between them lives
        (tmp_path / "looked").touch()
        wait_for("the shell between them gone", (tmp_path / "reaped").exists)
        after = get(scrape(up.metrics_url), "farm_worker_cpu_seconds_total", pool="c", slot="0")
        assert after >= before
    finally:
        up.stop()
