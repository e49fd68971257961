"""The clip form's number fields accept exactly the numbers the spec grammar accepts (plain decimal or
scientific notation, ASCII digits), so a value typed in a field and the same value in a raw spec agree."""

import pytest

from dashboard.clipform import read_number
from tracker.clipping import validate_clip

GRAMMAR_REFUSES = ["1_000", "1_0e4", "١٢", "１", "0.５", "0x10", "1e", "e3", "1.2.3", "½", "²", "1.5f"]
NOT_FINITE = ["nan", "NaN", "inf", "-infinity", "1e400", "-1e400"]  # (refused as out of range)
GRAMMAR_ACCEPTS = {"1": 1.0, "0.5": 0.5, ".5": 0.5, "5.": 5.0, "1e-3": 1e-3, "1E+3": 1e3, "+2": 2.0,
                   "-1": -1.0}  # fmt: skip


@pytest.mark.parametrize("text", GRAMMAR_REFUSES)
def test_a_field_refuses_what_the_grammar_refuses(text):
    assert "is not a number" in validate_clip(f"norm:{text}")  # the oracle: the tracker's parser
    value, problem = read_number("threshold C", text)
    assert value is None and problem == f"threshold C: {text!r} is not a number"


@pytest.mark.parametrize("text", NOT_FINITE)
def test_a_field_refuses_what_is_not_finite(text):
    assert validate_clip(f"norm:{text}") is not None
    value, problem = read_number("threshold C", text)
    assert value is None and problem.startswith(
        f"threshold C: {text!r} is out of range (not a finite number)"
    )


@pytest.mark.parametrize("text, expected", GRAMMAR_ACCEPTS.items())
def test_a_field_accepts_what_the_grammar_accepts(text, expected):
    assert read_number("threshold C", f"  {text} ") == (expected, None)


def test_a_number_too_small_for_a_float_is_still_named_so():
    value, problem = read_number("threshold C", "1e-400")
    assert value is None and "too small: it rounds to 0" in problem
