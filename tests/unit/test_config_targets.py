"""farm.toml's function targets: checked as the workers will import them (their sys.path,
without running the module), never from a directory others may write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm import config
from tests.helpers import ROOT
from tests.helpers.configs import GOOD, error_of, write
from tests.helpers.editable import EditableFinder


def test_unimportable_target(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "workers.nope:compress"))
    assert "functions.rev.target" in message and "no module named 'workers.nope'" in message
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "workers.hashing:nope"))
    assert "defines no 'nope'" in message
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "workers.hashing"))
    assert 'must look like "module:function"' in message
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "nopkg.sub:f"))
    assert "cannot import 'nopkg.sub'" in message or "no module named" in message


@pytest.mark.parametrize("shapeless", ["a..b:f", "a.:f", ".a:f", "a:b:c", "a:", ":f", "a:f()"])
def test_a_target_is_a_dotted_module_and_a_function_of_identifiers(
    tmp_path: Path, shapeless: str
) -> None:
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", shapeless))
    assert 'must look like "module:function"' in message


@pytest.mark.parametrize(
    ("written", "normal"),
    [("\ufb01x:run", "fix:run"), ("w.\u2460:f", None), ("a:\u212bb", "a:\xc5b")],
)
def test_a_target_python_reads_as_another_name_says_its_normal_form(
    tmp_path: Path, written: str, normal: str | None
) -> None:
    # "\ufb01x".isidentifier(), but Python reads it as "fix" (NFKC) and importlib looked for
    # a file named as written: the pool was "no module named", or a file of that name loaded.
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", written))
    assert 'must look like "module:function"' in message
    hint = f"; Python reads it as {normal!r}: write it in that normal form"
    assert (hint in message) == (normal is not None), message


def test_a_target_named_in_any_script_python_takes_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PEP 3131: an ñandu:correr pool was refused as not looking like "module:function".
    (tmp_path / "ñandu.py").write_text("def correr(job):\n    return job.data\n")
    monkeypatch.chdir(tmp_path)
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "ñandu:correr")))
    assert cfg.functions["rev"].target == "ñandu:correr"


def test_a_target_that_raises_on_import_is_left_to_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checking must not execute the module: a raising import is a boot failure, backed off.
    (tmp_path / "boom.py").write_text(
        "raise RuntimeError('broken at import')\nif True:\n    def job(j):\n        return b''\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "boom:job")))
    assert cfg.functions["rev"].target == "boom:job"
    # Nor its parent package's __init__ (find_spec imported it: one that slept held the
    # supervisor, one that raised was a config error, exit 2, and systemd gave up).
    pkg = tmp_path / "boompkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('no DB')\n")
    (pkg / "jobs.py").write_text("def job(j):\n    return b''\n")
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "boompkg.jobs:job")))
    assert cfg.functions["rev"].target == "boompkg.jobs:job"
    assert "boompkg" not in sys.modules
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "boompkg.jobs:nope"))
    assert "defines no 'nope'" in message  # still found, and read
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "boompkg.nojobs:job"))
    assert "no module named 'boompkg.nojobs'" in message
    # A package split over two sys.path entries (pkgutil.extend_path in its __init__).
    for half in ("one", "two"):
        (tmp_path / half / "splitpkg").mkdir(parents=True)
        (tmp_path / half / "splitpkg" / "__init__.py").write_text(
            "import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n"
        )
    (tmp_path / "two" / "splitpkg" / "jobs.py").write_text("def job(j):\n    return b''\n")
    # On the PYTHONPATH the workers get (the check searches theirs, not this process's).
    halves = [str(tmp_path / "one"), str(tmp_path / "two"), str(ROOT)]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(halves))
    split = GOOD.replace("workers.hashing:compress", "splitpkg.jobs:job")
    assert config.load(write(tmp_path, split)).functions["rev"].target == "splitpkg.jobs:job"


def test_a_target_in_a_working_directory_others_may_write_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers import from the working directory only when others may not write to it
    # (tests/security/test_planted_module.py): the check finds what they will import.
    (tmp_path / "mine.py").write_text("def job(j):\n    return b''\n")
    monkeypatch.chdir(tmp_path)
    os.chmod(tmp_path, 0o755)
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job")))
    assert cfg.functions["rev"].target == "mine:job"
    os.chmod(tmp_path, 0o1777)  # as /tmp: another user may have left mine.py
    try:
        message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job"))
    finally:
        os.chmod(tmp_path, 0o755)
    assert (
        f"no module named 'mine'; check the spelling and PYTHONPATH (not {tmp_path}: it may"
        " be written by every user" in message
    ), message
    # The way to trust it anyway: an absolute PYTHONPATH entry is searched (a relative one
    # is dropped for the workers, as it names the working directory).
    assert f"PYTHONPATH={tmp_path} if you trust it)" in message, message


def test_a_farm_run_as_root_searches_no_working_directory_its_group_may_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A member of the directory's group who left mine.py there ran it as root.
    nogroup = 65534  # a group root is not in
    if os.geteuid() != 0:
        pytest.skip("the group's write counts for a farm run as root only")
    (tmp_path / "mine.py").write_text("def job(j):\n    return b''\n")
    monkeypatch.chdir(tmp_path)
    os.chmod(tmp_path, 0o775)
    os.chown(tmp_path, 0, nogroup)
    try:
        message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job"))
        # root's own group (umask 002 makes root's directories 0775, root:root) is root's
        os.chown(tmp_path, 0, 0)
        config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job")))
    finally:
        os.chmod(tmp_path, 0o755)
        os.chown(tmp_path, 0, 0)
    assert f"(not {tmp_path}: it may be written by its group (gid {nogroup})" in message, message


@pytest.mark.parametrize(
    ("mode", "pythonpath", "beside"),
    [
        (0o755, "lib:{root}", "lib"),  # a relative entry: dropped for the workers
        (0o1777, "{root}", "."),  # python -c (or -m) put this directory first: not theirs
    ],
)
def test_the_target_check_searches_what_the_workers_will(
    tmp_path: Path, mode: int, pythonpath: str, beside: str
) -> None:
    # The check searched the supervisor's own sys.path, which still holds what the workers
    # (python -P, trusted_pythonpath) do not get: farm up passed it, and then every worker
    # failed to boot, retried with backoff, where one config line could have said it.
    run = tmp_path / "run"
    (run / "lib").mkdir(parents=True)
    (run / beside / "mine.py").write_text("def job(j):\n    return b''\n")
    path = write(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job"))
    run.chmod(mode)
    code = f"from farm import config\ntry:\n    config.load({str(path)!r})\n"
    code += "except Exception as e:\n    print(e)\nelse:\n    print('loaded')\n"
    env = dict(os.environ, PYTHONPATH=pythonpath.format(root=ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=run, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "functions.rev.target" in out.stdout, out.stdout
    assert "no module named 'mine'" in out.stdout, out.stdout
    if beside == "lib":  # the supervisor's warning of the entry comes after this check
        assert "the workers do not search its relative entries ['lib']" in out.stdout


def test_a_package_of_the_working_directory_hides_the_one_on_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `farm up` run in a project of the user's with a workers/ package of its own: the
    # built-in pools' workers.text and the rest passed the check (it looked in every
    # entry's workers/), and then each of their workers failed to boot, "No module named
    # 'workers.text'", backed off for good, where one config line could say which hides it.
    run, lib = tmp_path / "project", tmp_path / "lib"
    for where in (run, lib):
        (where / "shadowed").mkdir(parents=True)
        (where / "shadowed" / "__init__.py").write_text("")
    (lib / "shadowed" / "jobs.py").write_text("def job(j):\n    return b''\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(lib), str(ROOT)]))
    monkeypatch.chdir(run)
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "shadowed.jobs:job"))
    assert "no module named 'shadowed.jobs'" in message, message
    assert f"'shadowed' is {run / 'shadowed'}" in message, message
    assert f"hides {lib / 'shadowed'}, which has it; start farm in another" in message, message
    # A package whose __init__ extends its __path__ is no hiding one (the split package
    # above, or pkg_resources' way); nor a namespace package, whose portions Python reads
    # on every entry.
    (run / "shadowed" / "__init__.py").write_text(
        "__import__('pkg_resources').declare_namespace(__name__)\n"
    )
    cfg = config.load(
        write(tmp_path, GOOD.replace("workers.hashing:compress", "shadowed.jobs:job"))
    )
    assert cfg.functions["rev"].target == "shadowed.jobs:job"
    (run / "shadowed" / "__init__.py").unlink()
    cfg = config.load(
        write(tmp_path, GOOD.replace("workers.hashing:compress", "shadowed.jobs:job"))
    )
    assert cfg.functions["rev"].target == "shadowed.jobs:job"


def test_a_module_an_editable_install_finds_past_a_plain_package_is_no_hidden_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # farm installed with `pip install -e`, a project's own plain workers/ without text.py:
    # setuptools' finder, on sys.meta_path after PathFinder, finds workers.text in farm's
    # workers/ still, and the workers import it; the check refused it as hidden.
    run, src = tmp_path / "project", tmp_path / "src"
    for where in (run, src):
        (where / "mapped").mkdir(parents=True)
        (where / "mapped" / "__init__.py").write_text("")
    (src / "mapped" / "jobs.py").write_text("def job(j):\n    return b''\n")
    monkeypatch.setattr(
        sys, "meta_path", [*sys.meta_path, EditableFinder({"mapped": str(src / "mapped")})]
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(run)
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "mapped.jobs:job")))
    assert cfg.functions["rev"].target == "mapped.jobs:job"
    # What neither it nor the project's package has is still refused, and hidden by none.
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "mapped.nope:job"))
    assert message.endswith("no module named 'mapped.nope'; check the spelling and PYTHONPATH")


def test_a_regular_package_taken_over_a_namespace_portion_says_to_rename_the_portion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project's workers/ without __init__.py, holding mine.py, and farm's regular workers/
    # further on the path: the error said farm's was "found first" and hid the project's,
    # "rename it" (farm's). A regular package wins over a portion wherever each lies.
    run, lib = tmp_path / "project", tmp_path / "lib"
    for where in (run, lib):
        (where / "shadowed").mkdir(parents=True)
    (lib / "shadowed" / "__init__.py").write_text("")
    (run / "shadowed" / "mine.py").write_text("def job(j):\n    return b''\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(lib), str(ROOT)]))
    monkeypatch.chdir(run)
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "shadowed.mine:job"))
    assert message.endswith(
        "no module named 'shadowed.mine'; check the spelling and PYTHONPATH ('shadowed' is"
        f" {lib / 'shadowed'}, a regular package: the import takes it over {run / 'shadowed'},"
        f" which has it but no __init__.py, wherever each is on the path; rename"
        f" {run / 'shadowed'} and the targets that name it)"
    ), message
