"""Quality across seeds: each method's gap reduction vs the base on the embedded default.

    python benchmarks/quality.py [--seeds 1 2 3] [--configfile config/presets/ablations.yaml]
        [--methods sft forward_kl opd grpo cord] [--include DIR ...]

Runs the whole workflow once per seed (each in a fresh copy of the checkout, `seed`
overridden; `--methods` overrides `train.methods`), then prints per model: text and audio
accuracy per benchmark and the gap reduction (mean over benchmarks, and on held-out voices
alone), each as mean +- standard deviation over the seeds, and every seed's value.
`--include DIR` adds a finished run's gap table (its seed read from the table's provenance
record) as one more seed. Held-out voices (`voices_heldout`) are the honest metric. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import BIN, copy_checkout, run_workflow  # noqa: E402


def run_seed(seed: int, extra: list[str], cores: str, methods: list[str] | None) -> pd.DataFrame:
    work = Path(tempfile.mkdtemp(prefix=f"cordflow-seed{seed}-"))
    copy_checkout(work)
    override = {"seed": seed, **({"train": {"methods": methods}} if methods else {})}
    (work / "seed.yaml").write_text(json.dumps(override) + "\n")  # JSON is YAML
    cmd = [str(BIN / "snakemake"), "--cores", cores, "--configfile", "config/config.yaml",
           *extra, "seed.yaml"]
    wall = run_workflow(cmd, work, f"seed {seed}")
    df = pd.read_csv(work / "results/eval/gap_table.csv")
    print(f"seed {seed}: done in {wall / 60:.1f} min wall ({cores} cores), in {work}", flush=True)
    return df.assign(seed=seed)


def finished_run(work: Path) -> pd.DataFrame:
    table = work / "results/eval/gap_table.csv"
    seed = json.loads(table.with_name(table.name + ".prov.json").read_text())["seed"]
    print(f"seed {seed}: a finished run, {work}", flush=True)
    return pd.read_csv(table).assign(seed=seed)


def heldout_reduction(rows: pd.DataFrame) -> pd.DataFrame:
    """Per seed and model: (base gap - model gap) / base gap on held-out voices, percent."""
    held = rows[rows["benchmark"] == "voices_heldout"].set_index(["seed", "model"])["gap"]
    base = held.xs("base", level="model")
    red = -100 * held.unstack("model").sub(base, axis=0).div(base, axis=0)
    return red.stack().rename("reduction").reset_index()


def by_seed(df: pd.DataFrame, col: str) -> str:
    """``seed: value`` for every row of ``df``, in seed order."""
    return ", ".join(f"{seed}: {v:.1f}" for seed, v in
                     df.sort_values("seed")[["seed", col]].itertuples(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--configfile", nargs="*", default=[])
    ap.add_argument("--cores", default="2")
    ap.add_argument("--methods", nargs="+", help="train.methods for every seed")
    ap.add_argument("--include", type=Path, nargs="*", default=[],
                    help="finished runs (checkout folders) to add as seeds")
    args = ap.parse_args()
    extra = [str(Path(c).resolve()) for c in args.configfile]
    tables = pd.concat([finished_run(w) for w in args.include]
                       + [run_seed(s, extra, args.cores, args.methods) for s in args.seeds])

    rows = tables[tables["benchmark"] != "mean"]
    acc = rows.groupby(["model", "benchmark"], sort=False)[["text_acc", "audio_acc"]].agg(
        ["mean", "std"]).round(1)
    print("\naccuracy (percent, mean and std over seeds):")
    print(acc.to_string())
    means = tables[tables["benchmark"] == "mean"]
    print("\ngap reduction vs base (percent, over benchmarks with text):")
    for model, m in means.groupby("model", sort=False):
        values = m["gap_reduction"]
        print(f"  {model:16s} {values.mean():6.1f} +- {values.std():5.1f}   "
              f"(by seed: {by_seed(m, 'gap_reduction')})")
    if (rows["benchmark"] == "voices_heldout").any():
        print("\nheld-out voices only: gap (base text - model audio) and gap reduction vs base:")
        gaps = rows[rows["benchmark"] == "voices_heldout"].groupby("model", sort=False)["gap"]
        red = heldout_reduction(rows).dropna().groupby("model", sort=False)
        for model, g in gaps:
            r = red.get_group(model)
            print(f"  {model:16s} gap {g.mean():6.1f} +- {g.std():5.1f}   reduction "
                  f"{r['reduction'].mean():6.1f} +- {r['reduction'].std():5.1f}   "
                  f"(by seed: {by_seed(r, 'reduction')})")


if __name__ == "__main__":
    main()
