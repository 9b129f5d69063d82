"""The test DAG on preset qwen2-audio-shape, end to end (source to gap table), as a user runs
it: ``snakemake --cores 2 --configfile config/test.yaml config/presets/qwen2-audio-shape.yaml``
in a copy of the checkout (tests/dagrun.py). Every model stage then runs Qwen2-Audio's
real tokenizer, 156,032-row vocabulary (the full-vocabulary KL of cord included), chat
template and 30-second audio window. About 3 minutes on 2 idle cores (measured: 168 s of
CPU against 130 s for the tiny test DAG; 5-10 min of wall time on a machine shared 4 ways).
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from dagrun import copy_checkout, parse_jobs, snakemake

from cordflow import models

CONFIG = ["config/test.yaml", "config/presets/qwen2-audio-shape.yaml"]
MODELS = ["base", "warmup", "sft", "cord"]  # config/test.yaml: train.methods [sft, cord]
TIMEOUT_S = 900  # ~3 min on 2 idle cores; allow for a loaded machine


@pytest.mark.slow
def test_shape_preset_runs_the_test_dag(tmp_path):
    run = copy_checkout(tmp_path / "run")
    t0 = time.perf_counter()
    res = snakemake(run, "--cores", "2", "--configfile", *CONFIG, timeout_s=TIMEOUT_S)
    seconds = time.perf_counter() - t0
    out = res.stdout + res.stderr
    print(f"qwen2-audio-shape test DAG: {seconds:.0f} s")
    assert res.returncode == 0, f"snakemake failed after {seconds:.0f} s:\n{out[-6000:]}"
    assert {j.split("[")[0] for j in parse_jobs(out)} >= {"base", "warmup", "train", "evaluate",
                                                          "summarize"}
    results = run / "results"
    for m in MODELS:  # every model stage ran on the real vocabulary, window and tokenizer
        folder = results / "models" / m
        config = json.loads((folder / "config.json").read_text())
        assert config["text_config"]["vocab_size"] == models.QWEN2_AUDIO_VOCAB_ROWS, m
        assert config["audio_token_index"] == 151646, m
        assert config["audio_config"]["max_source_positions"] == 1500, m
        pre = json.loads((folder / "processor_config.json").read_text())
        assert pre["feature_extractor"]["chunk_length"] == 30, m
        assert pre["feature_extractor"]["feature_size"] == 128, m
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        assert tok["tokenizer_class"] == "Qwen2Tokenizer", m
    # cord's token-level term ran the full-vocabulary reverse KL
    log = [json.loads(line) for line in (results / "models" / "cord" / "train_log.jsonl")
           .read_text().splitlines()]
    kls = [r["kl_mean"] for r in log if "kl_mean" in r]
    assert kls and all(v >= 0 for v in kls), log[-1]
    gap = pd.read_csv(results / "eval" / "gap_table.csv")
    assert sorted(gap.loc[gap["benchmark"] == "builtin", "model"]) == sorted(MODELS)
    for m in MODELS:
        table = pd.read_parquet(results / "eval" / m / "builtin.parquet")
        assert len(table) > 0, m
