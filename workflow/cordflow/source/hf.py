"""Hugging Face datasets, offline only, with ready mappings for known datasets.

A dataset is read with ``datasets.load_from_disk`` when ``path`` is a folder written by
``save_to_disk``, else with ``datasets.load_dataset(path, name, cache_dir=...)`` under
HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1: a local folder of data files (a hub repo's
layout) or a dataset already in the HF datasets cache. Nothing is ever downloaded; a
dataset that is not staged fails at once with what to stage where.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cordflow.source.rows import Candidate

# preset -> column mapping and how to read the answer.
#   extract: none | boxed (last \boxed{...} of the column) | hashes (text after "####")
#   dollars: math ($...$ is LaTeX) | currency ($5 is money)
PRESETS: dict[str, dict[str, Any]] = {
    "numinamath": {"question": "problem", "answer": "solution", "choices": None,
                   "answer_type": "auto", "extract": "boxed", "dollars": "math"},
    "gsm8k": {"question": "question", "answer": "answer", "choices": None,
              "answer_type": "number", "extract": "hashes", "dollars": "currency"},
    "openbookqa": {"question": "question_stem", "answer": "answerKey", "choices": "choices",
                   "answer_type": "choice", "extract": "none", "dollars": "currency"},
    "custom": {"question": "question", "answer": "answer", "choices": None,
               "answer_type": "auto", "extract": "none", "dollars": "math"},
}
# Where each preset's dataset lives on the hub, for the "stage it like this" message.
HUB_NAMES = {
    "numinamath": ("AI-MO/NuminaMath-CoT", None),
    "gsm8k": ("openai/gsm8k", "main"),
    "openbookqa": ("allenai/openbookqa", "main"),
}


class NotStaged(RuntimeError):
    """The dataset is not available locally."""


def mapping(entry: dict) -> dict[str, Any]:
    m = dict(PRESETS[entry["preset"]])
    m.update(entry.get("mapping") or {})
    bad = sorted(set(m) - set(PRESETS["custom"]))
    if bad:
        raise ValueError(f"source.hf mapping keys {bad} are unknown; allowed: "
                         f"{sorted(PRESETS['custom'])}")
    return m


# ----------------------------------------------------------------------------- answers

def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``), nested braces
    matched; None if there is none or its braces never close."""
    starts = [i for key in ("\\boxed", "\\fbox") for i in _find_all(text, key)]
    for start in sorted(starts, reverse=True):
        i = start + (6 if text.startswith("\\boxed", start) else 5)
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] != "{":
            continue
        depth, j = 0, i
        while j < len(text):
            if text[j] == "\\":
                j += 2  # an escaped character, such as \{
                continue
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
            j += 1
        return None
    return None


def _find_all(text: str, key: str) -> Iterator[int]:
    i = text.find(key)
    while i >= 0:
        after = text[i + len(key) : i + len(key) + 1]
        if not after.isalpha():  # \boxed, not \boxedfoo
            yield i
        i = text.find(key, i + 1)


def after_hashes(text: str) -> str | None:
    """GSM8K: the final answer follows "####"; thousands commas are dropped."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def extract_answer(value: Any, how: str) -> tuple[Any, str | None]:
    """(answer, error). The error is a rejection reason when nothing can be extracted."""
    if how == "none" or not isinstance(value, str):
        return value, None
    if how == "boxed":
        found = last_boxed(value)
        return found, None if found else "unparseable_answer: no complete \\boxed{...} answer"
    found = after_hashes(value)
    return found, None if found else "unparseable_answer: no '####' final answer"


# ----------------------------------------------------------------------------- loading

def offline_datasets():
    """The ``datasets`` module with the hub switched off: it reads local copies and caches
    only, and fails rather than download (also used by cordflow.evaluate.staged)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    return datasets


def _stage_hint(entry: dict, where: str) -> str:
    if entry["preset"] in HUB_NAMES:
        name, config = HUB_NAMES[entry["preset"]]
    else:
        name, config = entry["path"], entry.get("name")
    args = repr(name) + (f", {config!r}" if config else "")
    return (
        f"{where}: the dataset '{entry['path']}' is not staged on this machine and nothing "
        f"is downloaded. Either, on a machine with network, run\n"
        f"    python -c \"import datasets; datasets.load_dataset({args})"
        f".save_to_disk('{entry['path']}')\"\n"
        f"and copy the folder it writes to '{entry['path']}' here (relative to {Path.cwd()}); "
        f"or run datasets.load_dataset({args}) there, copy its datasets cache here, point "
        f"HF_DATASETS_CACHE (or {where}.cache_dir) at it and set {where}.path to '{name}'"
        + (f" and {where}.name to '{config}'." if config else ".")
    )


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_dict.json", "state.json")
    )


def load(entry: dict, where: str) -> dict[str, Any]:
    """The dataset as {split name: datasets.Dataset}."""
    datasets = offline_datasets()
    path = Path(entry["path"])
    try:
        if is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
        elif path.is_dir() and entry.get("name") and (path / entry["name"]).is_dir():
            # a hub repo's files with one folder per config (gsm8k: main/, socratic/)
            ds = datasets.load_dataset(str(path), data_dir=entry["name"],
                                       cache_dir=entry.get("cache_dir"))
        else:
            ds = datasets.load_dataset(entry["path"], entry.get("name"),
                                       cache_dir=entry.get("cache_dir"))
    except Exception as e:  # any failure to find it locally: say what to stage
        raise NotStaged(f"{_stage_hint(entry, where)}\n(datasets said: "
                        f"{type(e).__name__}: {e})") from e
    if isinstance(ds, datasets.Dataset):
        return {str(ds.split) if ds.split else "train": ds}
    return dict(ds)


def selected_splits(entry: dict, available: list[str], where: str) -> list[tuple[str, str]]:
    """[(dataset split, our split)]: the configured map, or every split under its own name."""
    wanted = entry.get("splits") or {s: s for s in available}
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ValueError(f"{where}.splits: dataset '{entry['path']}' has no split(s) {missing} "
                         f"(it has {available})")
    return list(wanted.items())


def source_name(entry: dict) -> str:
    """The ``source`` recorded per row: source_name, else the preset (custom: the path)."""
    if entry.get("source_name"):
        return entry["source_name"]
    return entry["preset"] if entry["preset"] != "custom" else Path(entry["path"]).name


def candidates(entry: dict, where: str, loaded: dict[str, Any] | None = None
               ) -> Iterator[Candidate]:
    m = mapping(entry)
    loaded = loaded if loaded is not None else load(entry, where)
    name = source_name(entry)
    for ds_split, our_split in selected_splits(entry, list(loaded), where):
        ds = loaded[ds_split]
        for col in ("question", "answer", "choices"):
            if m[col] and m[col] not in ds.column_names:
                raise ValueError(f"{where}: column '{m[col]}' (mapping.{col}) is not in split "
                                 f"'{ds_split}' of {entry['path']} (columns: {ds.column_names})")
        if entry.get("limit"):
            ds = ds.select(range(min(entry["limit"], len(ds))))
        for i, row in enumerate(ds):
            answer, error = extract_answer(row.get(m["answer"]), m["extract"])
            yield Candidate(
                source=name,
                origin=f"hf:{entry['path']}:{ds_split}:{i}",
                raw=row,
                question=row.get(m["question"]),
                answer=answer,
                choices=row.get(m["choices"]) if m["choices"] else None,
                answer_type=None if m["answer_type"] == "auto" else m["answer_type"],
                split=our_split,
                dollars=m["dollars"],
                error=error,
            )


def count(entry: dict, loaded: dict[str, Any], where: str) -> int:
    n = 0
    for ds_split, _ in selected_splits(entry, list(loaded), where):
        size = len(loaded[ds_split])
        n += min(size, entry["limit"]) if entry.get("limit") else size
    return n
