"""Provenance records: one JSON sidecar ``<artifact>.prov.json`` per artifact a rule writes.

:func:`write_records` (called by :func:`cordflow.stage.stage_run` when a job succeeds)
writes, for each declared output, a record with:

- ``artifact`` (the path as the job was given it), ``type`` (file | directory) and its
  hash: ``sha256`` + ``bytes`` for a file; for a directory ``files`` ({relative path:
  sha256}, every file under it) plus ``sha256`` (:func:`tree_digest` of that listing) and
  ``bytes`` (total);
- ``inputs``: every input path with its hash (same shape) and ``record``: the record that
  covers it when it was read (its own sidecar, or that of a directory artifact holding it),
  or null for a source (a user file, a staged dataset, model weights);
- ``companions``: files the job wrote whose names are known only at run time (the body of
  ``stage_run`` appends them, e.g. the content-addressed FLAC clips of a TTS shard and the
  JSON beside each): ``[{path, sha256, bytes}]``. They get no sidecar each; the records of
  the job's outputs list them, and ``cordflow audit`` checks them;
- ``rule``, ``params`` (the config slice), ``seed``, ``rule_code`` (hash of the stage's
  source, :func:`cordflow.config.code_version`), ``argv``, ``cwd``;
- ``run_id`` (shared by every record of one job) and ``outputs`` (the job's declared
  outputs), so a job can be told apart from its outputs (one ``CreateAction`` in the crate);
- ``started`` / ``ended`` (UTC, ISO 8601), ``host``, ``platform``, ``python``,
  ``slurm_job_id``, ``slurm_array_task_id``, ``gpu_model``, ``packages`` (versions of the
  step's environment) and ``code`` (git commit + dirty flag, or the package version).

Paths are stored as the job was given them (relative to its working directory when
Snakemake runs it); :mod:`cordflow.audit` resolves them against the folder the record
lies in, so a whole working directory can be moved or copied and still be audited.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from cordflow import __version__
from cordflow.config import REPO_DIR
from cordflow.io import sha256_file, write_text_atomic

SUFFIX = ".prov.json"
SCHEMA_VERSION = 2
# Packages whose versions are recorded when installed in the step's environment.
PACKAGES = (
    "cordflow", "snakemake", "numpy", "pandas", "pyarrow", "pandera", "datasets",
    "espeakng-loader", "soundfile", "soxr", "pyloudnorm", "coqui-tts", "torch",
    "transformers", "tokenizers", "peft", "safetensors", "accelerate", "vllm",
)

Hasher = Callable[[Path], str]


def record_path(artifact: str | Path) -> Path:
    """Where the record of ``artifact`` lives: beside it, ``<name>.prov.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def is_record(path: str | Path) -> bool:
    return Path(path).name.endswith(SUFFIX)


def tree_digest(files: dict[str, str]) -> str:
    """One sha256 for a directory: over its sorted ``relative path NUL sha256 LF`` lines."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


# Snakemake touches this file inside every directory() output after the job (its mtime
# carrier): written by the engine, empty, and not part of the artifact.
ENGINE_FILES = frozenset({".snakemake_timestamp"})


def directory_files(path: Path) -> list[Path]:
    """The files of a directory artifact, sorted (records inside it, and the file Snakemake
    keeps in a directory output's top level, are not part of it)."""
    return sorted(f for f in path.rglob("*") if f.is_file() and not is_record(f)
                  and not (f.parent == path and f.name in ENGINE_FILES))


def hash_artifact(path: str | Path, hasher: Hasher = sha256_file) -> dict[str, Any]:
    """``{type: file, sha256, bytes}`` for a file; ``{type: directory, files: {relpath:
    sha256}, sha256: tree digest, bytes}`` for a directory (hashed per file)."""
    path = Path(path)
    if path.is_dir():
        members = directory_files(path)
        files = {f.relative_to(path).as_posix(): hasher(f) for f in members}
        return {"type": "directory", "files": files, "sha256": tree_digest(files),
                "bytes": sum(f.stat().st_size for f in members)}
    return {"type": "file", "sha256": hasher(path), "bytes": path.stat().st_size}


def covering_record(path: str | Path) -> Path | None:
    """The record that covers ``path``: its own sidecar, else the sidecar of the nearest
    directory above it that is a recorded artifact (files inside a model folder or a
    plan folder have no sidecar each). None for a source."""
    path = Path(path)
    own = record_path(path)
    if own.is_file():
        return own
    for parent in path.parents:
        if parent.name and record_path(parent).is_file():
            return record_path(parent)
    return None


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """git commit + dirty flag of the checkout the package runs from, else the version."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(REPO_DIR), *args],
                capture_output=True, text=True, check=True, timeout=10,
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"git_commit": commit, "dirty": dirty, "package_version": __version__}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "dirty": None, "package_version": __version__}


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def gpu_model() -> str | None:
    """The name of the job's first GPU, or None. From torch when the stage has loaded it
    (the GPU stages do); else from ``nvidia-smi`` if there is one (never importing torch
    just to ask: that would cost every CPU job a second or two)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception:  # a broken driver is not the job's failure
            return None
    smi = shutil.which("nvidia-smi")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if smi is None or visible in ("", "-1"):
        return None
    cmd = [smi, "--query-gpu=name", "--format=csv,noheader"]
    if visible:
        cmd += ["-i", visible.split(",")[0]]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    names = out.stdout.strip().splitlines()
    return names[0].strip() if names else None


def environment() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "gpu_model": gpu_model(),
        "peak_rss_mb": peak_rss_mb(),
        "packages": package_versions(),
        "code": code_version(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this job so far (the stage's process), in MB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rule_code(rule: str) -> str | None:
    from cordflow.config import RULE_CODE
    from cordflow.config import code_version as stage_code

    return stage_code(rule) if rule in RULE_CODE else None


def input_entry(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"provenance: input {path} does not exist (it was read by "
                                "this job; was it removed while the job ran?)")
    record = covering_record(path)
    return {"path": str(path), **hash_artifact(path),
            "record": None if record is None else str(record),
            "has_record": record is not None}


def companion_entries(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """``[{path, sha256, bytes}]`` for run-time output files, deduplicated, sorted."""
    out = []
    for p in sorted({str(Path(p)) for p in paths}):
        f = Path(p)
        if not f.is_file():
            raise FileNotFoundError(f"provenance: run-time output {f} (appended to stage_run's "
                                    "list) is not a file")
        out.append({"path": p, "sha256": sha256_file(f), "bytes": f.stat().st_size})
    return out


def write_records(
    rule: str,
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
    params: dict,
    started: dt.datetime,
    ended: dt.datetime,
    companions: Iterable[str | Path] = (),
) -> list[Path]:
    """Write one record per output (see the module docstring); return the record paths.

    Inputs are hashed now (they are read-only during a job); ``companions`` are listed
    with their hashes in every output's record.
    """
    outputs = [Path(p) for p in outputs]
    input_entries = [input_entry(p) for p in inputs]
    companion_list = companion_entries(companions)
    missing = [str(o) for o in outputs if not o.exists()]
    if missing:
        raise FileNotFoundError(f"rule {rule}: declared output(s) {', '.join(missing)} were "
                                "not written; the stage must write every path it declares")
    job = {
        "schema": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex,
        "rule": rule,
        "params": params,
        "seed": params.get("seed"),
        "rule_code": _rule_code(rule),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "outputs": [str(o) for o in outputs],
        "inputs": input_entries,
        "companions": companion_list,
        "started": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        **environment(),
    }
    written = []
    for out in outputs:
        rec = {"artifact": str(out), **hash_artifact(out), **job}
        write_text_atomic(record_path(out), json.dumps(rec, indent=1, sort_keys=True) + "\n")
        written.append(record_path(out))
    return written


def read_record(path: str | Path) -> dict[str, Any]:
    """A record as a dict; ValueError naming the file when it is not a record."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable provenance record ({e})") from e
    if not isinstance(rec, dict) or "artifact" not in rec or "rule" not in rec:
        raise ValueError(f"{path}: not a provenance record (no artifact/rule)")
    return rec
