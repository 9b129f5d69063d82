"""The built-in audio-skill benchmark (kind ``audio_skill``, cordflow.skills) and its training
signal: only the base stage trains the skill questions, at the configured amount."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cordflow import skills
from cordflow.evaluate import items as bm

REPO = Path(__file__).resolve().parents[1]

# (id, take, split, voicing, voice, status): a hand-made manifest over real FLAC files
CLIPS = [
    ("a1", 0, "train", "main", "en-us,pitch=60,rate=190", "ok"),
    ("a1", 1, "train", "main", "en-gb,pitch=40,rate=160", "ok"),
    ("b2", 0, "test", "main", "en-gb-x-rp,pitch=60,rate=160", "ok"),
    ("b2", 1, "test", "neural", "en_US-joe-medium", "ok"),  # another voicing: no pitch
    ("c3", 0, "test", "main", "en-us-nyc,pitch=40,rate=190", "flagged"),
    ("d4", 0, "test", "main", "en-us-nyc,pitch=50,rate=160", "ok"),  # the pitch midpoint
    ("e5", 0, "test", "main", "en-gb-x-rp,pitch=60,rate=190", "rejected"),
    ("f6", 0, "dev", "main", "en-us,pitch=40,rate=160", "ok"),
]


def write_manifest(folder, clips=CLIPS):
    from cordflow.tts.schema import CLIP_ARROW, clip_frame, write_table

    rows = []
    for i, (cid, take, split, voicing, voice, status) in enumerate(clips):
        path = folder / f"{cid}-{take}.flac"
        sf.write(path, (0.1 * np.sin(np.arange(8000) * (0.05 + 0.01 * i))).astype(np.float32),
                 16000)
        flags, reason = {"ok": ([], ""), "flagged": (["quiet"], "quiet: -40 LUFS"),
                         "rejected": (["too_fast"], "too_fast: 0.01 s per character")}[status]
        rows.append({"id": cid, "take": take, "split": split, "voicing": voicing,
                     "status": status, "voice": voice, "path": str(path), "sha256": "0" * 64,
                     "duration": 0.5, "sample_rate": 16000, "n_samples": 8000,
                     "backend": "espeak", "backend_version": "1", "flags": flags,
                     "reason": reason, "spoken": "what is one plus one", "speech_duration": 0.5,
                     "silence_ratio": 0.0, "clip_ratio": 0.0, "loudness_lufs": -23.0,
                     "peak_dbfs": -3.0})
    write_table(clip_frame(rows), folder / "manifest.parquet", CLIP_ARROW)
    return folder / "manifest.parquet"


def test_items_answer_from_the_recorded_pitch_and_rate_of_the_split_clips_only(tmp_path):
    manifest = write_manifest(tmp_path)
    entry = {"name": "audio_skill", "kind": "audio_skill", "split": "test",
             "skills": ["pitch", "rate"]}
    b = bm.load(entry, {"manifest": manifest})
    assert not b.has_text
    got = {i: (a, c) for i, a, c in zip(b.items["id"], b.items["answer"], b.items["category"])}
    # only main-voicing clips of the test split: b2 (pitch 60, rate 160), c3 (flagged: used;
    # pitch 40, rate 190), d4's rate (160); pitch 50 is the midpoint of 40 and 60
    assert got == {"b2:0:pitch": ("A", "pitch"), "b2:0:rate": ("B", "rate"),
                   "c3:0:pitch": ("B", "pitch"), "c3:0:rate": ("A", "rate"),
                   "d4:0:rate": ("B", "rate")}
    assert b.items["id"].tolist() == sorted(got)  # in id order
    assert b.counts() == {"at_midpoint": 1, "tts_rejected": 2}
    assert set(b.excluded["id"]) == {"d4:0:pitch", "e5:0:pitch", "e5:0:rate"}
    pitch = b.items[b.items["category"] == "pitch"]
    assert pitch["audio_text"].unique().tolist() == ["Is the speaker's voice high or low?"]
    assert pitch["choices"].map(list).tolist() == [["high", "low"]] * 2
    assert b.items["question"].isna().all() and (b.items["answer_type"] == "choice").all()
    assert b.items["audio"].iloc[0].load().shape == (8000,)
    # deterministic: the same manifest gives the same items, in the same order
    again = bm.load(entry, {"manifest": manifest})
    assert again.items.drop(columns="audio").equals(b.items.drop(columns="audio"))
    only = bm.load({**entry, "skills": ["rate"]}, {"manifest": manifest})
    assert set(only.items["category"]) == {"rate"} and len(only.items) == 3
    default = bm.load({k: v for k, v in entry.items() if k != "skills"}, {"manifest": manifest})
    assert set(default.items["category"]) == {"rate"}  # what the default base learns
    dev = bm.load({**entry, "split": "dev"}, {"manifest": manifest})
    assert dev.items["id"].tolist() == ["f6:0:pitch", "f6:0:rate"]
    assert dev.items["answer"].tolist() == ["B", "B"]  # low, slow


def test_entries_and_a_split_without_clips(tmp_path):
    manifest = write_manifest(tmp_path)
    with pytest.raises(bm.BenchmarkError, match="has no clip of split 'other'"):
        bm.load({"name": "s", "kind": "audio_skill", "split": "other"}, {"manifest": manifest})
    with pytest.raises(bm.BenchmarkError, match="needs --manifest"):
        bm.load({"name": "s", "kind": "audio_skill", "split": "test"}, {})
    with pytest.raises(bm.BenchmarkError, match="qa_split and audio_skill take split, not path"):
        bm.entry_config({"name": "s", "kind": "audio_skill", "split": "test", "path": "x"})
    with pytest.raises(bm.BenchmarkError, match="invalid benchmark entry"):
        bm.entry_config({"name": "s", "kind": "audio_skill", "split": "test",
                         "skills": ["accent"]})
    with pytest.raises(bm.BenchmarkError, match="invalid benchmark entry"):
        bm.entry_config({"name": "s", "kind": "qa_split", "split": "test", "skills": ["rate"]})


def test_an_audio_skill_benchmark_on_the_train_split_is_a_config_error():
    from cordflow.config import check_config, load_config

    bench = {"name": "skill", "kind": "audio_skill", "split": "train"}
    cfg = load_config(REPO / "config" / "config.yaml", {"evaluate": {"benchmarks": [bench]}})
    assert any("'evaluate.benchmarks[0].split': an audio_skill benchmark on 'train'" in p
               for p in check_config(cfg))
    default = load_config(REPO / "config" / "config.yaml")
    assert not [p for p in check_config(default) if "audio_skill" in p]


def test_the_scorer_takes_the_option_or_its_letter():
    from cordflow.scoring import match

    for reply, ok in (("high", True), ("A", True), ("The voice is high.", True), ("low", False),
                      ("B", False), ("high or low", False)):
        assert match(reply, "A", "choice", choices=["high", "low"]) == ok, reply


def test_training_items_are_a_seeded_choice_of_train_clips(tmp_path):
    manifest = write_manifest(tmp_path)
    rows = skills.training_items(manifest, "train", 3, seed=5)
    assert len(rows) == 3 and set(rows["split"]) == {"train"}
    assert rows["id"].tolist() == skills.training_items(manifest, "train", 3, seed=5)["id"].tolist()
    everything = skills.training_items(manifest, "train", 99, seed=5)
    assert sorted(everything["id"]) == ["a1:0:pitch", "a1:0:rate", "a1:1:pitch", "a1:1:rate"]
    target = dict(zip(everything["id"], everything["target"], strict=True))
    assert target == {"a1:0:pitch": "high", "a1:0:rate": "fast", "a1:1:pitch": "low",
                      "a1:1:rate": "slow"}
    assert (everything["audio_text"] == everything["question"]).all()


# -------------------------------------------------------------- the training signal


@pytest.fixture(autouse=True)
def _restore_cwd(monkeypatch):
    monkeypatch.chdir(".")  # undone after each test


BASE = {"text": {"steps": 4, "batch_size": 8, "bar": 0.0, "eval_every": 4, "eval_items": 8},
        "audio": {"steps": 3, "batch_size": 4}, "eval_batch_size": 16,
        "skills": {"items": 10, "steps": 2, "batch_size": 4, "text_batch_size": 2,
                   "audio_batch_size": 3, "skills": ["pitch", "rate"]}}
MODEL = {"tiny": {"chunk_length": 4, "vocab_size": 320}, "max_new_tokens": 3}
TARGETS = {t for s in skills.SKILLS.values() for t in s.choices}


def test_only_the_base_stage_trains_the_skill_items_at_the_configured_amount(
        spoken, tmp_path, monkeypatch):
    """The base stage trains base.skills.items skill items of train clips, batch_size of them
    in each of its last phase's steps (with text and spoken questions that keep the earlier
    answers); the warm-up and a training method never read a skill item, and their config
    slices do not hold base.skills."""
    import json
    import os

    from cordflow import base, data, infer, warmup
    from cordflow.config import RULE_CODE, RULE_KEYS, load_config, section
    from cordflow.train.methods import method_params
    from cordflow.train.run import run_spec

    os.chdir(spoken)  # clip paths are relative to the workflow's folder
    qa_train, qa_test = spoken / "results/qa/train.parquet", spoken / "results/qa/test.parquet"
    manifest = spoken / "results/audio/manifest.parquet"
    calls, own = [], []
    real_nll, real_answers = base.target_nll, infer.answers

    def spy(loaded, prompt, answers):
        calls.append((int(prompt["input_features"].shape[0]) if "input_features" in prompt
                       else 0, list(answers)))
        return real_nll(loaded, prompt, answers)

    def answers_spy(loaded, items, modality, *a, **k):
        out = real_answers(loaded, items, modality, *a, **k)
        if modality == "audio" and "take" in items and "audio_text" not in items:
            own.append(out)  # spoken QA (not skill items, not text)
        return out

    monkeypatch.setattr(base, "target_nll", spy)
    monkeypatch.setattr(infer, "answers", answers_spy)
    out = tmp_path / "base"
    base.run({"seed": 3, "model": MODEL, "base": BASE}, qa_train, qa_test, manifest, out,
             qa_bar=qa_test)  # the fixture has no dev split: its bar checks test (bar 0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skills_phase"] == {"steps": 2, "items": 10}
    assert 0 <= metrics["final"]["heldout_skill_acc"] <= 1
    phases = [json.loads(x)["phase"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert phases == ["text"] * 4 + ["audio"] * 3 + ["skills"] * 2
    # text and audio phases: QA only (8 text prompts, 4 clips a step), no skill answer
    assert [(n, len(a)) for n, a in calls[:7]] == [(0, 8)] * 4 + [(4, 4)] * 3
    assert not TARGETS & {t for _, a in calls[:7] for t in a}
    # skills phase, per step: 4 skill items (audio), 2 text questions, 3 spoken questions
    # whose targets are the model's own answers from before the phase
    skill_calls = calls[7:]
    assert [(n, len(a)) for n, a in skill_calls] == [(4, 4), (0, 2), (3, 3)] * 2
    assert all(set(a) <= TARGETS for _, a in skill_calls[::3])
    before = own[0]  # the first spoken answers: the train questions, before the phase
    assert len(before) == len(data.spoken_pairs(qa_train, manifest).items)
    assert {t for _, a in skill_calls[2::3] for t in a} <= set(before)
    rows = base.skill_rows(section({"base": BASE}, "base")["skills"], manifest, "train", 10, 3)
    assert len(rows) == 10 and set(rows["split"]) == {"train"}

    # later stages: no skill item reaches them (cordflow.skills is never called) ...
    def forbidden(*a, **k):
        raise AssertionError("a later stage read the audio-skill items")

    monkeypatch.setattr(skills, "label", forbidden)
    monkeypatch.setattr(skills, "training_items", forbidden)
    over = {"model": MODEL, "warmup": {"steps": 1, "batch_size": 2},
            "train": {"steps": 1, "batch_size": 2, "sequence": {"n": 2}, "token": {"k": 2}}}
    cfg = load_config(REPO / "config" / "config.yaml", over)
    warmup.run({"seed": 3, "model": cfg["model"], "warmup": cfg["warmup"]}, out, qa_train,
               manifest, tmp_path / "warmup")
    params = method_params(cfg, "cord")
    run_spec(params, params["method"], "train", tmp_path / "warmup", qa_train, manifest,
             tmp_path / "cord")
    assert (tmp_path / "cord" / "config.json").exists()
    # ... what they train on is the spoken QA (data.spoken_pairs), no skill question ...
    questions = set(data.spoken_pairs(qa_train, manifest).items["question"])
    assert not questions & {s.question for s in skills.SKILLS.values()}
    # ... and their params hold none of it: only a kd method whose acoustic teacher reads
    # the skill items (train.kd.acoustic_skills) has base.skills' list and count in its
    # spec, and its code, cordflow.skills, is in the train rule's code for that reason
    # (tests/test_reruns.py checks that RULE_CODE is exactly the code each stage reaches)
    assert "skills" not in json.dumps(params)
    for rule in ("warmup", "train"):
        assert not any(k == "base" or k.startswith("base.") for k in RULE_KEYS[rule]), rule
    assert all("skills.py" in RULE_CODE[r] for r in ("base", "evaluate", "train"))


def test_the_acoustic_teachers_skill_items_are_the_bases_of_train_clips(tmp_path):
    """train.kd.acoustic_skills: a kd method's acoustic items are the items the base learned
    (base.skills' skills and count, the same seeded choice), of train clips only, each the
    skill question asked with its clip."""
    from cordflow import base
    from cordflow.config import load_config, section
    from cordflow.train.methods import method_params
    from cordflow.train.run import acoustic_items, acoustic_table

    manifest = write_manifest(tmp_path)  # train, test and dev clips
    cfg = load_config(REPO / "config" / "config.yaml",
                      {"seed": 5, "base": {"skills": {"items": 3, "skills": ["pitch", "rate"]}},
                       "train": {"kd": {"acoustic_skills": True}}})
    params = method_params(cfg, "kd_source")
    spec = params["method"]
    assert acoustic_table(spec, tmp_path / "train.parquet") is None  # no QA split read
    items = acoustic_items(spec, None, manifest, params["seed"])
    scfg = section({"base": cfg["base"]}, "base")["skills"]
    learned = base.skill_rows(scfg, manifest, "train", scfg["items"], cfg["seed"])
    assert items["id"].tolist() == learned["id"].tolist() and len(items) == 3
    assert set(items["split"]) == {"train"} and set(items["clip_id"]) == {"a1"}
    assert (items["audio_text"] == items["question"]).all()
    assert set(items["question"]) <= {s.question for s in skills.SKILLS.values()}
    assert all(Path(p).is_file() for p in items["audio_path"])
    with pytest.raises(SystemExit, match="acoustic_skills: .* has no train clip"):
        acoustic_items(spec, None, write_manifest(tmp_path, [c for c in CLIPS
                                                             if c[2] != "train"]), 5)
