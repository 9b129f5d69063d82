"""Voice choice: deterministic from the id, held-out voices for held-out splits."""

import os
import subprocess
import sys

import pytest

from cordflow.tts import tts_config
from cordflow.tts.backends import Voice, VoiceError
from cordflow.tts.espeak import EspeakBackend
from cordflow.tts.voices import VoiceChooser, pick

IDS = [f"{i:016x}" for i in range(0, 3000, 7)]


@pytest.fixture(scope="module")
def backend():
    return EspeakBackend({})


@pytest.fixture(scope="module")
def chooser(backend):
    return VoiceChooser(backend, tts_config({}), seed=1234)


def test_choice_depends_on_the_id_only(chooser):
    forward = [chooser(i, "train") for i in IDS]
    backward = [chooser(i, "train") for i in reversed(IDS)][::-1]
    assert forward == backward
    again = VoiceChooser(EspeakBackend({}), tts_config({}), seed=1234)
    assert [again(i, "train") for i in IDS] == forward


def test_choice_is_the_same_in_another_process(chooser, repo):
    code = ("from cordflow.tts.voices import pick; from cordflow.tts.backends import Voice; "
            "vs = [Voice(str(i)) for i in range(97)]; "
            f"print(' '.join(pick(i, 1234, vs).name for i in {IDS[:20]!r}))")
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"), PYTHONHASHSEED="99")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    voices = [Voice(str(i)) for i in range(97)]
    assert res.stdout.split() == [pick(i, 1234, voices).name for i in IDS[:20]]


def test_heldout_splits_use_only_heldout_voices(chooser):
    cfg = tts_config({})
    train = {chooser(i, "train").name for i in IDS}
    test = {chooser(i, "test").name for i in IDS}
    assert train == set(cfg["voices"]["train"])
    assert test == set(cfg["voices"]["heldout"])
    assert {chooser(i, "dev").name for i in IDS} <= set(cfg["voices"]["train"])


def test_choices_spread_over_the_whole_set(chooser):
    used = {chooser(i, "train") for i in IDS}
    assert len(used) > 0.8 * len(chooser.train)


def test_seed_changes_the_choice():
    voices = [Voice(str(i)) for i in range(50)]
    a = [pick(i, 1, voices) for i in IDS]
    b = [pick(i, 2, voices) for i in IDS]
    assert sum(x != y for x, y in zip(a, b)) > 0.9 * len(IDS)


def test_a_voice_in_both_sets_is_refused(backend):
    cfg = tts_config({"tts": {"voices": {"train": ["en-us", "en-gb"],
                                         "heldout": ["en-gb"]}}})
    with pytest.raises(VoiceError, match="tts.voices.heldout"):
        VoiceChooser(backend, cfg, 0)


def test_an_unknown_heldout_voice_fails_before_any_work(backend):
    cfg = tts_config({"tts": {"voices": {"heldout": ["en-us-nyc", "xx-nope"]}}})
    with pytest.raises(VoiceError, match=r"config key 'tts.voices.heldout\[1\]'"):
        VoiceChooser(backend, cfg, 0)


def test_train_takes_are_different_voices_and_take_0_is_the_single_choice(backend):
    cfg = {**tts_config({}), "train_takes": 4}
    chooser = VoiceChooser(backend, cfg, seed=1234)
    for i in IDS[:50]:
        takes = chooser.voices_of(i, "train")
        assert len(set(takes)) == 4 and takes[0] == chooser(i, "train")
        assert set(takes) <= set(chooser.train)
        assert chooser.voices_of(i, "dev") == [chooser(i, "dev")]
        assert chooser.voices_of(i, "test") == [chooser(i, "test")]
    assert len({tuple(chooser.voices_of(i, "train")) for i in IDS}) > 0.8 * len(IDS)


def test_more_takes_than_training_voices_fails_naming_the_key(backend):
    cfg = tts_config({})
    n = len(VoiceChooser(backend, cfg, 0).train)
    with pytest.raises(VoiceError, match=rf"'tts.train_takes' is {n + 1} .* gives {n} voices"):
        VoiceChooser(backend, {**cfg, "train_takes": n + 1}, 0)


# -- voicings (tts.voicings): the questions of some splits once more, in other voices -----
CLAN = "en-gb-x-gbclan"  # an espeak voice in neither default set
def test_a_voicing_adds_one_take_after_the_main_ones_to_its_splits_only(backend):
    cfg = tts_config({"tts": {"train_takes": 2, "voicings": {
        "neural": {"backend": "piper", "splits": ["test"], "voices": ["a", "b", "c"]},
        "accent": {"backend": "espeak", "splits": ["test", "train"], "voices": [CLAN]}}}})
    chooser = VoiceChooser(backend, cfg, seed=1234)  # no piper here: its names, unchecked
    for i in IDS[:50]:
        train = chooser.clips_of(i, "train")
        assert train[:2] == [("main", v) for v in chooser.voices_of(i, "train")]
        assert len(train) == 3 and train[2][0] == "accent"
        test = chooser.clips_of(i, "test")
        assert [v for v, _ in test] == ["main", "accent", "neural"]  # voicings in name order
        assert test[0][1] == chooser(i, "test") and test[1][1].name == CLAN
        assert test[2][1] in {Voice("a"), Voice("b"), Voice("c")}
        assert chooser.clips_of(i, "dev") == [("main", chooser(i, "dev"))]
    assert len({chooser.clips_of(i, "test")[2][1] for i in IDS}) == 3


def test_a_voicing_voice_is_checked_by_its_backend_naming_the_key(backend):
    cfg = tts_config({"tts": {"voicings": {
        "accent": {"backend": "espeak", "splits": ["test"], "voices": [CLAN, "xx-nope"]}}}})
    with pytest.raises(VoiceError, match=r"config key 'tts.voicings.accent.voices\[1\]'"):
        VoiceChooser(backend, cfg, 0)


def test_a_voicing_cannot_be_called_main(backend):
    cfg = tts_config({})
    cfg["voicings"] = {"main": {"backend": "espeak", "splits": ["test"], "voices": [CLAN]}}
    with pytest.raises(VoiceError, match="tts.voicings.main"):
        VoiceChooser(backend, cfg, 0)
    with pytest.raises(ValueError, match="voicings"):  # the schema refuses it first
        tts_config({"tts": {"voicings": cfg["voicings"]}})
