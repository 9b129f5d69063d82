"""The tts tables' schemas, defined once: pandera for checks, pyarrow for the files.

Shard tables and the manifest share :data:`CLIP_SCHEMA`; plans use :data:`PLAN_SCHEMA`.
Other stages read the manifest with :func:`read_manifest` (no synthesis packages needed).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from cordflow.io import atomic_path

STATUSES = ("ok", "flagged", "rejected")
REASON_RE = r"^[a-z][a-z0-9_]*: .+"

PLAN_COLUMNS = ["id", "split", "spoken"]
PLAN_ARROW = pa_arrow.schema([(c, pa_arrow.string()) for c in PLAN_COLUMNS])

CLIP_ARROW = pa_arrow.schema(
    [
        ("id", pa_arrow.string()),
        ("take", pa_arrow.int64()),
        ("split", pa_arrow.string()),
        ("voicing", pa_arrow.string()),
        ("status", pa_arrow.string()),
        ("voice", pa_arrow.string()),
        ("path", pa_arrow.string()),
        ("sha256", pa_arrow.string()),
        ("duration", pa_arrow.float64()),
        ("sample_rate", pa_arrow.int64()),
        ("n_samples", pa_arrow.int64()),
        ("backend", pa_arrow.string()),
        ("backend_version", pa_arrow.string()),
        ("flags", pa_arrow.list_(pa_arrow.string())),
        ("reason", pa_arrow.string()),
        ("spoken", pa_arrow.string()),
        ("speech_duration", pa_arrow.float64()),
        ("silence_ratio", pa_arrow.float64()),
        ("clip_ratio", pa_arrow.float64()),
        ("loudness_lufs", pa_arrow.float64()),
        ("peak_dbfs", pa_arrow.float64()),
        ("asr_wer", pa_arrow.float64()),
        ("asr_heard", pa_arrow.string()),
    ]
)
CLIP_COLUMNS = CLIP_ARROW.names


def _sorted_by_id(df: pd.DataFrame) -> bool:
    return bool(df["id"].is_monotonic_increasing)


def _sorted_by_id_take(df: pd.DataFrame) -> bool:
    return bool(pd.MultiIndex.from_frame(df[["id", "take"]]).is_monotonic_increasing)


def _status_matches_flags(df: pd.DataFrame) -> pd.Series:
    """ok: no flags and no reason; flagged/rejected: flags, one reason entry per flag."""

    def ok(row) -> bool:
        flags = list(row["flags"])
        if row["status"] == "ok":
            return not flags and row["reason"] == ""
        entries = row["reason"].split("; ")
        return bool(flags) and [e.split(":", 1)[0] for e in entries] == flags

    return df.apply(ok, axis=1) if len(df) else pd.Series([], dtype=bool)


PLAN_SCHEMA = pa.DataFrameSchema(
    {
        "id": pa.Column(str, pa.Check.str_matches(r"^\S+$"), unique=True),
        "split": pa.Column(str, pa.Check.str_matches(r"^[a-z][a-z0-9_]*$")),
        "spoken": pa.Column(str, pa.Check(lambda s: s.str.strip().str.len() > 0,
                                          error="blank text")),
    },
    checks=[pa.Check(_sorted_by_id, element_wise=False, error="rows are not sorted by id")],
    strict=True,
    ordered=True,
    name="tts_plan",
)

CLIP_SCHEMA = pa.DataFrameSchema(
    {
        "id": pa.Column(str),
        "take": pa.Column(int, pa.Check.ge(0)),
        "split": pa.Column(str, pa.Check.str_matches(r"^[a-z][a-z0-9_]*$")),
        "voicing": pa.Column(str, pa.Check.str_matches(r"^[a-z][a-z0-9_]*$")),
        "status": pa.Column(str, pa.Check.isin(STATUSES)),
        "voice": pa.Column(str, pa.Check.str_length(min_value=1)),
        "path": pa.Column(str, pa.Check.str_matches(r".+\.flac$")),
        "sha256": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{64}$")),
        "duration": pa.Column(float, pa.Check.ge(0)),
        "sample_rate": pa.Column(int, pa.Check.gt(0)),
        "n_samples": pa.Column(int, pa.Check.ge(0)),
        "backend": pa.Column(str, pa.Check.str_length(min_value=1)),
        "backend_version": pa.Column(str),
        "flags": pa.Column(object),
        "reason": pa.Column(str, pa.Check(lambda s: (s == "") | s.str.match(REASON_RE))),
        "spoken": pa.Column(str),
        "speech_duration": pa.Column(float, pa.Check.ge(0)),
        "silence_ratio": pa.Column(float, pa.Check.in_range(0, 1)),
        "clip_ratio": pa.Column(float, pa.Check.in_range(0, 1)),
        "loudness_lufs": pa.Column(float),
        "peak_dbfs": pa.Column(float),
        "asr_wer": pa.Column(float, pa.Check.ge(0), nullable=True),
        "asr_heard": pa.Column(str),
    },
    checks=[
        pa.Check(_sorted_by_id_take, element_wise=False,
                 error="rows are not sorted by id and take"),
        pa.Check(_status_matches_flags, error="status, flags and reason disagree"),
    ],
    strict=True,
    ordered=True,
    unique=["id", "take"],
    name="tts_clips",
)


def write_table(df: pd.DataFrame, path: str | Path, schema: pa_arrow.Schema) -> None:
    """Atomic, byte-stable parquet with an explicit arrow schema."""
    table = pa_arrow.Table.from_pandas(df, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def clip_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a clip table (the ``asr_*`` columns: NaN and "" where a row has none)."""
    rows = [{"asr_wer": float("nan"), "asr_heard": "", **r} for r in rows]
    df = pd.DataFrame(rows, columns=CLIP_COLUMNS)
    for col in ("duration", "speech_duration", "silence_ratio", "clip_ratio",
                "loudness_lufs", "peak_dbfs", "asr_wer"):
        df[col] = df[col].astype("float64")
    for col in ("take", "sample_rate", "n_samples"):
        df[col] = df[col].astype("int64")
    for col in CLIP_COLUMNS:
        if df[col].dtype == object and col != "flags":
            df[col] = df[col].astype(str)
    df["flags"] = pd.Series([list(f) for f in df["flags"]], index=df.index, dtype=object)
    return df


def read_plan(path: str | Path) -> pd.DataFrame:
    return PLAN_SCHEMA.validate(pq.read_table(path).to_pandas())


def read_clips(path: str | Path) -> pd.DataFrame:
    """A shard table or the manifest, ``flags`` as lists of str, checked by CLIP_SCHEMA."""
    df = pq.read_table(path).to_pandas()
    df["flags"] = pd.Series([[str(x) for x in f] for f in df["flags"]], index=df.index,
                            dtype=object)
    return CLIP_SCHEMA.validate(df)


def usable(manifest: pd.DataFrame) -> pd.Series:
    """Boolean mask of the rows downstream stages train and evaluate on: status ok or
    flagged (rejected clips are kept in the manifest, but not used)."""
    return manifest["status"] != "rejected"


def read_manifest(path: str | Path, usable: bool = False) -> pd.DataFrame:
    """Read ``results/audio/manifest.parquet`` (schema-checked). ``usable=True`` keeps
    only the rows of :func:`usable`."""
    df = read_clips(path)
    if usable:
        df = df[df["status"] != "rejected"].reset_index(drop=True)
    return df
