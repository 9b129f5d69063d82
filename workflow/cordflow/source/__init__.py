"""Stage ``source``: text QA from the built-in generator, local files and staged HF datasets.

Writes ``{split}.parquet`` per split in ``source.splits`` and ``rejected.parquet``:

- QA tables (:data:`QA_SCHEMA`, sorted by id, byte-identical for the same seed): ``id``
  (16 hex: sha256 of source, question, answer), ``question`` (the text prompt, options
  appended as "A: ..., B: ..."), ``spoken`` (what the TTS reads), ``answer`` (canonical:
  "12", "-3", "0.5"; a letter for choices; whitespace-normalised text), ``choices`` (list
  of str or null), ``answer_type`` (number | choice | text), ``split``, ``source``,
  ``origin`` ("path:line", "hf:<path>:<split>:<index>", "builtin:<family>:<i>").
- ``rejected.parquet`` (:data:`REJECTED_SCHEMA`): ``source``, ``origin``, ``reason``
  ("<code>: <what is wrong>"), ``row`` (the raw row as JSON); ``rejected.html``: the same
  rows as a table for the report.

Rows in = kept + rejected, per source and in total, or the stage fails. Sources are read
in order (built-in, files, datasets); of two questions that sound the same the first is
kept. Use :func:`read_qa` to read a QA table back (``choices`` as lists, schema-checked).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cordflow.io import write_html_table

# Only the schema is imported eagerly: other stages import QA_SCHEMA / read_qa from here
# in environments without the sourcing packages (num2words, datasets).
from cordflow.source.schema import (
    QA_ARROW,
    QA_SCHEMA,
    REJECTED_ARROW,
    REJECTED_SCHEMA,
    qa_frame,
    read_qa,
    rejected_frame,
    write_table,
)

__all__ = ["QA_SCHEMA", "REJECTED_SCHEMA", "read_qa", "run", "input_paths", "output_paths",
           "source_config"]

log = logging.getLogger("cordflow.source")


def source_config(params: dict) -> dict:
    """The ``source`` section validated against config/schema.yaml, defaults filled in (so
    ``--params`` given by hand may leave keys out)."""
    from cordflow.config import section

    return section(params, "source")


def output_paths(params: dict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    splits = source_config(params)["splits"]
    return [out_dir / f"{s}.parquet" for s in splits] + [out_dir / "rejected.parquet",
                                                         out_dir / "rejected.html"]


def input_paths(params: dict) -> list[Path]:
    """Local files and staged HF dataset folders (for provenance)."""
    cfg = source_config(params)
    paths = [Path(f["path"]) for f in cfg["files"]]
    paths += [Path(e["path"]) for e in cfg["hf"] if Path(e["path"]).exists()]
    return paths


def _batches(cfg: dict, seed: int) -> list:
    """(label, candidates, total) per source; every file and dataset is checked up front,
    so a missing one fails before any work is done."""
    from cordflow.source import builtin, files, hf

    splits = cfg["splits"]
    batches = []
    if cfg["builtin"]["enabled"]:
        total = builtin.count(cfg["builtin"], splits)
        batches.append(("builtin", builtin.candidates(cfg["builtin"], splits, seed), total))
    for i, entry in enumerate(cfg["files"]):
        where = f"source.files[{i}]"
        files.check_entry(entry, where)
        batches.append((f"{where} {files.source_name(entry)}", files.candidates(entry, where),
                        None))
    for i, entry in enumerate(cfg["hf"]):
        where = f"source.hf[{i}]"
        hf.mapping(entry)
        loaded = hf.load(entry, where)
        batches.append((f"{where} {hf.source_name(entry)}", hf.candidates(entry, where, loaded),
                        hf.count(entry, loaded, where)))
    return batches


def run(params: dict, out_dir: str | Path) -> None:
    from cordflow.source.rows import process

    cfg = source_config(params)
    seed = int(params.get("seed", 0))
    out_dir = Path(out_dir)
    outcome = process(_batches(cfg, seed), cfg["splits"], cfg["max_chars"])

    for split in cfg["splits"]:
        rows = sorted((r for r in outcome.kept if r["split"] == split), key=lambda r: r["id"])
        df = QA_SCHEMA.validate(qa_frame(rows))
        write_table(df, out_dir / f"{split}.parquet", QA_ARROW)
        log.info("wrote %s: %d rows", out_dir / f"{split}.parquet", len(df))
    rejected = REJECTED_SCHEMA.validate(rejected_frame(outcome.rejected))
    write_table(rejected, out_dir / "rejected.parquet", REJECTED_ARROW)
    # The same rows for the report, which shows HTML (a parquet file it offers as text).
    write_html_table(rejected, out_dir / "rejected.html", "Rejected QA rows",
                     "Rows the sourcing stage did not keep, with their origin and reason "
                     "(the data: rejected.parquet beside this file).")
    log.info("wrote %s: %d rows", out_dir / "rejected.parquet", len(rejected))
