"""with_cell_lines: a notebook cell's source lines put into a worker's traceback text by the
caller, for in-memory code only (the real kernel case runs in
tests/integration/test_executor_contract.py)."""

from __future__ import annotations

import linecache
from collections.abc import Iterator

import pytest

from farm.executor.cellsource import with_cell_lines

CELL = "/tmp/ipykernel_7/123.py"  # IPython's name for a cell: no such file


@pytest.fixture
def cell() -> Iterator[None]:
    text = "def g(x):\n    return 1 / x\n"
    linecache.cache[CELL] = (len(text), None, text.splitlines(True), CELL)
    yield
    del linecache.cache[CELL]


def test_a_cells_frame_gets_its_line_once(cell: None) -> None:
    text = f'Traceback (most recent call last):\n  File "{CELL}", line 2, in g\nZeroDivisionError\n'
    filled = with_cell_lines(text)
    assert filled == text.replace(", in g\n", ", in g\n    return 1 / x\n")
    assert with_cell_lines(filled) == filled  # a line written is not written twice


def test_an_exception_groups_frame_keeps_its_margin(cell: None) -> None:
    text = f'  | Traceback (most recent call last):\n  |   File "{CELL}", line 2, in g\n'
    assert with_cell_lines(text).endswith("in g\n  |     return 1 / x\n")


def test_files_not_held_in_memory_are_left_as_the_worker_wrote_them(cell: None) -> None:
    text = '  File "/nowhere/else.py", line 2, in g\n  File "<string>", line 1, in h\nE\n'
    assert with_cell_lines(text) == text
    out_of_range = f'  File "{CELL}", line 9, in g\nE\n'
    assert with_cell_lines(out_of_range) == out_of_range


def test_code_compiled_from_a_string_is_left_whatever_the_caller_holds_under_its_name(
    cell: None,
) -> None:
    # Python 3.13 keeps a `python -c` program's text as "<string>" (pytest-xdist's workers
    # start so); a worker's "<string>" frame is other code (a dataclass's __init__).
    program = "import sys; exec(sys.stdin.read())\n"
    linecache.cache["<string>"] = (len(program), None, [program], "<string>")
    try:
        text = '  File "<string>", line 1, in __init__\nTypeError\n'
        assert with_cell_lines(text) == text
    finally:
        del linecache.cache["<string>"]


@pytest.mark.parametrize("lines", [None, "def g(x):\n    return 1 / x\n", 7])
def test_an_entry_of_another_shape_is_passed_over(lines: object) -> None:
    # linecache is any tool's to fill: an entry whose lines are no list (None, one string)
    # raised TypeError in the pump thread, or showed one character as the line.
    linecache.cache[CELL] = (10, None, lines, CELL)  # type: ignore[assignment]
    try:
        text = f'  File "{CELL}", line 2, in g\nZeroDivisionError\n'
        assert with_cell_lines(text) == text
    finally:
        del linecache.cache[CELL]
