"""What a process imports before it does anything: the heavy modules stay out of it.

Every `farm` command imports farm.cli (typer must see every command's signature), a
user's program imports farm, and each supervised worker starts in farm.pools.workerproc.
rich, ssl, the client side and the supervisor's parts each cost a noticeable part of a
start, so they are imported by the commands and functions that use them. A fresh
interpreter is asked which modules the import loaded: no timing, so no flaky threshold.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Each command's own heavy parts: none is needed to register the commands.
CLI_DEFERS = (
    "rich",  # farm top and ps --watch draw with it (farm.cli.liveview)
    "ssl",
    "socket",
    "http.client",
    "urllib.request",
    "psutil",
    "prometheus_client",
    "farm.supervisor",
    "farm.pools",
    "farm.config",
    "farm.client",
    "farm.net",
    "farm.discovery",
    "farm.protocol",
    "farm.server",
)


def newly_imported(statement: str) -> set[str]:
    """The modules ``statement`` loads in a fresh interpreter, past those site loaded."""
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,  # -c puts the working directory first: this checkout's farm
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(out.stdout.split())


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The names (packages with their submodules) found among ``modules``."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_the_probe_sees_imports() -> None:
    modules = newly_imported("import farm.cli.liveview")
    assert "farm.cli.liveview" in modules
    assert loaded(modules, ("rich",)), "the probe missed rich, which liveview imports"


def test_the_farm_command_imports_no_command_s_heavy_parts() -> None:
    modules = newly_imported("import farm.cli")
    assert {"typer", "farm.cli.top", "farm.cli.supervise"} <= modules
    assert loaded(modules, CLI_DEFERS) == []


@pytest.mark.parametrize("statement", ["import farm", "from farm import FarmError, __version__"])
def test_import_farm_loads_no_library_until_used(statement: str) -> None:
    modules = newly_imported(statement)
    assert loaded(modules, ("farm",)) == ["farm", "farm.errors", "farm.version"]
    assert loaded(modules, ("ssl", "socket", "threading", "asyncio")) == []


def test_a_supervised_worker_starts_without_the_supervisor_or_psutil() -> None:
    modules = newly_imported("import farm.pools.workerproc")
    heavy = ("psutil", "farm.supervisor", "farm.config", "farm.cli", "typer", "rich", "ssl")
    assert loaded(modules, heavy) == []


def test_the_steering_commands_read_the_control_path_without_the_config_model(
    tmp_path: Path,
) -> None:
    # farm ps, scale, stop, restart: the control socket's path, a request, lines printed.
    # (Where nothing is at that socket, the whole file is read, to say why no farm runs
    # from it: farm.cli.app.refused_config.)
    config, sock = tmp_path / "farm.toml", tmp_path / "control.sock"
    config.write_text(f'[supervisor]\ncontrol = "{sock}"\n')
    there = socket.socket(socket.AF_UNIX)
    there.bind(str(sock))
    try:
        modules = newly_imported(
            "from pathlib import Path\n"
            "from farm.cli.app import control_socket\n"
            "import farm.cli.watch, farm.pools.control\n"
            f"control_socket(Path({str(config)!r}), None)"
        )
    finally:
        there.close()
    assert {"farm.discovery", "farm.pools.control"} <= modules
    heavy = ("farm.config", "farm.supervisor", "farm.client", "farm.protocol", "psutil", "rich")
    assert loaded(modules, heavy) == []


def test_the_admin_client_comes_without_the_client_faces() -> None:
    # The supervisor, `farm status` and the Executor ask the server through it.
    modules = newly_imported("import farm.client.admin")
    faces = ("farm.client.blocking", "farm.client.blockingconn", "farm.client.aio", "asyncio")
    assert loaded(modules, faces) == []
    assert "farm.client.blocking" in newly_imported("from farm.client import Client")


def test_the_lazy_names_are_listed_as_the_module_s_own() -> None:
    # Loaded on first use, they were missing from dir(): no completion for farm.Executor.
    import farm
    import farm.client

    assert {"Executor", "Client", "AsyncClient", "Worker"} <= set(dir(farm))
    assert {"Client", "AsyncClient", "Task", "JobStatus"} <= set(dir(farm.client))
