"""Worker targets ("module:function"): check them without running them, load them.

The supervisor checks a target while validating the config: the module must be
findable and bind the name, but is not executed -- a module that raises on
import is the worker's boot failure (backed off by the supervisor), and the
supervisor stays free of the workers' heavy imports. The worker process loads it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import site
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from typing import Any

from farm.paths import untrusted_because

__all__ = [
    "NotCallable",
    "target_problem",
    "load_target",
    "unsearched_because",
    "search_working_directory",
    "load_failure",
]


class NotCallable(TypeError):
    """The target loaded and is no function: one line says it all, no traceback."""


def load_target(target: str) -> Callable[..., Any]:
    """Import ``module:function`` and return the function (raises what the import raises,
    and :class:`NotCallable`)."""
    module, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise NotCallable(f"{target} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]  # checked callable just above


def load_failure(exc: BaseException) -> str:
    """What :func:`load_target` raised, in one line with where in the target's code: ``Type:
    message at PATH:LINE``. A worker's boot failure is told by this line alone in `farm
    reload`, `farm restart` and `farm ps` (the traceback is in its log): a SyntaxError names
    only the file's base name, anything else the module raised no file at all."""
    if isinstance(exc, SyntaxError) and exc.filename:
        where: tuple[str, int | None] | None = (exc.filename, exc.lineno)
        text = exc.msg
    else:
        text = str(exc)
        where = None
        tb, called = exc.__traceback__, False
        while tb is not None:  # the last frame under load_target's that is not importlib's
            path = tb.tb_frame.f_code.co_filename
            if path == __file__:
                called = True
            elif called and not path.startswith("<frozen "):
                where = (path, tb.tb_lineno)
            tb = tb.tb_next
    said = f"{type(exc).__name__}: {text}"
    return said if where is None else f"{said} at {where[0]}:{where[1]}"


def target_problem(target: str) -> str | None:
    """Why ``module:function`` cannot be served, or None.

    The module is found, not executed (see the module docstring).
    """
    module, _, attr = target.partition(":")
    # Workers look in the working directory first (search_working_directory), if they may.
    cwd = os.getcwd()
    unsearched = unsearched_because(cwd)
    added = unsearched is None and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        spec = _find_unrun(module)
    except Exception as e:  # a bad name
        why = f"{type(e).__name__}: {e}"
        return f"cannot import {module!r} ({why}); check the module path and PYTHONPATH"
    finally:
        if added:
            sys.path.remove(cwd)
    if spec is None:
        # An absolute PYTHONPATH entry is searched: the operator names the directory.
        why = f" (not {cwd}, which {unsearched}; PYTHONPATH={cwd} if you trust it)"
        return f"no module named {module!r}; check the spelling and PYTHONPATH" + (
            why if unsearched else ""
        )
    if spec.origin and spec.origin.endswith(".py") and not _defines(spec.origin, attr):
        return f"module {module!r} ({spec.origin}) defines no {attr!r}; check the function name"
    return None


def unsearched_because(path: str) -> str | None:
    """Why modules in ``path`` (the working directory) may not be imported, or None: it is
    read as a ``./farm.toml`` is (farm.paths.untrusted_because). In one every user may
    write to (``/tmp``), another user could leave a module there (``workers/``,
    ``json.py``, ``farm/`` itself) for the farm to run."""
    try:
        info = os.stat(path)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return untrusted_because(info)


def search_working_directory() -> str | None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does, when its
    modules may be imported (``unsearched_because``); it, or None. The supervisor starts
    its Python children with ``-P``, which leaves it off, so that this check decides."""
    cwd = os.getcwd()
    if unsearched_because(cwd) is not None:
        return None
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def trusted_pythonpath(env: dict[str, str]) -> list[str]:
    """Make ``env``'s PYTHONPATH (the environment of the job server and the Python workers,
    started with ``-P``) one that searches no working directory, and return what to warn
    of, a line each. Empty and relative entries are dropped: Python reads them against the
    working directory (``/srv/app:`` from ``export PYTHONPATH=/srv/app:$PYTHONPATH``), past
    ``-P``. The directory this ``farm`` was imported from is added last when the working
    directory is where it was found (``cd checkout && python -m farm up``: ``-P`` would
    lose it), and by the working directory's rule (``unsearched_because``): PYTHONPATH comes
    before the stdlib, so a ``json.py`` that the group of a checkout run by root could write
    there would run as root. A farm found elsewhere (site-packages, an editable install, an
    absolute entry) is found there by the children too."""
    value = env.get("PYTHONPATH", "")
    entries = value.split(os.pathsep) if value else []  # a PYTHONPATH of "" adds nothing
    kept = [e for e in entries if os.path.isabs(e)]
    dropped = [e for e in entries if not os.path.isabs(e)]
    warnings = []
    if dropped:
        warnings.append(f"PYTHONPATH entries {dropped} dropped for the server and workers")
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found_here = os.path.realpath(ours) == os.path.realpath(os.getcwd())
    if found_here and not _site_directory(ours) and ours not in map(os.path.abspath, kept):
        untrusted = unsearched_because(ours)
        if untrusted is None:
            kept.append(ours)
        else:
            warnings.append(
                f"{ours} (where this farm was imported from) is not on the server's and"
                f" workers' PYTHONPATH: it {untrusted}; PYTHONPATH={ours} if you trust it"
            )
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    return warnings


def _site_directory(path: str) -> bool:
    """Whether ``path`` is where packages are installed (the virtualenv's, the user's)."""
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    return os.path.realpath(path) in {os.path.realpath(p) for p in sites}


def _find_unrun(module: str) -> ModuleSpec | None:
    """``module``'s spec, found without running any of it: importlib.util.find_spec
    imports a dotted name's parent packages (their __init__ ran in the supervisor, and
    one that sleeps or raises held or failed the whole farm). Each package's directories
    are searched instead; a parent already imported is used as it is."""
    parts = module.split(".")
    spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is imported
    for depth in range(2, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        if loaded is not None and loaded.__spec__ is not None:
            spec = loaded.__spec__
            continue
        if spec is None or spec.submodule_search_locations is None:
            return None  # its parent is not a package
        # Its own directories, then the same directory on every sys.path entry: a package
        # whose __init__ extends its __path__ (pkgutil.extend_path) finds its modules there.
        where = list(spec.submodule_search_locations)
        where += [os.path.join(entry or ".", *parts[: depth - 1]) for entry in sys.path]
        spec = PathFinder.find_spec(name, [d for d in dict.fromkeys(where) if os.path.isdir(d)])
    return spec


def _defines(source_path: str, name: str) -> bool:
    """Whether a module's source binds ``name`` at top level (lenient when it cannot tell)."""
    try:
        tree = ast.parse(Path(source_path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return True  # the worker's import will report it with the real error
    return _binds(tree.body, name)


def _binds(body: list[ast.stmt], name: str) -> bool:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name in (name, "__getattr__"):
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name:
                    return True
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            # definitions under `if`/`try` still bind at top level
            blocks = [getattr(node, a, []) for a in ("body", "orelse", "finalbody")]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            if any(_binds(b, name) for b in blocks):
                return True
    return False
