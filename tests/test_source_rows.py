"""Row checks: canonical answers, choice letters, duplicate keys, ids, the table schema."""

import hashlib

import pandas as pd
import pandera.errors
import pytest

from cordflow.source import QA_SCHEMA
from cordflow.source.rows import (
    Candidate,
    Reject,
    canonical_number,
    check,
    choice_letter,
    dedup_key,
    item_id,
)
from cordflow.source.schema import qa_frame


@pytest.mark.parametrize(
    "text, number",
    [("12", "12"), ("-3", "-3"), ("+3", "3"), ("0.50", "0.5"), ("2.0", "2"), ("-0", "0"),
     ("1,234", "1234"), ("1,234.50", "1234.5"), (".5", "0.5"), ("007", "7"), ("−4", "-4"),
     ("1,23", None), ("twelve", None), ("", None), ("1e5", None), ("12 apples", None),
     # a fraction is the same number as its decimal (issue 16): one number type
     ("1/2", "0.5"), ("3/4", "0.75"), ("-3/4", "-0.75"), ("3 / 4", "0.75"), ("6/3", "2"),
     ("2/6", "1/3"), ("\\frac{3}{4}", "0.75"), ("\\dfrac{1}{3}", "1/3"), ("1/0", None),
     ("1/2/3", None)],
)
def test_canonical_number(text, number):
    assert canonical_number(text) == number


@pytest.mark.parametrize(
    "answer, labels, letter",
    [("B", None, "B"), ("b", None, "B"), ("(C)", None, "C"), ("D.", None, "D"),
     ("apple", None, "B"), ("E", None, None), ("2", ["1", "2", "3", "4"], "B"),
     ("pear", None, None)],
)
def test_choice_letter(answer, labels, letter):
    assert choice_letter(answer, ["stone", "Apple", "chair", "cloud"], labels) == letter


def test_dedup_key_ignores_case_space_and_punctuation_but_not_numbers():
    assert dedup_key("What is  seven plus five?") == dedup_key("what is seven, plus five")
    assert dedup_key("What is negative three?") != dedup_key("What is three?")


def test_item_id_is_sha256_of_source_question_answer():
    want = hashlib.sha256(b"builtin\x1fWhat is 1 plus 1?\x1f2").hexdigest()[:16]
    assert item_id("builtin", "What is 1 plus 1?", "2") == want
    assert item_id("a", "bc", "d") != item_id("ab", "c", "d")  # fields cannot run together


def candidate(**fields):
    base = {"question": "What is 2 plus 2?", "answer": "4", "split": "train"}
    base.update(fields)
    return Candidate(source="t", origin="t:1", raw=base, **base)


def test_check_infers_the_answer_type():
    assert check(candidate(), ["train"], 1000)["answer_type"] == "number"
    assert check(candidate(answer="four"), ["train"], 1000)["answer_type"] == "text"
    row = check(candidate(answer="b", choices=["3", "4"]), ["train"], 1000)
    assert (row["answer_type"], row["answer"]) == ("choice", "B")


@pytest.mark.parametrize(
    "fields, code",
    [({"answer": True}, "bad_field"), ({"choices": "[1, "}, "bad_choices"),
     ({"choices": ["a", ""]}, "bad_choices"), ({"answer_type": "choice"}, "unparseable_answer"),
     ({"answer_type": "number", "choices": ["1", "2"]}, "bad_choices"),
     ({"split": None}, "missing_field"), ({"question": None}, "missing_field"),
     ({"question": float("nan")}, "missing_field")],
)
def test_check_rejects(fields, code):
    with pytest.raises(Reject) as e:
        check(candidate(**fields), ["train"], 1000)
    assert e.value.reason.startswith(code + ": ")


def good_row(**fields):
    row = check(candidate(), ["train"], 1000)
    row.update(fields)
    return row


def test_schema_accepts_good_rows_and_rejects_bad_ones():
    QA_SCHEMA.validate(qa_frame([good_row()]))
    for bad in (good_row(answer="4.0"), good_row(answer_type="choice"),
                good_row(id="xyz"), good_row(answer_type="date")):
        with pytest.raises(pandera.errors.SchemaError):
            QA_SCHEMA.validate(qa_frame([bad]))
    unsorted = qa_frame([good_row(id="f" * 16), good_row(id="0" * 16)])
    with pytest.raises(pandera.errors.SchemaError, match="sorted"):
        QA_SCHEMA.validate(unsorted)
    with pytest.raises(pandera.errors.SchemaError):
        QA_SCHEMA.validate(pd.DataFrame({"id": ["0" * 16]}))


def test_counts_that_do_not_add_up_fail_loudly():
    from collections import Counter

    from cordflow.source.rows import Outcome, check_counts

    out = Outcome(kept=[{}], rejected=[], counts={"a": Counter({"in": 2, "kept": 1})})
    with pytest.raises(RuntimeError, match="2 rows in but 1 kept"):
        check_counts(out)
    out = Outcome(kept=[], rejected=[], counts={"a": Counter({"in": 1, "kept": 1})})
    with pytest.raises(RuntimeError, match="do not add up"):
        check_counts(out)


def test_a_fraction_answer_is_a_number_equal_to_its_decimal():
    """Issue 16: "3/4" was typed text, so a reply of 0.75 did not match it."""
    from cordflow.scoring import match

    row = check(candidate(answer="3/4"), ["train"], 1000)
    assert (row["answer_type"], row["answer"]) == ("number", "0.75")
    third = check(candidate(answer="2/6"), ["train"], 1000)
    assert (third["answer_type"], third["answer"]) == ("number", "1/3")
    QA_SCHEMA.validate(qa_frame([row]))
    QA_SCHEMA.validate(qa_frame([good_row(answer="1/3")]))  # no finite decimal: a fraction
    for reply in ("0.75", "3/4", "The answer is \\frac{3}{4}.", "6/8"):
        assert match(reply, row["answer"], "number"), reply
    assert match("1/3", third["answer"], "number") and match("2/6", third["answer"], "number")
    assert not match("0.33", third["answer"], "number")
