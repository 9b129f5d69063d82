"""Config values that name something are checked when the DAG is built (issue 16 section 1):
a split, a voice, a model, a method, a judge's keys, a local file or a staged dataset that
does not exist stops the run before any job, naming the key, the value and what is
allowed; schema errors come in the same compact form, never as a dump of the schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from cordflow.config import (
    ConfigError,
    check_config,
    deep_merge,
    schema_problems,
    validate_and_check,
)


@pytest.fixture(scope="module")
def default(repo) -> dict:
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


def problems(default: dict, *layers: dict) -> list[str]:
    """The problems of the default config with ``layers`` merged over it, as the DAG sees
    them (schema first, then what the values name)."""
    config = copy.deepcopy(default)
    for layer in layers:
        config = deep_merge(config, layer)
    try:
        validate_and_check(config)
    except ConfigError as e:
        return [line.strip() for line in str(e).splitlines()[1:]]
    return []


def one(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0].strip()


@pytest.mark.parametrize("layer", [
    {},
    "config/test.yaml",
    "config/presets/ablations.yaml",
    "config/presets/vllm.yaml",
], ids=["default", "test", "ablations", "vllm"])
def test_the_shipped_configs_pass(repo, default, layer):
    if isinstance(layer, str):
        layer = yaml.safe_load((repo / layer).read_text())
    assert problems(default, layer) == []


def test_a_held_out_split_typo_stops_the_run(default):
    """`tset` used to be accepted: the test split was then spoken in the training voices."""
    assert one(problems(default, {"tts": {"heldout_splits": ["tset"]}})) == (
        "config key 'tts.heldout_splits[0]': 'tset' is not a source split; allowed: the "
        "splits of source.splits (train, dev, test)")


def test_split_names_elsewhere_are_checked(default):
    found = problems(default, {
        "evaluate": {"benchmarks": [{"name": "b", "kind": "qa_split", "split": "tets"}]},
        "source": {"files": [{"path": "config/config.yaml", "split": "trian"}]},
    })
    assert any(p.startswith("config key 'evaluate.benchmarks[0].split': 'tets' is not a "
                            "source split") for p in found), found
    assert any(p.startswith("config key 'source.files[0].split': 'trian'") for p in found)
    dup = {"name": "b", "kind": "qa_split", "split": "test"}
    assert "earlier benchmark" in one(problems(default, {"evaluate": {"benchmarks": [dup, dup]}}))


def test_the_acoustic_items_are_checked(default):
    """train.kd.acoustic_split names a source split; train.kd.acoustic_skills needs the
    base's skill items (base.skills.items > 0); both together are fine."""
    kd = {"methods": ["kd_source"], "kd": {"acoustic_split": "tset"}}
    assert one(problems(default, {"train": kd})) == (
        "config key 'train.kd.acoustic_split': 'tset' is not a source split; allowed: the "
        "splits of source.splits (train, dev, test)")
    skills = {"train": {"methods": ["kd_source"], "kd": {"acoustic_skills": True}}}
    assert problems(default, skills) == []
    assert problems(default, skills, {"train": {"kd": {"acoustic_split": "dev"}}}) == []
    assert one(problems(default, skills, {"base": {"skills": {"items": 0}}})) == (
        "config key 'train.kd.acoustic_skills': is true but base.skills.items is 0 (no "
        "audio-skill items: the base learns none); allowed: base.skills.items > 0, or "
        "acoustic_skills false")


def test_the_base_is_chosen_on_a_split_of_the_run(default):
    """A built base checks its text bar on base.text.bar_split (dev by default, never a
    benchmark's split unless asked): a split the run does not make stops it; without a dev
    split the user is told to add one or name another; a staged base reads none."""
    assert one(problems(default, {"base": {"text": {"bar_split": "dve"}}})) == (
        "config key 'base.text.bar_split': 'dve' is not a source split; allowed: the "
        "splits of source.splits (train, dev, test)")
    no_dev = copy.deepcopy(default)
    no_dev["source"]["splits"] = ["train", "test"]
    del no_dev["source"]["builtin"]["n_per_family"]["dev"]
    no_dev["evaluate"]["benchmarks"] = [b for b in no_dev["evaluate"]["benchmarks"]
                                        if b.get("split") != "dev"]
    assert one(problems(no_dev)) == (
        "config key 'base.text.bar_split': 'dev' is not a source split; allowed: the "
        "splits of source.splits (train, test)")
    assert problems(no_dev, {"base": {"text": {"bar_split": "test"}}}) == []
    staged = {"model": {"preset": "qwen2-audio-7b"}}
    assert not [p for p in problems(no_dev, staged) if "bar_split" in p]


def test_the_reference_model_must_be_a_model_of_the_run(default):
    assert one(problems(default, {"summarize": {"reference": "cord_a2_b3"}})) == (
        "config key 'summarize.reference': 'cord_a2_b3' is not a model of this run; allowed: "
        "base, warmup, sft, forward_kl, cord (base, warmup and train.methods)")


@pytest.mark.parametrize("judge, key, words", [
    ({"kind": "llm"}, "train.judge", "exactly one of model_path"),
    ({"kind": "llm", "model_path": "nowhere", "base_url": "http://x:8000/v1"},
     "train.judge", "it has both"),
    ({"kind": "llm", "base_url": "http://x:8000/v1"}, "train.judge.model", "not set"),
    ({"kind": "llm", "base_url": "x:8000", "model": "m"}, "train.judge.base_url", "http(s)"),
    ({"kind": "llm", "model_path": "no/such/judge"}, "train.judge.model_path", "config.json"),
])
def test_a_judge_without_its_required_keys_stops_the_run(default, judge, key, words):
    found = one(problems(default, {"train": {"judge": judge}}))
    assert found.startswith(f"config key '{key}':") and words in found
    # only where a method uses the judge (sft does not)
    assert problems(default, {"train": {"judge": judge, "methods": ["sft"]}}) == []


def test_missing_local_files_stop_the_run(default, tmp_path):
    found = one(problems(default, {"source": {"files": [{"path": str(tmp_path / "qa.jsonl")}]}}))
    assert found.startswith(f"config key 'source.files[0].path': {tmp_path / 'qa.jsonl'} is "
                            "not a file")
    (tmp_path / "qa.jsonl").write_text('{"question": "q?", "answer": "1"}\n')
    assert problems(default, {"source": {"files": [{"path": str(tmp_path / "qa.jsonl")}]}}) == []


@pytest.mark.parametrize("entry, staged", [
    ({"name": "mmsu", "kind": "voicebench", "path": "data/nowhere", "subset": "mmsu"},
     "datasets.load_dataset('hlt-lab/voicebench', 'mmsu')"),
    ({"name": "mmau", "kind": "mmau", "path": "data/mmau/mmau-test-mini.json"},
     "https://github.com/Sakshi113/MMAU"),
])
def test_an_unstaged_benchmark_stops_the_run(default, entry, staged, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    found = one(problems(default, {"evaluate": {"benchmarks": [entry]}}))
    assert found.startswith(f"config key 'evaluate.benchmarks[0].path': the {entry['kind']} "
                            f"dataset '{entry['path']}' is not staged") and staged in found
    # a dataset in the datasets cache counts as staged
    (tmp_path / "hf" / "datasets" / "hlt-lab___voicebench").mkdir(parents=True)
    cached = {**entry, "path": "hlt-lab/voicebench"}
    assert problems(default, {"evaluate": {"benchmarks": [cached]}}) == []


def test_a_real_preset_without_staged_weights_stops_the_run(default, tmp_path):
    found = one(problems(default, {"model": {"preset": "qwen2-audio-7b"}}))
    assert found.startswith("config key 'model.path': is not set; preset 'qwen2-audio-7b' "
                            "loads staged weights only")
    found = one(problems(default, {"model": {"preset": "qwen2-audio-7b",
                                             "path": str(tmp_path / "qwen")}}))
    assert f"{tmp_path / 'qwen'} is not a folder" in found


def test_voices_are_checked_against_the_backend(default):
    pytest.importorskip("espeakng_loader")
    found = one(problems(default, {"tts": {"voices": {"heldout": ["en-gb-x-rp", "en-nope"]}}}))
    assert found.startswith("config key 'tts.voices.heldout[1]': espeak has no voice "
                            "'en-nope' (English ones: ")


def test_a_held_out_voice_also_in_training_stops_the_run(default):
    found = one(problems(default, {"tts": {"voices": {"heldout": ["en-us", "en-us-nyc"]}}}))
    assert "share en-us: held-out voices must be unseen in training" in found


def test_more_takes_than_training_voices_stops_the_run(default):
    # the default's training set: 4 accents x 1 variant x 2 pitches x 2 rates = 16 voices
    found = one(problems(default, {"tts": {"train_takes": 17}}))
    assert found == ("config key 'tts.train_takes' is 17 but 'tts.voices.train' gives 16 "
                     "voices; lower it or add voices (names, variants, pitch, rate)")


def test_every_problem_is_listed_at_once(default):
    found = problems(default, {"tts": {"heldout_splits": ["tset"]},
                               "summarize": {"reference": "nope"}})
    assert len(found) == 2


def test_schema_errors_are_compact_and_say_what_is_allowed(default):
    config = deep_merge(default, {"tts": {"nshards": 3, "voices": {"pitch": [300]}}})
    found = schema_problems(config)
    assert len(found) == 2 and found[0].startswith(
        "config key 'tts': Additional properties are not allowed ('nshards' was unexpected); "
        "allowed: backend, n_shards, heldout_splits, train_takes, voices, ")
    assert found[1] == "config key 'tts.voices.pitch[0]': 300 is greater than the maximum of 99"
    assert check_config(validate_and_check(copy.deepcopy(default))) == []


def test_the_snakefile_stops_before_any_job_naming_the_key(repo, tmp_path):
    """`snakemake -n` with a bad value: exit 1, the compact lines, no schema dump."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"tts": {"heldout_splits": ["tset"], "n_shards": 0}}))
    snakemake = [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/test.yaml"]
    res = subprocess.run([*snakemake, str(bad)], cwd=repo, capture_output=True, text=True,
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "config key 'tts.n_shards': 0 is less than the minimum of 1" in out
    assert "Failed validating" not in out and "'description'" not in out  # no schema dump
    bad.write_text(json.dumps({"tts": {"heldout_splits": ["tset"]}}))
    res = subprocess.run([*snakemake, str(bad)], cwd=repo, capture_output=True, text=True,
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Building DAG" not in out
    assert "config key 'tts.heldout_splits[0]': 'tset' is not a source split" in out
