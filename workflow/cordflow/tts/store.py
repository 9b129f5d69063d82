"""The content-addressed clip store: ``<root>/<kk>/<key>.flac`` + ``<key>.json``.

A clip's key is sha256 (32 hex) over everything that makes its sound: the spoken text,
the voice spec, the backend name and version, the ``tts.post`` settings and the code that
synthesises and post-processes (the backend module and post.py). A clip already in the
store is never synthesised again. The JSON beside each FLAC records those inputs and the
measurements the quality checks use; it is written after the FLAC, so a clip counts as
stored only when both exist and the FLAC's sha256 matches the JSON. Writes are atomic
(temporary file + rename), so shard jobs can share one store concurrently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from cordflow.io import FILE_MODE, naming_path

log = logging.getLogger("cordflow.tts")

FORMAT = 1
MEASUREMENTS = ("sample_rate", "n_samples", "duration", "speech_duration", "silence_ratio",
                "clip_ratio", "loudness_lufs", "peak_dbfs")


def clip_key(text: str, voice: str, backend: str, backend_version: str, post: dict,
             code: str) -> str:
    blob = json.dumps({"format": FORMAT, "text": text, "voice": voice, "backend": backend,
                       "backend_version": backend_version, "post": post, "code": code},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def code_hash(*files: str | Path) -> str:
    """sha256 (16 hex) over source files (their content, in the order given)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    with naming_path(path):  # a full disk or a read-only store names the clip
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 -> what the umask allows
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _json_float(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None  # -inf (silence) -> null


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._made: set[Path] = set()

    def flac_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.flac"

    def meta_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored clip's metadata (with ``sha256`` and ``path``), or None if absent
        or damaged (then it is synthesised again and overwritten)."""
        meta_path, flac_path = self.meta_path(key), self.flac_path(key)
        try:
            meta = json.loads(meta_path.read_text())
            data = flac_path.read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("key") != key or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            log.warning("store entry %s is damaged (sha256 mismatch): synthesising again", key)
            return None
        return self._loaded(meta, flac_path)

    def put(self, key: str, flac: bytes, meta: dict) -> dict:
        """Store ``flac`` under ``key`` with ``meta`` (inputs and measurements)."""
        flac_path = self.flac_path(key)
        if flac_path.parent not in self._made:
            with naming_path(flac_path.parent):
                flac_path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(flac_path.parent)
        record = {**meta, "key": key, "format": FORMAT,
                  "sha256": hashlib.sha256(flac).hexdigest()}
        for k in ("loudness_lufs", "peak_dbfs"):
            record[k] = _json_float(record[k])
        _write_atomic(flac_path, flac)
        _write_atomic(self.meta_path(key),
                      (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
                       ).encode("utf-8"))
        return self._loaded(record, flac_path)

    @staticmethod
    def _loaded(meta: dict, flac_path: Path) -> dict:
        out = dict(meta, path=str(flac_path))
        for k in ("loudness_lufs", "peak_dbfs"):
            out[k] = float("-inf") if out.get(k) is None else float(out[k])
        return out
