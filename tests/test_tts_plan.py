"""Shard plans: assignment by id hash, stable; a new question changes one plan only."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from cordflow import source
from cordflow.tts import plan
from cordflow.tts.schema import read_plan

N = 4


def make_qa(tmp_path, name, extra=None):
    params = {"seed": 5, "source": {"builtin": {"n_per_family": {"train": 10, "test": 3}}}}
    if extra:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in extra))
        params["source"]["files"] = [{"path": str(path), "split": "train"}]
    out = tmp_path / name
    source.run(params, out)
    return [out / "train.parquet", out / "test.parquet"]


def test_every_item_lands_in_exactly_one_plan(tmp_path):
    qa = make_qa(tmp_path, "qa")
    plan.run({"tts": {"n_shards": N}}, qa, tmp_path / "plan")
    plans = [read_plan(tmp_path / "plan" / f"{k}.parquet") for k in range(N)]
    items = pd.concat([source.read_qa(p) for p in qa])
    assert sum(len(p) for p in plans) == len(items)
    assert set(pd.concat(plans)["id"]) == set(items["id"])
    for k, p in enumerate(plans):
        assert all(plan.shard_of(i, N) == k for i in p["id"])
        assert list(p.columns) == ["id", "split", "spoken"]
    assert all(len(p) > 0 for p in plans)  # 39 items spread over 4 shards


def test_shard_assignment_is_the_same_in_another_process(repo):
    ids = [f"{i:016x}" for i in range(40)]
    code = (f"from cordflow.tts.plan import shard_of; "
            f"print(' '.join(str(shard_of(i, 7)) for i in {ids!r}))")
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"), PYTHONHASHSEED="3")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(plan.shard_of(i, 7)) for i in ids]


def test_adding_a_question_changes_one_plan_and_leaves_the_others_byte_identical(tmp_path):
    before = make_qa(tmp_path, "before")
    after = make_qa(tmp_path, "after", [{"question": "What is 20 plus 1?", "answer": "21"}])
    plan.run({"tts": {"n_shards": N}}, before, tmp_path / "p1")
    plan.run({"tts": {"n_shards": N}}, after, tmp_path / "p2")
    changed = [k for k in range(N) if (tmp_path / "p1" / f"{k}.parquet").read_bytes()
               != (tmp_path / "p2" / f"{k}.parquet").read_bytes()]
    assert len(changed) == 1
    new = set(read_plan(tmp_path / "p2" / f"{changed[0]}.parquet")["id"]) - set(
        read_plan(tmp_path / "p1" / f"{changed[0]}.parquet")["id"])
    assert len(new) == 1 and plan.shard_of(new.pop(), N) == changed[0]


def test_rerun_writes_identical_bytes_and_empty_shards_exist(tmp_path):
    qa = make_qa(tmp_path, "qa")
    plan.run({"tts": {"n_shards": 64}}, qa, tmp_path / "a")
    plan.run({"tts": {"n_shards": 64}}, qa, tmp_path / "b")
    for k in range(64):
        assert (tmp_path / "a" / f"{k}.parquet").read_bytes() == (
            tmp_path / "b" / f"{k}.parquet").read_bytes()
    assert any(len(read_plan(tmp_path / "a" / f"{k}.parquet")) == 0 for k in range(64))


def test_an_id_in_two_tables_is_an_error(tmp_path):
    qa = make_qa(tmp_path, "qa")
    with pytest.raises(ValueError, match="more than one QA table"):
        plan.run({"tts": {"n_shards": N}}, [qa[0], qa[0]], tmp_path / "plan")
    assert not (tmp_path / "plan").exists()
