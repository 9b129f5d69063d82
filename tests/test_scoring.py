"""The answer scorer: bare answers (the tiny model) and sentences (a 7B model) both score."""

import pytest

from cordflow.scoring import extract, match, normalize_text
from cordflow.source.rows import canonical_number as source_canonical
from cordflow.source.schema import NUMBER_RE

CHOICES = ["6", "7", "8", "9"]


@pytest.mark.parametrize(
    "text, number",
    [
        # bare answers, as the tiny model gives them
        ("12", "12"), ("-3", "-3"), ("0.5", "0.5"), ("12.0", "12"), ("1,000", "1000"),
        (" 7\n", "7"), ("+3", "3"), (".5", "0.5"), ("-0", "0"), ("007", "7"),
        # sentences, as a 7B model gives them
        ("The answer is 12.", "12"),
        ("3 plus 4 is 7, so the answer is 7.", "7"),
        ("Seven plus five: 7 + 5 = 12", "12"),
        ("The answer is 7 (out of the 10 given).", "7"),
        ("Answer: -3", "-3"),
        ("x = -3", "-3"),
        ("5-3 = 2", "2"),
        ("The range is 3-5", "5"),
        ("The total is $1,234.50.", "1234.5"),
        ("It is 1/2 of the cake", "0.5"),
        ("The probability is \\frac{3}{4}.", "0.75"),
        ("Two sixths: 2/6", "1/3"),
        ("Step 1: 4 * 3 = 12. Step 2: 12 - 5 = 7.\n#### 7", "7"),
        ("so we get \\boxed{42} and check 43", "42"),
        ("The larger number is 9.", "9"),
        ("The answer is \u22124.", "-4"),
        ("Qwen2 thinks 5", "5"),
        # nothing to read
        ("twelve", None), ("I do not know.", None), ("", None), ("3/0", None),
    ],
)
def test_extract_number(text, number):
    assert extract(text, "number") == number


@pytest.mark.parametrize("raw", ["12", "12.0", "-3", "0.50", "1,234.50", ".5", "+3", "-0",
                                 "007", "1,000,000", "2.000", "3/4", "2/6", "-1/3",
                                 "\\frac{3}{4}"])
def test_numbers_are_canonical_like_the_qa_tables(raw):
    got = extract(raw, "number")
    assert got == source_canonical(raw)
    assert NUMBER_RE.fullmatch(got)


@pytest.mark.parametrize(
    "text, letter",
    [
        # bare answers
        ("B", "B"), ("b", "B"), ("(B)", "B"), ("(b)", "B"), ("B.", "B"), ("B)", "B"),
        ("'C'", "C"), ("**D**", "D"), ("a", "A"),
        # sentences
        ("The answer is B", "B"), ("The answer is B.", "B"), ("Answer: (C)", "C"),
        ("The correct option is (B) 7.", "B"), ("B. 7", "B"), ("(A) 6, because 3 + 3 = 6", "A"),
        ("the answer is b.", "B"), ("I think the answer is D.", "D"), ("Option C is correct", "C"),
        ("The answer is **B**.", "B"), ("I believe it's C", "C"),
        ("The answer is A because 6 is smallest.", "A"),
        ("A: 6 is wrong; the right choice is C.", "C"),
        # the option's text instead of its letter (choices given)
        ("7", "B"), ("The answer is 7.", "B"), ("3 plus 4 is 7", "B"),
        # not an answer, out of range, or ambiguous
        ("E", None), ("the answer is a number", None), ("A cat sat on the mat.", None),
        ("A: 6, B: 7, C: 8, D: 9", None), ("B or C", None), ("", None),
        ("It is 7 or 8", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract(text, "choice", choices=CHOICES) == letter


def test_extract_choice_limits_letters_to_n_choices():
    assert extract("C", "choice", n_choices=3) == "C"
    assert extract("D", "choice", n_choices=3) is None
    assert extract("7", "choice", n_choices=4) is None  # no option texts given


@pytest.mark.parametrize(
    "text, norm",
    [("Paris", "paris"), ("The answer is Paris.", "paris"), ("the Eiffel Tower!", "eiffel tower"),
     ("  An   apple, a day ", "apple day"), ("...", None)],
)
def test_extract_text(text, norm):
    assert extract(text, "text") == norm


def test_normalize_text_is_squad_style():
    assert normalize_text("The  Cat's (big) hat.") == "cat s big hat"


@pytest.mark.parametrize(
    "pred, gold, answer_type, ok",
    [("12", "12", "number", True), ("The answer is 12.", "12", "number", True),
     ("12.0", "12", "number", True), ("13", "12", "number", False),
     ("I am not sure.", "12", "number", False), ("The answer is -3.", "-3", "number", True),
     ("3", "-3", "number", False),
     ("B", "B", "choice", True), ("The answer is (B) 7.", "B", "choice", True),
     ("7", "B", "choice", True), ("A", "B", "choice", False), ("B or C", "B", "choice", False),
     ("The answer is Paris.", "Paris", "text", True), ("London", "Paris", "text", False),
     (None, "12", "number", False)],
)
def test_match(pred, gold, answer_type, ok):
    choices = CHOICES if answer_type == "choice" else None
    assert match(pred, gold, answer_type, choices=choices) is ok


def test_bad_arguments_fail_with_the_fix():
    with pytest.raises(ValueError, match="answer_type"):
        extract("12", "integer")
    with pytest.raises(ValueError, match="n_choices or choices"):
        extract("B", "choice")
    with pytest.raises(ValueError, match="n_choices is 1"):
        extract("A", "choice", n_choices=1)
