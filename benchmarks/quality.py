"""Quality across seeds: each method's gap reduction vs the base on the embedded default.

    python benchmarks/quality.py [--seeds 1 2 3] [--configfile config/presets/ablations.yaml]
        [--methods sft forward_kl opd grpo cord] [--include DIR ...]

Runs the whole workflow once per seed (each in a fresh copy of the checkout, `seed`
overridden; `--methods` overrides `train.methods`), then prints per model: text and audio
accuracy per benchmark and the gap reduction (mean over benchmarks, and on held-out voices
alone), each as mean +- standard deviation over the seeds, and every seed's value; then
issue 13's summary: per model the gap reduction on the held-out and on the neural voices,
text accuracy and audio-skill accuracy, each as the mean over seeds with a 95 % interval
(Student's t over the seeds), and the paired differences of each run's `paired.csv`
(cord - sft, cord - warmup, ...: the mean row's audio accuracy and gap reduction, and
held-out audio) likewise over seeds.
`--include DIR` adds a finished run (its seed read from the gap table's provenance
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


def run_seed(seed: int, extra: list[str], cores: str, methods: list[str] | None) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f"cordflow-seed{seed}-"))
    copy_checkout(work)
    override = {"seed": seed, **({"train": {"methods": methods}} if methods else {})}
    (work / "seed.yaml").write_text(json.dumps(override) + "\n")  # JSON is YAML
    cmd = [str(BIN / "snakemake"), "--cores", cores, "--configfile", "config/config.yaml",
           *extra, "seed.yaml"]
    wall = run_workflow(cmd, work, f"seed {seed}")
    print(f"seed {seed}: done in {wall / 60:.1f} min wall ({cores} cores), in {work}", flush=True)
    return work


def finished_run(work: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A finished run's gap table and paired table (None without one), with its seed."""
    table = work / "results/eval/gap_table.csv"
    seed = json.loads(table.with_name(table.name + ".prov.json").read_text())["seed"]
    print(f"seed {seed}: {work}", flush=True)
    paired = table.with_name("paired.csv")
    return (pd.read_csv(table).assign(seed=seed),
            pd.read_csv(paired).assign(seed=seed) if paired.exists() else None)


def reduction(rows: pd.DataFrame, benchmark: str = "voices_heldout") -> pd.DataFrame:
    """Per seed and model: (base gap - model gap) / base gap on ``benchmark``, percent."""
    held = rows[rows["benchmark"] == benchmark].set_index(["seed", "model"])["gap"]
    base = held.xs("base", level="model")
    red = -100 * held.unstack("model").sub(base, axis=0).div(base, axis=0)
    return red.stack().rename("reduction").reset_index()


def over_seeds(values: pd.Series) -> str:
    """``mean (lo, hi)``: the mean over seeds with its 95 % Student-t interval."""
    from scipy import stats

    v = values.dropna()
    if len(v) < 2:
        return f"{v.mean():.1f} (one seed)"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std() / len(v) ** 0.5
    return f"{v.mean():.1f} ({v.mean() - half:.1f}, {v.mean() + half:.1f})"


def summary(tables: pd.DataFrame, paired: pd.DataFrame | None) -> None:
    """Issue 13's figures: per model and per pair, means over seeds with 95 % intervals."""
    rows = tables[tables["benchmark"] != "mean"]
    n = tables["seed"].nunique()
    print(f"\nover {n} seeds, mean (95 % interval over seeds):")
    print(f"  {'model':16s} {'held-out red.':>22s} {'neural red.':>22s} {'text acc':>22s} "
          f"{'audio_skill':>22s}")
    held, neural = reduction(rows, "voices_heldout"), reduction(rows, "neural")
    means = tables[tables["benchmark"] == "mean"].set_index(["model", "seed"])
    skill = rows[rows["benchmark"] == "audio_skill"].set_index(["model", "seed"])["audio_acc"]
    for model in dict.fromkeys(tables["model"]):
        cells = [over_seeds(held.loc[held["model"] == model, "reduction"]),
                 over_seeds(neural.loc[neural["model"] == model, "reduction"]),
                 over_seeds(means.loc[model, "text_acc"]),
                 over_seeds(skill.loc[model]) if model in skill.index else "-"]
        print(f"  {model:16s} " + " ".join(f"{c:>22s}" for c in cells))
    if paired is None:
        return
    print("\npaired differences (each run's paired.csv), mean over seeds (95 % interval):")
    for (model, ref), d in paired.groupby(["model", "reference"], sort=False):
        d = d.set_index("benchmark")
        mean, heldout = d.loc[["mean"]], d.loc[d.index == "voices_heldout"]
        print(f"  {model} - {ref}: audio {over_seeds(mean['d_audio_acc'])}, gap reduction "
              f"{over_seeds(mean['d_gap_reduction'])}, held-out audio "
              f"{over_seeds(heldout['d_audio_acc'])}, text {over_seeds(mean['d_text_acc'])}")


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
    runs = [finished_run(w) for w in args.include]
    runs += [finished_run(run_seed(s, extra, args.cores, args.methods)) for s in args.seeds]
    tables = pd.concat([t for t, _ in runs])
    pairs = [p for _, p in runs if p is not None]
    paired = pd.concat(pairs) if len(pairs) == len(runs) else None

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
        red = reduction(rows).dropna().groupby("model", sort=False)
        for model, g in gaps:
            r = red.get_group(model)
            print(f"  {model:16s} gap {g.mean():6.1f} +- {g.std():5.1f}   reduction "
                  f"{r['reduction'].mean():6.1f} +- {r['reduction'].std():5.1f}   "
                  f"(by seed: {by_seed(r, 'reduction')})")
    summary(tables, paired)


if __name__ == "__main__":
    main()
