"""Quality across seeds: each method's gap reduction vs the base on the embedded default.

    python benchmarks/quality.py [--seeds 1 2 3] [--configfile config/presets/ablations.yaml]

Runs the whole workflow once per seed (each in a fresh copy of the checkout, `seed`
overridden), then prints per model: text and audio accuracy per benchmark and the mean
gap reduction, each as mean +- standard deviation over the seeds, and every seed's value.
Held-out voices (`voices_heldout`) are the honest metric. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import BIN, copy_checkout  # noqa: E402


def run_seed(seed: int, extra: list[str], cores: str) -> pd.DataFrame:
    work = Path(tempfile.mkdtemp(prefix=f"cordflow-seed{seed}-"))
    copy_checkout(work)
    (work / "seed.yaml").write_text(f"seed: {seed}\n")
    cmd = [str(BIN / "snakemake"), "--cores", cores, "--configfile", "config/config.yaml",
           *extra, "seed.yaml"]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"seed {seed} failed (in {work}):\n{res.stderr[-3000:]}")
    df = pd.read_csv(work / "results/eval/gap_table.csv")
    print(f"seed {seed}: done in {wall / 60:.1f} min wall ({cores} cores), in {work}", flush=True)
    return df.assign(seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--configfile", nargs="*", default=[])
    ap.add_argument("--cores", default="2")
    args = ap.parse_args()
    extra = [str(Path(c).resolve()) for c in args.configfile]
    tables = pd.concat([run_seed(s, extra, args.cores) for s in args.seeds])

    rows = tables[tables["benchmark"] != "mean"]
    acc = rows.groupby(["model", "benchmark"], sort=False)[["text_acc", "audio_acc"]].agg(
        ["mean", "std"]).round(1)
    print("\naccuracy (percent, mean and std over seeds):")
    print(acc.to_string())
    means = tables[tables["benchmark"] == "mean"]
    red = means.groupby("model", sort=False)["gap_reduction"]
    print("\ngap reduction vs base (percent, over benchmarks with text):")
    for model, values in red:
        vals = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {model:16s} {values.mean():6.1f} +- {values.std():5.1f}   (seeds: {vals})")
    held = rows[rows["benchmark"] == "voices_heldout"]
    if len(held):
        print("\nheld-out voices only: gap (base text - model audio), mean over seeds:")
        for model, g in held.groupby("model", sort=False)["gap"]:
            print(f"  {model:16s} {g.mean():6.1f} +- {g.std():5.1f}")


if __name__ == "__main__":
    main()
