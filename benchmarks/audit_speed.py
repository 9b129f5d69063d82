"""Audit speed on a results folder the size of the default run (target: `cordflow audit`
of the gap table under 5 s).

Builds, with the real `stage_run` (so real records), a folder shaped like the embedded
default's (``--clips 80000``: the paper's 80,000 questions, 160,000 store files): 3 QA
tables, a 4-way plan, 4 TTS shards whose records list ~1380 clips (FLAC of ~40 kB + JSON
each), the manifest, 4 model folders (~3 MB weights + tokenizer files), 4 evaluation
tables, the gap table and plot, the provenance summary. Then times
`audit(gap_table)`, `audit_all(results)` and the `cordflow audit` command.

    python benchmarks/audit_speed.py [--clips 1380] [--model-mb 3]

Prints figures only; nothing is asserted (timings do not belong in tests).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from cordflow import audit  # noqa: E402
from cordflow.stage import stage_run  # noqa: E402

MODELS = ["base", "warmup", "sft", "cord"]


def blob(path: Path, size: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(seed.to_bytes(8, "big") * (size // 8))
    return path


def build(clips: int, model_mb: float) -> None:
    qa = [Path(f"results/qa/{s}.parquet") for s in ("train", "test", "rejected")]
    with stage_run("source", {"seed": 1}, [], qa):
        for i, p in enumerate(qa):
            blob(p, 60_000, i)
    with stage_run("tts_plan", {}, qa[:2], ["results/audio/plan"]):
        for k in range(4):
            blob(Path(f"results/audio/plan/{k}.parquet"), 20_000, 10 + k)
    shards = []
    for k in range(4):
        out = Path(f"results/audio/shards/{k}.parquet")
        with stage_run("tts_shard", {"seed": 1}, [f"results/audio/plan/{k}.parquet"],
                       [out]) as extra:
            for i in range(k, clips, 4):
                key = f"{i:032x}"
                flac = blob(Path(f"results/audio/store/{key[-2:]}/{key}.flac"), 40_000, i)
                meta = blob(flac.with_suffix(".json"), 900, i)
                extra += [flac, meta]
            blob(out, 80_000, 100 + k)
        shards.append(out)
    manifest = Path("results/audio/manifest.parquet")
    with stage_run("tts_gather", {}, shards, [manifest, "results/audio/rejected.parquet"]):
        blob(manifest, 300_000, 200)
        blob(Path("results/audio/rejected.parquet"), 5_000, 201)
    evals = []
    for j, m in enumerate(MODELS):
        d = Path(f"results/models/{m}")
        inputs = [qa[0], manifest] + ([] if m == "base" else ["results/models/base"])
        with stage_run(m if m in ("base",) else "train", {"seed": 1}, inputs, [d]):
            blob(d / "model.safetensors", int(model_mb * 1e6), 300 + j)
            for n, name in enumerate(("config.json", "tokenizer.json", "tokenizer_config.json",
                                      "preprocessor_config.json", "generation_config.json",
                                      "chat_template.jinja", "train_log.jsonl")):
                blob(d / name, 4_000, 400 + 10 * j + n)
        ev = Path(f"results/eval/{m}/builtin.parquet")
        with stage_run("evaluate", {"seed": 1}, [d, qa[1], manifest], [ev]):
            blob(ev, 30_000, 500 + j)
        evals.append(ev)
    outs = [Path("results/eval/gap_table.csv"), Path("results/eval/gap_plot.png")]
    with stage_run("summarize", {"seed": 1}, evals, outs):
        blob(outs[0], 2_000, 600)
        blob(outs[1], 60_000, 601)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=1380)
    ap.add_argument("--model-mb", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        t0 = time.perf_counter()
        build(args.clips, args.model_mb)
        n_files = sum(1 for p in Path("results").rglob("*") if p.is_file())
        print(f"built {n_files} files in {time.perf_counter() - t0:.1f} s")
        report = audit.audit("results/eval/gap_table.csv")
        assert not report.problems, report.problems
        print(f"audit(gap_table.csv):  {report.seconds:.2f} s, {report.files_hashed} files, "
              f"{report.bytes_hashed / 1e6:.0f} MB hashed, "
              f"{len(report.auditor.records)} artifacts")
        report = audit.audit_all_report("results")
        print(f"audit_all(results):    {report.seconds:.2f} s, {report.files_hashed} files, "
              f"{report.bytes_hashed / 1e6:.0f} MB hashed, {len(report.problems)} problems")
        for run in ("cold", "warm"):  # the stat cache: first fills it, then reads nothing
            report = audit.audit_all_report("results", deep=False)
            print(f"audit_all(results, stat cache {run}): {report.seconds:.2f} s, "
                  f"{report.files_hashed} files read, {report.bytes_hashed / 1e6:.0f} MB")
        env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"))
        for args_ in (["results/eval/gap_table.csv"], ["--all"]):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "cordflow", "audit", *args_], env=env,
                                 capture_output=True, text=True)
            print(f"cordflow audit {' '.join(args_)}: {time.perf_counter() - t0:.2f} s wall "
                  f"(exit {res.returncode}, start-up included)")


if __name__ == "__main__":
    main()
