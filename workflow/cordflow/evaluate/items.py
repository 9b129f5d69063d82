"""Benchmark items: every entry of ``evaluate.benchmarks`` becomes one items frame.

An entry is ``{name, kind, ...}`` (config/schema.yaml documents every key); what a kind
reads and how is its adapter's business (:data:`cordflow.evaluate.kinds.KINDS`). This
module validates the entry, asks its kind for the rows, and checks them.

:func:`load` returns a :class:`Benchmark`: ``items`` (:data:`ITEMS_SCHEMA`, one row per
usable item, in the data's order) and ``excluded`` (``id``, ``reason`` as
``"<code>: <detail>"``); rows in = items + excluded. Items columns:

- ``id`` (str, unique): the QA id; VoiceBench ``"<split>:<row>"``; MMAU its ``id``.
- ``question`` (str | None): the TEXT prompt (options included); None for audio-only kinds.
- ``audio_text`` (str | None): text that goes WITH the audio in the audio prompt (mmau:
  the question and its options as "A: ..., B: ..."); None where the audio is the question.
- ``answer`` (str): as the QA tables write answers (a letter A.. for choice questions).
- ``answer_type`` (number | choice | text) and ``choices`` (list of str, or None).
- ``audio`` (:class:`AudioClip`): decoded on demand; ``clip.load()`` gives float32 mono
  samples at 16 kHz (:func:`cordflow.audio.load_mono`).
- ``duration`` (float, seconds, as stored) and ``category`` (str | None: the voice for
  qa_split, the dataset split for voicebench (MMSU's domain), the task for mmau).

Audio cells are read as raw bytes or paths and decoded with soundfile, so torchcodec
(which datasets 5.x needs to decode) is not needed.
"""

from __future__ import annotations

import copy
import io
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from cordflow.audio import load_mono
from cordflow.evaluate import kinds
from cordflow.source.schema import ANSWER_TYPES, answer_fits_type

log = logging.getLogger("cordflow.evaluate.items")

ITEM_COLUMNS = ["id", "question", "audio_text", "answer", "answer_type", "choices", "audio",
                "duration", "category"]


class BenchmarkError(ValueError):
    """A benchmark entry or its data cannot be used; the message names the place to fix."""


class NotStaged(BenchmarkError):
    """The benchmark's dataset is not on this machine (nothing is downloaded)."""


# ----------------------------------------------------------------------------- audio

def _sound_source(cell: Any, base_dir: Path | None) -> Any:
    """What soundfile reads for ``cell``: a path, a BytesIO, or (samples, rate) for arrays.

    ``cell`` is a path string, a datasets Audio cell ``{"bytes", "path"}`` (bytes win; a
    relative path is taken from ``base_dir``) or ``{"array", "sampling_rate"}``.
    """
    if isinstance(cell, dict):
        if cell.get("array") is not None:
            samples = np.asarray(cell["array"], dtype=np.float32)
            if samples.ndim != 1:
                raise ValueError(f"an array cell must be mono (1-D), not {samples.shape}")
            return samples, int(cell["sampling_rate"])
        if cell.get("bytes"):
            return io.BytesIO(cell["bytes"])
        cell = cell.get("path")
    if isinstance(cell, (str, Path)) and str(cell):
        path = Path(cell)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"audio file {path} does not exist")
        return str(path)
    raise ValueError(f"no audio in the cell (a {type(cell).__name__})")


def probe(cell: Any, base_dir: Path | None = None) -> float:
    """Duration in seconds from the header only; raises if the audio cannot be read."""
    import soundfile as sf

    source = _sound_source(cell, base_dir)
    if isinstance(source, tuple):
        frames, rate = len(source[0]), source[1]
    else:
        info = sf.info(source)
        frames, rate = info.frames, info.samplerate
    if frames <= 0 or rate <= 0:
        raise ValueError("the audio has no samples")
    return frames / rate


class AudioClip:
    """One item's audio, read on demand (a whole benchmark never sits in memory).

    ``load()`` gives float32 mono samples at 16 kHz. (No ``__array__``: numpy would then
    decode every clip of a column the moment the column became an array.)
    """

    __slots__ = ("_fetch", "base_dir", "where")

    def __init__(self, fetch: Callable[[], Any], base_dir: Path | None, where: str):
        self._fetch, self.base_dir, self.where = fetch, base_dir, where

    def load(self) -> np.ndarray:
        try:
            return load_mono(_sound_source(self._fetch(), self.base_dir))
        except Exception as e:
            raise BenchmarkError(f"{self.where}: cannot decode the audio ({e})") from e

    def __repr__(self) -> str:
        return f"AudioClip({self.where})"


# ----------------------------------------------------------------------------- schema

def _is_clip(s: pd.Series) -> pd.Series:
    return s.map(lambda c: isinstance(c, AudioClip))


def _optional_text(s: pd.Series) -> pd.Series:
    return s.map(lambda v: v is None or (isinstance(v, str) and bool(v.strip())))


ITEMS_SCHEMA = pa.DataFrameSchema(
    {
        "id": pa.Column(str, pa.Check(lambda s: s.str.strip().str.len() > 0), unique=True),
        "question": pa.Column(None, pa.Check(_optional_text, error="blank question"),
                              nullable=True),
        "audio_text": pa.Column(None, pa.Check(_optional_text, error="blank audio_text"),
                                nullable=True),
        "answer": pa.Column(str, pa.Check(lambda s: s.str.strip().str.len() > 0)),
        "answer_type": pa.Column(str, pa.Check.isin(ANSWER_TYPES)),
        "choices": pa.Column(object, nullable=True),
        "audio": pa.Column(object, pa.Check(_is_clip, error="audio is not an AudioClip")),
        "duration": pa.Column(float, pa.Check.gt(0)),
        "category": pa.Column(None, pa.Check(_optional_text, error="blank category"),
                              nullable=True),
    },
    checks=[
        pa.Check(answer_fits_type, error="answer does not fit its answer_type"),
        pa.Check(lambda df: (df["question"].notna() | df["audio_text"].notna()).all()
                 if len(df) else True, element_wise=False,
                 error="an item has neither a text prompt nor text with its audio"),
    ],
    strict=True,
    ordered=True,
    name="benchmark_items",
)


@dataclass
class Benchmark:
    """A loaded benchmark: usable ``items`` and the ``excluded`` ones with reasons."""

    name: str
    kind: str
    items: pd.DataFrame
    excluded: pd.DataFrame  # id, reason

    @property
    def has_text(self) -> bool:
        """Whether items have a text-only prompt (an audio-only kind has none: no gap)."""
        return kinds.KINDS[self.kind].has_text

    def counts(self) -> dict[str, int]:
        """Excluded items per reason code."""
        return dict(sorted(Counter(r.split(":", 1)[0] for r in self.excluded["reason"]).items()))

    def summary(self) -> str:
        why = ", ".join(f"{k}: {v}" for k, v in self.counts().items())
        n_in = len(self.items) + len(self.excluded)
        return (f"benchmark '{self.name}' ({self.kind}): {n_in} rows in = {len(self.items)} "
                f"items + {len(self.excluded)} excluded" + (f" ({why})" if why else ""))


# ----------------------------------------------------------------------------- entries

def entry_config(entry: dict, where: str = "evaluate.benchmarks[]") -> dict:
    """One ``evaluate.benchmarks`` entry validated against its schema, defaults filled."""
    from cordflow.config import schema_part, validate_with_defaults

    cfg = copy.deepcopy(entry)
    errors = validate_with_defaults(cfg, schema_part("evaluate", "benchmarks", "items"), where)
    if errors:
        hint = (f" ({kinds.requires_hint()})" if any("required" in e or "should not be valid"
                                                     in e for e in errors) else "")
        raise BenchmarkError(f"invalid benchmark entry{hint}:\n  " + "\n  ".join(errors))
    return cfg


def find(params: dict, name: str) -> dict:
    """The entry named ``name`` in the params' ``evaluate.benchmarks``, validated."""
    from cordflow.config import section

    entries = section(params, "evaluate")["benchmarks"]
    for i, entry in enumerate(entries):
        if entry["name"] == name:
            return entry_config(entry, f"evaluate.benchmarks[{i}]")
    raise BenchmarkError(f"no benchmark named '{name}' in evaluate.benchmarks "
                         f"(names: {[e['name'] for e in entries]})")


def load(entry: dict, inputs: dict[str, str | Path | None] | None = None) -> Benchmark:
    """Load one benchmark entry. ``inputs``: the files its kind reads, by name (qa_split:
    ``{"qa": the QA table, "manifest": the audio manifest}``); None values count as absent."""
    entry = entry_config(entry, f"evaluate.benchmarks[{entry.get('name')!r}]")
    where = f"evaluate.benchmarks[{entry['name']!r}]"
    kind = kinds.KINDS[entry["kind"]]
    given = {k: v for k, v in (inputs or {}).items() if v is not None}
    needed = kind.inputs(entry)
    if any(k not in given for k in needed):
        raise BenchmarkError(f"{where}: a {kind.name} benchmark needs "
                             + " and ".join(f"--{k} {path}" for k, path in needed.items()))
    rows, excluded = kind.items(entry, given, where)
    items = ITEMS_SCHEMA.validate(pd.DataFrame(rows, columns=ITEM_COLUMNS).astype(
        {"id": str, "answer": str, "answer_type": str, "duration": float}))
    bench = Benchmark(entry["name"], entry["kind"], items.reset_index(drop=True),
                      pd.DataFrame(excluded, columns=["id", "reason"]).astype(str))
    log.info(bench.summary())
    if bench.excluded.shape[0]:
        log.warning("%s: e.g. %s: %s", where, *bench.excluded.iloc[0])
    if len(bench.items) == 0:
        raise BenchmarkError(f"{bench.summary()}: no usable item; fix the data or the "
                             f"entry's mapping ({where})")
    return bench
