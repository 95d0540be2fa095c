"""docs/executor.md's signatures of `farm.Executor`, its `map` and `shutdown` are the code's:
each parameter, in order, of the same kind (keyword-only after ``*``), with its default; and
docs/client.md names what a worker function's `Job` offers."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

import farm
from farm import errors
from farm.worker import Job
from tests.helpers import ROOT

TEXT = (ROOT / "docs" / "executor.md").read_text()


def written(call: str) -> list[tuple[str, str, object]]:
    """The parameters of a signature as the page writes it, ``name(a, b=1, *, c=None)``:
    (name, kind, default or inspect.Parameter.empty), in order."""
    tree = ast.parse(f"def f({call.split('(', 1)[1].rstrip()[:-1]}): pass")
    args = tree.body[0].args  # type: ignore[attr-defined]
    found: list[tuple[str, str, object]] = []
    positional = args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults))
    defaults += [ast.literal_eval(d) for d in args.defaults]
    for arg, default in zip(positional, defaults, strict=True):
        found.append((arg.arg, "POSITIONAL_OR_KEYWORD", default))
    if args.vararg:
        found.append((args.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        value = inspect.Parameter.empty if kw_default is None else ast.literal_eval(kw_default)
        found.append((arg.arg, "KEYWORD_ONLY", value))
    return found


def actual(fn: Callable[..., Any]) -> list[tuple[str, str, object]]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # less self
    return [(p.name, p.kind.name, p.default) for p in params]


def signature_block() -> str:
    start = TEXT.index("farm.Executor(max_workers")
    return " ".join(TEXT[start : TEXT.index("```", start)].split())


@pytest.mark.parametrize(
    ("pattern", "fn"),
    [
        (None, farm.Executor.__init__),
        (r"`(map\(fn, \*iterables[^`]*)`", farm.Executor.map),
        (r"`(shutdown\(wait[^`]*)`", farm.Executor.shutdown),
    ],
    ids=["Executor", "map", "shutdown"],
)
def test_the_documented_signature_is_the_code_s(
    pattern: str | None, fn: Callable[..., Any]
) -> None:
    if pattern is None:
        call = signature_block()
    else:
        m = re.search(pattern, TEXT)
        assert m, f"docs/executor.md no longer writes {pattern}"
        call = m[1]
    assert written(call) == actual(fn)


def test_every_public_attribute_of_a_job_is_in_client_md() -> None:
    # `.timeout` and `.server` were a Job's too, and the page did not say so.
    text = (ROOT / "docs" / "client.md").read_text()
    start = text.index("* Functions receive the `Job`")
    bullet = text[start : text.index("\n* ", start + 1)]
    named = set(re.findall(r"`\.(\w+)`", bullet)) | set(re.findall(r"\b(send_\w+)\b", text))
    public = {name for name in dir(Job) if not name.startswith("_")}
    assert public <= named, f"not in docs/client.md: {sorted(public - named)}"


def test_every_error_class_farm_raises_is_named_in_the_docs() -> None:
    # farm.errors.TLSFileError (tls_context's, for a file OpenSSL cannot use) was in none.
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    classes = [
        n
        for n, o in vars(errors).items()
        if isinstance(o, type) and o.__module__ == errors.__name__
    ]
    assert len(classes) >= 5
    missing = [n for n in classes if not re.search(rf"\b{n}\b", text)]
    assert not missing, f"farm.errors classes no doc names: {missing}"
