"""Rule ``tts_plan``: deal every QA item to one of ``tts.n_shards`` plans by id hash.

Writes ``{k}.parquet`` for k in 0..n_shards-1 (:data:`~cordflow.tts.PLAN_SCHEMA`: ``id``,
``split``, ``spoken``, sorted by id; empty shards too). An item's shard depends on its id
alone, and a plan's bytes on its items alone: adding a question changes one plan, and the
others are written byte-identical, so Snakemake (which compares checksums) reruns one
shard.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd

from cordflow.io import atomic_path
from cordflow.tts.schema import PLAN_ARROW, PLAN_COLUMNS, PLAN_SCHEMA, write_table

log = logging.getLogger("cordflow.tts")


def shard_of(item_id: str, n_shards: int) -> int:
    """The shard of ``item_id`` (sha256-based: stable across runs and machines)."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def n_shards(params: dict) -> int:
    from cordflow.tts import tts_config

    return int(tts_config(params)["n_shards"])


def output_paths(params: dict, out_dir: str | Path) -> list[Path]:
    return [Path(out_dir)]


def plans(qa_paths: list[str | Path], n: int) -> list[pd.DataFrame]:
    """The ``n`` plan tables for the QA tables at ``qa_paths``."""
    from cordflow.source import read_qa

    frames = [read_qa(p)[PLAN_COLUMNS] for p in qa_paths]
    items = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=PLAN_COLUMNS)
    dup = items["id"][items["id"].duplicated()]
    if len(dup):
        raise ValueError(f"tts-plan: item id {dup.iloc[0]!r} occurs in more than one QA "
                         "table; ids must be unique across splits")
    items = items.sort_values("id", kind="stable").reset_index(drop=True).astype(str)
    shard = items["id"].map(lambda i: shard_of(i, n))
    return [PLAN_SCHEMA.validate(items[shard == k].reset_index(drop=True)) for k in range(n)]


def run(params: dict, qa_paths: list[str | Path], out_dir: str | Path) -> None:
    n = n_shards(params)
    tables = plans(qa_paths, n)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for k, df in enumerate(tables):
            write_table(df, tmp / f"{k}.parquet", PLAN_ARROW)
    sizes = [len(t) for t in tables]
    log.info("tts-plan: %d items into %d shards (sizes %s)", sum(sizes), n,
             ", ".join(map(str, sizes)))
