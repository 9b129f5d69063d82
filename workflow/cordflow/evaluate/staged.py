"""Staged multiple-choice datasets (the :class:`~cordflow.evaluate.kinds.DatasetKind`
kinds: voicebench, mmau) read offline and turned into benchmark items.

Contract: :func:`dataset_rows` ``(kind, entry, where) -> (rows, excluded)`` as
``BenchmarkKind.items`` promises (cordflow.evaluate.kinds). The entry's ``path`` is read
offline only, by :func:`open_dataset`: a ``save_to_disk`` folder (``path`` or
``path/subset``), a local data file (.json, .jsonl, .parquet, .csv), a folder of
``<split>-NNNNN-of-NNNNN.parquet`` files, a hub repo's folder, or a dataset in the datasets
cache. One that is not staged raises :class:`~cordflow.evaluate.items.NotStaged` with the
kind's ``stage_hint``. Audio columns are cast to raw bytes (``Audio(decode=False)``) and
decoded later by :class:`~cordflow.evaluate.items.AudioClip`.

Splits are read in the entry's ``splits`` order (all, in the dataset's order, when empty),
at most ``limit`` rows each. Per row: the id (the ``id`` column, or ``"<split>:<row>"``),
the question and answer columns, the options (the ``choices`` column, else read out of the
question by :func:`split_options`), the answer as a letter, and the clip's duration from
its header. A row that fails one of these is excluded with a reason
(``missing_field``, ``duplicate_id``, ``bad_choices``, ``no_options``, ``bad_answer``,
``bad_audio``). A kind without a text form (``has_text`` False) asks the question with the
clip (``audio_text``: the question and its options) and has no text prompt.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cordflow.evaluate.items import AudioClip, BenchmarkError, NotStaged, probe
from cordflow.source.schema import LETTERS


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


def open_dataset(kind, entry: dict, where: str) -> tuple[dict[str, Any], Path | None]:
    """({split: datasets.Dataset}, folder that relative audio paths start from), read
    offline (see the module docstring); not staged: :class:`NotStaged` saying what to
    stage where (``kind.stage_hint``)."""
    from cordflow.source.hf import offline_datasets

    datasets = offline_datasets()
    try:
        ds, base_dir = _read(datasets, entry, where)
    except BenchmarkError:
        raise
    except Exception as e:  # not found locally, whatever datasets says: say what to stage
        sub = entry.get("subset")
        hint = kind.stage_hint.format(subset=sub or "<subset>", path=entry["path"],
                                      where=where)
        raise NotStaged(f"{where}: the {kind.name} dataset '{entry['path']}'"
                        + (f" (subset '{sub}')" if sub else "")
                        + f" is not staged on this machine and nothing is downloaded. To "
                        f"stage it, {hint}.\n(datasets said: {type(e).__name__}: {e})") from e
    if isinstance(ds, datasets.Dataset):
        return {str(ds.split) if ds.split else "train": ds}, base_dir
    return dict(ds), base_dir


def _columns(kind, entry: dict, ds, where: str) -> dict[str, str | None]:
    """The kind's column mapping with the entry's overrides, checked against ``ds``."""
    m = dict(kind.mapping)
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
                   for c, end in zip(chain, ends, strict=True)]
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


def dataset_rows(kind, entry: dict, where: str) -> tuple[list[dict], list[dict]]:
    """Items and exclusions of a staged dataset of ``kind`` (a DatasetKind), split by split."""
    from datasets import Audio
    from tqdm import tqdm

    from cordflow.source.rows import compose_question

    loaded, base_dir = open_dataset(kind, entry, where)
    wanted = entry.get("splits") or list(loaded)
    missing = [s for s in wanted if s not in loaded]
    if missing:
        raise BenchmarkError(f"{where}.splits: the dataset has no split(s) {missing} (it has "
                             f"{list(loaded)})")
    rows, excluded, seen = [], [], set()
    for split in wanted:
        ds = loaded[split]
        m = _columns(kind, entry, ds, where)
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
                item = _item(kind, row, m, compose_question)
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


def _item(kind, row: dict, m: dict, compose_question) -> dict:
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
    letter = _letter(answer, choices, text_first=kind.answer_text_first)
    if letter is None:
        raise _Exclude("bad_answer", f"answer '{answer}' is neither a letter A-"
                       f"{LETTERS[len(choices) - 1]} nor exactly one option's text")
    if not kind.has_text:  # the question is asked with the clip, options and all
        return {"question": None, "audio_text": compose_question(question, choices),
                "answer": letter, "answer_type": "choice", "choices": choices}
    return {"question": question, "audio_text": None, "answer": letter,
            "answer_type": "choice", "choices": choices}
