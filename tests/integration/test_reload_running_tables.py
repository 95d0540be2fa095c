"""A reload while [server] or [supervisor] changed: the pools are read against the running
farm's tables (its cores, memory budget and sockets), which only a restart changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.config.capacity import available_cpus
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.gate import Gate
from tests.helpers.streams import call_in_thread
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(40)

AUTO = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = "auto"\n'


@pytest.mark.skipif(len(available_cpus()) < 2, reason="needs two cores to change cpus")
def test_a_reload_that_changes_cpus_keeps_auto_pools_at_one_per_running_core(
    tmp_path: Path,
) -> None:
    # cpus [0] -> [0, 1]: the reload said "[supervisor] changed; that takes a restart",
    # yet sized the "auto" pool by the new cores: two workers, both pinned to core 0.
    first, second = available_cpus()[:2]
    up = FarmUp(tmp_path, AUTO, supervisor=f"cpus = [{first}]")
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        up.supervisor = f"cpus = [{first}, {second}]"
        up.write_config(AUTO)
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stderr
        assert "not applied: [supervisor] changed" in out.stderr, out.stderr
        assert up.ask({"cmd": "ps"})["targets"] == {"reverse": 1}
        (row,) = up.wait_idle({"reverse": 1})
        assert row["cpu"] == first
    finally:
        assert up.stop() == 0


def test_a_reload_is_held_to_the_running_memory_budget(tmp_path: Path) -> None:
    # memory_budget_mb 300 -> 1000 with 5 workers of 100 MB: applied, though the farm runs
    # on its old budget; 500 MB under a 300 MB budget, and every `farm scale` refused.
    pool = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = {}\n'
    up = FarmUp(tmp_path, pool.format(1), supervisor="memory_budget_mb = 300")
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        up.supervisor = "memory_budget_mb = 1000"
        up.write_config(pool.format(5))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "memory_budget_mb = 300" in out.stderr and "restart" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert up.ask({"cmd": "ps"})["targets"] == {"reverse": 1}
    finally:
        assert up.stop() == 0


def test_a_reload_adding_an_executor_pool_needs_the_running_servers_unix_socket(
    tmp_path: Path,
) -> None:
    # The new file added the Unix socket too, which waits for a restart: the farm.python
    # worker registered over TCP, was refused (PERMISSION_DENIED), and sat "idle" for good.
    up = FarmUp(tmp_path, "", start=False)
    tcp_only = f"""[server]
listen = ["127.0.0.1:{up.port}"]
store = "none"
[supervisor]
control = "{up.control}"
metrics = "off"
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""
    up.config.write_text(tcp_only)
    up.start()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        up.config.write_text(
            tcp_only.replace(f'{up.port}"]', f'{up.port}", "unix:{up.unix}"]')
            + '[functions."farm.python"]\ntarget = "farm.executor.call:run_call"\nworkers = 1\n'
        )
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "served only over a Unix socket" in out.stderr, out.stderr
        assert "restart" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert up.ask({"cmd": "ps"})["targets"] == {"reverse": 1}
    finally:
        assert up.stop() == 0


def test_a_reload_that_lowers_a_timeout_lets_the_old_workers_job_finish(tmp_path: Path) -> None:
    # The old worker registered (CAN_DO_TIMEOUT) and ran its job under timeout = 30; once
    # the reload said 1, the supervisor killed it mid-drain at 1 s: "ran past its 1s
    # timeout", a job the server had not failed, retried on a new worker and failed there.
    (tmp_path / "held.py").write_text(
        "from tests.helpers.calls import wait_gate\n\n"
        "def job(j):\n    wait_gate(j.data.decode())\n    return b'done'\n"
    )
    pool = '[functions.held]\ntarget = "held:job"\nworkers = 1\ntimeout = {}\n'
    up = FarmUp(tmp_path, pool.format(30))
    try:
        up.expect_notify("READY=1")
        (old,) = up.wait_idle({"held": 1})
        with Gate(tmp_path / "gate.sock") as gate:
            thread, result = call_in_thread(up.addr, "held", gate.path, timeout=30)
            wait_for("the job in hand", lambda: up.workers("held", "busy"))
            up.write_config(pool.format(1))
            out = farm_cli("reload", "--control", up.control)
            assert out.returncode == 0, out.stderr

            def drained_past_the_new_timeout() -> bool:
                rows = {r["pid"]: r for r in up.workers("held")}
                mine = rows.get(old["pid"])
                assert mine is not None and mine["state"] != "killing", up.read_log()
                return mine["state"] == "draining" and (mine["busy_for"] or 0) > 3

            wait_for("the old worker draining past 1 s + grace", drained_past_the_new_timeout)
            gate.open()
            thread.join(30)
        assert result == [b"done"], result
        assert "ran past its 1s timeout" not in up.read_log()
    finally:
        assert up.stop() == 0


@pytest.mark.parametrize("under_systemd", [True, False])
def test_what_a_reload_leaves_to_a_restart_says_how_this_farm_restarts(
    tmp_path: Path, under_systemd: bool
) -> None:
    # Under systemd it said "(farm stop; farm up)", which typed by hand leaves the farm
    # running outside its unit: `systemctl restart` names the unit ($INVOCATION_ID is
    # systemd's; the unit is read from the cgroup, "the farm's service" where none is).
    pool = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'
    up = FarmUp(tmp_path, pool, start=False)
    up.env.pop("INVOCATION_ID", None)
    if under_systemd:
        up.env["INVOCATION_ID"] = "0123456789abcdef0123456789abcdef"
    up.start()
    try:
        up.expect_notify("READY=1")
        up.config.write_text(up.config.read_text().replace("job_retries = 3", "job_retries = 4"))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stderr
        (said,) = out.stderr.splitlines()
        assert said.startswith("not applied: [server] changed; that takes a restart ("), said
        if under_systemd:
            assert "(systemctl restart " in said and "farm up" not in said, said
        else:
            assert said.endswith("(farm stop; farm up)"), said
    finally:
        assert up.stop() == 0
