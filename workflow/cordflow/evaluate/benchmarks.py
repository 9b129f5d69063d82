"""Benchmark adapters: every entry of ``evaluate.benchmarks`` becomes one items frame.

An entry is ``{name, kind, ...}`` (config/schema.yaml documents every key). Kinds:

``qa_split``
    Our own held-out QA: ``results/qa/{split}.parquet`` joined on id with the audio manifest
    (``cordflow.tts.read_manifest``). Questions whose clip the TTS quality checks rejected
    are excluded and counted (``tts_rejected: <its reason>``), as are questions without a
    clip (``no_clip``); flagged clips are used. Spoken GSM8K
    is this kind: GSM8K sourced through ``source.hf`` (preset gsm8k) into its own split and
    spoken by the TTS stage (README, "Benchmarks and the gap table").
``voicebench``
    VoiceBench's multiple-choice subsets (``mmsu``, ``openbookqa``) from a staged copy of
    ``hlt-lab/voicebench``: columns ``audio`` (the spoken question), ``prompt`` (its text,
    options inline as "A. ..." lines) and ``reference`` (the answer letter). The options
    are read out of the prompt unless ``mapping.choices`` names a column.
``mmau``
    MMAU (the official ``mmau-test-mini.json`` with its audio folder, or a staged HF copy):
    ``audio_id`` or ``audio`` (a sound, music or speech clip), ``question``, ``choices``
    and ``answer`` (the text of the right option), ``task`` (sound | music | speech). The
    question is asked WITH the clip; there is no text-only counterpart, so it measures the
    audio skills kept and stays out of the gap arithmetic.

Datasets are read offline only (a ``save_to_disk`` folder, a local data file or folder of
data files, or the datasets cache); one that is not staged fails at once saying what to
stage where. Audio is read as raw bytes (``Audio(decode=False)``) and decoded with
soundfile, so torchcodec (which datasets 5.x needs to decode) is not needed.

:func:`load` returns a :class:`Benchmark`: ``items`` (:data:`ITEMS_SCHEMA`, one row per
usable item, in the dataset's order) and ``excluded`` (``id``, ``reason`` as
``"<code>: <detail>"``); rows in = items + excluded. Items columns:

- ``id`` (str, unique): the QA id; VoiceBench ``"<split>:<row>"``; MMAU its ``id``.
- ``question`` (str | None): the TEXT prompt (options included); None for mmau.
- ``audio_text`` (str | None): text that goes WITH the audio in the audio prompt (mmau:
  the question and its options as "A: ..., B: ..."); None where the audio is the question.
- ``answer`` (str): as the QA tables write answers (a letter A.. for choice questions).
- ``answer_type`` (number | choice | text) and ``choices`` (list of str, or None).
- ``audio`` (:class:`AudioClip`): decoded on demand; ``clip.load()`` gives float32 mono
  samples at 16 kHz (soxr-resampled if the stored rate differs).
- ``duration`` (float, seconds, as stored) and ``category`` (str | None: the voice for
  qa_split, the dataset split for voicebench (MMSU's domain), the task for mmau).
"""

from __future__ import annotations

import copy
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pandera.pandas as pa

from cordflow.source.schema import ANSWER_TYPES, LETTERS, _answer_fits_type

log = logging.getLogger("cordflow.evaluate.benchmarks")

SAMPLE_RATE = 16000
ITEM_COLUMNS = ["id", "question", "audio_text", "answer", "answer_type", "choices", "audio",
                "duration", "category"]
# Column each field is read from, per kind (``mapping`` in the entry overrides). mmau's
# audio None: "audio" when the dataset has it, else "audio_id" (the official JSON).
DEFAULT_MAPPING: dict[str, dict[str, str | None]] = {
    "voicebench": {"audio": "audio", "question": "prompt", "answer": "reference",
                   "choices": None, "id": None, "category": None},
    "mmau": {"audio": None, "question": "question", "answer": "answer", "choices": "choices",
             "id": "id", "category": "task"},
}
STAGE_HINTS = {
    "voicebench": (
        "on a machine with network run\n"
        "    python -c \"import datasets; datasets.load_dataset('hlt-lab/voicebench', "
        "'{subset}').save_to_disk('{path}/{subset}')\"\n"
        "(or: huggingface-cli download hlt-lab/voicebench --repo-type dataset "
        "--include '{subset}/*' --local-dir {path}) and copy what it writes to '{path}' here"
    ),
    "mmau": (
        "download mmau-test-mini.json and the test-mini audios from "
        "https://github.com/Sakshi113/MMAU, unpack both in one folder here and set {where}.path "
        "to the JSON file (its audio_id paths are read relative to it)"
    ),
}


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


def decode(cell: Any, base_dir: Path | None = None) -> np.ndarray:
    """The audio of ``cell`` as float32 mono at 16 kHz (channels averaged, soxr resampling)."""
    import soundfile as sf

    source = _sound_source(cell, base_dir)
    if isinstance(source, tuple):
        mono, rate = source
    else:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
        mono = data.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


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
            return decode(self._fetch(), self.base_dir)
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
        pa.Check(_answer_fits_type, error="answer does not fit its answer_type"),
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
        """Whether items have a text-only prompt (mmau has none: no gap)."""
        return self.kind != "mmau"

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
        lines = errors
        hint = (" (qa_split takes split, not path; voicebench and mmau take path, not "
                "split)" if any("required" in e or "should not be valid" in e
                                for e in errors) else "")
        raise BenchmarkError(f"invalid benchmark entry{hint}:\n  " + "\n  ".join(lines))
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


def load(entry: dict, qa: str | Path | None = None, manifest: str | Path | None = None
         ) -> Benchmark:
    """Load one benchmark entry. qa_split needs the QA table and the audio manifest."""
    entry = entry_config(entry, f"evaluate.benchmarks[{entry.get('name')!r}]")
    where = f"evaluate.benchmarks[{entry['name']!r}]"
    if entry["kind"] == "qa_split":
        rows, excluded = _qa_split(entry, qa, manifest, where)
    else:
        rows, excluded = _dataset_rows(entry, where)
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


# ----------------------------------------------------------------------------- qa_split

def _qa_split(entry: dict, qa, manifest, where: str) -> tuple[list[dict], list[dict]]:
    """Items of a QA table with a usable clip (status ok or flagged) in the manifest."""
    from tqdm import tqdm

    from cordflow.source import read_qa
    from cordflow.tts.schema import read_manifest

    if qa is None or manifest is None:
        raise BenchmarkError(f"{where}: a qa_split benchmark needs --qa results/qa/"
                             f"{entry['split']}.parquet and --manifest "
                             f"results/audio/manifest.parquet")
    table = read_qa(qa)
    other = sorted(set(table["split"]) - {entry["split"]})
    if other:
        raise BenchmarkError(f"{where}: split is '{entry['split']}' but {qa} holds split(s) "
                             f"{other}; pass results/qa/{entry['split']}.parquet")
    # A row per question: its take 0 (the train split may have more takes), rejected or not.
    clips = read_manifest(manifest)
    clips = clips[clips["take"] == 0].set_index("id")
    rows, excluded = [], []
    for r in tqdm(table.itertuples(), total=len(table), desc=f"{entry['name']} audio",
                  unit="clip", mininterval=2.0, ncols=100):
        clip = clips.loc[r.id] if r.id in clips.index else None
        if clip is None:
            excluded.append({"id": r.id, "reason": f"no_clip: {manifest} has no clip for it"})
            continue
        if clip["status"] == "rejected":
            excluded.append({"id": r.id, "reason": f"tts_rejected: {clip['reason']}"})
            continue
        try:
            duration = probe(clip["path"])
        except Exception as e:
            excluded.append({"id": r.id, "reason": f"bad_audio: {e}"})
            continue
        rows.append({"id": r.id, "question": r.question, "audio_text": None, "answer": r.answer,
                     "answer_type": r.answer_type, "choices": r.choices,
                     "audio": AudioClip(_constant(clip["path"]), None, f"{where} {r.id}"),
                     "duration": duration, "category": clip["voice"]})
    return rows, excluded


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


# ----------------------------------------------------------------------------- datasets

def _offline_datasets():
    from cordflow.source.hf import _offline_datasets as offline

    return offline()


def shard_files(folder: Path) -> dict[str, list[str]]:
    """{split: files} of a hub-style folder whose parquet files are named
    ``<split>-00000-of-00001.parquet`` (VoiceBench's mmsu/law-..., openbookqa/test-...)."""
    out: dict[str, list[str]] = {}
    for f in sorted(folder.glob("*.parquet")):
        m = _SHARD.fullmatch(f.name)
        if m:
            out.setdefault(m.group(1), []).append(str(f))
    return out


_SHARD = re.compile(r"(\w+?)-\d+-of-\d+\.parquet")
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _read(datasets, entry: dict, where: str):
    """(dataset or dict of splits, folder relative audio paths start from)."""
    from cordflow.source.hf import is_saved_dataset

    root, sub, cache = Path(entry["path"]), entry.get("subset"), entry.get("cache_dir")
    folder = root / sub if sub and (root / sub).is_dir() else root
    if is_saved_dataset(folder):
        return datasets.load_from_disk(str(folder)), folder
    if root.is_file():
        if root.suffix.lower() not in _BUILDERS:
            raise BenchmarkError(f"{where}.path: {root} is not a .json, .jsonl, .parquet or "
                                 f".csv file")
        return datasets.load_dataset(_BUILDERS[root.suffix.lower()], data_files=str(root),
                                     cache_dir=cache), root.parent
    if folder.is_dir() and shard_files(folder):
        return datasets.load_dataset("parquet", data_files=shard_files(folder),
                                     cache_dir=cache), folder
    if folder.is_dir():  # a hub repo's files (its README names the configs)
        return datasets.load_dataset(str(root), sub, cache_dir=cache), root
    return datasets.load_dataset(entry["path"], sub, cache_dir=cache), None  # the cache


def open_dataset(entry: dict, where: str) -> tuple[dict[str, Any], Path | None]:
    """({split: datasets.Dataset}, folder that relative audio paths start from), read
    offline: a save_to_disk folder (``path`` or ``path/subset``), a data file, a folder of
    ``<split>-NNNNN-of-NNNNN.parquet`` files (``path/subset`` in the hub's layout), a hub
    repo's folder, or a dataset in the datasets cache."""
    datasets = _offline_datasets()
    try:
        ds, base_dir = _read(datasets, entry, where)
    except BenchmarkError:
        raise
    except Exception as e:  # not found locally, whatever datasets says: say what to stage
        sub = entry.get("subset")
        hint = STAGE_HINTS[entry["kind"]].format(subset=sub or "<subset>", path=entry["path"],
                                                 where=where)
        raise NotStaged(f"{where}: the {entry['kind']} dataset '{entry['path']}'"
                        + (f" (subset '{sub}')" if sub else "")
                        + f" is not staged on this machine and nothing is downloaded. To "
                        f"stage it, {hint}.\n(datasets said: {type(e).__name__}: {e})") from e
    if isinstance(ds, datasets.Dataset):
        return {str(ds.split) if ds.split else "train": ds}, base_dir
    return dict(ds), base_dir


def _columns(entry: dict, ds, where: str) -> dict[str, str | None]:
    m = dict(DEFAULT_MAPPING[entry["kind"]])
    m.update({k: v for k, v in (entry.get("mapping") or {}).items()})
    if m["audio"] is None:
        m["audio"] = "audio" if "audio" in ds.column_names else "audio_id"
    for field, col in m.items():
        if col is not None and col not in ds.column_names:
            raise BenchmarkError(f"{where}.mapping.{field}: column '{col}' is not in the "
                                 f"dataset (columns: {ds.column_names})")
    return m


def split_options(prompt: str) -> tuple[str, list[str]] | None:
    """(stem, options) of a prompt that lists its options as "A. ...", "A) ...", "(A) ..."
    or "A: ..." (inline, comma-separated or one per line); None if it lists fewer than two.
    The LAST run of labels A, B, C... counts, so a stem that says "vitamin A." is no option."""
    labels = [(m.start(), m.end(), m.group(1)) for m in _LABEL.finditer(prompt)]
    for k in range(len(labels) - 1, -1, -1):
        if labels[k][2] != "A":
            continue
        chain = [labels[k]]
        for lab in labels[k + 1:]:
            if len(chain) < len(LETTERS) and lab[2] == LETTERS[len(chain)]:
                chain.append(lab)
        if len(chain) < 2:
            continue
        ends = [c[0] for c in chain[1:]] + [len(prompt)]
        options = [prompt[c[1]:end].strip().rstrip(",;").rstrip()
                   for c, end in zip(chain, ends)]
        if all(options):
            return prompt[: chain[0][0]].strip(), options
    return None


_LABEL = re.compile(r"(?<!\S)\(?([A-Z])[.):](?=\s)")


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _choices(value: Any) -> list[str] | None:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= len(LETTERS):
        return None
    out = [_text(v) for v in value]
    return out if all(out) else None


def _letter(answer: str, choices: list[str], text_first: bool) -> str | None:
    """The answer as a letter for ``choices``: a letter ("B", "(b)", "B.") or the text of
    exactly one option (compared exactly, then ignoring case). ``text_first``: try the
    text first (MMAU answers with the option's text; VoiceBench with a letter)."""

    def by_letter() -> str | None:
        m = re.fullmatch(r"\(?([A-Za-z])[).:]?", answer)
        ok = m is not None and m.group(1).upper() in LETTERS[: len(choices)]
        return m.group(1).upper() if ok else None

    def by_text() -> str | None:
        for fold in (str, str.casefold):
            hits = [i for i, c in enumerate(choices) if fold(c) == fold(answer)]
            if hits:
                return LETTERS[hits[0]] if len(hits) == 1 else None
        return None

    first, second = (by_text, by_letter) if text_first else (by_letter, by_text)
    return first() or second()


def _dataset_rows(entry: dict, where: str) -> tuple[list[dict], list[dict]]:
    """Items and exclusions of a voicebench or mmau dataset, split by split."""
    from datasets import Audio
    from tqdm import tqdm

    from cordflow.source.rows import compose_question

    loaded, base_dir = open_dataset(entry, where)
    wanted = entry.get("splits") or list(loaded)
    missing = [s for s in wanted if s not in loaded]
    if missing:
        raise BenchmarkError(f"{where}.splits: the dataset has no split(s) {missing} (it has "
                             f"{list(loaded)})")
    rows, excluded, seen = [], [], set()
    for split in wanted:
        ds = loaded[split]
        m = _columns(entry, ds, where)
        if isinstance(ds.features.get(m["audio"]), Audio):
            ds = ds.cast_column(m["audio"], Audio(decode=False))  # raw bytes: no torchcodec
        if entry.get("limit"):
            ds = ds.select(range(min(entry["limit"], len(ds))))
        audio_only = ds.select_columns([m["audio"]])
        for i, row in enumerate(tqdm(ds, desc=f"{entry['name']} {split}", unit="item",
                                     mininterval=2.0, ncols=100)):
            item_id = _row_id(row, m["id"], split, i)
            try:
                if item_id is None:
                    raise _Exclude("missing_field", f"id (column '{m['id']}') is empty")
                if item_id in seen:
                    raise _Exclude("duplicate_id", f"id '{item_id}' is not unique")
                seen.add(item_id)
                item = _item(entry["kind"], row, m, compose_question)
                item["duration"] = _probe(row[m["audio"]], base_dir)
            except _Exclude as e:
                excluded.append({"id": item_id or f"{split}:{i}", "reason": str(e)})
                continue
            item.update(id=item_id, category=_text(row[m["category"]]) if m["category"]
                        else split, audio=AudioClip(_cell(audio_only, i, m["audio"]), base_dir,
                                                    f"{where} {split}[{i}]"))
            rows.append(item)
    return rows, excluded


def _row_id(row: dict, column: str | None, split: str, i: int) -> str | None:
    """The id column's value (None if empty), or ``"<split>:<row>"`` without one."""
    if column is None:
        return f"{split}:{i}"
    return None if row[column] is None else _text(str(row[column]))


class _Exclude(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")


def _probe(cell: Any, base_dir: Path | None) -> float:
    try:
        return probe(cell, base_dir)
    except Exception as e:
        raise _Exclude("bad_audio", str(e) or type(e).__name__) from e


def _cell(ds, i: int, column: str) -> Callable[[], Any]:
    return lambda: ds[i][column]


def _item(kind: str, row: dict, m: dict, compose_question) -> dict:
    """question, audio_text, answer, answer_type, choices of one dataset row."""
    question, answer = _text(row[m["question"]]), _text(row[m["answer"]])
    if question is None or answer is None:
        raise _Exclude("missing_field", f"{'question' if question is None else 'answer'} "
                       f"(column '{m['question'] if question is None else m['answer']}') "
                       "is empty")
    if m["choices"]:
        choices = _choices(row[m["choices"]])
        if choices is None:
            raise _Exclude("bad_choices", f"column '{m['choices']}' is not a list of 2 to "
                           f"{len(LETTERS)} non-empty options")
    else:
        found = split_options(question)
        if found is None:
            raise _Exclude("no_options", "the prompt lists no options A., B., ... (map a "
                           "choices column with mapping.choices)")
        choices = found[1]
    letter = _letter(answer, choices, text_first=kind == "mmau")
    if letter is None:
        raise _Exclude("bad_answer", f"answer '{answer}' is neither a letter A-"
                       f"{LETTERS[len(choices) - 1]} nor exactly one option's text")
    if kind == "mmau":
        return {"question": None, "audio_text": compose_question(question, choices),
                "answer": letter, "answer_type": "choice", "choices": choices}
    return {"question": question, "audio_text": None, "answer": letter,
            "answer_type": "choice", "choices": choices}
