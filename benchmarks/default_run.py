"""Time each stage of the default run and its peak memory; print the accuracies it gave.

    python benchmarks/default_run.py [--cores 2] [--configfile extra.yaml ...] [--keep DIR]
    python benchmarks/default_run.py --read .     # the figures of a finished run in .

Runs the workflow (`snakemake --cores N`, the venv first on PATH) in a fresh copy of this
checkout, then reads every provenance record: per rule, the jobs, their summed and longest
wall time and the peak resident memory of a job; the whole run's wall time (with --read:
first job start to last job end); and the gap table's text/audio accuracy per model. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from dagrun import BIN, copy_checkout, user_env  # noqa: E402  (as the tests copy and run it)


def run_workflow(cmd: list[str], work: Path, what: str) -> float:
    """Run ``cmd`` in ``work`` in a user's shell (venv first on PATH); its wall time (exit on
    failure)."""
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=work, env=user_env(), capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{what} failed (in {work}):\n{run.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="2")
    ap.add_argument("--configfile", nargs="*", default=[], help="layered over config/config.yaml")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    ap.add_argument("--read", type=Path, help="run nothing: report the finished run in this folder")
    args = ap.parse_args()
    if args.read:
        report(args.read, None, None)
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="cordflow-run-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_checkout(work)
    extra = [str(Path(c).resolve()) for c in args.configfile]
    cmd = [str(BIN / "snakemake"), "--cores", args.cores]
    if extra:
        cmd += ["--configfile", "config/config.yaml", *extra]
    wall = run_workflow(cmd, work, "the run")
    report(work, wall, args.cores)
    if not args.keep:
        print(f"(the run is in {work}; delete it when done)")


ORDER = ["source", "tts_plan", "tts_shard", "tts_gather", "base", "warmup", "train", "evaluate",
         "summarize", "provenance_summary"]


def _jobs(work: Path) -> list[dict]:
    """One provenance record per job of the run in ``work`` (a job's outputs share a run id)."""
    jobs: dict[str, dict] = {}
    for path in (work / "results").rglob("*.prov.json"):
        rec = json.loads(path.read_text())
        jobs.setdefault(rec.get("run_id") or str(path), rec)
    return list(jobs.values())


def _seconds(rec: dict) -> float:
    return (dt.datetime.fromisoformat(rec["ended"])
            - dt.datetime.fromisoformat(rec["started"])).total_seconds()


def _span(jobs: list[dict]) -> float:
    """Seconds from the first of ``jobs`` to start to the last to end."""
    return (max(dt.datetime.fromisoformat(r["ended"]) for r in jobs)
            - min(dt.datetime.fromisoformat(r["started"]) for r in jobs)).total_seconds()


def rule_figures(work: Path) -> dict[str, dict]:
    """Per rule (in DAG order): jobs, summed and longest wall seconds, wall seconds from the
    first job's start to the last one's end, peak resident MB of a job, from the provenance
    records of the run in ``work``."""
    per_rule: dict[str, list[dict]] = collections.defaultdict(list)
    for rec in _jobs(work):
        per_rule[rec["rule"]].append(rec)
    out = {}
    for rule in sorted(per_rule, key=lambda r: ORDER.index(r) if r in ORDER else 99):
        secs = [_seconds(r) for r in per_rule[rule]]
        out[rule] = {"jobs": len(secs), "sum_s": sum(secs), "max_s": max(secs),
                     "wall_s": _span(per_rule[rule]),
                     "peak_mb": max(r.get("peak_rss_mb") or 0 for r in per_rule[rule])}
    return out


def report(work: Path, wall: float | None, cores: str | None) -> None:
    if wall is None:  # first job start to last job end
        wall = _span(_jobs(work))
    on = f" ({cores} cores)" if cores else ""
    print(f"default run in {work}{on}: {wall / 60:.1f} min wall")
    print(f"{'rule':12s} {'jobs':>4s} {'sum s':>8s} {'max s':>8s} {'peak MB':>8s}")
    for rule, fig in rule_figures(work).items():
        print(f"{rule:12s} {fig['jobs']:4d} {fig['sum_s']:8.0f} {fig['max_s']:8.0f} "
              f"{fig['peak_mb']:8.0f}")
    table = work / "results/eval/gap_table.csv"
    print("\ngap table (percent):")
    import pandas as pd

    df = pd.read_csv(table)
    cols = ["model", "benchmark", "n", "text_acc", "audio_acc", "gap", "own_gap", "gap_reduction"]
    print(df[cols].to_string(index=False))
    metrics = work / "results/models/base/metrics.json"
    if metrics.exists():
        print("\nbase stage:", json.loads(metrics.read_text()))


if __name__ == "__main__":
    main()
