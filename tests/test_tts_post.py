"""Post-processing on real espeak clips and synthetic signals: rate, loudness, peak cap,
trim, pad, anti-aliasing, empty input, byte-stable FLAC."""

import io

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from cordflow.tts import post, tts_config
from cordflow.tts.backends import Voice
from cordflow.tts.espeak import EspeakBackend

POST = tts_config({})["post"]  # 16 kHz, -23 LUFS, -1 dBFS, 40 dB, 100 ms
SR = 22050


@pytest.fixture(scope="module")
def speech():
    audio = EspeakBackend({}).synthesize("Which is larger, seven or five?",
                                         Voice("en-us", "f2", 50, 175))
    return audio.samples, audio.sample_rate


def decode(clip: post.Processed) -> tuple[np.ndarray, int, sf._SoundFileInfo]:
    info = sf.info(io.BytesIO(clip.flac))
    data, rate = sf.read(io.BytesIO(clip.flac), dtype="float64")
    return data, rate, info


def tone(freq: float, seconds: float, rate: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_real_clip_is_16k_mono_16bit_flac_at_the_target_loudness(speech):
    clip = post.process(*speech, POST)
    data, rate, info = decode(clip)
    assert (rate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
    assert len(data) == clip.n_samples and clip.duration == pytest.approx(len(data) / 16000)
    measured = pyloudnorm.Meter(16000).integrated_loudness(data)
    assert measured == pytest.approx(-23.0, abs=0.1)
    assert clip.loudness_lufs == pytest.approx(measured, abs=0.1)
    assert np.abs(data).max() <= 10 ** (-1 / 20) + 1e-4


@pytest.mark.parametrize("target", [-30.0, -23.0, -16.0])
def test_loudness_target_is_met_on_synthetic_signals(target):
    rng = np.random.default_rng(0)
    x = np.concatenate([tone(300, 0.8), 0.05 * rng.standard_normal(SR // 2)]).astype(np.float32)
    clip = post.process(x, SR, {**POST, "loudness_lufs": target, "peak_dbfs": 0.0})
    data, _, _ = decode(clip)
    assert pyloudnorm.Meter(16000).integrated_loudness(data) == pytest.approx(target, abs=0.1)


def test_peak_cap_scales_a_peaky_clip_down_and_says_how_loud_it_is():
    x = tone(200, 1.0, amp=0.01)
    x[::2205] = 0.9  # clicks: peaks far above the level the loudness target needs
    clip = post.process(x, SR, POST)
    data, _, _ = decode(clip)
    assert np.abs(data).max() == pytest.approx(10 ** (-1 / 20), abs=2e-4)
    assert clip.peak_dbfs == pytest.approx(-1.0, abs=1e-6)
    measured = pyloudnorm.Meter(16000).integrated_loudness(data)
    assert measured < -24.0
    assert clip.loudness_lufs == pytest.approx(measured, abs=0.1)


def test_silence_is_trimmed_and_exactly_pad_ms_added():
    x = np.concatenate([np.zeros(SR // 2), tone(440, 1.0), np.zeros(SR // 3)]).astype(np.float32)
    clip = post.process(x, SR, {**POST, "pad_ms": 250})
    data, _, _ = decode(clip)
    pad = 4000
    assert clip.speech_duration == pytest.approx(1.0, abs=0.011)
    assert clip.n_samples == clip.speech_samples + 2 * pad
    assert not data[:pad].any() and not data[-pad:].any()
    assert np.abs(data[pad:pad + 160]).max() > 0.01 and np.abs(data[-pad - 160:-pad]).max() > 0.01


def test_trim_keeps_quiet_speech_and_cuts_only_the_edges():
    quiet_edges = np.concatenate([1e-4 * np.ones(2205), tone(440, 0.5), 1e-4 * np.ones(2205)])
    start, end, silence = post.speech_span(quiet_edges.astype(np.float32), SR, 40.0)
    frame = 220  # 10 ms at 22050 Hz: the trim is frame-accurate
    assert 2205 - frame < start <= 2205 and 2205 + 11025 <= end < 2205 + 11025 + frame
    assert silence == 0.0
    gap = np.concatenate([tone(440, 0.3), np.zeros(SR // 2), tone(440, 0.2)]).astype(np.float32)
    assert post.silence_ratio(gap, SR, 40.0) == pytest.approx(0.5, abs=0.03)
    assert len(post.trim(np.zeros(1000, np.float32), SR, 40.0)) == 0


def test_resampling_filters_out_what_16k_cannot_hold():
    # A 10 kHz tone is above 16 kHz's Nyquist: a resampler without an anti-alias filter
    # folds it to 6 kHz at nearly full level; soxr removes it.
    y = post.resample(tone(10000, 1.0, amp=0.5), SR, 16000)
    assert len(y) == 16000
    assert 20 * np.log10(np.sqrt(np.mean(y[800:-800] ** 2)) + 1e-12) < -60
    kept = post.resample(tone(1000, 1.0, amp=0.5), SR, 16000)
    assert np.sqrt(np.mean(kept[800:-800] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_loudness_matches_pyloudnorm(speech):
    rng = np.random.default_rng(1)
    clips = [post.resample(speech[0], SR, 16000), tone(100, 2.3, 16000),
             (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32),
             np.concatenate([tone(500, 1.0, 16000, 0.5), tone(500, 2.0, 16000, 0.005)])]
    meter = pyloudnorm.Meter(16000)
    for x in clips:
        assert post.integrated_loudness(x, 16000) == pytest.approx(
            meter.integrated_loudness(x.astype(np.float64)), abs=1e-3)


def test_clips_shorter_than_a_gating_block_still_get_normalised():
    clip = post.process(tone(300, 0.2), SR, {**POST, "pad_ms": 0})
    data, _, _ = decode(clip)
    padded = np.pad(data, (0, 6400 - len(data)))
    assert pyloudnorm.Meter(16000).integrated_loudness(padded) == pytest.approx(-23, abs=0.1)


def test_empty_and_silent_input_give_padding_only():
    for x in (np.zeros(0, np.float32), np.zeros(SR, np.float32)):
        clip = post.process(x, SR, POST)
        data, _, _ = decode(clip)
        assert clip.speech_samples == 0 and len(data) == 3200 and not data.any()
        assert clip.loudness_lufs == float("-inf") and clip.silence_ratio == 1.0


def test_clip_ratio_counts_full_scale_raw_samples():
    x = tone(200, 1.0, amp=1.5).clip(-1, 1)
    assert post.process(x, SR, POST).clip_ratio > 0.3
    assert post.process(tone(200, 1.0, amp=0.5), SR, POST).clip_ratio == 0.0


def test_same_input_same_flac_bytes(speech):
    a = post.process(*speech, POST)
    b = post.process(speech[0].copy(), speech[1], dict(POST))
    assert a.flac == b.flac and a == b
    assert post.process(*speech, {**POST, "pad_ms": 50}).flac != a.flac
