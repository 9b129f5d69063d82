"""The QA tables' schema, defined once: pandera for checks, pyarrow for the files.

Other stages import :data:`QA_SCHEMA` (``cordflow.source.QA_SCHEMA``) to check what they
read, and :func:`read_qa` to read a table with ``choices`` as Python lists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from cordflow.io import atomic_path

ANSWER_TYPES = ("number", "choice", "text")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# canonical: no +, no trailing 0s; a number with no finite decimal as a reduced fraction
NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d*[1-9])?|-?[1-9]\d*/[1-9]\d*")

QA_COLUMNS = ["id", "question", "spoken", "answer", "choices", "answer_type", "split",
              "source", "origin"]
REJECTED_COLUMNS = ["source", "origin", "reason", "row"]

QA_ARROW = pa_arrow.schema(
    [
        ("id", pa_arrow.string()),
        ("question", pa_arrow.string()),
        ("spoken", pa_arrow.string()),
        ("answer", pa_arrow.string()),
        ("choices", pa_arrow.list_(pa_arrow.string())),
        ("answer_type", pa_arrow.string()),
        ("split", pa_arrow.string()),
        ("source", pa_arrow.string()),
        ("origin", pa_arrow.string()),
    ]
)
REJECTED_ARROW = pa_arrow.schema([(c, pa_arrow.string()) for c in REJECTED_COLUMNS])


def answer_fits_type(df: pd.DataFrame) -> pd.Series:
    """number: canonical decimal; choice: a letter within the choices; text: anything."""

    def ok(row) -> bool:
        choices = row["choices"]
        has_choices = choices is not None and not (
            isinstance(choices, float) and pd.isna(choices)
        )
        if row["answer_type"] == "number":
            return not has_choices and NUMBER_RE.fullmatch(row["answer"]) is not None
        if row["answer_type"] == "choice":
            return (
                has_choices
                and len(choices) >= 2
                and all(isinstance(c, str) and c.strip() for c in choices)
                and row["answer"] in LETTERS[: len(choices)]
            )
        return not has_choices

    return df.apply(ok, axis=1) if len(df) else pd.Series([], dtype=bool)


def _sorted_by_id(df: pd.DataFrame) -> bool:
    return bool(df["id"].is_monotonic_increasing)


def _nonblank():
    return pa.Check(lambda s: s.str.strip().str.len() > 0, error="blank text")


QA_SCHEMA = pa.DataFrameSchema(
    {
        "id": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{16}$"), unique=True),
        "question": pa.Column(str, _nonblank()),
        "spoken": pa.Column(str, _nonblank()),
        "answer": pa.Column(str, _nonblank()),
        "choices": pa.Column(object, nullable=True),
        "answer_type": pa.Column(str, pa.Check.isin(ANSWER_TYPES)),
        "split": pa.Column(str, pa.Check.str_matches(r"^[a-z][a-z0-9_]*$")),
        "source": pa.Column(str, _nonblank()),
        "origin": pa.Column(str, _nonblank()),
    },
    checks=[
        pa.Check(answer_fits_type, error="answer does not fit its answer_type"),
        pa.Check(_sorted_by_id, element_wise=False, error="rows are not sorted by id"),
    ],
    strict=True,
    ordered=True,
    name="qa",
)

REJECTED_SCHEMA = pa.DataFrameSchema(
    {
        "source": pa.Column(str),
        "origin": pa.Column(str, _nonblank()),
        "reason": pa.Column(str, pa.Check.str_matches(r"^[a-z][a-z0-9_]*: .+")),
        "row": pa.Column(str),
    },
    strict=True,
    ordered=True,
    name="rejected",
)


def qa_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=QA_COLUMNS)
    for col in QA_COLUMNS:
        if col != "choices":
            df[col] = df[col].astype(str)
    df["choices"] = pd.Series(list(df["choices"]), index=df.index, dtype=object)
    return df


def rejected_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=REJECTED_COLUMNS).astype(str)


def write_table(df: pd.DataFrame, path: str | Path, schema: pa_arrow.Schema) -> None:
    """Atomic, byte-stable parquet with an explicit arrow schema (so an empty table or an
    all-null ``choices`` column keeps its type)."""
    table = pa_arrow.Table.from_pandas(df, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_qa(path: str | Path) -> pd.DataFrame:
    """Read a QA table: ``choices`` as lists of str (or None), checked by QA_SCHEMA."""
    df = pq.read_table(path).to_pandas()
    df["choices"] = pd.Series([None if c is None else [str(x) for x in c] for c in df["choices"]],
                              index=df.index, dtype=object)
    return QA_SCHEMA.validate(df)
