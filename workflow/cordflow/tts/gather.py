"""Rule ``tts_gather``: the shard tables -> ``manifest.parquet`` and ``rejected.parquet``.

The manifest has every row of every shard (:data:`~cordflow.tts.CLIP_SCHEMA`, one per clip,
sorted by id and take); ``rejected.parquet`` beside it holds the rejected rows (same columns)
and ``rejected.html`` the same rows for the report. Every clip file must exist. Clips in =
ok + flagged + rejected, logged per status and per split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cordflow.io import write_html_table
from cordflow.tts.schema import CLIP_ARROW, CLIP_SCHEMA, clip_frame, read_clips, write_table

log = logging.getLogger("cordflow.tts")


def output_paths(out: str | Path) -> list[Path]:
    """The manifest, rejected.parquet and rejected.html (its rows for the report)."""
    out = Path(out)
    return [out, out.with_name("rejected.parquet"), out.with_name("rejected.html")]


def run(params: dict, shards: list[str | Path], out: str | Path) -> None:
    tables = [read_clips(p) for p in shards]
    n_in = sum(len(t) for t in tables)
    manifest = pd.concat(tables, ignore_index=True) if tables else clip_frame([])
    dup = manifest[manifest.duplicated(["id", "take"])]
    if len(dup):
        raise ValueError(f"tts-gather: item {dup['id'].iloc[0]!r} take {dup['take'].iloc[0]} "
                         "is in more than one shard table")
    manifest = manifest.sort_values(["id", "take"], kind="stable").reset_index(drop=True)
    missing = [p for p in manifest["path"].unique() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"tts-gather: {len(missing)} clip file(s) missing, e.g. "
                                f"{missing[0]}; rerun the tts_shard jobs (snakemake "
                                "--forcerun tts_shard)")
    manifest = CLIP_SCHEMA.validate(manifest)
    counts = manifest["status"].value_counts()
    ok, flagged, rejected = (int(counts.get(s, 0)) for s in ("ok", "flagged", "rejected"))
    if ok + flagged + rejected != n_in:
        raise RuntimeError(f"tts-gather: {n_in} clips in but {ok + flagged + rejected} out")
    manifest_path, rejected_path, rejected_html = output_paths(out)
    write_table(manifest, manifest_path, CLIP_ARROW)
    rejected_rows = manifest[manifest["status"] == "rejected"].reset_index(drop=True)
    write_table(rejected_rows, rejected_path, CLIP_ARROW)
    write_html_table(rejected_rows, rejected_html, "Rejected clips",
                     "Clips the quality checks rejected, with voice, FLAC path, measurements "
                     "and reason (the data: rejected.parquet beside this file).")
    log.info("tts-gather: %d clips (%d items) in = %d ok + %d flagged + %d rejected", n_in,
             manifest["id"].nunique(), ok, flagged, rejected)
    for split, part in manifest.groupby("split", sort=True):
        c = part["status"].value_counts()
        log.info("  %s: %d = %d ok + %d flagged + %d rejected", split, len(part),
                 c.get("ok", 0), c.get("flagged", 0), c.get("rejected", 0))
    flags = pd.Series([f for fl in manifest["flags"] for f in fl], dtype=str).value_counts()
    for code, n in flags.sort_index().items():
        log.info("  %s: %d clips", code, n)

