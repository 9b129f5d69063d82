"""Hugging Face presets from tiny fixture datasets built here (nothing is downloaded)."""

import pandas as pd
import pytest

from cordflow import source
from cordflow.source.hf import NotStaged, after_hashes, last_boxed

datasets = pytest.importorskip("datasets")


def run_hf(tmp_path, entries, splits=("train", "test")):
    out = tmp_path / "qa"
    params = {"seed": 1, "source": {"splits": list(splits), "builtin": {"enabled": False},
                                    "hf": entries}}
    source.run(params, out)
    kept = pd.concat([source.read_qa(out / f"{s}.parquet") for s in splits])
    return kept, pd.read_parquet(out / "rejected.parquet")


@pytest.mark.parametrize(
    "solution, boxed",
    [
        (r"So $x = \boxed{5}$.", "5"),
        (r"First \boxed{1}, finally \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"The answer is \boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"$\boxed {12}$", "12"),
        (r"\fbox{7}", "7"),
        (r"no box here", None),
        (r"\boxed{\frac{1}{2}", None),
    ],
)
def test_last_boxed(solution, boxed):
    assert last_boxed(solution) == boxed


def test_after_hashes():
    assert after_hashes("She pays 2 * 3 = 6 dollars.\n#### 1,206") == "1206"
    assert after_hashes("no final answer") is None


NUMINA = {
    "train": {
        "problem": [
            r"What is $\frac{1}{2} + \frac{1}{2}$?",
            r"Compute $2^{3}$.",
            r"Find $x$ if $x^2 = 4$ and $x > 0$.",
            r"Solve $\begin{cases} x = 1 \\ y = 2 \end{cases}$",
            "What is the answer?",
            r"Simplify $\frac{2}{4}$.",
        ],
        "solution": [
            r"It is $\boxed{1}$.",
            r"$2^3 = \boxed{8}$",
            r"Since $x>0$, $x = \boxed{2}$.",
            r"$\boxed{(1, 2)}$",
            r"We cannot tell.",
            r"$\frac{2}{4} = \boxed{\frac{1}{2}}$",
        ],
        "source": ["synthetic_math"] * 6,
    },
    "test": {"problem": [r"What is $3 \times 4$?"], "solution": [r"$\boxed{12}$"],
             "source": ["amc"]},
}


def save_dict(path, data):
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in data.items()}).save_to_disk(
        str(path))
    return str(path)


def test_numinamath_from_save_to_disk(tmp_path):
    path = save_dict(tmp_path / "numina", NUMINA)
    kept, rejected = run_hf(tmp_path, [{"preset": "numinamath", "path": path}])
    rows = kept.set_index("origin")
    one = rows.loc[f"hf:{path}:train:0"]
    assert one["answer"] == "1" and one["answer_type"] == "number"
    assert one["spoken"] == "What is one half plus one half?"
    assert one["source"] == "numinamath" and one["split"] == "train"
    assert rows.loc[f"hf:{path}:train:1", "answer"] == "8"
    # a boxed fraction is a number (issue 16): 1/2 as its finite decimal
    assert rows.loc[f"hf:{path}:train:5", ["answer", "answer_type"]].tolist() == [
        "0.5", "number"]
    assert rows.loc[f"hf:{path}:test:0", ["answer", "split"]].tolist() == ["12", "test"]
    reasons = dict(zip(rejected["origin"], rejected["reason"]))
    assert reasons[f"hf:{path}:train:3"].startswith("unspeakable_latex")
    assert reasons[f"hf:{path}:train:4"].startswith("unparseable_answer: no complete \\boxed")
    assert len(kept) + len(rejected) == 7


def test_numinamath_from_a_hub_style_parquet_folder_with_limit(tmp_path):
    folder = tmp_path / "NuminaMath-CoT" / "data"
    folder.mkdir(parents=True)
    for split, data in NUMINA.items():
        pd.DataFrame(data).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    path = str(tmp_path / "NuminaMath-CoT")
    kept, rejected = run_hf(tmp_path, [{"preset": "numinamath", "path": path, "limit": 2,
                                        "splits": {"train": "train"}}])
    assert sorted(kept["answer"]) == ["1", "8"] and rejected.empty
    assert (kept["split"] == "train").all()


def test_gsm8k_from_a_config_folder(tmp_path):
    main = tmp_path / "gsm8k" / "main"
    main.mkdir(parents=True)
    pd.DataFrame({
        "question": ["Janet has $3 and earns $1,200. How much does she have?",
                     "How many legs do 2 cats have?"],
        "answer": ["3 + 1200 = 1203\n#### 1,203", "2 * 4 = 8 legs"],
    }).to_parquet(main / "train-00000-of-00001.parquet")
    pd.DataFrame({"question": ["What is 5 take away 2?"], "answer": ["#### 3"]}).to_parquet(
        main / "test-00000-of-00001.parquet")
    path = str(tmp_path / "gsm8k")
    kept, rejected = run_hf(tmp_path, [{"preset": "gsm8k", "path": path, "name": "main"}])
    rows = kept.set_index("origin")
    janet = rows.loc[f"hf:{path}:train:0"]
    assert janet["answer"] == "1203" and janet["answer_type"] == "number"
    assert janet["spoken"] == ("Janet has three dollars and earns one thousand, two hundred "
                               "dollars. How much does she have?")
    assert rows.loc[f"hf:{path}:test:0", ["answer", "split"]].tolist() == ["3", "test"]
    assert rejected["origin"].tolist() == [f"hf:{path}:train:1"]
    assert rejected["reason"].item().startswith("unparseable_answer: no '####'")


def test_openbookqa_choices_and_labels(tmp_path):
    data = {
        "id": ["7-980", "7-584", "9-743"],
        "question_stem": ["The sun is responsible for", "What is made of metal?",
                          "Which is a mammal?"],
        "choices": [
            {"text": ["puppies learning new tricks", "plants sprouting",
                      "the moon being dark", "fish swimming"], "label": ["A", "B", "C", "D"]},
            {"text": ["a spoon", "a leaf", "a rock", "a cloud"], "label": ["1", "2", "3", "4"]},
            {"text": ["a whale", "a shark", "a trout", "a frog"], "label": ["A", "B", "C", "D"]},
        ],
        "answerKey": ["B", "1", "F"],
    }
    path = save_dict(tmp_path / "obqa", {"test": data})
    kept, rejected = run_hf(tmp_path, [{"preset": "openbookqa", "path": path}])
    rows = kept.set_index("origin")
    sun = rows.loc[f"hf:{path}:test:0"]
    assert sun["answer"] == "B" and sun["answer_type"] == "choice"
    assert sun["choices"] == data["choices"][0]["text"]
    assert sun["question"] == ("The sun is responsible for A: puppies learning new tricks, "
                               "B: plants sprouting, C: the moon being dark, D: fish swimming")
    assert rows.loc[f"hf:{path}:test:1", "answer"] == "A"  # label "1" is the first option
    assert rejected["origin"].tolist() == [f"hf:{path}:test:2"]
    assert rejected["reason"].item().startswith("unparseable_answer")


def test_custom_mapping_and_split_map(tmp_path):
    path = save_dict(tmp_path / "custom", {"validation": {
        "prompt": ["What is 9 minus 4?"], "target": ["5"]}})
    kept, _ = run_hf(tmp_path, [{
        "preset": "custom", "path": path, "splits": {"validation": "test"},
        "source_name": "mine", "mapping": {"question": "prompt", "answer": "target"},
    }])
    assert kept[["answer", "split", "source"]].values.tolist() == [["5", "test", "mine"]]


def test_a_dataset_split_outside_splits_is_rejected_not_lost(tmp_path):
    path = save_dict(tmp_path / "custom", {"validation": {
        "question": ["What is 9 minus 4?"], "answer": ["5"]}})
    kept, rejected = run_hf(tmp_path, [{"preset": "custom", "path": path}])
    assert kept.empty
    assert rejected["reason"].item().startswith("unknown_split: split 'validation'")


def test_a_dataset_that_is_not_staged_fails_fast_saying_what_to_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(NotStaged) as e:
        run_hf(tmp_path, [{"preset": "gsm8k", "path": "openai/gsm8k", "name": "main",
                           "cache_dir": str(tmp_path / "empty-cache")}])
    msg = str(e.value)
    assert "source.hf[0]" in msg and "not staged" in msg
    assert "datasets.load_dataset('openai/gsm8k', 'main').save_to_disk(" in msg
    assert "HF_DATASETS_CACHE" in msg
    assert not (tmp_path / "qa").exists()  # failed before writing anything


def test_a_missing_column_fails_fast(tmp_path):
    path = save_dict(tmp_path / "custom", {"train": {"q": ["x"], "answer": ["1"]}})
    with pytest.raises(ValueError, match=r"column 'question' \(mapping.question\) is not in"):
        run_hf(tmp_path, [{"preset": "custom", "path": path}])
