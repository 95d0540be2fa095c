"""README.md as a newcomer reads it: the files it and docs/*.md send the reader to are in
the repository (a clone's, and the package's long description: the README), and what
`make run` serves is what the built-in config runs."""

from __future__ import annotations

import importlib
import inspect
import re

from farm.config.defaults import PLAIN_WORKERS, builtin
from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = " ".join((ROOT / "README.md").read_text().split())  # its lines joined


def test_the_docs_send_the_reader_to_files_in_the_repository() -> None:
    # The README's table sent readers to ../shared/DESIGN.md and ../shared/PROTOCOL.md,
    # outside the repository: broken in a clone and on the package's page.
    wrong = []
    for doc in DOCS:
        text = doc.read_text()
        # A link resolves from the page's folder; a path in backticks is named from the root.
        linked = [
            (target, doc.parent / target)
            for target in re.findall(r"\]\(([^)#\s]+)", text)
            if not re.match(r"[a-z]+:", target)  # https:, mailto:
        ]
        named = [(path, ROOT / path) for path in re.findall(r"`(\.{0,2}/?[\w./-]+\.md)`", text)]
        for said, path in (*linked, *named):
            resolved = path.resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                wrong.append(f"{doc.relative_to(ROOT)}: {said}")
    assert not wrong, wrong


def job_functions() -> set[str]:
    """The functions of farm's plain workers (workers/): those that take a Job."""
    found = set()
    for name in PLAIN_WORKERS:
        module = importlib.import_module(name)
        for fname, fn in inspect.getmembers(module, inspect.isfunction):
            params = list(inspect.signature(fn).parameters)
            if fn.__module__ == name and not fname.startswith("_") and params[:1] == ["job"]:
                found.add(fname)
    return found


def test_what_make_run_serves_is_the_built_in_config_s() -> None:
    # "workers for the functions in `workers/`" read as all of them: upper, wordcount and
    # the others there are served by no built-in pool.
    start = README.index("Install and run the farm")
    served_part = README[start : README.index("built-in defaults", start)]
    served = set(re.findall(r"`([\w.]+)`", served_part))
    pools = builtin()["functions"]
    assert served == set(pools)
    others_start = README.index("The other functions in `workers/`", start)
    others_part = README[others_start : README.index(")", others_start)]
    others = set(re.findall(r"`(\w+)`", others_part))
    assert others == job_functions() - set(pools)
    assert "docs/operations.md" in README[others_start : README.index("make run", others_start)]
