"""The workflow as a user runs it, for tests: a copy of the checkout, ``snakemake`` in it,
and the jobs a dry run would run.

:func:`completed_run` (a session fixture, imported by the test modules that use it) runs
the whole DAG once on ``config/test.yaml`` plus :data:`LAYER` (one local QA file, so a
test can add a question to it), then a second time, in a temporary copy of the checkout.
Under pytest-xdist the workers share that one run: the first to get the lock makes it,
the others wait for it and reuse it. Tests must not change it: they dry-run against it
with extra config files (:func:`dry_run`), or change a copy (:func:`copy_run`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 1200  # ~2 min on 2 idle cores; allow for a loaded machine
DRY_TIMEOUT_S = 300

# Layered over config/test.yaml (Snakemake merges config files recursively, later wins).
LOCAL_QA = "local_qa.jsonl"
LOCAL_ROWS = [
    {"question": "How many legs do three spiders have in total?", "answer": "24"},
    {"question": "A week has how many days?", "answer": "7"},
    {"question": "How many sides does a hexagon have?", "answer": "6"},
]
LAYER = {"source": {"files": [{"path": LOCAL_QA, "split": "train", "name": "local"}]}}
CONFIG = ["config/test.yaml", "layer.yaml"]


def copy_checkout(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked ones git does not ignore) in ``dest``,
    without hidden top-level folders (scratch space): the real results/, logs/ and
    .snakemake/ stay untouched."""
    if not (REPO / ".git").exists():  # an unpacked archive: everything but run outputs
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".*", "results", "logs", "__pycache__"))
        return dest
    listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached",
                              "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listing.split("\0")):
        src = REPO / rel
        if src.is_file() and not rel.startswith("."):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def user_env() -> dict:
    """A user's shell: the venv first on PATH (jobs run `python -m cordflow` with it), no
    PYTHONPATH or profile of the test process's own (the Snakefile sets PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SNAKEMAKE_PROFILE")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    vllm = REPO / ".venv-vllm" / "bin" / "python"  # a copy has no venvs: use the checkout's
    if vllm.exists():
        env.setdefault("CORDFLOW_VLLM_PYTHON", str(vllm))
    return env


def snakemake(cwd: Path, *args: str, timeout_s: int = DRY_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``snakemake ARGS`` in ``cwd`` (stopped with SIGINT at ``timeout_s``)."""
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout_s), sys.executable, "-m",
           "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, env=user_env(), capture_output=True, text=True,
                          timeout=timeout_s + 60)


_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


def parse_jobs(output: str) -> set[str]:
    """The jobs a ``snakemake -n`` listing names, as ``rule`` or ``rule[k=v,...]`` (the
    wildcards in Snakemake's order); the ``all`` target is left out."""
    jobs: list[list[str]] = []
    for line in output.splitlines():
        if m := _JOB.match(line):
            jobs.append([m.group(1), ""])
        elif (m := _WILDCARDS.match(line)) and jobs:
            jobs[-1][1] = m.group(1).replace(", ", ",")
    return {f"{rule}[{wc}]" if wc else rule for rule, wc in jobs if rule != "all"}


def config_args(*extra: Path) -> list[str]:
    return ["--configfile", *CONFIG, *map(str, extra)]


def dry_run(cwd: Path, *layers: dict, tmp: Path | None = None) -> set[str]:
    """The jobs ``snakemake -n`` lists in ``cwd`` with ``layers`` (config dicts, merged
    after :data:`CONFIG`, each written to a file in ``tmp``)."""
    files = []
    for i, layer in enumerate(layers):
        files.append(tmp / f"knob{i}.yaml")
        files[-1].write_text(yaml.safe_dump(layer))
    res = snakemake(cwd, "-n", *config_args(*files))
    assert res.returncode == 0, f"snakemake -n failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return parse_jobs(res.stdout + res.stderr)


@dataclass
class Run:
    """A completed run: its folder and what the first and the second snakemake did."""

    path: Path
    first: dict
    second: dict

    def require(self) -> Run:
        """Fail (not error) a test that needs the run when the run itself failed."""
        if self.first["rc"] != 0:
            pytest.fail("the end-to-end run failed (see test_workflow_runs_end_to_end):\n"
                        + self.first["tail"])
        return self


def _snakemake_record(res: subprocess.CompletedProcess, seconds: float) -> dict:
    out = res.stdout + res.stderr
    return {"rc": res.returncode, "seconds": round(seconds, 1), "jobs": sorted(parse_jobs(out)),
            "tail": out[-6000:]}


def _make_run(path: Path) -> dict:
    copy_checkout(path)
    (path / "layer.yaml").write_text(yaml.safe_dump(LAYER))
    (path / LOCAL_QA).write_text("".join(json.dumps(r) + "\n" for r in LOCAL_ROWS))
    t0 = time.perf_counter()
    first = snakemake(path, "--cores", "2", *config_args(), timeout_s=RUN_TIMEOUT_S)
    record = {"first": _snakemake_record(first, time.perf_counter() - t0)}
    t0 = time.perf_counter()
    second = snakemake(path, "--cores", "2", *config_args(), timeout_s=RUN_TIMEOUT_S)
    record["second"] = _snakemake_record(second, time.perf_counter() - t0)
    return record


@pytest.fixture(scope="session")
def completed_run(tmp_path_factory) -> Run:
    """The run of config/test.yaml + :data:`LAYER`, made once per test session."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cordflow-dag"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        record = root / "record.json"
        if not record.exists():
            record.write_text(json.dumps(_make_run(root / "run")))
        info = json.loads(record.read_text())
    return Run(root / "run", info["first"], info["second"])


def copy_run(run: Run, dest: Path) -> Path:
    """A copy of the completed run (files, results, logs and .snakemake metadata, with
    their times) that a test may change."""
    shutil.copytree(run.require().path, dest, symlinks=True)
    return dest
