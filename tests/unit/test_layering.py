"""The folders are the architecture (docs/architecture.md): these tests keep the seams.

farm.protocol is sans-I/O and stands alone; the server is built on it and on
nothing of the client side, the executor, the pools, the supervisor or the
CLI; and no module of farm needs another that (directly or not) needs it.
The import graph comes from the source with ``ast``, so the checks see every
import statement, not just those a test happens to execute.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

FARM = ROOT / "farm"
IO_MODULES = ("socket", "asyncio", "selectors", "threading", "ssl")
# The user-facing exception hierarchy that sessions raise: a leaf module of plain classes.
PROTOCOL_MAY_USE = {"farm.errors"}
NOT_UNDER_THE_SERVER = ("farm.client", "farm.executor", "farm.pools", "farm.supervisor", "farm.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(FARM.rglob("*.py"))}
PROTOCOL = sorted(m for m in MODULES if m == "farm.protocol" or m.startswith("farm.protocol."))


def import_nodes(tree: ast.AST, *, in_functions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements of a module; with ``in_functions=False``, only those that run when
    the module itself is imported (class bodies and ``if TYPE_CHECKING:`` included)."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if not in_functions and isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        ):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_by(name: str, *, in_functions: bool = True) -> set[str]:
    """The absolute names module ``name`` imports; ``from pkg import sub`` names pkg.sub."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in import_nodes(ast.parse(path.read_text()), in_functions=in_functions):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            found.add(submodule if submodule in MODULES else source)
    found.discard(name)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def farm_modules(names: set[str]) -> set[str]:
    return {n for n in names if within(n, "farm")}


# -- (a) sans-I/O, checked by importing -------------------------------------------


@pytest.mark.parametrize("module", PROTOCOL)
def test_protocol_imports_no_io_machinery(module: str) -> None:
    # -S: without site, nothing has imported threading before farm does.
    probe = (
        "import sys\n"
        f"io = {IO_MODULES!r}\n"
        "early = [m for m in io if m in sys.modules]\n"
        f"import {module}\n"
        "late = [m for m in io if m in sys.modules and m not in early]\n"
        "farm = sorted(m for m in sys.modules if m == 'farm' or m.startswith('farm.'))\n"
        "print(','.join(early)); print(','.join(late)); print(','.join(farm))\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    early, late, loaded = out.stdout.split("\n")[:3]
    assert early == "", f"the interpreter loaded {early} before the probe: it proves nothing"
    assert late == "", f"importing {module} imported {late} (farm modules loaded: {loaded})"
    assert module in loaded.split(","), "the probe did not import what it checks"


# -- (b), (c) who may import whom ------------------------------------------------


@pytest.mark.parametrize("module", PROTOCOL)
def test_protocol_imports_nothing_of_farm_outside_it(module: str) -> None:
    outside = {
        n for n in farm_modules(imported_by(module)) if not within(n, "farm.protocol")
    } - PROTOCOL_MAY_USE
    assert not outside, f"{module} imports {sorted(outside)}: farm.protocol stands alone"


def test_what_the_protocol_may_use_is_a_leaf() -> None:
    for name in PROTOCOL_MAY_USE:
        assert not farm_modules(imported_by(name)), f"{name} must import nothing of farm"


SERVER = sorted(m for m in MODULES if within(m, "farm.server"))


@pytest.mark.parametrize("module", SERVER)
def test_server_is_built_on_the_protocol_not_on_the_client_side(module: str) -> None:
    wrong = {n for n in imported_by(module) for top in NOT_UNDER_THE_SERVER if within(n, top)}
    assert not wrong, f"{module} imports {sorted(wrong)}"


def test_the_layering_checks_see_imports() -> None:
    """The parser above finds what is there: a check that finds nothing proves nothing."""
    assert "farm.protocol.codec" in imported_by("farm.protocol")
    assert any(within(n, "farm.protocol") for n in imported_by("farm.worker"))
    assert len(SERVER) > 3 and len(PROTOCOL) > 3


# -- (d) no cycles -----------------------------------------------------------------


def import_graph(in_functions: bool = False) -> dict[str, set[str]]:
    """Module -> the farm modules it imports when imported (with ``in_functions``: also
    those its functions import when they run)."""
    return {
        name: farm_modules(imported_by(name, in_functions=in_functions)) & MODULES.keys()
        for name in MODULES
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path that returns to its start) per strongly connected component."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph is a few dozen modules deep at most
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return [shortest_loop(graph, min(c), c) for c in components]


def shortest_loop(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]  # a self-import is not a cycle between two


@pytest.mark.parametrize("in_functions", [False, True])
def test_no_import_cycles_in_farm(in_functions: bool) -> None:
    """Not even through an import inside a function, which only hides a cycle: the two
    modules still cannot be read, moved or tested one without the other."""
    found = [" -> ".join(loop) for loop in cycles(import_graph(in_functions))]
    assert not found, "import cycles:\n" + "\n".join(found)


# -- (e) docs/architecture.md's table says what each module imports ----------------------


def doc_rows() -> list[tuple[list[str], bool, str]]:
    """(the modules a row of the table names, whether it is a package's row (in bold: what
    the package imports from outside it), its "what it imports from farm" column)."""
    rows = []
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 3 or "anything below" in cells[2]:
            continue
        modules = []
        for path in re.findall(r"`([a-z_/.]+)`", cells[0]):
            name = ("farm/" + path.removeprefix("farm/")).removesuffix(".py").strip("/")
            name = name.replace("/", ".").removesuffix(".__init__")
            if name in MODULES:
                modules.append(name)
        if modules:
            rows.append((modules, cells[0].startswith("**"), cells[2]))
    return rows


def doc_names(row: list[str], column: str) -> set[str]:
    """The modules the column names: within the row's package by their short name."""
    package = row[0] if MODULES[row[0]].name == "__init__.py" else row[0].rpartition(".")[0]
    found = set()
    for word in re.findall(r"[a-z_]+(?:\.[a-z_]+)*", column.replace("`", "")):
        word = word.removeprefix("farm.")
        for candidate in (f"{package}.{word}", f"farm.{word}"):
            if candidate in MODULES:
                found.add(candidate)
                break
    return found


def test_the_architecture_table_names_what_each_module_imports() -> None:
    """Every farm module a row's modules import (a package row: from outside the package)
    is named in its column, by itself or by its package, and every name there is used."""
    wrong = []
    rows = doc_rows()
    for row, whole, column in rows:
        mine = [m for m in MODULES if within(m, row[0])] if whole else row
        used = set()
        for module in mine:
            used |= farm_modules(imported_by(module)) & MODULES.keys()
        used = {u for u in used if not any(within(u, m) for m in row)} if whole else used - {*row}
        named = doc_names(row, column)
        missing = sorted(u for u in used if not any(within(u, n) for n in named))
        unused = sorted(n for n in named if not any(within(u, n) for u in used))
        if missing or unused:
            wrong.append(f"{', '.join(row)}: not named {missing}, not imported {unused}")
    assert len(rows) > 50, "the table was not found"
    assert not wrong, "docs/architecture.md's import column:\n" + "\n".join(wrong)


def test_the_architecture_table_has_a_row_for_each_module_and_none_gone() -> None:
    """Each module is named where the table's rows start (a package's own files may be
    named in its row instead: `cli/`'s), and each file a row starts with is there: a
    module split off or moved got no row, and a row outlived the module it told of."""
    named, gone = set(), []
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") and not line.startswith("| **`"):
            continue
        package = ""
        for path in re.findall(r"`([a-z_/.]+)`", cells[0]):
            name = ("farm/" + path.removeprefix("farm/")).removesuffix(".py").strip("/")
            name = name.replace("/", ".").removesuffix(".__init__")
            if name in MODULES:
                named.add(name)
                package = name if MODULES[name].name == "__init__.py" else ""
            else:
                gone.append(path)
        if package:  # the files of a package its row tells of (`app.py`: ...)
            named |= {f"{package}.{f}" for f in re.findall(r"`(\w+)\.py`", line)}
    missing = sorted(set(MODULES) - named)
    assert not missing and not gone, f"no row: {missing}; a row, no module: {gone}"


# -- the tests' own seams ------------------------------------------------------------


def test_no_test_module_imports_another_or_conftest() -> None:
    wrong = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in import_nodes(ast.parse(path.read_text()), in_functions=True):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                last = name.rpartition(".")[2]
                if within(name, "tests") and (last.startswith("test_") or last == "conftest"):
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "shared test code belongs in tests/helpers/:\n" + "\n".join(wrong)
