"""16 kHz mono float32: the one audio format the model is fed, decoded in one place.

Contract:

- :data:`SAMPLE_RATE` (16000) is the rate of every clip handed to the model (the Whisper
  feature extractor of both presets expects it).
- :func:`load_mono` turns a clip (a file path, a binary file-like object, or already
  decoded mono samples with their rate) into a 1-D, C-contiguous float32 array at
  :data:`SAMPLE_RATE`: decoded by soundfile as float32, channels averaged in float32, then
  resampled with soxr (its default quality) only when the stored rate differs.

Used by :mod:`cordflow.models` (clips of the QA tables) and :mod:`cordflow.evaluate.items`
(benchmark clips), so training and evaluation decode audio identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_RATE = 16000


def load_mono(source: Any) -> np.ndarray:
    """``source`` as float32 mono samples at 16 kHz.

    ``source`` is a path (str or Path) or a binary file-like object that soundfile reads,
    or a tuple ``(samples, rate)`` of 1-D float32 samples already decoded.
    """
    if isinstance(source, tuple):
        mono, rate = source
    else:
        import soundfile as sf

        data, rate = sf.read(source, dtype="float32", always_2d=True)
        mono = data.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)
