"""Spoken QA pairs for the model stages: a QA table joined with the audio manifest.

:func:`spoken_pairs` gives one row per usable clip (id, take, question, answer,
answer_type, choices, split, audio_path, voice): a train question spoken in several voices
(``tts.train_takes``) gives a row per take. Only the main voicing's clips are used (those of
``tts.voicings`` are for benchmarks). Clips the TTS quality checks rejected and
questions with no clip at all are counted and logged with their reasons, never dropped
silently. :class:`Batches` deals deterministic batches by step number, so a resumed
training run sees exactly the batches an uninterrupted one would. :class:`Prefetch` prepares
the next step's batch in a background thread while the current step computes (what a data
loader's worker does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import pandas as pd

log = logging.getLogger("cordflow.data")
T = TypeVar("T")


@dataclass
class Pairs:
    items: pd.DataFrame
    excluded: pd.DataFrame  # id, take (<NA>: the question has no clip at all), reason

    def __len__(self) -> int:
        return len(self.items)


def spoken_pairs(qa_path: str | Path, manifest_path: str | Path | None) -> Pairs:
    """Join ``qa_path`` with the manifest on id: a row per usable clip (without a manifest:
    a row per question, text only)."""
    from cordflow.source import read_qa

    qa = read_qa(qa_path)
    if manifest_path is None:
        items = qa.assign(audio_path=None, voice=None)
        return Pairs(items.reset_index(drop=True), pd.DataFrame(columns=["id", "take", "reason"]))
    from cordflow.tts.schema import read_manifest

    manifest = read_manifest(manifest_path)
    # the main voicing only: the clips of tts.voicings are benchmarks, never trained on
    manifest = manifest[manifest["id"].isin(qa["id"]) & (manifest["voicing"] == "main")]
    ok = manifest["status"] != "rejected"
    clips = manifest.loc[ok, ["id", "take", "path", "voice"]].rename(
        columns={"path": "audio_path"})
    items = qa.merge(clips, on="id", how="left", validate="one_to_many")
    missing = items["audio_path"].isna()
    rejected = manifest.loc[~ok]
    excluded = pd.concat([
        pd.DataFrame({"id": rejected["id"], "take": rejected["take"],
                      "reason": [f"tts_rejected: {r}" for r in rejected["reason"]]}),
        pd.DataFrame({"id": items.loc[missing & ~items["id"].isin(rejected["id"]), "id"],
                      "take": pd.NA,
                      "reason": f"no_clip: {manifest_path} has no clip for it"}),
    ], ignore_index=True)
    if len(excluded):
        log.warning("%s: %d clip(s) or question(s) left out of audio training (e.g. %s %s)",
                    qa_path, len(excluded), excluded["id"].iloc[0], excluded["reason"].iloc[0])
    items = items.loc[~missing].reset_index(drop=True)
    items["take"] = items["take"].astype("int64")
    return Pairs(items, excluded.reset_index(drop=True))


class Batches:
    """Batch ``step`` of an endless, seeded shuffle of ``n`` items (epoch by epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n == 0:
            raise SystemExit("no training items: check the QA table and the audio manifest")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def __call__(self, step: int) -> np.ndarray:
        per_epoch = self.n // self.batch_size
        epoch, i = divmod(step, per_epoch)
        return self._perm(epoch)[i * self.batch_size:(i + 1) * self.batch_size]


class Prefetch(Generic[T]):
    """``fn(step)``, with ``fn(step + 1)`` started in a background thread as ``fn(step)`` is
    handed out, so input preparation (audio decoding, features, tokenization) overlaps the
    step's compute; ``background=False`` calls ``fn`` inline. ``fn`` must depend on ``step``
    only (no shared RNG, no shared mutable state): the result is then exactly ``fn(step)``
    in any call order, resumes included. A failure in the background is raised by the call
    that asks for that step."""

    def __init__(self, fn: Callable[[int], T], background: bool = True):
        self.fn = fn
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="cordflow-prefetch")
                      if background else None)
        self._next: tuple[int, Future] | None = None

    def __call__(self, step: int) -> T:
        if self._pool is None:
            return self.fn(step)
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == step:
            out = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].cancel()
            out = self.fn(step)
        self._next = (step + 1, self._pool.submit(self.fn, step + 1))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._next = None
