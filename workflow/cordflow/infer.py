"""Batched greedy answers from the text prompt or the audio prompt, and their accuracy.

Used by the evaluation stage and by training stages that check accuracy on the way (the
tiny base's text bar). Items are a frame with ``question``, ``answer``, ``answer_type``,
``choices`` and, for audio, ``audio_path`` (a clip file) or ``audio`` (a benchmark's
AudioClip or a float32 16 kHz array), and optionally ``audio_text`` (words asked with the
clip, e.g. MMAU's question and options).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from cordflow import models, scoring


def _audio(row) -> np.ndarray:
    """The clip of an item: a benchmark's AudioClip (``audio``) or a file (``audio_path``)."""
    clip = row.get("audio")
    if clip is not None:
        return clip.load() if hasattr(clip, "load") else np.asarray(clip, dtype=np.float32)
    return models.read_audio(row["audio_path"])


def prompts(loaded: models.Loaded, rows: pd.DataFrame, modality: str) -> dict:
    """The prompt batch of ``rows`` for ``modality`` (text | audio)."""
    if modality == "text":
        return models.encode_text(loaded, list(rows["question"]))
    if modality == "audio":
        texts = ([t if isinstance(t, str) else None for t in rows["audio_text"]]
                 if "audio_text" in rows else None)
        return models.encode_audio(loaded, [_audio(r) for _, r in rows.iterrows()], texts)
    raise ValueError(f"modality must be text or audio, not {modality!r}")


@torch.no_grad()
def answers(loaded: models.Loaded, items: pd.DataFrame, modality: str, batch_size: int,
            max_new_tokens: int, desc: str | None = None) -> list[str]:
    """Greedy completions (decoded, stripped) for every item, in order."""
    from tqdm import tqdm

    out: list[str] = []
    starts = range(0, len(items), batch_size)
    for s in tqdm(starts, desc=desc or f"{modality} answers", unit="batch", disable=desc is None,
                  mininterval=2.0, ncols=100):
        rows = items.iloc[s:s + batch_size]
        comp = models.generate(loaded, prompts(loaded, rows, modality), max_new_tokens)
        out.extend(models.decode(loaded, comp))
    return out


def correct(preds: Sequence[str], items: pd.DataFrame) -> list[bool]:
    """Per item: does the prediction give the gold answer (one scorer for both prompts)."""
    return [
        scoring.match(p, r["answer"], r["answer_type"], choices=r["choices"])
        for p, (_, r) in zip(preds, items.iterrows())
    ]


def accuracy(loaded: models.Loaded, items: pd.DataFrame, modality: str, batch_size: int,
             max_new_tokens: int) -> float:
    if len(items) == 0:
        return float("nan")
    preds = answers(loaded, items, modality, batch_size, max_new_tokens)
    return float(np.mean(correct(preds, items)))
