"""The config's bounds at their ends: the least grace, the longest pool name, and how deep a
file may nest (the TOML reader's and the config's own limits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm import config, discovery
from farm.errors import ConfigError
from tests.helpers.configs import GOOD, write


@pytest.mark.parametrize(
    "nested",
    ["[" * 5000 + "]" * 5000, "{a = " * 5000 + "1" + "}" * 5000],
    ids=["arrays", "inline tables"],
)
def test_values_nested_past_the_toml_readers_depth_are_one_line(
    tmp_path: Path, nested: str
) -> None:
    # tomllib reads nesting by recursion: RecursionError came out of every command that
    # read the file (farm up, farm ps's control socket, farm.Client()'s servers) as a
    # traceback, exit 1.
    path = write(tmp_path, f"x = {nested}\n")
    said = f"{path}: not valid TOML: values nested too deeply; write them flatter"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == said
    with pytest.raises(ConfigError) as info:
        discovery.local_farm(path)
    assert str(info.value) == said


# Past the interpreter's recursion limit (1,000: a repr of it raised RecursionError) and
# no deeper: tomllib takes time quadratic in a key's parts (20,000 took 24 s a read here).
DOTTED = ".".join(["a"] * 2000)


@pytest.mark.parametrize(
    "text",
    [
        f"[functions.x]\ntarget.{DOTTED} = 1\n",
        f"[functions.x]\ntarget = {{ {DOTTED} = 1 }}\n",
        f"[{DOTTED}]\nx = 1\n",
        f"[[{DOTTED}]]\nx = 1\n",
        f"[server]\nlisten = {'[' * 70}{']' * 70}\n",  # within tomllib's depth, past ours
    ],
    ids=["dotted key", "dotted key inline", "table header", "array of tables", "arrays"],
)
def test_keys_nested_past_any_configs_depth_are_one_line(tmp_path: Path, text: str) -> None:
    # tomllib builds dotted keys and [a.b.c] headers without recursion, so these loaded: the
    # target's repr in its error was then a RecursionError, a traceback from farm check and
    # farm up (exit 1). Every reader of the file refuses them as too deep.
    path = write(tmp_path, text)
    said = f"{path}: not valid TOML: values nested too deeply; write them flatter"
    for read in (config.load, discovery.local_farm, discovery.control_path):
        with pytest.raises(ConfigError) as info:
            read(path)
        assert str(info.value) == said, read


def test_nesting_up_to_the_limit_reads(tmp_path: Path) -> None:
    from farm.configfile import MAX_DEPTH, read_config_file

    # the document is a table too: a key of MAX_DEPTH parts makes MAX_DEPTH tables
    deepest = write(tmp_path, ".".join(["a"] * MAX_DEPTH) + " = 1\n")
    assert read_config_file(deepest)
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_config_file(write(tmp_path, ".".join(["a"] * MAX_DEPTH) + " = {}\n"))


def test_the_least_grace_and_the_longest_pool_name_are_taken(tmp_path: Path) -> None:
    # `graceful_timeout = 0` (SIGKILL at once) is in its documented range, 0 to 86400, and
    # 64 bytes is the longest pool name: the tests of each limit stood only past its end.
    text = GOOD.replace("[functions.rev]", f"[functions.{'r' * 64}]").replace(
        "servers = []", "servers = []\ngraceful_timeout = 0"
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.supervisor.graceful_timeout == 0 and "r" * 64 in cfg.functions
