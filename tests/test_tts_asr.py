"""The intelligibility check for real (tts.quality.asr: pocketsphinx's US-English model from
its wheel, jiwer's word alignment): what it heard and its word error rate are recorded per
clip, a clip over max_wer is flagged `unintelligible` and kept, and a new threshold re-judges
the stored clips without synthesising them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cordflow.tts import asr, quality, shard, tts_config
from cordflow.tts.backends import Voice
from cordflow.tts.piper import PiperBackend
from cordflow.tts.schema import PLAN_ARROW, read_clips, write_table

JOE = "en_US-joe-medium"
NEURAL = {"neural": {"backend": "piper", "splits": ["test"], "voices": [JOE]}}


def brute_wer(ref: list[str], hyp: list[str]) -> float:
    """Word edit distance by the textbook dynamic programme, over the reference length."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(hyp) + 1)] for i in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    return d[-1][-1] / len(ref)


@pytest.mark.parametrize("ref,hyp", [
    ("What is four plus four?", "what is for plus four"),
    ("Which of two and five is larger?", "which of two and by the forger"),
    ("What's 25 plus 3?", "what's twenty five plus three"),
    ("Add up two and zero.", "the"),
    ("Sum two and four.", ""),
])
def test_word_error_rate_is_the_edit_distance_over_the_spoken_words(ref, hyp):
    assert asr.word_error_rate(ref, hyp) == pytest.approx(
        brute_wer(asr.words(ref), asr.words(hyp)))
    assert asr.words("What's 25, then?") == ["what's", "twenty", "five", "then"]


def test_nothing_to_say_and_nothing_said():
    assert asr.hear(np.zeros(0, dtype=np.float32)) == ""  # an empty clip (rejected, kept)
    assert asr.word_error_rate("...", "") == 0.0 and asr.word_error_rate("...", "a") == 1.0


def test_a_neural_voice_is_heard_and_a_tone_is_not():
    backend = PiperBackend(tts_config({}))
    try:
        audio = backend.synthesize("Which is smaller, three or two?", Voice(JOE))
    finally:
        backend.close()
    import soxr

    speech = soxr.resample(audio.samples, audio.sample_rate, 16000)
    heard = asr.hear(speech)
    assert asr.word_error_rate("Which is smaller, three or two?", heard) <= 0.2, heard
    assert asr.hear(speech) == heard  # deterministic
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    assert asr.word_error_rate("Which is smaller, three or two?", asr.hear(tone)) >= 0.8


def test_the_flag_names_the_key_and_what_was_heard():
    q = tts_config({"tts": {"quality": {"asr": {"enabled": True, "max_wer": 0.3}}}})["quality"]
    m = {"duration": 1.7, "speech_duration": 1.5, "silence_ratio": 0.1, "clip_ratio": 0.0}
    heard = {**m, "asr_wer": 0.6, "asr_heard": "oh cool"}
    v = quality.check(heard, "Sum two and four.", q)
    assert (v.status, v.flags) == ("flagged", ["unintelligible"])
    assert v.reason == ("unintelligible: word error rate 0.60 > tts.quality.asr.max_wer 0.3 "
                        "(heard: 'oh cool')")
    assert quality.check({**heard, "asr_wer": 0.2}, "Sum two and four.", q).status == "ok"
    off = tts_config({})["quality"]
    assert not off["asr"]["enabled"]
    assert quality.check(heard, "Sum two and four.", off).status == "ok"
    assert quality.check({**m, "asr_wer": math.nan, "asr_heard": ""}, "Sum two and four.",
                         q).status == "ok"


def test_a_shard_records_what_each_clip_was_heard_as(tmp_path, monkeypatch):
    """espeak for the train question, Piper for the test one (the default's voicings): every
    clip gets its WER and transcript; max_wer 0 flags any clip not heard word for word, and
    changing it re-judges the stored clips (nothing synthesised again)."""
    monkeypatch.chdir(tmp_path)
    rows = pd.DataFrame({"id": ["a1", "b2"], "split": ["train", "test"],
                         "spoken": ["What is two plus two?", "Which is smaller, three or two?"]})
    write_table(rows, tmp_path / "plan.parquet", PLAN_ARROW)

    def run(quality_cfg, name):
        params = {"seed": 1, "tts": {"n_shards": 1, "train_takes": 1, "voicings": NEURAL,
                                     "quality": quality_cfg}}
        stats = shard.run(params, tmp_path / "plan.parquet", tmp_path / f"{name}.parquet",
                          tmp_path / "store")
        return stats, read_clips(tmp_path / f"{name}.parquet")

    stats, off = run({}, "off")
    assert stats.synthesised == 3 and off["asr_wer"].isna().all() and (off["asr_heard"] == "").all()
    stats, on = run({"asr": {"enabled": True, "max_wer": 0.0}}, "on")
    assert stats.synthesised == 0  # the same clips, judged again
    assert on["asr_wer"].notna().all() and (on["asr_wer"] >= 0).all()
    neural = on[on["voicing"] == "neural"].iloc[0]
    assert neural["asr_wer"] <= 0.2 and neural["asr_heard"]
    imperfect = on["asr_wer"] > 0
    assert (on.loc[imperfect, "status"] == "flagged").all()
    assert on.loc[imperfect, "flags"].map(lambda f: "unintelligible" in f).all()
    assert on.loc[~imperfect, "flags"].map(lambda f: "unintelligible" not in f).all()
    _, lenient = run({"asr": {"enabled": True, "max_wer": 10.0}}, "lenient")
    assert lenient["asr_wer"].tolist() == on["asr_wer"].tolist()
    assert not lenient["flags"].map(lambda f: "unintelligible" in f).any()
