"""Post-processing of one raw clip: trim, resample, loudness, peak cap, pad, 16-bit FLAC.

:func:`process` takes the backend's float samples and returns the FLAC bytes and the
measurements the quality checks need. Steps, in order:

1. trim: leading and trailing 10 ms frames whose RMS is more than ``trim_db`` below the
   loudest frame (or below -90 dBFS) are cut; nothing left means an empty clip;
2. resample to ``sample_rate`` with soxr (HQ);
3. loudness: integrated loudness (ITU-R BS.1770-4, pyloudnorm's K-weighting filters,
   designed once per sample rate) of the clip as it will be written (with step 5's
   padding) brought to ``loudness_lufs``; a clip shorter than the 400 ms gating block is
   measured zero-padded to one block; silence gets no gain;
4. peak cap: if a sample then exceeds ``peak_dbfs`` the whole clip is scaled down to it
   (so a very peaky clip ends up quieter than the target: ``loudness_lufs`` says so);
5. pad ``pad_ms`` of silence at both ends; round to 16-bit PCM;
6. FLAC via soundfile (libsndfile): the same samples give the same bytes.

Loudness gain and peak cap are one gain, applied once, in the 16-bit conversion. The
silence ratio the quality checks use is the share of quiet frames (step 1's threshold)
inside the trimmed span, measured on the raw audio. Everything is deterministic: the same
input gives byte-identical output.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

FRAME_S = 0.010
FLOOR_DBFS = -90.0
BLOCK_S = 0.400  # BS.1770 gating block
OVERLAP = 0.75
ABS_GATE = -70.0
CLIP_LEVEL = 0.999  # |raw sample| at or above this counts as clipped


@dataclass(frozen=True)
class Processed:
    """A finished clip and what was measured on the way."""

    flac: bytes
    sample_rate: int
    n_samples: int          # in the FLAC, padding included
    speech_samples: int     # between the pads
    silence_ratio: float    # quiet 10 ms frames within the speech span (raw audio)
    clip_ratio: float       # raw samples at full scale
    loudness_lufs: float    # after normalisation and peak cap (-inf: silent)
    peak_dbfs: float        # of the output (-inf: silent)

    @property
    def duration(self) -> float:
        return self.n_samples / self.sample_rate

    @property
    def speech_duration(self) -> float:
        return self.speech_samples / self.sample_rate


def frame_db(x: np.ndarray, rate: int) -> np.ndarray:
    """RMS in dBFS of consecutive 10 ms frames (the last, partial frame included)."""
    n = max(1, round(FRAME_S * rate))
    if len(x) == 0:
        return np.zeros(0)
    pad = (-len(x)) % n
    frames = np.pad(x, (0, pad)).reshape(-1, n).astype(np.float32, copy=False)
    ms = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / n
    if pad:
        ms[-1] *= n / (n - pad)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(ms)


def speech_span(x: np.ndarray, rate: int, trim_db: float) -> tuple[int, int, float]:
    """``(start, end, silence_ratio)``: the samples from the first to the last 10 ms frame
    within ``trim_db`` of the loudest frame (and above -90 dBFS), and the share of frames
    in between that are quieter than that. ``(0, 0, 1.0)`` when nothing is loud enough."""
    db = frame_db(x, rate)
    if len(db) == 0:
        return 0, 0, 1.0
    loud = db >= max(db.max() - trim_db, FLOOR_DBFS)
    idx = np.flatnonzero(loud)
    if len(idx) == 0:
        return 0, 0, 1.0
    n = max(1, round(FRAME_S * rate))
    inside = loud[idx[0]: idx[-1] + 1]
    return int(idx[0] * n), int(min(len(x), (idx[-1] + 1) * n)), float(1.0 - inside.mean())


def trim(x: np.ndarray, rate: int, trim_db: float) -> np.ndarray:
    """``x`` without its leading and trailing quiet frames (empty if all are quiet)."""
    start, end, _ = speech_span(x, rate, trim_db)
    return x[start:end]


def silence_ratio(x: np.ndarray, rate: int, trim_db: float) -> float:
    """Share of quiet 10 ms frames within the speech span of ``x`` (1.0 if none)."""
    return speech_span(x, rate, trim_db)[2]


@cache
def _k_weighting(rate: int) -> np.ndarray:
    """pyloudnorm's K-weighting filters for ``rate`` as second-order sections."""
    import pyloudnorm

    meter = pyloudnorm.Meter(rate)  # designs the filters
    return np.array([np.concatenate([f.passband_gain * np.asarray(f.b), np.asarray(f.a)])
                     for f in meter._filters.values()], dtype=np.float32)


def integrated_loudness(x: np.ndarray, rate: int) -> float:
    """BS.1770-4 integrated loudness of mono ``x`` in LUFS, as pyloudnorm's
    ``Meter(rate).integrated_loudness`` computes it (its K-weighting filters, 400 ms
    blocks every 100 ms, absolute and relative gates), vectorised: block energies are
    sums of four 100 ms hop energies. Shorter than one block: measured zero-padded to one
    block. ``rate`` must be a multiple of 10 Hz."""
    from scipy.signal import sosfilt

    hop = round(BLOCK_S * (1.0 - OVERLAP) * rate)
    if hop * 10 != rate:
        raise ValueError(f"loudness needs a sample rate that is a multiple of 10 Hz, not {rate}")
    x = np.asarray(x, dtype=np.float32)
    block = 4 * hop
    if len(x) < block:
        x = np.pad(x, (0, block - len(x)))
    y = sosfilt(_k_weighting(rate), x)  # float32: 4x faster than float64, error < 1e-4 LU
    n_blocks = int(np.round((len(x) / rate - BLOCK_S) / (BLOCK_S * (1.0 - OVERLAP)))) + 1
    n_hops = n_blocks + 3
    y = np.pad(y, (0, max(0, n_hops * hop - len(y))))[: n_hops * hop].reshape(n_hops, hop)
    e = np.einsum("ij,ij->i", y, y).astype(np.float64)
    z = (e[:-3] + e[1:-2] + e[2:-1] + e[3:]) / block
    with np.errstate(divide="ignore"):
        block_l = -0.691 + 10.0 * np.log10(z)
        gated = z[block_l >= ABS_GATE]
        if len(gated) == 0:
            return float("-inf")
        rel_gate = -0.691 + 10.0 * np.log10(gated.mean()) - 10.0
        keep = z[(block_l > rel_gate) & (block_l > ABS_GATE)]
        if len(keep) == 0:
            return float("-inf")
        return float(-0.691 + 10.0 * np.log10(keep.mean()))


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """soxr HQ resampling (a proper anti-alias filter), float32 out."""
    if src == dst or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    import soxr

    y = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), src, dst, quality="HQ")
    return np.asarray(y, dtype=np.float32)


def to_pcm16(x: np.ndarray, gain: float = 1.0, pad: int = 0) -> np.ndarray:
    """``x * gain`` as rounded, saturated 16-bit PCM with ``pad`` zeros at both ends."""
    out = np.zeros(len(x) + 2 * pad, dtype=np.int16)
    scaled = np.multiply(x, np.float32(gain * 32767.0), dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768, 32767, out=scaled)
    out[pad: pad + len(x)] = scaled
    return out


def encode_flac(pcm: np.ndarray, rate: int) -> bytes:
    """16-bit mono FLAC bytes (byte-stable for the same samples and libsndfile)."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, pcm, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _peak(x: np.ndarray) -> float:
    return float(max(x.max(), -x.min())) if len(x) else 0.0


def process(samples: np.ndarray, rate: int, post: dict) -> Processed:
    """Run the steps of the module docstring on raw float ``samples`` at ``rate``.
    ``post`` is the ``tts.post`` section (defaults filled in)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    out_rate = int(post["sample_rate"])
    clip_ratio = 0.0
    if _peak(samples) >= CLIP_LEVEL:
        clip_ratio = float(np.count_nonzero(np.abs(samples) >= CLIP_LEVEL) / len(samples))
    start, end, quiet = speech_span(samples, rate, post["trim_db"])
    speech = resample(samples[start:end], rate, out_rate)

    # One gain for loudness and the peak cap, applied once, in the 16-bit conversion.
    # Loudness is measured with the padding, as the file will be.
    pad = round(post["pad_ms"] * out_rate / 1000)
    loudness = (integrated_loudness(np.pad(speech, pad), out_rate) if len(speech)
                else float("-inf"))
    gain = 1.0
    if math.isfinite(loudness):
        gain = 10.0 ** ((post["loudness_lufs"] - loudness) / 20.0)
    peak, cap = _peak(speech) * gain, 10.0 ** (post["peak_dbfs"] / 20.0)
    if peak > cap:
        gain *= cap / peak
        peak = cap
    if math.isfinite(loudness):
        loudness += 20.0 * math.log10(gain)

    pcm = to_pcm16(speech, gain, pad)
    return Processed(
        flac=encode_flac(pcm, out_rate),
        sample_rate=out_rate,
        n_samples=len(pcm),
        speech_samples=len(speech),
        silence_ratio=quiet,
        clip_ratio=clip_ratio,
        loudness_lufs=loudness,
        peak_dbfs=20.0 * math.log10(peak) if peak > 0 else float("-inf"),
    )
