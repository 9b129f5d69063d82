import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def run_cordflow(repo: Path, *args: str, cwd: Path, timeout: int = 600):
    """`python -m cordflow ...` as a rule runs it (a subprocess, no shell)."""
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    return subprocess.run([sys.executable, "-m", "cordflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def spoken(repo, tmp_path_factory) -> Path:
    """A small spoken QA set made by the real stages (source -> tts plan/shard/gather):
    results/qa/{train,test}.parquet and results/audio/manifest.parquet under the folder."""
    import json

    work = tmp_path_factory.mktemp("spoken")
    params = {"seed": 7, "source": {"builtin": {"families": ["addition", "choice"],
                                                "n_per_family": {"train": 16, "test": 8}}},
              "tts": {"n_shards": 1}}
    steps = [
        ["source", "--params", json.dumps(params), "--out-dir", "results/qa"],
        ["tts-plan", "--params", json.dumps({"tts": {"n_shards": 1}}), "--qa",
         "results/qa/train.parquet", "--qa", "results/qa/test.parquet", "--out-dir",
         "results/audio/plan"],
        ["tts-shard", "--params", json.dumps({"seed": 7}), "--plan", "results/audio/plan/0.parquet",
         "--out", "results/audio/shards/0.parquet", "--store", "results/audio/store"],
        ["tts-gather", "--params", "{}", "--shards", "results/audio/shards/0.parquet", "--out",
         "results/audio/manifest.parquet"],
    ]
    for args in steps:
        res = run_cordflow(repo, *args, cwd=work)
        assert res.returncode == 0, f"{args[0]} failed:\n{res.stderr[-3000:]}"
    return work
