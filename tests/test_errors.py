"""errors.py's pieces of an error line: an exception's first line, a value's cut repr."""

from __future__ import annotations

from trainwell.errors import exception_line


def test_exception_line_is_the_first_non_blank_line_cut_to_the_limit():
    assert exception_line(ValueError("bad header\nat byte 12\n")) == "bad header"
    assert exception_line(ValueError("\n\n  bad header\nmore")) == "bad header"
    assert exception_line(ValueError("x" * 300), 100) == "x" * 100
    assert exception_line(KeyError()) == "KeyError"
    assert exception_line(RuntimeError("   \n ")) == "RuntimeError"
