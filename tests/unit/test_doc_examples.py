"""The convention tests/integration/test_docs.py checks an example's output by: a print
line's trailing comment that is a Python literal states what it prints
(tests/helpers/docexamples). That test runs against port 4730 (serial); this one checks the
convention itself, and which lines of the docs state their output."""

from __future__ import annotations

from tests.helpers.docexamples import examples, stated_prints, unprinted

BLOCK = """\
import farm

with farm.Client() as c:
    print(c.call("reverse", "Hello"))   # b'olleH'
    print(c.status(task))               # JobStatus(known, running, numerator, denominator)
    for r in c.map("reverse", [b"ab"]):
        print(r)                        # b'ba'
    c.call("reverse", "x")              # b'x'
print(
    total,
)  # 3
print("#")  # '#'
"""


def test_a_literal_comment_on_a_print_line_states_its_output() -> None:
    stated = [(s.line, s.text) for s in stated_prints(BLOCK)]
    # Prose is not checked, nor a comment on a line that is not one whole print.
    assert stated == [(4, "b'olleH'"), (7, "b'ba'"), (12, "'#'")]


def test_the_output_it_states_must_be_a_line_of_stdout() -> None:
    assert unprinted(BLOCK, "b'olleH'\nJobStatus(known=False)\nb'ba'\n#\n") == []
    # The same value written another way is the same line: b"olleH" is b'olleH'.
    assert unprinted('print(x)  # b"olleH"', "b'olleH'\n") == []
    missing = unprinted(BLOCK, "b'olleH'\nb'ab'\n#\n")
    assert [str(s) for s in missing] == ["line 7: # b'ba'"]
    # Part of a line, or a value of another type, is not what was printed.
    assert unprinted("print(n)  # 1", "10\n") != []
    assert unprinted("print(n)  # 1", "True\n") != []


def test_a_comment_that_names_events_never_sent_fails() -> None:
    # docs/executor.md's stream of resize said "JobProgress, JobData, JobWarning, then
    # JobEnded" where resize sends no news: the run printed JobEnded alone.
    code = "print(events)  # ['JobProgress', 'JobData', 'JobWarning', 'JobEnded']"
    assert unprinted(code, "['JobEnded']\n") != []
    assert unprinted(code, "['JobProgress', 'JobData', 'JobWarning', 'JobEnded']\n") == []


def test_the_docs_state_what_their_calls_print() -> None:
    stated = {f"{e}": [s.text for s in stated_prints(e.code)] for e in examples()}
    said = [text for texts in stated.values() for text in texts]
    for text in ("b'olleH'", "b'HELLO!'", "(1, 2)", "21100"):
        assert text in said, stated
    assert "['JobProgress', 'JobData', 'JobWarning', 'JobEnded']" in said
