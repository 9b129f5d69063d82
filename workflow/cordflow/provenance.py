"""Provenance records: one JSON sidecar ``<artifact>.prov.json`` per artifact a rule writes.

A record holds the artifact's sha256 (per file for a directory), its inputs with their
sha256, the rule and config slice, the code version, the step's package versions, host,
Slurm job id, GPU model, seed and times. ``cordflow audit`` walks these records.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from cordflow import __version__
from cordflow.config import REPO_DIR
from cordflow.io import sha256_file, write_text_atomic

SUFFIX = ".prov.json"
SCHEMA_VERSION = 1
# Packages whose versions are recorded when installed in the step's environment.
PACKAGES = (
    "cordflow", "snakemake", "numpy", "pandas", "pyarrow", "pandera", "datasets",
    "espeakng-loader", "soundfile", "soxr", "pyloudnorm", "coqui-tts", "torch",
    "transformers", "tokenizers", "peft", "safetensors", "vllm",
)


def record_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def hash_artifact(path: str | Path) -> dict[str, Any]:
    """{"sha256": ...} for a file; {"files": {relpath: sha256}} for a directory."""
    path = Path(path)
    if path.is_dir():
        files = {
            str(f.relative_to(path)): sha256_file(f)
            for f in sorted(path.rglob("*"))
            if f.is_file() and not f.name.endswith(SUFFIX)
        }
        return {"type": "directory", "files": files}
    return {"type": "file", "sha256": sha256_file(path), "bytes": path.stat().st_size}


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
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def gpu_model() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # torch absent in this step's env
        return None
    return None


def environment() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "gpu_model": gpu_model(),
        "packages": package_versions(),
        "code": code_version(),
    }


def write_records(
    rule: str,
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
    params: dict,
    started: dt.datetime,
    ended: dt.datetime,
) -> list[Path]:
    """Write one record per output. Inputs are hashed now (they are read-only during a job)."""
    inputs = [Path(p) for p in inputs]
    env = environment()
    input_entries = []
    for p in inputs:
        entry: dict[str, Any] = {"path": str(p)}
        entry.update(hash_artifact(p))
        entry["has_record"] = record_path(p).exists()
        input_entries.append(entry)
    written = []
    for out in outputs:
        out = Path(out)
        rec = {
            "schema": SCHEMA_VERSION,
            "artifact": str(out),
            **hash_artifact(out),
            "rule": rule,
            "params": params,
            "seed": params.get("seed"),
            "inputs": input_entries,
            "started": started.isoformat(timespec="seconds"),
            "ended": ended.isoformat(timespec="seconds"),
            **env,
        }
        write_text_atomic(record_path(out), json.dumps(rec, indent=1, sort_keys=True) + "\n")
        written.append(record_path(out))
    return written
