"""The whole DAG, end to end, as a user runs it: ``snakemake --cores 2 --configfile
config/test.yaml`` (+ one local QA file, tests/dagrun.py) in a copy of the checkout.

It completes; a second run runs nothing; every file under results/ has a provenance
record; and the workflow is lint- and format-clean (``make lint``). What a change reruns
is tests/test_reruns.py.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from dagrun import BIN, LOCAL_QA, LOCAL_ROWS, REPO, completed_run, snakemake  # noqa: F401

from cordflow.audit import audit_all
from cordflow.config import load_config

ALL_RULES = {"source", "tts_plan", "tts_shard", "tts_gather", "base", "warmup", "train",
             "evaluate", "summarize", "provenance_summary"}
MODELS = ["base", "warmup", "sft", "cord"]  # config/test.yaml: train.methods [sft, cord]


@pytest.mark.slow
def test_workflow_runs_end_to_end(completed_run):
    first = completed_run.first
    assert first["rc"] == 0, f"snakemake failed:\n{first['tail']}"
    assert {job.split("[")[0] for job in first["jobs"]} == ALL_RULES
    results = completed_run.path / "results"
    test_cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    splits = test_cfg["source"]["splits"]
    qa = pd.concat([pd.read_parquet(results / "qa" / f"{s}.parquet") for s in splits])
    local = qa[qa["origin"].str.startswith(f"{LOCAL_QA}:")]
    assert sorted(local["question"]) == sorted(r["question"] for r in LOCAL_ROWS)
    # every question was spoken (or kept aside with a reason): a manifest row per take,
    # tts.train_takes of them for a train question, one for any other, and one more per
    # voicing of its split (config.yaml's `neural`: the test questions in a Piper voice)
    cfg = load_config(REPO / "config" / "config.yaml", overrides=test_cfg)
    n_takes = cfg["tts"]["train_takes"]
    voicings = cfg["tts"]["voicings"]
    manifest = pd.read_parquet(results / "audio" / "manifest.parquet")
    takes = manifest.groupby("id")["take"].apply(list).to_dict()
    assert takes == {i: list(range((n_takes if s == "train" else 1)
                                   + sum(s in v["splits"] for v in voicings.values())))
                     for i, s in zip(qa["id"], qa["split"])}
    for name, v in voicings.items():
        clips = manifest[manifest["voicing"] == name]
        assert len(clips) and set(clips["split"]) <= set(v["splits"])
        assert (clips["backend"] == v["backend"]).all() and clips["voice"].isin(v["voices"]).all()
    gap = pd.read_csv(results / "eval" / "gap_table.csv")
    rows = gap[gap["benchmark"] == "builtin"].set_index("model")
    assert sorted(rows.index) == sorted(MODELS)
    n_test = int((qa["split"] == "test").sum())
    assert ((rows["n"] > 0) & (rows["n"] <= n_test)).all(), rows["n"]
    for m in MODELS:
        table = pd.read_parquet(results / "eval" / m / "builtin.parquet")
        assert len(table) > 0 and set(table["id"]) <= set(qa["id"])
    # the audio-only audio_skill benchmark (like MMAU): an audio accuracy for every model,
    # no text accuracy nor gap, on the test clips' pitch and rate (two questions a clip)
    skill = gap[gap["benchmark"] == "audio_skill"].set_index("model")
    assert sorted(skill.index) == sorted(MODELS)
    assert skill["text_acc"].isna().all() and skill["gap"].isna().all()
    assert skill["audio_acc"].between(0, 100).all()
    n_clips = int((manifest["split"].eq("test") & manifest["voicing"].eq("main")).sum())
    assert ((skill["n"] > 0) & (skill["n"] <= 2 * n_clips)).all(), skill["n"]
    assert (results / "eval" / "gap_plot.png").stat().st_size > 0
    summary = pd.read_csv(results / "provenance" / "summary.csv")
    assert ALL_RULES - {"provenance_summary"} <= set(summary["rule"])


@pytest.mark.slow
def test_second_run_runs_nothing(completed_run):
    second = completed_run.require().second
    assert second["rc"] == 0, second["tail"]
    assert second["jobs"] == [], f"the second run ran jobs:\n{second['tail']}"
    assert "Nothing to be done" in second["tail"]


@pytest.mark.slow
def test_every_result_has_a_provenance_record(completed_run):
    results = completed_run.require().path / "results"
    problems = audit_all(results)
    assert problems == [], "\n".join(map(str, problems))
    records = list(results.rglob("*.prov.json"))
    assert {json.loads(r.read_text())["rule"] for r in records} == ALL_RULES


def test_snakemake_lint_is_clean():
    res = snakemake(REPO, "--lint")
    assert res.returncode == 0, f"snakemake --lint:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"


def test_snakefmt_check_is_clean():
    import subprocess

    res = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"snakefmt --check (fix: snakefmt Snakefile rules/):\n{res.stderr}"


def test_ruff_check_is_clean():
    import subprocess

    res = subprocess.run([str(BIN / "ruff"), "check", "workflow", "tests", "benchmarks"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"ruff check (see `make lint`):\n{res.stdout[-4000:]}"
