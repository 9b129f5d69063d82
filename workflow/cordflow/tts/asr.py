"""Intelligibility of the clips: an offline recogniser's word error rate (``tts.quality.asr``).

Contract: :func:`transcribe` gives, per store key, what pocketsphinx heard in the clip and
its word error rate against the text that was spoken::

    WER = (S + D + I) / N

over words (S substitutions, D deletions, I insertions, N words of the spoken text; jiwer's
alignment), both sides normalised by :func:`words` (lower case; letters, digits and
apostrophes kept, everything else a word break; a number in digits written as its words,
num2words: "5" is "five", as a recogniser writes it). A WER above ``tts.quality.asr.max_wer``
flags the clip ``unintelligible`` (:mod:`cordflow.tts.quality`); the clip is kept and
usable, the flag is for a person to look at. ``tts.quality.asr.enabled: false`` (the
default) runs nothing and leaves ``asr_wer`` NaN and ``asr_heard`` empty.

The recogniser is pocketsphinx (the PyPI wheel ships CMU's US-English acoustic model,
dictionary and language model; nothing is downloaded), one decoder per process, fed each
16 kHz clip as 16-bit samples in one utterance: deterministic (the same clip gives the same
words). It is a generic recogniser, so its WER is an upper bound on what a listener would
miss: homophones count as errors ("four" heard as "for"); the threshold is the user's to
set.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[a-z0-9']+")
_DECODER = None


@dataclass(frozen=True)
class Heard:
    wer: float
    heard: str


def words(text: str) -> list[str]:
    """The words of ``text`` as the WER compares them (numbers in digits as words)."""
    from num2words import num2words

    out = []
    for w in WORD.findall(text.lower()):
        out += WORD.findall(num2words(int(w)).lower()) if w.isdigit() else [w]
    return out


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(S + D + I) / N of ``hypothesis`` against ``reference`` (N: reference words; a
    reference with no words gives 0 when nothing is heard, else 1)."""
    import jiwer

    ref, hyp = " ".join(words(reference)), " ".join(words(hypothesis))
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


def _decoder():
    global _DECODER
    if _DECODER is None:
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise SystemExit(
                "tts.quality.asr.enabled needs pocketsphinx (and jiwer) in the tts env: "
                "`pip install cordflow[tts]` (envs/tts.yaml, envs/coqui.yaml list them), or "
                "set tts.quality.asr.enabled: false") from e
        _DECODER = Decoder(samprate=16000, logfn=os.devnull)
    return _DECODER


def hear(samples: np.ndarray) -> str:
    """What the recogniser hears in 16 kHz mono float samples ("" in no samples)."""
    if samples.size == 0:
        return ""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    dec = _decoder()
    dec.start_utt()
    dec.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    return hyp.hypstr if hyp is not None else ""


def transcribe(clips: dict[str, tuple[str, str]], progress=None) -> dict[str, Heard]:
    """Store key -> :class:`Heard` for ``clips`` (key -> (FLAC path, spoken text))."""
    from cordflow.audio import load_mono

    out = {}
    for key, (path, text) in clips.items():
        heard = hear(load_mono(path))
        out[key] = Heard(word_error_rate(text, heard), heard)
        if progress is not None:
            progress.update(1)
    return out
