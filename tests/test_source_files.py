"""Local QA files (jsonl, csv, parquet) with mappings, and a file full of bad rows."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cordflow import source
from cordflow.source.rows import item_id


def run_files(tmp_path, entries, splits=("train", "test"), max_chars=1000):
    out = tmp_path / "qa"
    params = {"seed": 1, "source": {"splits": list(splits), "max_chars": max_chars,
                                    "builtin": {"enabled": False}, "files": entries}}
    source.run(params, out)
    kept = pd.concat([source.read_qa(out / f"{s}.parquet") for s in splits])
    rejected = pd.read_parquet(out / "rejected.parquet")
    return kept, rejected


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_mapping_and_fixed_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "qa.jsonl", [
        {"q": "What is 2 plus 2?", "a": 4},
        {"q": "Pick the fruit.", "a": "B", "opts": ["stone", "apple", "chair"]},
        {"q": "Name the capital of France.", "a": " Paris "},
        {"q": "What is half of 1?", "a": "0.50"},
    ])
    kept, rejected = run_files(tmp_path, [{
        "path": "qa.jsonl", "split": "test", "name": "mine",
        "mapping": {"question": "q", "answer": "a", "choices": "opts"},
    }])
    assert rejected.empty
    by_origin = kept.set_index("origin")
    assert list(kept["source"].unique()) == ["mine"]
    assert (kept["split"] == "test").all()
    assert by_origin.loc["qa.jsonl:1", ["answer", "answer_type"]].tolist() == ["4", "number"]
    fruit = by_origin.loc["qa.jsonl:2"]
    assert fruit["answer_type"] == "choice" and fruit["answer"] == "B"
    assert fruit["choices"] == ["stone", "apple", "chair"]
    assert fruit["question"] == "Pick the fruit. A: stone, B: apple, C: chair"
    assert by_origin.loc["qa.jsonl:3", "answer"] == "Paris"
    assert by_origin.loc["qa.jsonl:3", "answer_type"] == "text"
    assert by_origin.loc["qa.jsonl:4", "answer"] == "0.5"
    assert by_origin.loc["qa.jsonl:1", "spoken"] == "What is two plus two?"
    assert by_origin.loc["qa.jsonl:1"].name == "qa.jsonl:1"
    assert kept.loc[kept["origin"] == "qa.jsonl:1", "id"].item() == item_id(
        "mine", "What is 2 plus 2?", "4")


def test_csv_with_split_column_and_line_numbers(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text(
        "Question,Answer,Kind,Part,Options\n"
        '"How many legs does a cat have?",4,number,train,\n'
        '"A question that\nspans two lines?",yes,text,test,\n'
        'Which is a colour?,red,,train,"[""red"", ""loud""]"\n'
        "Which is a metal?,A,choice,test,iron|wood\n"
    )
    kept, rejected = run_files(tmp_path, [{
        "path": str(path),
        "mapping": {"question": "Question", "answer": "Answer", "answer_type": "Kind",
                    "split": "Part", "choices": "Options"},
    }])
    assert rejected.empty
    rows = kept.set_index("origin")
    assert rows.loc[f"{path}:2", ["answer", "split"]].tolist() == ["4", "train"]
    assert rows.loc[f"{path}:3", "split"] == "test"
    assert rows.loc[f"{path}:3", "question"] == "A question that\nspans two lines?"
    assert rows.loc[f"{path}:3", "spoken"] == "A question that spans two lines?"
    # the row after a two-line record starts on line 5
    assert rows.loc[f"{path}:5", ["answer", "answer_type"]].tolist() == ["A", "choice"]
    assert rows.loc[f"{path}:5", "choices"] == ["red", "loud"]
    assert rows.loc[f"{path}:6", "choices"] == ["iron", "wood"]
    assert kept["source"].unique().tolist() == ["qa.csv"]


def test_parquet_with_mapping(tmp_path):
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({
        "prompt": ["What is 10 minus 4?", "Which is bigger, 3 or 8?"],
        "target": ["6", "8"],
        "bucket": ["train", "train"],
    }), path)
    kept, rejected = run_files(tmp_path, [{
        "path": str(path), "answer_type": "number",
        "mapping": {"question": "prompt", "answer": "target", "split": "bucket"},
    }])
    assert rejected.empty
    assert kept["origin"].tolist() == sorted([f"{path}:1", f"{path}:2"],
                                             key=lambda o: kept.set_index("origin").loc[o, "id"])
    assert set(kept["answer"]) == {"6", "8"}
    assert (kept["answer_type"] == "number").all()


def test_a_missing_file_or_column_fails_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source.files\[0\].path: no such file"):
        run_files(tmp_path, [{"path": str(tmp_path / "nope.jsonl"), "split": "train"}])
    path = tmp_path / "qa.csv"
    path.write_text("q,a\nx,1\n")
    with pytest.raises(ValueError, match=r"mapping.question: column 'question' is not in"):
        run_files(tmp_path, [{"path": str(path), "split": "train"}])
    with pytest.raises(ValueError, match=r"has no split column; give `split`"):
        run_files(tmp_path, [{"path": str(path), "mapping": {"question": "q", "answer": "a"}}])


GOOD = [
    {"question": "What is 1 plus 1?", "answer": "2", "split": "train"},
    {"question": "Which is larger, 4 or 9?", "answer": "9", "split": "test"},
    {"question": "What colour is the sky?", "answer": "blue", "split": "train"},
]


def test_every_bad_row_is_rejected_with_its_reason(tmp_path):
    """One bad row of each kind; each ends in rejected.parquet, counts add up."""
    lines = [json.dumps(r).encode() for r in GOOD]
    bad = [  # (line bytes, expected reason code, expected text in the reason)
        (json.dumps({"question": "  ", "answer": "1", "split": "train"}).encode(),
         "empty_question", "question is empty"),
        (json.dumps({"question": "What is 5 plus 5?", "split": "train"}).encode(),
         "missing_field", "answer is missing"),
        (b'{"question": "What is caf\xe9 plus 1?", "answer": "2", "split": "train"}',
         "invalid_utf8", "not valid UTF-8"),
        (json.dumps({"question": "What is\x07 3?", "answer": "3", "split": "train"}).encode(),
         "control_chars", "U+0007"),
        (json.dumps({"question": "Why " + "so " * 60 + "long?", "answer": "1",
                     "split": "train"}).encode(), "too_long", "max 100"),
        (json.dumps({"question": "what is 1 PLUS 1", "answer": "2", "split": "test"}).encode(),
         "duplicate", "same question as "),
        (json.dumps({"question": "How many?", "answer": "twelve", "answer_type": "number",
                     "split": "train"}).encode(), "unparseable_answer", "not a number"),
        (json.dumps({"question": "Pick one.", "answer": "E", "choices": ["a", "b", "c", "d"],
                     "split": "train"}).encode(), "unparseable_answer", "options A-D"),
        (json.dumps({"question": r"Solve $\begin{matrix}1\end{matrix}$", "answer": "1",
                     "split": "train"}).encode(), "unspeakable_latex", "environments"),
        (json.dumps({"question": "What is 6 plus 1?", "answer": "7", "split": "dev"}).encode(),
         "unknown_split", "split 'dev'"),
        (b'{"question": "broken json", ', "invalid_json", "column"),
        (b'["a list", "not an object"]', "invalid_json", "not an object"),
        (json.dumps({"question": "Is this a type?", "answer": "1", "answer_type": "date",
                     "split": "train"}).encode(), "bad_answer_type", "'date'"),
        (json.dumps({"question": "Choose.", "answer": "A", "choices": ["only one"],
                     "split": "train"}).encode(), "bad_choices", "1 choices"),
        (json.dumps({"question": {"text": "nested"}, "answer": "1", "split": "train"}).encode(),
         "bad_field", "question is a dict"),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines + [b""] + [b for b, _, _ in bad]) + b"\n")
    kept, rejected = run_files(tmp_path, [{"path": str(path)}], max_chars=100)

    assert len(kept) == len(GOOD)
    assert len(rejected) == len(bad)  # counts add up: every data line is kept or rejected
    first_bad_line = len(GOOD) + 2  # after the good lines and one blank line
    for k, (_, code, text) in enumerate(bad):
        row = rejected[rejected["origin"] == f"{path}:{first_bad_line + k}"]
        assert len(row) == 1, code
        reason = row["reason"].item()
        assert reason.startswith(code + ": ") and text in reason, (code, reason)
        assert row["source"].item() == "bad.jsonl"
    dup = rejected[rejected["reason"].str.startswith("duplicate")]["reason"].item()
    first = kept[kept["question"] == "What is 1 plus 1?"]
    assert first["id"].item() in dup and f"{path}:1" in dup
    # the raw row is kept, undecodable bytes shown as U+FFFD
    utf8 = rejected[rejected["reason"].str.startswith("invalid_utf8")]["row"].item()
    assert "caf\ufffd plus 1" in json.loads(utf8)


def test_bad_rows_in_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b"question,answer\n"
                         b"What is 2 plus 3?,5\n"
                         b"Too,many,fields\n"
                         b"What is caf\xe9?,1\n"
                         b",7\n")
    pq_path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": [b"What is 4 plus 4?", b"Bad \xff bytes", None],
                             "answer": ["8", "1", "2"]}), pq_path)
    kept, rejected = run_files(tmp_path, [{"path": str(csv_path), "split": "train"},
                                          {"path": str(pq_path), "split": "test"}])
    assert sorted(kept["answer"]) == ["5", "8"]
    reasons = dict(zip(rejected["origin"], rejected["reason"].str.split(":").str[0]))
    assert reasons == {
        f"{csv_path}:3": "malformed_row",
        f"{csv_path}:4": "invalid_utf8",
        f"{csv_path}:5": "missing_field",
        f"{pq_path}:2": "invalid_utf8",
        f"{pq_path}:3": "missing_field",
    }


def test_duplicates_across_sources_keep_the_first(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": "What is 3 plus 3?", "answer": "6"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": "What is three plus three", "answer": "6"}])
    kept, rejected = run_files(tmp_path, [{"path": str(a), "split": "train"},
                                          {"path": str(b), "split": "test"}])
    assert kept["origin"].tolist() == [f"{a}:1"]
    assert rejected["origin"].tolist() == [f"{b}:1"]
    assert rejected["reason"].item().startswith(f"duplicate: same question as {kept['id'].item()}")


def test_no_rejections_still_writes_an_empty_typed_table(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": "What is 3 plus 3?", "answer": "6"}])
    run_files(tmp_path, [{"path": str(a), "split": "train"}])
    table = pq.read_table(tmp_path / "qa" / "rejected.parquet")
    assert table.num_rows == 0
    assert table.schema.names == ["source", "origin", "reason", "row"]
    test = pq.read_table(tmp_path / "qa" / "test.parquet")
    assert test.num_rows == 0 and test.schema.field("choices").type == pa.list_(pa.string())
