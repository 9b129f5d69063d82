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


class ClipError(RuntimeError):
    """A clip file that cannot be read or decoded; the message names the file and item."""


def _audio(row) -> np.ndarray:
    """The clip of an item: a benchmark's AudioClip (``audio``) or a file (``audio_path``,
    e.g. a training clip from the manifest: an unreadable one raises :class:`ClipError`
    naming the file and the item id, not only the decoder's complaint)."""
    clip = row.get("audio")
    if clip is not None:
        return clip.load() if hasattr(clip, "load") else np.asarray(clip, dtype=np.float32)
    path = row["audio_path"]
    try:
        return models.read_audio(path)
    except Exception as e:
        take = row.get("take")
        what = f"item {row.get('id')}" + (f" take {take}" if take is not None else "")
        raise ClipError(f"cannot decode the clip {path} ({what}): {type(e).__name__}: {e}; "
                        "`cordflow audit results/audio/manifest.parquet` names the TTS shard "
                        "to rerun for a damaged clip") from e


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
            max_new_tokens: int, desc: str | None = None, engine=None) -> list[str]:
    """Greedy completions (decoded, stripped) for every item, in order; from ``engine``
    (a rollout engine, e.g. vLLM: ``evaluate.engine``) when given, else transformers."""
    from tqdm import tqdm

    out: list[str] = []
    starts = range(0, len(items), batch_size)
    for s in tqdm(starts, desc=desc or f"{modality} answers", unit="batch", disable=desc is None,
                  mininterval=2.0, ncols=100):
        rows = items.iloc[s:s + batch_size]
        batch = prompts(loaded, rows, modality)
        comp = (engine.generate(batch, max_new_tokens, 0.0) if engine is not None
                else models.generate(loaded, batch, max_new_tokens))
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
