"""docs/operations.md's config tables name every key farm.toml takes, and only those.

The keys farm takes are asked of the config reader itself: a key it does not know is
refused with the list of those it does ("unknown key; allowed: ...").
"""

from __future__ import annotations

import re
import signal
import tomllib
from pathlib import Path

import pytest

from farm import config
from farm.config.defaults import builtin
from farm.config.servertune import TUNING
from farm.errors import ConfigError
from farm.paths import runtime_dir
from farm.pools.slots import ProcState
from farm.server.settings import DEFAULTS as SERVER_DEFAULTS
from tests.helpers import ROOT

#: The sections of docs/operations.md whose tables document a farm.toml table.
SECTIONS = {
    "server": ("### `[server]`",),
    "supervisor": ("### `[supervisor]`",),
    "executor": ("### `[executor]`",),
    "functions": ("### `[functions.NAME]`", "### Command pools"),
}
POOL = '[functions.f]\ntarget = "tests.helpers.serving:reverse"\n'
UNKNOWN = "zz_not_a_key"


def documented(table: str) -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    keys: set[str] = set()
    for heading in SECTIONS[table]:
        start = text.index(heading)
        end = text.find("\n### ", start + 1)
        section = text[start : end if end != -1 else len(text)]
        for table_text in re.findall(r"^\| key \|.*?(?=^[^|]|\Z)", section, re.M | re.S):
            for first in re.findall(r"^\| (`[^|]*`) \|", table_text, flags=re.MULTILINE):
                keys |= set(re.findall(r"`(\w+)`", first))  # "`function` / `functions`"
    return keys


def accepted(table: str, tmp_path: Path) -> set[str]:
    path = tmp_path / "farm.toml"
    if table == "functions":
        path.write_text(POOL + f"{UNKNOWN} = 1\n")
    else:
        path.write_text(f"[{table}]\n{UNKNOWN} = 1\n" + POOL)
    with pytest.raises(ConfigError, match="unknown key; allowed: ") as refused:
        config.load(path)
    return set(str(refused.value).split("allowed: ", 1)[1].split(", "))


@pytest.mark.parametrize("table", list(SECTIONS))
def test_each_key_farm_takes_is_documented_and_nothing_else(table: str, tmp_path: Path) -> None:
    # [supervisor] metrics and log_format were taken but missing from the table.
    assert documented(table) == accepted(table, tmp_path)


def documented_defaults(table: str) -> dict[str, str]:
    """Each key of a section's tables, with the text of its default column."""
    text = (ROOT / "docs" / "operations.md").read_text()
    found: dict[str, str] = {}
    for heading in SECTIONS[table]:
        start = text.index(heading)
        end = text.find("\n### ", start + 1)
        section = text[start : end if end != -1 else len(text)]
        for table_text in re.findall(r"^\| key \|.*?(?=^[^|]|\Z)", section, re.M | re.S):
            for first, default in re.findall(r"^\| (`[^|]*`) \| ([^|]*) \|", table_text, re.M):
                for key in re.findall(r"`(\w+)`", first):
                    found.setdefault(key, default.strip())
    return found


def documented_value(cell: str) -> object:
    """The value a default cell names: its first `code` span read as a TOML value (else as
    the text it is: a path), or None for "none"."""
    if cell.startswith("none"):
        return None
    token = re.match(r"`([^`]*)`", cell)
    assert token, f"no `value` at the start of the default {cell!r}"
    try:
        return tomllib.loads(f"v = {token[1]}")["v"]
    except tomllib.TOMLDecodeError:
        return token[1]


def loaded(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "farm.toml"
    path.write_text(text)
    return config.load(path)


def test_the_documented_defaults_are_the_code_s(tmp_path: Path) -> None:
    # Each key's default column, against what a file leaving the key out gets: the
    # config's own value, or for the [server] keys that are `farm server`'s flags, the
    # server's default (no flag is passed then).
    cfg = loaded(tmp_path, POOL)
    command = loaded(tmp_path, '[functions.c]\ncommand = ["true"]\n').functions["c"]
    pool = cfg.functions["f"]
    expected: dict[str, dict[str, object]] = {
        "server": {
            "job_retries": cfg.server.job_retries,
            "tcp_admin": cfg.server.tcp_admin,
            **{key: getattr(SERVER_DEFAULTS, key) for key in TUNING},
            "unix_mode": f"{SERVER_DEFAULTS.unix_mode:o}",  # written as chmod writes it
        },
        "supervisor": {
            # "all" and "auto" are resolved as the file is read (to cores, to MB): the
            # table a file's [supervisor] is laid over says what a key left out is.
            "cpus": builtin()["supervisor"]["cpus"],
            "servers": list(cfg.supervisor.servers),
            "graceful_timeout": cfg.supervisor.graceful_timeout,
            "boot_timeout": cfg.supervisor.boot_timeout,
            "ready_wait": cfg.supervisor.ready_wait,
            "memory_budget_mb": builtin()["supervisor"]["memory_budget_mb"],
            "metrics": cfg.supervisor.metrics,
            "log_format": cfg.supervisor.log_format,
        },
        "executor": {
            "max_spill_mb": cfg.executor.max_spill_mb,
            "spill_max_age_s": cfg.executor.spill_max_age_s,
            "spill_orphan_age_s": cfg.executor.spill_orphan_age_s,
        },
        "functions": {
            "workers": "auto" if pool.workers == len(cfg.supervisor.cpus) else pool.workers,
            "timeout": pool.timeout,
            "max_jobs": pool.max_jobs,
            "max_rss_mb": pool.max_rss_mb,
            "stop_signal": signal.Signals(command.stop_signal).name,
        },
    }
    # The runtime directory is written <runtime dir> (where it is depends on the environment).
    run = str(runtime_dir())
    expected["server"]["listen"] = [a.replace(run, "<runtime dir>") for a in cfg.server.listen]
    expected["supervisor"]["control"] = cfg.supervisor.control.replace(run, "<runtime dir>")
    wrong = []
    for table, values in expected.items():
        cells = documented_defaults(table)
        for key, value in values.items():
            if documented_value(cells[key]) != value:
                wrong.append(f"[{table}] {key}: the docs say {cells[key]!r}, the code {value!r}")
    assert not wrong, "\n".join(wrong)


def test_the_unit_settings_the_page_quotes_are_the_unit_s() -> None:
    # docs/operations.md explains systemd/farm.service setting by setting; what it quotes
    # (`WatchdogSec=30`, `TimeoutStopSec` (90 s ...)) must be what the unit says.
    text = (ROOT / "docs" / "operations.md").read_text()
    unit = dict(
        line.split("=", 1)
        for line in (ROOT / "systemd" / "farm.service").read_text().splitlines()
        if re.match(r"[A-Z]\w*=", line)
    )
    quoted = [
        (key, value)
        for key, value in re.findall(r"`([A-Z]\w*)=([^`]+)`", text)
        if key in unit and (key, value) != ("Type", "simple")  # named for comparison
    ]
    quoted += re.findall(r"`(\w+Sec)`\s+\((\d+) s", text)
    assert len(quoted) >= 10
    wrong = [
        f"{key}={value}: the unit has {unit[key]!r}" for key, value in quoted if unit[key] != value
    ]
    assert not wrong


def test_the_unit_s_reload_says_why_before_systemd_kills_it() -> None:
    # systemd bounds ExecReload by TimeoutStartSec (60 s); `farm reload` followed an added
    # pool boot_timeout + 2 s (62 by default): systemd killed it, and the journal never got
    # its lines naming the pool that did not serve. Its --timeout must leave it time to say.
    unit = (ROOT / "systemd" / "farm.service").read_text()
    bound = int(re.search(r"^TimeoutStartSec=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    reload = re.search(r"^ExecReload=(.*)$", unit, re.M).group(1)  # type: ignore[union-attr]
    follows = re.search(r"--timeout (\d+)", reload)
    assert follows, reload
    assert float(follows.group(1)) + 5 <= bound, reload  # its start and its lines in time
    assert config.SupervisorConfig.boot_timeout + 2 > bound  # why the unit must pass one


def test_the_unit_s_reload_names_the_control_socket_its_config_sets() -> None:
    # `farm reload --config` read the socket from the file it reloads: an edit that did not
    # parse ended the reload there, and the farm never logged "reload failed". The unit
    # names the socket, which must be the one the unit's farm.toml gives the farm.
    unit = (ROOT / "systemd" / "farm.service").read_text()
    reload = re.search(r"^ExecReload=(.*)$", unit, re.M).group(1)  # type: ignore[union-attr]
    named = re.search(r"--control (\S+)", reload)
    assert named, reload
    shipped = tomllib.loads((ROOT / "systemd" / "farm.toml").read_text())
    assert named.group(1) == shipped["supervisor"]["control"]


def test_the_unit_outlives_a_worker_the_kernel_kills_for_memory() -> None:
    # With no OOMPolicy= the unit took systemd's DefaultOOMPolicy (stop on Debian): the
    # kernel's OOM kill of one worker stopped the whole farm, which replaces a dead worker.
    unit = (ROOT / "systemd" / "farm.service").read_text()
    assert re.findall(r"^OOMPolicy=(.*)$", unit, re.M) == ["continue"]


def test_the_pools_said_to_run_with_no_config_are_the_built_in_ones() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("With no config file, `farm up` serves")
    sentence = text[start : text.index(" on `", start)]
    said = set(re.findall(r"`([\w.]+)`", sentence))  # `farm up` has a space: not matched
    said.discard("workers")  # the folder they come from
    pools = builtin()["functions"]
    assert said == set(pools)
    # "`resize` one per core", "`farm.python` (farm.Executor's pool, one per core)".
    per_core = set(re.findall(r"`([\w.]+)`[^`]*?one per core", sentence))
    assert per_core == {name for name, pool in pools.items() if pool["workers"] == "auto"}


def test_every_key_the_pages_name_as_table_and_key_is_one_the_table_takes(
    tmp_path: Path,
) -> None:
    # The prose cites keys as `[supervisor] ready_wait`, `[server] job_retries`: a key
    # renamed in the code would leave them pointing at nothing.
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "systemd" / "farm.toml"]
    cited = [
        (page.name, table, key)
        for page in pages
        for table, key in re.findall(r"`\[(server|supervisor|executor)\] (\w+)", page.read_text())
    ]
    assert len(cited) >= 20
    keys = {table: accepted(table, tmp_path) for table in ("server", "supervisor", "executor")}
    wrong = [f"{page}: [{table}] {key}" for page, table, key in cited if key not in keys[table]]
    assert not wrong


def test_every_state_farm_ps_shows_is_named_where_the_page_lists_them() -> None:
    # A SIGSTOPped worker reads `stopped` (farm.pools.pstable): the list did not name it,
    # nor what the supervisor then does, and an operator saw a state the page did not know.
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("Process states in `farm ps`:")
    listed = set(re.findall(r"`([a-z]+)`", text[start : text.index("\n\n", start)]))
    table = (ROOT / "farm" / "pools" / "pstable.py").read_text()
    shown = {str(s) for s in ProcState} | set(
        re.findall(r'"([a-z]+)"(?: if| else|\s+#|$)', table, re.M)
    )
    assert {"stopped", "backoff", "failing", "stopping", "ready"} <= shown, shown  # the pattern
    assert shown <= listed, f"farm ps shows these the page does not list: {shown - listed}"


def test_the_version_is_the_date_of_the_newest_upgrading_note() -> None:
    """Upgrading's notes are keyed by date ("since 6 December 2026") and `farm --version`
    names the release by its date: a note dated after the version could not be told to
    apply (every farm said 0.1.0 for a week of such notes)."""
    import datetime

    from farm.version import __version__

    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("## Upgrading")
    notes = text[start : text.index("\n## ", start + 1)]
    months = {
        m: i
        for i, m in enumerate(
            [
                "January",
                "February",
                "March",
                "April",
                "May",
                "June",
                "July",
                "August",
                "September",
                "October",
                "November",
                "December",
            ],
            1,
        )
    }
    named = [
        datetime.date(int(year), months[month], int(day))
        for day, month, year in re.findall(
            r"(\d{1,2})\s+(" + "|".join(months) + r")\s+(\d{4})", notes
        )
    ]
    release = datetime.date(*(int(part) for part in __version__.split(".")))
    assert named, "Upgrading names no date"
    assert max(named) <= release, (max(named), __version__)
