"""The paper's scale: an 80,100-row QA file through sourcing and speech synthesis, then the
commands a lab runs on such a run (issue 16 §3).

    python benchmarks/scale.py [--rows 80000] [--bad 100] [--shards 64] [--cores 2] [--keep DIR]

Writes a jsonl QA file of ``--rows`` good questions (one in ten with LaTeX, one in ten
multiple choice; a 1 % dev and a 1 % test split) and ``--bad`` bad rows (no question, no
answer, a choice answer that is no option, unspeakable math), and runs the real workflow
on it in a fresh copy of this checkout (`snakemake --cores N` up to the manifest, built-in
questions off, one take per question, ``--shards`` TTS shards). Then prints, as the issue
measured them:

- source: seconds; rows in = kept + rejected, and how many bad rows were caught;
- synthesis: wall time of the TTS jobs, clips/s, bytes a clip, files and bytes in the store;
- peak resident memory of each rule's jobs (target: every stage < 4 GB);
- `snakemake -n` on the finished run (no-op; target < 3 s), after one added question (and
  its job count), and after `--until tts_plan` has run for it;
- `cordflow audit` of the manifest and `audit --all` (deep, then warm: target < 5 s warm);
- `cordflow export-crate`: seconds and peak memory (target < 2 min and < 1 GB).

Prints figures only; nothing is asserted (timings do not belong in tests).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from default_run import BIN, copy_checkout, rule_figures, run_workflow, user_env

MANIFEST = "results/audio/manifest.parquet"
BAD = [  # (row, why the source stage must reject it)
    ({"question": "", "answer": "3"}, "no question"),
    ({"question": "What is 2 plus 2?", "answer": ""}, "no answer"),
    ({"question": "Which is largest?", "choices": ["1", "2", "3"], "answer": "D"},
     "answer is no option"),
    ({"question": r"Evaluate $\sum_{i=1}^{9} i$.", "answer": "45"}, "unspeakable math"),
]


def qa_rows(n: int, n_bad: int, seed: int = 0):
    """``n`` good rows then ``n_bad`` bad ones (each of :data:`BAD` in turn)."""
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(2, 999)
        split = "test" if i % 100 == 0 else "dev" if i % 100 == 1 else "train"
        if i % 10 == 3:
            row = {"question": rf"What is $\frac{{{a}}}{{{b}}}$ plus {i}?",
                   "answer": f"{a + i * b}/{b}"}
        elif i % 10 == 7:
            opts = [str(a + k) for k in range(4)]
            row = {"question": f"Question {i}: which number is {a + 2}?", "choices": opts,
                   "answer": "C"}
        else:
            row = {"question": f"Question {i}: what is {a} plus {b}?", "answer": str(a + b)}
        yield {**row, "split": split}
    for j in range(n_bad):
        yield {**BAD[j % len(BAD)][0], "split": "train"}


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(seconds, peak resident MB, the run) of ``cmd`` in a fresh process that measures only
    it (``getrusage`` of its children)."""
    probe = ("import resource, subprocess, sys, json; "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
             "print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), "
             "file=sys.stderr); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=cwd, env=user_env(),
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    *err, peak = run.stderr.rstrip("\n").split("\n")
    run.stderr = "\n".join(err)
    return seconds, int(peak) / 1024, run


def dry_run(work: Path, config: list[str]) -> tuple[float, int]:
    """(seconds, jobs) of ``snakemake -n`` for the manifest."""
    seconds, _, run = timed([str(BIN / "snakemake"), MANIFEST, "-n", "--cores", "1", *config],
                            work)
    if run.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{run.stderr[-3000:]}")
    jobs = 0
    for line in run.stdout.splitlines():  # the job-stats table: "total  N"
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            jobs = int(parts[1])
    return seconds, jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=80_000)
    ap.add_argument("--bad", type=int, default=100)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="cordflow-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_checkout(work)
    qa = work / "qa_scale.jsonl"
    with qa.open("w") as f:
        for row in qa_rows(args.rows, args.bad):
            f.write(json.dumps(row) + "\n")
    layer = work / "scale.yaml"
    layer.write_text(json.dumps({
        "source": {"builtin": {"enabled": False}, "files": [{"path": qa.name}]},
        "tts": {"n_shards": args.shards, "train_takes": 1}}))
    config = ["--configfile", "config/config.yaml", layer.name]
    print(f"{args.rows + args.bad} rows ({args.bad} bad), {args.shards} shards, in {work}")

    snakemake = [str(BIN / "snakemake"), MANIFEST, "--cores", args.cores]
    wall = run_workflow(snakemake + config, work, "the run")
    print(f"\nsource to manifest: {wall / 60:.1f} min wall ({args.cores} cores)")
    figures = rule_figures(work)
    for rule, fig in figures.items():
        print(f"{rule:12s} {fig['jobs']:4d} jobs {fig['sum_s']:8.1f} s summed "
              f"{fig['max_s']:8.1f} s longest {fig['peak_mb']:8.0f} MB peak")

    import pandas as pd

    kept = sum(len(pd.read_parquet(work / f"results/qa/{s}.parquet"))
               for s in ("train", "dev", "test"))
    rejected = pd.read_parquet(work / "results/qa/rejected.parquet")
    caught = int((rejected["origin"].str.rsplit(":", n=1).str[-1].astype(int)
                  > args.rows).sum()) if len(rejected) else 0
    print(f"source: {figures['source']['sum_s']:.1f} s; in {args.rows + args.bad} = kept "
          f"{kept} + rejected {len(rejected)}; bad rows caught {caught} of {args.bad}")
    manifest = pd.read_parquet(work / MANIFEST)
    store = [p for p in (work / "results/audio/store").rglob("*") if p.is_file()]
    store_bytes = sum(p.stat().st_size for p in store)
    tts = figures["tts_shard"]
    print(f"synthesis: {len(manifest)} clips in {tts['wall_s'] / 60:.1f} min wall of "
          f"{tts['jobs']} tts_shard jobs ({len(manifest) / tts['wall_s']:.0f} clips/s on "
          f"{args.cores} cores; {len(manifest) / tts['sum_s']:.0f} a job-second), "
          f"{store_bytes / len(manifest) / 1e3:.0f} kB a clip; store {len(store)} files, "
          f"{store_bytes / 1e9:.2f} GB")

    noop = min(dry_run(work, config)[0] for _ in range(3))
    print(f"\nno-op snakemake -n: {noop:.1f} s (best of 3)")
    with qa.open("a") as f:
        f.write(json.dumps({"question": "What is 1000 plus 1?", "answer": "1001",
                            "split": "train"}) + "\n")
    seconds, jobs = dry_run(work, config)
    print(f"snakemake -n after one added question: {seconds:.1f} s, {jobs} jobs")
    run_workflow([*snakemake, "--until", "tts_plan", *config], work, "--until tts_plan")
    seconds, jobs = dry_run(work, config)
    print(f"snakemake -n after --until tts_plan ran: {seconds:.1f} s, {jobs} jobs")
    run_workflow(snakemake + config, work, "the rerun")

    cordflow = [str(BIN / "cordflow")]
    for what, cmd in [("audit manifest --deep", ["audit", MANIFEST, "--deep"]),
                      ("audit manifest (cold cache)", ["audit", MANIFEST]),
                      ("audit manifest (warm)", ["audit", MANIFEST]),
                      ("audit --all --deep", ["audit", "--all", "--deep"]),
                      ("audit --all (warm)", ["audit", "--all"]),
                      ("export-crate", ["export-crate", "results", "--out", "crate"])]:
        seconds, peak, run = timed(cordflow + cmd, work)
        print(f"cordflow {what}: {seconds:.1f} s, {peak:.0f} MB peak, exit {run.returncode}")
    crate = work / "crate" / "ro-crate-metadata.json"
    if crate.exists():
        print(f"crate metadata: {crate.stat().st_size / 1e6:.0f} MB of JSON-LD")
    if not args.keep:
        print(f"(the run is in {work}; delete it when done)")


if __name__ == "__main__":
    main()
