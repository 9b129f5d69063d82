"""espeak-ng in-process, for real: synthesis, determinism, voices, fail-fast voice errors."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from cordflow.tts import tts_config
from cordflow.tts.backends import BackendError, Voice, VoiceError, get_backend
from cordflow.tts.espeak import RESET_STATICS, EspeakBackend, elf_symbols, engine

Q = "What is seven plus five?"


@pytest.fixture(scope="module")
def espeak():
    return EspeakBackend(tts_config({}))


def test_speaks_a_question(espeak):
    audio = espeak.synthesize(Q, Voice("en-us", "m1", 50, 175))
    assert audio.sample_rate == espeak.sample_rate == 22050
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    seconds = len(audio.samples) / audio.sample_rate
    assert 0.8 < seconds < 4.0
    assert 0.05 < np.abs(audio.samples).max() <= 1.0


def test_get_backend_builds_espeak_by_default():
    assert isinstance(get_backend(tts_config({})), EspeakBackend)


def test_same_text_and_voice_give_identical_samples_whatever_came_before(espeak):
    voice = Voice("en-gb-x-rp", "f2", 60, 150)
    first = espeak.synthesize(Q, voice).samples
    for text, other in [("Which is larger, nine or three?", Voice("en-029", "m3", 40, 200)),
                        ("Breathy f4 voice here.", Voice("en-us", "f4", 50, 175))]:
        espeak.synthesize(text, other)
        assert np.array_equal(espeak.synthesize(Q, voice).samples, first)


def test_a_fresh_process_gives_the_same_samples(espeak, repo):
    voice = Voice("en-gb-scotland", "f1", 40, 200)
    here = hashlib.sha256(espeak.synthesize(Q, voice).samples.tobytes()).hexdigest()
    code = ("import hashlib, sys; from cordflow.tts.espeak import EspeakBackend; "
            "from cordflow.tts.backends import Voice; b = EspeakBackend({}); "
            f"a = b.synthesize({Q!r}, Voice('en-gb-scotland', 'f1', 40, 200)); "
            "print(hashlib.sha256(a.samples.tobytes()).hexdigest())")
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"), PYTHONHASHSEED="7")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == here


def test_pitch_rate_and_variant_change_the_sound(espeak):
    base = espeak.synthesize(Q, Voice("en-us", "", 50, 175)).samples
    for voice in (Voice("en-us", "", 70, 175), Voice("en-us", "", 50, 250),
                  Voice("en-us", "m3", 50, 175), Voice("en-gb", "", 50, 175)):
        assert not np.array_equal(espeak.synthesize(Q, voice).samples, base), voice.spec
    slow = espeak.synthesize(Q, Voice("en-us", "", 50, 100)).samples
    fast = espeak.synthesize(Q, Voice("en-us", "", 50, 300)).samples
    assert len(slow) > 1.5 * len(fast)


def test_control_characters_never_reach_espeak(espeak):
    # \x01 starts an espeak embedded command (here: pitch 99) in plain text.
    voice = Voice("en-us", "", 50, 175)
    plain = espeak.synthesize("one two", voice).samples
    assert np.array_equal(espeak.synthesize("one\x0199Ptwo", voice).samples,
                          espeak.synthesize("one 99Ptwo", voice).samples)
    assert np.array_equal(espeak.synthesize("one\ttwo", voice).samples, plain)


def test_every_default_voice_and_variant_exists(espeak):
    cfg = tts_config({})["voices"]
    train = espeak.voice_set(cfg["train"], cfg, "tts.voices.train")
    heldout = espeak.voice_set(cfg["heldout"], cfg, "tts.voices.heldout")
    per_name = len(cfg["variants"]) * len(cfg["pitch"]) * len(cfg["rate"])
    assert len(train) == len(cfg["train"]) * per_name
    assert len(heldout) == len(cfg["heldout"]) * per_name
    assert len({v.spec for v in train + heldout}) == len(train) + len(heldout)
    for name in cfg["train"] + cfg["heldout"]:  # each resolves to a distinct voice
        assert engine().resolve(name) is not None
    assert len({engine().resolve(n) for n in cfg["train"] + cfg["heldout"]}) == 6


def test_voice_spec_is_canonical():
    assert Voice("en-us", "m1", 50, 175).spec == "en-us+m1,pitch=50,rate=175"
    assert Voice("en-us").spec == "en-us"
    assert Voice("p225").spec == "p225"


@pytest.mark.parametrize("names,variants,key,words", [
    (["en-us", "en-zz"], [""], "tts.voices.train[1]", "no voice 'en-zz'"),
    (["en-us"], ["", "m1", "nosuch"], "tts.voices.variants[2]", "no variant 'nosuch'"),
    (["en-us"], ["../../lang/gmw/en"], "tts.voices.variants[0]", "no variant"),
    (["en-us"], ["klatt2"], "tts.voices.variants[0]", "Klatt"),
    ([], [""], "tts.voices.train", "empty"),
])
def test_unknown_voice_fails_naming_the_config_key(espeak, names, variants, key, words):
    with pytest.raises(VoiceError) as e:
        espeak.voice_set(names, {"variants": variants, "pitch": [50], "rate": [175]},
                         "tts.voices.train")
    assert f"config key '{key}'" in str(e.value) and words in str(e.value)


def test_the_library_statics_it_resets_are_in_the_symbol_table():
    syms = elf_symbols(engine().lib_path)
    for name in RESET_STATICS:
        found = [k for k in syms if k == name or k.startswith(name + ".")]
        assert len(found) == 1 and syms[found[0]][1] == 4


def test_a_library_without_a_symbol_table_is_refused(tmp_path):
    fake = tmp_path / "lib.so"
    fake.write_bytes(b"not an elf file")
    with pytest.raises(BackendError, match="ELF"):
        elf_symbols(fake)


def test_version_names_the_library(espeak):
    assert espeak.version.startswith("espeak-ng 1.52")
    assert "espeakng-loader 0.2.4" in espeak.version
