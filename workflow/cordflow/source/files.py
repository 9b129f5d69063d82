"""Local QA files: jsonl, csv, parquet, each with a column mapping.

Bytes are decoded as UTF-8 with ``surrogateescape``, so a row with invalid UTF-8 is still
read (and then rejected with its bytes shown as U+FFFD) instead of failing the file.
Origins are ``path:line``: the line where the row starts in a jsonl or csv file (as an
editor numbers it, the csv header being line 1), the 1-based row number in a parquet file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cordflow.source.rows import Candidate, has_surrogates

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
FIELDS = ("question", "answer", "choices", "answer_type", "split")


def file_format(entry: dict, where: str) -> str:
    fmt = entry.get("format", "auto")
    if fmt != "auto":
        return fmt
    suffix = Path(entry["path"]).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{where}.path: cannot tell the format of '{entry['path']}' from its "
                         f"suffix; set {where}.format to one of jsonl, csv, parquet")
    return FORMATS[suffix]


def _columns(entry: dict) -> dict[str, str]:
    """Field -> column. A field not mapped (null) reads the column of its own name when
    there is one (question and answer default to "question" and "answer")."""
    mapping = entry.get("mapping") or {}
    return {f: mapping.get(f) or f for f in FIELDS}


def _candidate(entry: dict, name: str, origin: str, row: dict, raw: Any) -> Candidate:
    cols = _columns(entry)
    values = {f: row.get(cols[f]) for f in FIELDS}
    if entry.get("split"):
        values["split"] = entry["split"]
    if values["answer_type"] is None and entry.get("answer_type", "auto") != "auto":
        values["answer_type"] = entry["answer_type"]
    return Candidate(source=name, origin=origin, raw=raw, dollars=entry.get("dollars", "math"),
                     **values)


def _read_text(path: Path) -> str:
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def _jsonl(entry: dict, name: str, path: Path) -> Iterator[Candidate]:
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        origin = f"{entry['path']}:{lineno}"
        if has_surrogates(line):
            yield Candidate(name, origin, line, error="invalid_utf8: the line is not valid UTF-8")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield Candidate(name, origin, line, error=f"invalid_json: {e.msg} (column {e.colno})")
            continue
        if not isinstance(row, dict):
            yield Candidate(name, origin, line,
                            error=f"invalid_json: a {type(row).__name__}, not an object")
            continue
        yield _candidate(entry, name, origin, row, row)


def _check_columns(entry: dict, where: str, columns: list[str]) -> None:
    """csv and parquet have a header: a mapped column that is not there fails at once."""
    mapping = entry.get("mapping") or {}
    for f in FIELDS:
        col = mapping.get(f) or (f if f in ("question", "answer") else None)
        if col and col not in columns and not (f == "split" and entry.get("split")):
            raise ValueError(f"{where}.mapping.{f}: column '{col}' is not in {entry['path']} "
                             f"(columns: {columns}); fix the mapping")
    if not entry.get("split") and _columns(entry)["split"] not in columns:
        raise ValueError(f"{where}: {entry['path']} has no split column; give `split` (one "
                         "split for every row) or `mapping.split` (the column with each row's "
                         "split)")


def _csv(entry: dict, name: str, path: Path, where: str) -> Iterator[Candidate]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    _check_columns(entry, where, header)
    line_end = reader.line_num
    while True:
        start = line_end + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(f"{entry['path']}:{start}: unreadable csv ({e}); fix the file") from e
        line_end = reader.line_num
        if not record or all(not f.strip() for f in record):
            continue
        origin = f"{entry['path']}:{start}"
        raw = dict(zip(header, record)) if len(record) == len(header) else record
        if any(has_surrogates(f) for f in record):
            yield Candidate(name, origin, raw, error="invalid_utf8: the row is not valid UTF-8")
        elif len(record) != len(header):
            yield Candidate(name, origin, raw, error=f"malformed_row: {len(record)} fields, the "
                                                     f"header has {len(header)}")
        else:
            row = {k: (v if v.strip() else None) for k, v in raw.items()}
            yield _candidate(entry, name, origin, row, raw)


def _bytes_to_text(value: Any) -> Any:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _parquet(entry: dict, name: str, path: Path, where: str) -> Iterator[Candidate]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    _check_columns(entry, where, pf.schema_arrow.names)
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            row = {k: _bytes_to_text(v) for k, v in row.items()}
            origin = f"{entry['path']}:{n}"
            if any(isinstance(v, str) and has_surrogates(v) for v in row.values()):
                yield Candidate(name, origin, row, error="invalid_utf8: a value is not valid UTF-8")
            else:
                yield _candidate(entry, name, origin, row, row)


def check_entry(entry: dict, where: str) -> Path:
    """Fail fast on what no row could fix: a missing file, an unknown format, no split."""
    path = Path(entry["path"])
    if not path.is_file():
        raise FileNotFoundError(f"{where}.path: no such file '{entry['path']}' (relative paths "
                                f"are from the working directory {Path.cwd()})")
    file_format(entry, where)
    return path


def source_name(entry: dict) -> str:
    return entry.get("name") or Path(entry["path"]).name


def candidates(entry: dict, where: str) -> Iterator[Candidate]:
    path = check_entry(entry, where)
    name = source_name(entry)
    fmt = file_format(entry, where)
    if fmt == "jsonl":
        yield from _jsonl(entry, name, path)
    elif fmt == "csv":
        yield from _csv(entry, name, path, where)
    else:
        yield from _parquet(entry, name, path, where)
