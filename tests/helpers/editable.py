"""An editable install's import finder, in the shape setuptools writes for `pip install -e`:
appended to ``sys.meta_path`` (after PathFinder), a top-level package it installed mapped
to that package's directory, and the package's modules looked for there whatever package
of the name the import found first (a project's plain ``workers/`` without ``text.py``:
the installed ``workers/text.py`` is imported)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

__all__ = ["EditableFinder", "installed_at_start"]


class EditableFinder:
    """setuptools' ``_EditableFinder`` for ``mapping`` (a package name: its directory)."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname in self.mapping:
            return spec_from_file_location(fullname, Path(self.mapping[fullname], "__init__.py"))
        parent = fullname.rpartition(".")[0]
        if parent in self.mapping:  # the path the import gives (its parent's) is not read
            return PathFinder.find_spec(fullname, [self.mapping[parent]])
        return None


def installed_at_start(directory: Path, mapping: dict[str, str]) -> None:
    """A ``sitecustomize.py`` in ``directory`` that appends an EditableFinder of ``mapping``
    in every Python started with ``directory`` and this checkout on its PYTHONPATH, as the
    ``.pth`` file of an editable install does in every Python of its environment."""
    (directory / "sitecustomize.py").write_text(
        "import sys\nfrom tests.helpers.editable import EditableFinder\n"
        f"sys.meta_path.append(EditableFinder({mapping!r}))\n"
    )
