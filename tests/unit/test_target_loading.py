"""What a worker says when its target's module cannot be imported: the error and where, in
one line, for `farm reload`, `farm restart` and `farm ps` (its traceback is in the log only)."""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from farm.targets import load_failure, load_target, trusted_pythonpath, workers_path


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("broken_")]:
            del sys.modules[name]


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        # SyntaxError's own text named the file by its base name alone: which of the
        # deploy's copies of worker.py was it?
        ("x = 1\ndef job(j) oops\n", 2, "SyntaxError: expected ':'"),
        # Raised while the module ran: the one line named no file at all.
        ("import os\n\nraise RuntimeError('no model file here')\n", 3, "RuntimeError: no model"),
        ("import broken_no_such_dependency\n", 1, "ModuleNotFoundError: No module named"),
    ],
)
def test_a_target_that_cannot_be_imported_is_told_with_its_file_and_line(
    modules: Path, source: str, line: int, error: str
) -> None:
    path = modules / "broken_worker.py"
    path.write_text(source)
    with pytest.raises(Exception) as raised:
        load_target("broken_worker:job")
    why = load_failure(raised.value)
    assert why.startswith(error), why
    assert why.endswith(f" at {path}:{line}"), why
    assert "\n" not in why


def test_an_error_raised_inside_a_library_names_the_target_s_line(modules: Path) -> None:
    # The last frame was the library's (json/decoder.py): the target's call of it is the
    # line to look at, and the traceback in the log has the rest.
    path = modules / "broken_config.py"
    path.write_text("import json\n\nSETTINGS = json.loads('{not json')\n")
    with pytest.raises(ValueError) as raised:
        load_target("broken_config:job")
    why = load_failure(raised.value)
    assert why.startswith("JSONDecodeError: Expecting property name"), why
    assert why.endswith(f" at {path}:3"), why


def test_a_missing_top_level_module_names_no_file(modules: Path) -> None:
    # It named importlib/__init__.py:126, where import_module calls the import system.
    with pytest.raises(ModuleNotFoundError) as raised:
        load_target("broken_nowhere:job")
    assert load_failure(raised.value) == "ModuleNotFoundError: No module named 'broken_nowhere'"


def test_an_error_of_farm_s_own_loading_names_no_file(modules: Path) -> None:
    (modules / "broken_empty.py").write_text("")
    with pytest.raises(AttributeError) as raised:  # not the module's code: no line of it
        load_target("broken_empty:job")
    assert load_failure(raised.value) == (
        "AttributeError: module 'broken_empty' has no attribute 'job'"
    )


def test_the_childrens_pythonpath_names_no_working_directory_and_this_farm() -> None:
    # Empty and relative entries are read against the working directory, past -P; the
    # checkout this farm runs from is added: pytest runs in it, and found farm there.
    ours = str(Path(farm.__file__).parent.parent)
    if ours in site.getsitepackages() or os.path.realpath(os.getcwd()) != os.path.realpath(ours):
        pytest.skip("farm is installed here, or not run from its checkout: nothing to add")
    env = {"PYTHONPATH": ":/srv/app:src:/opt/lib:."}
    warned = trusted_pythonpath(env)
    assert warned == ["PYTHONPATH entries ['', 'src', '.'] dropped for the server and workers"]
    assert env["PYTHONPATH"] == f"/srv/app:/opt/lib:{ours}"
    unset: dict[str, str] = {}
    assert trusted_pythonpath(unset) == [] and unset == {"PYTHONPATH": ours}
    named = {"PYTHONPATH": ours}
    assert trusted_pythonpath(named) == [] and named == {"PYTHONPATH": ours}


def test_this_farm_s_directory_is_added_wherever_it_was_found_but_in_a_site_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found through a relative entry (cd /work && PYTHONPATH=main python -m farm up), which
    # is dropped, the children imported another farm (an installed one), or none at all.
    ours = str(Path(farm.__file__).parent.parent)
    if ours in site.getsitepackages():
        pytest.skip("farm is installed here: the children find it there")
    monkeypatch.chdir(tmp_path)
    env = {"PYTHONPATH": "/srv/app"}
    assert trusted_pythonpath(env) == [] and env == {"PYTHONPATH": f"/srv/app:{ours}"}


def test_the_workers_path_keeps_what_site_put_first_and_drops_what_the_start_put_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .pth or sitecustomize may put entries ahead of the stdlib, and the workers' own site
    # puts them there too: the config check, which kept sys.path only from the stdlib on,
    # refused their modules. What the supervisor's start put first (its script's directory,
    # its PYTHONPATH) the workers do not get as such.
    monkeypatch.chdir(tmp_path)
    os.chmod(tmp_path, 0o700)  # searched by the workers: this user's, closed to others
    monkeypatch.setenv("PYTHONPATH", "/from/pythonpath")
    monkeypatch.setattr(sys, "path", ["/script/dir", "/from/pythonpath", "/front/pth", *sys.path])
    path = workers_path()
    assert path[0] == str(tmp_path)
    assert "/front/pth" in path and "/script/dir" not in path
    assert path.index("/from/pythonpath") < path.index("/front/pth")  # as PYTHONPATH goes


def test_an_installed_target_package_is_its_own_code(
    modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every frame under site-packages (an installed package, as operations.md recommends):
    # the line named was json's, inside the library the target called.
    import farm.targets as targets

    library = targets._library_directories()
    monkeypatch.setattr(targets, "_library_directories", lambda: (*library, f"{modules}/"))
    (modules / "broken_pkg").mkdir()
    (modules / "broken_pkg" / "__init__.py").write_text("")
    jobs = modules / "broken_pkg" / "jobs.py"
    jobs.write_text("import json\n\nSETTINGS = json.loads('{not json')\n")
    with pytest.raises(ValueError) as raised:
        load_target("broken_pkg.jobs:job")
    why = load_failure(raised.value, "broken_pkg.jobs:job")
    assert why.endswith(f" at {jobs}:3"), why
