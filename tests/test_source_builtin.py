"""Built-in questions: deterministic by seed, correct answers, disjoint splits."""

import re

import pandas as pd
import pytest

from cordflow import source
from cordflow.source import builtin
from cordflow.source.rows import dedup_key


def params(seed=7, **builtin_cfg):
    cfg = {"families": ["addition", "subtraction", "comparison", "choice"],
           "n_per_family": {"train": 40, "test": 12}}
    cfg.update(builtin_cfg)
    return {"seed": seed, "source": {"splits": ["train", "test"], "builtin": cfg}}


def run(tmp_path, name, p):
    out = tmp_path / name
    source.run(p, out)
    return out


def test_two_runs_are_byte_identical(tmp_path):
    a = run(tmp_path, "a", params())
    b = run(tmp_path, "b", params())
    for f in ("train.parquet", "test.parquet", "rejected.parquet"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_the_seed_changes_the_questions(tmp_path):
    a = source.read_qa(run(tmp_path, "a", params(seed=1)) / "train.parquet")
    b = source.read_qa(run(tmp_path, "b", params(seed=2)) / "train.parquet")
    assert set(a["question"]) != set(b["question"])


def test_sizes_and_no_overlap_between_splits(tmp_path):
    out = run(tmp_path, "a", params())
    train = source.read_qa(out / "train.parquet")
    test = source.read_qa(out / "test.parquet")
    assert len(train) == 4 * 40 and len(test) == 4 * 12
    assert pd.read_parquet(out / "rejected.parquet").empty
    families = train["origin"].str.split(":").str[1]
    assert families.value_counts().to_dict() == {
        f: 40 for f in ("addition", "subtraction", "comparison", "choice")}
    assert not set(train["question"]) & set(test["question"])
    assert not {dedup_key(s) for s in train["spoken"]} & {dedup_key(s) for s in test["spoken"]}
    assert (train["split"] == "train").all() and (test["split"] == "test").all()
    assert list(train["id"]) == sorted(train["id"])


def test_answers_are_right(tmp_path):
    out = run(tmp_path, "a", params(max_operand=12))
    df = pd.concat([source.read_qa(out / f"{s}.parquet") for s in ("train", "test")])
    for row in df.itertuples():
        a, b = (int(x) for x in re.findall(r"\d+", row.question)[:2])
        if "ubtract" in row.question:  # "Subtract b from a"
            a, b = b, a
        family = row.origin.split(":")[1]
        if family in ("addition", "subtraction"):
            assert row.answer_type == "number"
            assert int(row.answer) == (a + b if family == "addition" else a - b), row.question
        elif family == "comparison":
            want = max(a, b) if re.search(r"larger|bigger", row.question) else min(a, b)
            assert int(row.answer) == want, row.question
        else:
            assert row.answer_type == "choice" and len(row.choices) == 4
            value = a + b if " plus " in row.question else a - b
            assert row.choices["ABCD".index(row.answer)] == str(value), row.question
            assert row.choices == sorted(row.choices, key=int)
            assert row.question.endswith(
                ", ".join(f"{letter}: {c}" for letter, c in zip("ABCD", row.choices)))


def test_spoken_form_uses_words(tmp_path):
    out = run(tmp_path, "a", params())
    df = source.read_qa(out / "train.parquet")
    assert not df["spoken"].str.contains(r"\d").any()
    row = df[df["question"].str.startswith("What is") & df["choices"].isna()].iloc[0]
    a, b = re.findall(r"\d+", row["question"])[:2]
    from cordflow.source.spoken import number_words
    assert number_words(a) in row["spoken"] and number_words(b) in row["spoken"]


def test_every_answer_position_is_used(tmp_path):
    out = run(tmp_path, "a", params(families=["choice"], n_per_family={"train": 200}))
    df = source.read_qa(out / "train.parquet")
    counts = df["answer"].value_counts()
    assert set(counts.index) == set("ABCD") and counts.min() >= 30


def test_asking_for_more_than_a_family_has_fails_clearly(tmp_path):
    p = params(families=["addition"], max_operand=2, n_per_family={"train": 50, "test": 10})
    with pytest.raises(ValueError, match=r"only 54 distinct questions.*max_operand=2"):
        source.run(p, tmp_path / "x")


def test_a_split_not_in_splits_fails_clearly(tmp_path):
    p = params(n_per_family={"train": 5, "dev": 5})
    with pytest.raises(ValueError, match=r"n_per_family names splits \['dev'\]"):
        source.run(p, tmp_path / "x")


def test_family_sizes_match_the_schema_description():
    sizes = {f: len(builtin.family_items(f, 0, 9)) for f in builtin.FAMILIES}
    assert sizes == {"addition": 600, "subtraction": 600, "comparison": 540, "choice": 800}


def test_default_config_fits_the_families(repo, tmp_path):
    from cordflow.config import load_config, rule_params

    for name in ("config.yaml", "test.yaml"):
        cfg = load_config(repo / "config" / name)
        out = tmp_path / name
        source.run(rule_params("source", cfg), out)
        n = cfg["source"]["builtin"]["n_per_family"]
        k = len(cfg["source"]["builtin"]["families"])
        for split in cfg["source"]["splits"]:
            assert len(source.read_qa(out / f"{split}.parquet")) == k * n[split]


def test_test_items_ask_facts_that_train_teaches(tmp_path):
    """Same distribution, new questions: every test fact (3 + 4, larger of 2 and 9, ...)
    is in train under another phrasing, so high held-out text accuracy is learnable."""
    out = run(tmp_path, "a", params(n_per_family={"train": 300, "test": 60}))

    def facts(df):
        found = set()
        for row in df.itertuples():
            a, b = sorted(int(x) for x in re.findall(r"\d+", row.question)[:2])
            kind = re.search(r"plus|minus|sum|add|take away|subtract|larger|bigger|smaller|less",
                             row.question.lower()).group()
            found.add((row.origin.split(":")[1], kind in ("plus", "sum", "add"),
                       kind in ("larger", "bigger"), a, b))
        return found

    train = facts(source.read_qa(out / "train.parquet"))
    test = facts(source.read_qa(out / "test.parquet"))
    assert test <= train
