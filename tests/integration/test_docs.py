"""The examples of README.md and docs/*.md run as written, against `make run`'s defaults.

Every fenced block marked ``python``, ``sh``, ``php`` or ``toml`` is an example: python,
sh and php blocks run (in the order of their file) against `farm up` started with no
config, as `make run` does; toml blocks must load as a config (a block without pools is a
part of one: a pool is added). A block right after a line
``<!-- not run: REASON -->`` is skipped with that reason (systemctl, journalctl: there is
no systemd as PID 1 here; `farm up` in the foreground: this test starts it itself).

Beside its exit status, an example's stdout must hold what its print lines state they print
(a trailing comment that is a Python literal: ``print(x)  # b'olleH'``), and an example
leaves no queued job in a default store other than the farm's own (tests/helpers/docexamples).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import config
from farm.pools.control import ControlUnavailable, request
from tests.helpers import ROOT
from tests.helpers.docexamples import Example, examples, stores_left_holding, unprinted
from tests.helpers.servers import need, skip_or_fail
from tests.helpers.waiting import wait_for

#: Added to a toml block that shows only part of a farm.toml (a config needs a pool).
FUNCTIONS = '\n[functions.reverse]\ntarget = "workers.text:reverse"\n'
#: Tools an sh block may name that are not farm's own (skipped where missing, as interop is).
TOOLS = ("gearadmin", "gearman", "php", "perl")


def test_there_are_examples_and_systemd_ones_are_marked() -> None:
    found = examples()
    assert len([e for e in found if not e.skip]) >= 15
    for e in found:
        commands = re.sub(r"#.*", "", e.code)  # a comment may name them ("or: systemctl ...")
        if re.search(r"\b(systemctl|journalctl)\b", commands):
            assert e.skip, f"{e}: systemd blocks cannot run here; mark them <!-- not run: ... -->"


class DefaultFarm:
    """`farm up` with no config (the built-in defaults, as `make run`), its runtime and state
    directories in a temp dir; `farm` on PATH runs this checkout."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "farm"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m farm.cli "$@"\n')
        shim.chmod(0o755)
        (tmp / "run").mkdir(mode=0o700)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "GEARMAN_"))}
        self.env.update(
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            PYTHONPATH=str(ROOT),
            XDG_RUNTIME_DIR=str(tmp / "run"),
            XDG_STATE_HOME=str(tmp / "state"),
        )
        self.control = str(tmp / "run" / "farm" / "control.sock")
        self.state = tmp / "state" / "farm"  # its store: queue-4730.db
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(tmp / "farm.log", "ab")  # noqa: SIM115 (closed in close)

    def alive(self) -> bool:
        try:
            request(self.control, {"cmd": "ping"}, timeout=2)
        except ControlUnavailable:
            return False
        return True

    def ensure_up(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self.alive():
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(60)  # a `farm stop` still draining
        self.proc = subprocess.Popen(
            ["farm", "up"], cwd=self.tmp, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError((self.tmp / "farm.log").read_text())
            try:
                rows = request(self.control, {"cmd": "ps"}, timeout=2)["processes"]
            except ControlUnavailable:
                return False
            workers = [r for r in rows if r["slot"] is not None]
            return bool(workers) and all(r["state"] == "idle" for r in workers)

        wait_for("farm up on its defaults", ready, timeout=60)

    def run(self, example: Example) -> subprocess.CompletedProcess[str]:
        if example.lang == "python":
            argv = [sys.executable, "-c", example.code]
        elif example.lang == "php":
            script = self.tmp / "example.php"
            script.write_text("<?php\n" + example.code)
            argv = [need("php"), str(script)]
        else:
            argv = ["bash", "-e", "-o", "pipefail", "-c", example.code]
        return subprocess.run(
            argv, cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=120
        )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# serial: the examples run against `make run`'s defaults, port 4730 among them.
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def default_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefaultFarm]:
    if not port_free(4730):
        skip_or_fail("port 4730 is taken: the docs' examples run against make run's defaults")
    farm = DefaultFarm(tmp_path_factory.mktemp("docs"))
    try:
        yield farm
    finally:
        farm.close()


# An example may start the farm (up to 60 s on a loaded machine) and then scale a pool to
# 32 workers on 2 cores and stop it with a drain: 54 s were seen at a load of 12, against
# the suite's 60 s.
@pytest.mark.timeout(180)
@pytest.mark.parametrize("example", examples(), ids=str)
def test_example_runs_as_written(example: Example, default_farm: DefaultFarm) -> None:
    if example.skip:
        pytest.skip(example.skip)
    if example.lang == "toml":
        path = default_farm.tmp / "example.toml"
        fragment = "" if "[functions" in example.code else FUNCTIONS  # a part of farm.toml
        path.write_text(example.code + fragment)
        config.load(path)  # raises ConfigError with the key at fault
        return
    for tool in TOOLS:
        if re.search(rf"(^|[\s;|(]){tool}\b", example.code) and not shutil.which(tool):
            need(tool)
    default_farm.ensure_up()
    started = time.monotonic()
    out = default_farm.run(example)
    assert out.returncode == 0, (
        f"{example} failed after {time.monotonic() - started:.1f}s:\n{example.code}\n"
        f"--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
    )
    if example.lang in ("python", "sh"):  # a python heredoc of an sh block too
        missing = unprinted(example.code, out.stdout)
        assert not missing, (
            f"{example}: what these lines say they print is not in its stdout: "
            f"{[str(s) for s in missing]}\n--- stdout\n{out.stdout}"
        )
    # A server the example started (`farm server -p 4731 &`) has ended by now: its log went
    # to the pipe run() read to its end.
    left = stores_left_holding(default_farm.state, own="queue-4730.db")
    assert not left, f"{example} left queued jobs in a store no server runs: {left}"
