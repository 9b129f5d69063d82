"""`python -m cordflow source` as the rule calls it (a subprocess, no shell)."""

import json
import os
import subprocess
import sys

import pandas as pd

from cordflow import source


def cordflow(repo, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    return subprocess.run([sys.executable, "-m", "cordflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_tables_provenance_and_logs_counts(repo, tmp_path):
    qa = tmp_path / "extra.jsonl"
    qa.write_text(json.dumps({"question": "What is 20 plus 1?", "answer": "21"}) + "\n"
                  + json.dumps({"question": "", "answer": "1"}) + "\n")
    params = {"seed": 3, "source": {
        "splits": ["train", "test"],
        "builtin": {"families": ["addition"], "n_per_family": {"train": 6, "test": 2}},
        "files": [{"path": "extra.jsonl", "split": "test"}],
    }}
    res = cordflow(repo, "source", "--params", json.dumps(params), "--out-dir", "out",
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    train, test = (source.read_qa(out / f"{s}.parquet") for s in ("train", "test"))
    assert len(train) == 6 and len(test) == 3
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert rejected[["origin", "reason"]].values.tolist() == [
        ["extra.jsonl:2", "empty_question: question is empty"]]
    assert "10 rows in = 9 kept + 1 rejected" in res.stderr
    for name in ("train", "test", "rejected"):
        prov = json.loads((out / f"{name}.parquet.prov.json").read_text())
        assert prov["rule"] == "source"
    assert "extra.jsonl" in (out / "test.parquet.prov.json").read_text()


def test_cli_rejects_an_invalid_config_with_the_key_path(repo, tmp_path):
    params = {"seed": 3, "source": {"builtin": {"max_operand": 500}}}
    res = cordflow(repo, "source", "--params", json.dumps(params), "--out-dir", "out",
                   cwd=tmp_path)
    assert res.returncode != 0
    assert "source/builtin/max_operand" in res.stderr
    assert not (tmp_path / "out" / "train.parquet").exists()
