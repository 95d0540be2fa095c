"""Worker targets ("module:function"): check them without running them, load them.

The supervisor checks a target while validating the config: the module must be
findable and bind the name, but is not executed -- a module that raises on
import is the worker's boot failure (backed off by the supervisor), and the
supervisor stays free of the workers' heavy imports (farm.targetfind finds the module as
the workers' import will). The worker process loads it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
import site
import sys
import sysconfig
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from farm.errors import WorkingDirectoryGone
from farm.paths import controlled_by_another, untrusted_because, working_directory
from farm.targetfind import find_unrun, hidden_by

__all__ = [
    "target_shaped",
    "normal_form_hint",
    "NotCallable",
    "target_problem",
    "load_target",
    "unsearched_because",
    "search_working_directory",
    "workers_path",
    "load_failure",
    "hidden_by",
]


def target_shaped(target: str) -> bool:
    """Whether ``target`` looks like ``module:function``, the rule of farm.toml and of `farm
    worker`: each dotted part of the module and the function a Python identifier, non-ASCII
    ones included as Python takes them (PEP 3131: ``ñandu:run``), so no path, no ``.rel``."""
    module, colon, function = target.partition(":")
    parts = [*module.split("."), function]
    # NFKC's own form too: Python reads an identifier so ("ﬁ" is "fi"), and importlib would
    # then look for a file named as that form, not as what was written.
    return bool(colon) and all(
        part.isidentifier() and unicodedata.normalize("NFKC", part) == part for part in parts
    )


def normal_form_hint(target: str) -> str:
    """What to add to a refusal of ``target`` that is shaped but for its normal form (NFKC),
    "" otherwise: the form to write instead."""
    normal = unicodedata.normalize("NFKC", target)
    if normal == target or not target_shaped(normal):
        return ""
    return f"; Python reads it as {normal!r}: write it in that normal form"


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


def load_failure(exc: BaseException, target: str = "") -> str:
    """What :func:`load_target` raised, in one line with where in the target's code: ``Type:
    message at PATH:LINE``. A worker's boot failure is told by this line alone in `farm
    reload`, `farm restart` and `farm ps` (the traceback is in its log): a SyntaxError names
    only the file's base name, anything else the module raised no file at all. ``target``
    (``module:function``): its package's frames are its code, installed or not."""
    if isinstance(exc, SyntaxError) and exc.filename:
        where: tuple[str, int | None] | None = (exc.filename, exc.lineno)
        text = exc.msg
    else:
        text = str(exc)
        where = _where_raised(exc.__traceback__, target.partition(":")[0].partition(".")[0])
    said = f"{type(exc).__name__}: {text}"
    return said if where is None else f"{said} at {where[0]}:{where[1]}"


def _where_raised(tb: TracebackType | None, package: str) -> tuple[str, int] | None:
    """Where under load_target's frame the target's code raised: the last frame that is not
    the import system's (importlib's, which a missing top-level module ends in), and of
    those the last of the target's own code when there is one: its ``package``'s modules
    (an installed package too), or any outside the stdlib and site-packages, so that an
    error raised inside a library names the target's line that called it."""
    frames: list[tuple[str, int]] = []
    own: list[tuple[str, int]] = []
    called = False
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        name = str(tb.tb_frame.f_globals.get("__name__", ""))
        importing = name == "importlib" or name.startswith("importlib.")
        if path == __file__:
            called = True
        elif called and not importing and not path.startswith("<frozen "):  # no file there
            frames.append((path, tb.tb_lineno))
            ours = package and (name == package or name.startswith(package + "."))
            if ours or not _installed(path):
                own.append(frames[-1])
        tb = tb.tb_next
    return (own or frames)[-1] if frames else None


@functools.cache
def _library_directories() -> tuple[str, ...]:
    """The stdlib's and site-packages' directories, each ending in a separator."""
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    found += [*site.getsitepackages(), site.getusersitepackages()]
    return tuple(os.path.join(os.path.realpath(d), "") for d in found)


def _installed(path: str) -> bool:
    """Whether ``path`` is a file of the stdlib or of an installed package."""
    return os.path.realpath(path).startswith(_library_directories())


def target_problem(target: str) -> str | None:
    """Why ``module:function`` cannot be served, or None.

    The module is found, not executed (see the module docstring), where the workers will
    look for it (``workers_path``), not on the supervisor's own ``sys.path``.
    """
    module, _, attr = target.partition(":")
    cwd, unsearched = _working_directory()
    try:
        spec = find_unrun(module, workers_path())
    except Exception as e:  # a bad name
        why = f"{type(e).__name__}: {e}"
        return f"cannot import {module!r} ({why}); check the module path and PYTHONPATH"
    if spec is None:
        said = f"no module named {module!r}; check the spelling and PYTHONPATH"
        said += hidden_by(module, workers_path())
        if cwd is None:  # a farm running where its start directory was removed since
            said += " (not the working directory, which was removed)"
        elif unsearched:  # an absolute PYTHONPATH entry is searched: the operator names it
            said += f" (not {cwd}: it {unsearched}; PYTHONPATH={cwd} if you trust it)"
        value = os.environ.get("PYTHONPATH", "")
        relative = [e for e in value.split(os.pathsep) if not os.path.isabs(e)] if value else []
        if relative:  # the supervisor warns of them only once this check has passed
            said += f" (the workers do not search its relative entries {relative})"
        return said
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
    # sys.path holds the path, not the directory: one whose parent another user may
    # rename had their directory searched by every import made after this check.
    return untrusted_because(info) or controlled_by_another(Path(path))


def _working_directory() -> tuple[str | None, str | None]:
    """The working directory (None: removed) and why its modules may not be imported (None:
    they may). A removed one is not searched, and nothing refuses for it: a running farm
    whose start directory went could not reload (a daemon cannot cd), and a worker it
    restarted could not boot, though both find their modules on PYTHONPATH."""
    try:
        cwd = working_directory()
    except WorkingDirectoryGone:
        return None, "was removed"
    return cwd, unsearched_because(cwd)


def search_working_directory() -> str | None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does, when its
    modules may be imported (``unsearched_because``; not where it was removed); it, or None.
    The supervisor starts its Python children with ``-P``, which leaves it off, so that this
    check decides."""
    cwd, unsearched = _working_directory()
    if cwd is None or unsearched is not None:
        return None
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def trusted_pythonpath(env: dict[str, str]) -> list[str]:
    """Make ``env``'s PYTHONPATH (the environment of the job server and the Python workers,
    started with ``-P``) one that searches no working directory, and return what to warn
    of, a line each. Empty and relative entries are dropped: Python reads them against the
    working directory (``/srv/app:`` from ``export PYTHONPATH=/srv/app:$PYTHONPATH``), past
    ``-P``. The directory this ``farm`` was imported from is added last unless it is a
    site directory (``cd checkout && python -m farm up``, or a relative entry that named
    it: the children would import another farm, or none), and only by the working
    directory's rule (``unsearched_because``): PYTHONPATH comes before the stdlib, so a
    ``json.py`` that the group of a checkout run by root could write there would run as
    root."""
    value = env.get("PYTHONPATH", "")
    entries = value.split(os.pathsep) if value else []  # a PYTHONPATH of "" adds nothing
    kept = [e for e in entries if os.path.isabs(e)]
    dropped = [e for e in entries if not os.path.isabs(e)]
    warnings = []
    if dropped:
        warnings.append(f"PYTHONPATH entries {dropped} dropped for the server and workers")
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not _site_directory(ours) and ours not in map(os.path.abspath, kept):
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


def workers_path(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The ``sys.path`` a Python worker of this supervisor will have: the working directory
    by ``search_working_directory``'s rule, the PYTHONPATH it is given (``trusted_pythonpath``
    of ``environ``'s), then the stdlib and site-packages. The supervisor's own still holds
    what the workers do not get: the directory ``python -m`` or ``-c`` put first, and
    relative PYTHONPATH entries, read against the working directory at its start."""
    cwd, unsearched = _working_directory()
    env = {"PYTHONPATH": environ.get("PYTHONPATH", "")}
    trusted_pythonpath(env)
    path = [cwd] if cwd is not None and unsearched is None else []
    path += env["PYTHONPATH"].split(os.pathsep) if env.get("PYTHONPATH") else []
    return list(dict.fromkeys(path + _interpreter_path()))


def _interpreter_path() -> list[str]:
    """The supervisor's ``sys.path`` less what its own start put in front, which its
    workers (``-P``, the trusted PYTHONPATH) do not get: the script's or ``-m``'s directory
    (unless it ran with ``-P``) and the PYTHONPATH entries (unless ``-E``). What site, a
    ``.pth`` or sitecustomize added is kept: the workers' site adds it too."""
    path = list(sys.path)
    if path and not sys.flags.safe_path:
        path = path[1:]
    given = "" if sys.flags.ignore_environment else os.environ.get("PYTHONPATH", "")
    if given:
        started = {_absolute(entry) for entry in given.split(os.pathsep)}
        path = [entry for entry in path if _absolute(entry) not in started]
    return path


def _absolute(entry: str) -> str:
    """A path entry made absolute, or as it is written where the working directory was
    removed: a relative one (an editable install's ``__editable__...__path_hook__``) then
    made abspath raise, and a running farm's reload with it."""
    try:
        return os.path.abspath(entry)
    except OSError:
        return entry


def _site_directory(path: str) -> bool:
    """Whether ``path`` is where packages are installed (the virtualenv's, the user's)."""
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    return os.path.realpath(path) in {os.path.realpath(p) for p in sites}


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
