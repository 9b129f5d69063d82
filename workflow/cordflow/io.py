"""Atomic writes and hashing: an interrupted job never leaves a file that looks complete."""

from __future__ import annotations

import errno
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The resume folder of a training job, beside its output: ``.<name>.work-<16 hex>``
# (cordflow.train.loop.work_dir). Kept while the job is unfinished or was killed, so a rerun
# resumes; removed when it succeeds. Not an artifact: audits skip it.
RESUME_DIR = re.compile(r"^\..+\.work-[0-9a-f]{16}$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# The mode a new file gets under the user's umask (read once, at import: os.umask can only
# be read by setting it). Files made through mkstemp (0600) are set to it, so the group of
# a lab on a shared cluster can read what the user's umask lets it.
FILE_MODE = 0o666 & ~_umask()

# Write errors that are about the place written to, not the data: what to do about each.
_WHERE_ERRORS = {
    errno.ENOSPC: "the disk is full: free space there (or point the results elsewhere)",
    errno.EDQUOT: "the disk quota is used up: free space there or raise the quota",
    errno.EACCES: "no permission to write there: fix its permissions or owner",
    errno.EPERM: "the operation is not permitted there: fix its permissions or owner",
    errno.EROFS: "the file system is read-only: write the results elsewhere",
}


def write_error(e: OSError, path: str | Path) -> OSError:
    """``e`` (disk full, no permission, read-only file system) as an ``OSError`` of the
    same errno (so ``PermissionError`` stays one) whose message names ``path``, the output
    being written, and what to do; other errors unchanged."""
    code = e.errno
    if code is None:  # pyarrow's IO errors carry it in the message only: "[errno 28] ..."
        m = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)
        code = int(m.group(1)) if m else None
    if code not in _WHERE_ERRORS or getattr(e, "cordflow_path", None) is not None:
        return e
    where = Path(os.path.abspath(path))
    if e.filename:  # the output, a folder on its way, or its temporary copy beside it
        f = Path(os.path.abspath(e.filename))
        if not (f == where or f in where.parents or where.parent in f.parents):
            return e  # about another file (an input read on the way), which it names
    detail = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    out = OSError(code, f"cannot write {path}: {os.strerror(code)}{detail}; "
                        f"{_WHERE_ERRORS[code]}")  # PermissionError etc. by errno
    out.cordflow_path = str(path)
    return out


@contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Re-raise a disk-full or permission error inside the block naming ``path``."""
    try:
        yield
    except OSError as e:
        named = write_error(e, path)
        if named is e:
            raise
        raise named from e


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Works for files and directories (the caller creates what it needs at the temp path).
    A full disk or a folder that cannot be written raises an ``OSError`` naming ``path``.
    """
    path = Path(path)
    with naming_path(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        with naming_path(path):
            yield target
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def keep_jsonl_rows(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite the JSON-lines file at ``path``, atomically, with only the lines whose row
    ``keep(row)`` accepts, in their order (a missing file stays missing). On resume a
    training run uses it to drop what it logged after the checkpoint it resumes from."""
    path = Path(path)
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if keep(json.loads(line))]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def write_parquet(df, path: str | Path) -> None:
    """Write a pandas DataFrame as parquet, atomically, byte-stable for identical data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    # Drop pandas metadata that can vary between runs; keep the schema.
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def sha256_file(path: str | Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()



def write_html_table(df, path: str | Path, title: str, note: str = "") -> None:
    """``df`` as a self-contained HTML page (every cell escaped), atomically: a readable
    copy of a table for the Snakemake report, which shows HTML but not parquet."""
    counts = ""
    if "reason" in df.columns and len(df):
        codes = df["reason"].astype(str).str.split(":").str[0].value_counts()
        counts = "<p>" + ", ".join(f"{html.escape(str(k))}: {int(v)}"
                                   for k, v in codes.items()) + "</p>"
    table = df.to_html(index=False, escape=True, na_rep="", border=0) if len(df) else (
        "<p>No rows.</p>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;font-size:13px}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;"
        "text-align:left;vertical-align:top}th{background:#eee}</style></head><body>"
        f"<h3>{html.escape(title)}: {len(df)} row{'' if len(df) == 1 else 's'}</h3>"
        + (f"<p>{html.escape(note)}</p>" if note else "") + counts + table
        + "</body></html>\n")
    write_text_atomic(path, page)
