"""`python -m cordflow tts-plan / tts-shard / tts-gather` as the rules call them."""

import json
import os
import subprocess
import sys

from cordflow import source
from cordflow.tts import read_manifest


def cordflow(repo, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    return subprocess.run([sys.executable, "-m", "cordflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plan_shards_gather_end_to_end(repo, tmp_path):
    source.run({"seed": 2, "source": {"builtin": {"families": ["addition", "comparison"],
                                                  "n_per_family": {"train": 3, "test": 2}}}},
               tmp_path / "qa")
    params = json.dumps({"seed": 1234, "tts": {"n_shards": 2, "train_takes": 2}})
    res = cordflow(repo, "tts-plan", "--params", json.dumps({"tts": {"n_shards": 2}}),
                   "--qa", "qa/train.parquet", "--qa", "qa/test.parquet",
                   "--out-dir", "audio/plan", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "10 items into 2 shards" in res.stderr
    for k in (0, 1):
        res = cordflow(repo, "tts-shard", "--params", params, "--plan",
                       f"audio/plan/{k}.parquet", "--out", f"audio/shards/{k}.parquet",
                       "--store", "audio/store", "--threads", "2", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert f"tts shard {k}: " in res.stderr and "100%" in res.stderr  # progress bar
        assert "reused 0)" in res.stderr
    res = cordflow(repo, "tts-gather", "--params", "{}", "--shards", "audio/shards/0.parquet",
                   "--shards", "audio/shards/1.parquet", "--out", "audio/manifest.parquet",
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "tts-gather: 16 clips (10 items) in = 16 ok + 0 flagged + 0 rejected" in res.stderr
    manifest = read_manifest(tmp_path / "audio" / "manifest.parquet")
    assert sorted(manifest["split"]) == ["test"] * 4 + ["train"] * 12  # 2 takes per train item
    assert all((tmp_path / p).is_file() for p in manifest["path"])
    for name in ("plan", "shards/0.parquet", "manifest.parquet", "rejected.parquet"):
        prov = json.loads((tmp_path / "audio" / f"{name}.prov.json").read_text())
        assert prov["rule"].startswith("tts_")


def test_an_unknown_voice_fails_naming_the_config_key(repo, tmp_path):
    source.run({"seed": 2, "source": {"builtin": {"families": ["addition"],
                                                  "n_per_family": {"train": 2, "test": 0}}}},
               tmp_path / "qa")
    res = cordflow(repo, "tts-plan", "--params", '{"tts": {"n_shards": 1}}',
                   "--qa", "qa/train.parquet", "--out-dir", "plan", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    params = {"seed": 1, "tts": {"voices": {"train": ["en-us", "en-klingon"]}}}
    res = cordflow(repo, "tts-shard", "--params", json.dumps(params), "--plan",
                   "plan/0.parquet", "--out", "0.parquet", "--store", "store", cwd=tmp_path)
    assert res.returncode != 0
    assert "tts.voices.train[1]" in res.stderr and "en-klingon" in res.stderr
    assert not (tmp_path / "0.parquet").exists() and not (tmp_path / "store").exists()


def test_an_invalid_tts_config_names_the_key(repo, tmp_path):
    res = cordflow(repo, "tts-plan", "--params", '{"tts": {"n_shards": 0}}', "--qa", "x",
                   "--out-dir", "plan", cwd=tmp_path)
    assert res.returncode != 0 and "tts/n_shards" in res.stderr
