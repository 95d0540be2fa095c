"""Where a worker's import finds a module, told without running any of it: the parent
packages' __init__ are not executed (the supervisor's config check stays free of the
workers' imports, and of an __init__ that sleeps or raises), and each finder is asked as
the import asks it. A package found first hides the others of its name further on the
path, as the import does, and ``hidden_by`` says which hides which."""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec, PathFinder, all_suffixes
from pathlib import Path

from farm.errors import WorkingDirectoryGone
from farm.paths import working_directory

__all__ = ["find_unrun", "hidden_by"]


def find_unrun(module: str, path: list[str]) -> ModuleSpec | None:
    """``module``'s spec as found on ``path``, without running any of it: importlib.util.
    find_spec imports a dotted name's parent packages (their __init__ ran in the supervisor,
    and one that sleeps or raises held or failed the whole farm). Each package's
    directories are searched instead; a parent already imported is used as it is."""
    parts = module.split(".")
    spec = _find_top(parts[0], path)  # a top-level name: nothing is imported
    for depth in range(2, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        if loaded is not None and loaded.__spec__ is not None:
            spec = loaded.__spec__
            continue
        if spec is None or spec.submodule_search_locations is None:
            return None  # its parent is not a package
        where = list(spec.submodule_search_locations)
        if _extends_path(spec):  # its modules on every path entry too, where they may be
            where += _same_package(parts[: depth - 1], path)
        where = [d for d in dict.fromkeys(where) if os.path.isdir(d)]
        spec = _first_found(name, where, top=False)
    return spec


def _same_package(parts: list[str], path: list[str]) -> list[str]:
    """The directory of the package ``parts`` names on each entry of ``path``."""
    return [os.path.join(entry or ".", *parts) for entry in path]


def _extends_path(package: ModuleSpec) -> bool:
    """Whether a package's modules may lie beside other entries' packages of its name: a
    namespace package's (its portions, on every entry), a regular package's whose __init__
    extends its __path__ (pkgutil.extend_path, or pkg_resources' declare_namespace; the
    check is lenient where it cannot read it). A plain __init__ hides the others, as the
    import does (a working directory's workers/ before farm's installed one)."""
    if package.origin is None or not package.origin.endswith(".py"):
        return True
    try:
        source = Path(package.origin).read_bytes()
    except OSError:
        return True
    return b"__path__" in source or b"declare_namespace" in source


def hidden_by(module: str, path: list[str]) -> str:
    """Where a package of ``module``'s found first on ``path`` (the workers', or ``farm
    worker``'s sys.path) hides another of its name, on a later entry, that holds the module
    (the working directory's workers/ before farm's installed one), in words for the line
    that says the module is not found; "" where none does."""
    parts = module.split(".")
    for depth in range(1, len(parts)):
        name = ".".join(parts[: depth + 1])
        if find_unrun(name, path) is not None:  # as the import finds it: not this level
            continue
        package = find_unrun(".".join(parts[:depth]), path)
        if package is None or package.submodule_search_locations is None:
            return ""
        own = list(package.submodule_search_locations)
        others = [d for d in _same_package(parts[:depth], path) if d not in own]
        for other in (d for d in dict.fromkeys(others) if os.path.isdir(d)):
            if PathFinder.find_spec(name, [other]) is not None:
                return _hiding(".".join(parts[:depth]), own[0], other)
        return ""
    return ""


def _hiding(package: str, own: str, other: str) -> str:
    """The words of hidden_by: ``package`` is ``own``, which the import takes, and ``other``
    holds the module, and what to do."""
    if _portion(other):
        # A regular package wins over a directory without __init__ wherever each lies on
        # the path: ``own`` need not be first, and it is the other, the user's, to rename.
        return (
            f" ({package!r} is {own}, a regular package: the import takes it over {other},"
            f" which has it but no __init__.py, wherever each is on the path; rename {other}"
            " and the targets that name it)"
        )
    try:
        here = Path(own).is_relative_to(working_directory())
    except WorkingDirectoryGone:
        here = False
    fix = "start farm in another directory" if here else "rename it"
    return f" ({package!r} is {own}, found first: it hides {other}, which has it; {fix})"


def _portion(directory: str) -> bool:
    """Whether a package's directory is a namespace package's portion: no __init__ in it."""
    init = os.path.join(directory, "__init__")
    return not any(os.path.isfile(init + suffix) for suffix in all_suffixes())


def _find_top(name: str, path: list[str]) -> ModuleSpec | None:
    """A top-level module's spec as importlib.util.find_spec finds it, with ``path`` in the
    place of ``sys.path``: one already imported, else the first of ``sys.meta_path``'s
    finders to know it (an editable install's finder among them)."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded.__spec__
    return _first_found(name, path, top=True)


def _first_found(name: str, path: list[str], *, top: bool) -> ModuleSpec | None:
    """The spec of the first of ``sys.meta_path``'s finders to know ``name``, each asked as
    the import asks it: a top-level name with no path (PathFinder then reads sys.path,
    ``path`` here), a package's module with its package's directories, ``path``. Not
    PathFinder's alone for a package's module either: an editable install's finder
    (setuptools', `pip install -e`) finds the modules of a package it installed in that
    package's own directory, whatever package of the name the import found first (a
    project's plain workers/ without workers.text: farm's workers/text.py is imported)."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        spec: ModuleSpec | None = find(name, path if finder is PathFinder or not top else None)
        if spec is not None:
            return spec
    return None
