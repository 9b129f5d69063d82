"""Stage ``summarize``: the audio-text gap table and plot from every per-item eval table.

Input, one table per model and benchmark (``results/eval/{model}/{benchmark}.parquet``,
written by ``evaluate``), one row per item; the columns read (others are ignored):

- ``id`` (str, unique in the table), ``model`` (str), ``benchmark`` (str): one model and
  one benchmark per table; every model has every benchmark, on the same item ids;
- ``text_correct`` (bool; null for EVERY item of a benchmark without a text counterpart,
  such as mmau) and ``audio_correct`` (bool, never null).

``results/eval/gap_table.csv`` (:data:`TABLE_COLUMNS`), values in percent, laid out like
the paper's Tables 1 and 3: per model (the reference first, then in the order the tables
were given) one row per benchmark, then a ``mean`` row over the benchmarks that have a
text counterpart:

- ``n``: items; ``text_acc``, ``audio_acc``: accuracy from the text and from the audio prompt;
- ``gap``: the REFERENCE model's text accuracy minus this model's audio accuracy (the
  paper's gap: the text reference is fixed per model family); ``own_gap``: this model's
  text minus its audio accuracy;
- ``gap_reduction`` (``mean`` rows only): (mean gap of the reference - mean gap of the
  model) / mean gap of the reference, a ratio of averages over benchmarks as in the
  paper; undefined (empty) when the reference's mean gap is not positive;
- ``*_lo``, ``*_hi``: percentile bootstrap intervals (``summarize.ci``, ``n_boot``
  resamples, seeded by ``seed``). Items are resampled with replacement within each
  benchmark; one resample serves every model and both prompts (paired), so intervals of
  gaps and of the gap reduction carry the correlation between the numbers they combine.

Audio-only benchmarks (mmau) have an audio accuracy ("audio skills kept") and no text
accuracy, gap or own gap, and are left out of the mean row and the gap reduction. All the
gap arithmetic is :func:`gap_arithmetic`. ``results/eval/gap_plot.png``: text and audio
accuracy per model, one panel per benchmark, with the intervals (deterministic bytes).

``results/eval/paired.csv`` (:data:`PAIRED_COLUMNS`): paired comparisons, one block per
pair of ``summarize.pairs`` (``[model, reference]``, e.g. cord - sft), with a row per
benchmark and a ``mean`` row like the gap table's: ``d_text_acc``, ``d_audio_acc`` (model
minus reference, points) and on the ``mean`` row ``d_gap_reduction`` (the model's gap
reduction minus the reference's, points), each with a percentile interval from the SAME
resamples as the gap table: both models are scored on the same resampled items, so the
interval is that of a paired difference (narrower than comparing the two models'
intervals when their answers are correlated). A pair whose models have no eval tables in
this run is skipped with a log line; a name that is no model (not base, warmup or a
method name) is a config error when the DAG is built (cordflow.config.check_config).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from cordflow.io import atomic_path, write_text_atomic

log = logging.getLogger("cordflow.summarize")

EVAL_COLUMNS = ["id", "model", "benchmark", "text_correct", "audio_correct"]
STATS = ["text_acc", "audio_acc", "gap", "own_gap", "gap_reduction"]
TABLE_COLUMNS = ["model", "benchmark", "n"] + [
    c for s in STATS for c in (s, f"{s}_lo", f"{s}_hi")]
MEAN = "mean"
PAIR_STATS = ["d_text_acc", "d_audio_acc", "d_gap_reduction"]
PAIRED_COLUMNS = ["model", "reference", "benchmark", "n"] + [
    c for s in PAIR_STATS for c in (s, f"{s}_lo", f"{s}_hi")]


class SummarizeError(ValueError):
    """An eval table is missing or unusable; the message names the file and the fix."""


def summarize_config(params: dict) -> dict:
    """The ``summarize`` section, schema-validated with defaults filled in."""
    from cordflow.config import section

    return section(params, "summarize")


# ----------------------------------------------------------------------------- the gap

def gap_arithmetic(base_text, audio, reference: int, decimals: int | None = 2):
    """The paper's gap arithmetic, on percentages; the last axis is the benchmarks.

    ``base_text`` (..., K): the reference model's text accuracy per benchmark; ``audio``
    (..., M, K): every model's audio accuracy; ``reference``: the reference's index in M.
    Leading axes (bootstrap resamples) broadcast. Returns ``(gap, mean_gap, reduction)``:

    - ``gap`` (..., M, K) = base_text - audio;
    - ``mean_gap`` (..., M): its mean over the benchmarks, at ``decimals`` (the paper's
      tables print two decimals and its gap reduction follows from the printed means;
      ``None``: full precision);
    - ``reduction`` (..., M) = 100 * (mean_gap[reference] - mean_gap) / mean_gap[reference],
      NaN where the reference's mean gap is not positive.
    """
    base_text, audio = np.asarray(base_text, float), np.asarray(audio, float)
    gap = base_text[..., None, :] - audio
    mean_gap = gap.mean(axis=-1)
    if decimals is not None:
        mean_gap = np.round(mean_gap, decimals)
    base = mean_gap[..., reference, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        reduction = np.where(base > 0, 100.0 * (base - mean_gap) / base, np.nan)
    return gap, mean_gap, reduction


# ----------------------------------------------------------------------------- inputs

def read_eval(path: str | Path) -> pd.DataFrame:
    """One eval table, checked: ``id``, ``model``, ``benchmark``, ``text`` and ``audio``
    (1.0 correct, 0.0 wrong; ``text`` NaN for an audio-only benchmark)."""
    path = Path(path)
    if not path.is_file():
        raise SummarizeError(f"{path}: no such eval table; run the evaluate step for it "
                             f"(snakemake {path})")
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in EVAL_COLUMNS if c not in names]
    if missing:
        raise SummarizeError(f"{path}: eval table lacks column(s) {missing} (has {names}); "
                             f"it was not written by this version of evaluate, rerun it")
    df = pq.read_table(path, columns=EVAL_COLUMNS).to_pandas()
    if len(df) == 0:
        raise SummarizeError(f"{path}: the eval table is empty (no item was evaluated); see "
                             f"the evaluate log for the benchmark's excluded items")
    try:
        df = EVAL_SCHEMA.validate(df)
    except pa.errors.SchemaError as e:
        raise SummarizeError(f"{path}: bad eval table: {e}") from None
    for col in ("model", "benchmark"):
        if df[col].nunique() != 1:
            raise SummarizeError(f"{path}: one {col} per eval table, found "
                                 f"{sorted(df[col].unique())}")
    text_null = df["text_correct"].isna()
    if text_null.any() and not text_null.all():
        raise SummarizeError(f"{path}: text_correct is null for {int(text_null.sum())} of "
                             f"{len(df)} items; it must be null for all (audio-only) or none")
    return pd.DataFrame({
        "id": df["id"], "model": df["model"], "benchmark": df["benchmark"],
        "text": df["text_correct"].astype("Float64").to_numpy(dtype=float, na_value=np.nan),
        "audio": df["audio_correct"].astype(float),
    })


EVAL_SCHEMA = pa.DataFrameSchema(
    {
        "id": pa.Column(str, unique=True),
        "model": pa.Column(str, pa.Check.str_length(min_value=1)),
        "benchmark": pa.Column(str, pa.Check.str_length(min_value=1)),
        "text_correct": pa.Column("boolean", nullable=True, coerce=True),
        "audio_correct": pa.Column("boolean", nullable=False, coerce=True),
    },
    strict=True,
    name="eval_items",
)


def _grid(tables: list[pd.DataFrame], reference: str):
    """(models, benchmarks, {benchmark: (ids, text (M, n), audio (M, n))}), models with
    the reference first, then in first-seen order; benchmarks in first-seen order."""
    models, benches, by_key = [], [], {}
    for t in tables:
        key = (t["model"].iloc[0], t["benchmark"].iloc[0])
        if key in by_key:
            raise SummarizeError(f"two eval tables for model '{key[0]}', benchmark '{key[1]}'")
        by_key[key] = t
        models += [key[0]] if key[0] not in models else []
        benches += [key[1]] if key[1] not in benches else []
    if reference not in models:
        raise SummarizeError(f"summarize.reference is '{reference}' but no eval table is for "
                             f"that model (models: {models}); evaluate it or set "
                             f"summarize.reference")
    models = [reference] + [m for m in models if m != reference]
    missing = [f"{m}/{b}" for m in models for b in benches if (m, b) not in by_key]
    if missing:
        raise SummarizeError(f"every model needs every benchmark; no eval table for "
                             f"{missing} (results/eval/<model>/<benchmark>.parquet)")
    grid = {}
    for b in benches:
        ids = np.sort(by_key[(reference, b)]["id"].to_numpy(dtype=str))
        text, audio = [], []
        for m in models:
            t = by_key[(m, b)].set_index("id")
            if len(t) != len(ids) or not t.index.isin(ids).all():
                raise SummarizeError(f"benchmark '{b}': model '{m}' was evaluated on other "
                                     f"items than '{reference}' ({len(t)} vs {len(ids)}); "
                                     f"rerun evaluate for both on the same benchmark data")
            text.append(t.loc[ids, "text"].to_numpy())
            audio.append(t.loc[ids, "audio"].to_numpy())
        text, audio = np.array(text), np.array(audio)
        has_text = not np.isnan(text).all()
        if np.isnan(text).any() and has_text:
            raise SummarizeError(f"benchmark '{b}': some models have text answers and some "
                                 f"none; every model must be evaluated the same way")
        grid[b] = (ids, text, audio)
    return models, benches, grid


# ----------------------------------------------------------------------------- bootstrap

def benchmark_rng(seed: int, name: str) -> np.random.Generator:
    """The resampling generator of one benchmark, seeded by ``seed`` and the benchmark's
    name: adding a benchmark leaves the others' intervals unchanged."""
    return np.random.default_rng(
        [seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")])


def resample_counts(n: int, n_boot: int, rng: np.random.Generator,
                    chunk: int = 256) -> Iterator[np.ndarray]:
    """``n_boot`` resamples of n items with replacement, as how often each item is drawn:
    arrays (<= chunk, n) of counts, in order."""
    p = np.full(n, 1.0 / n)
    for start in range(0, n_boot, chunk):
        yield rng.multinomial(n, p, size=min(chunk, n_boot - start))


def resampled_means(x: np.ndarray, n_boot: int, rng: np.random.Generator,
                    chunk: int = 256) -> np.ndarray:
    """Means of ``x`` (M, n) over ``n_boot`` resamples of its n columns with replacement,
    the same resample for every row (paired): (n_boot, M)."""
    n = x.shape[1]
    return np.concatenate([counts.astype(float) @ x.T / n
                           for counts in resample_counts(n, n_boot, rng, chunk)])


def _interval(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        lo, hi = np.nanpercentile(samples, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return lo, hi


@dataclass
class Statistics:
    """Every statistic of every model, with its bootstrap samples: ``stats[(stat, model,
    benchmark)] = (value, samples (n_boot,))`` for :data:`STATS` (``benchmark`` may be
    :data:`MEAN`); all from one resample per benchmark, shared by the models and prompts."""

    models: list[str]
    benches: list[str]
    gap_benches: list[str]  # those with a text counterpart: the mean row's
    n_items: dict[str, int]  # benchmark (and MEAN) -> items
    n_boot: int
    stats: dict[tuple[str, str, str], tuple[float, np.ndarray]]

    def get(self, stat: str, model: str, bench: str) -> tuple[float, np.ndarray]:
        return self.stats.get((stat, model, bench), (np.nan, np.full(self.n_boot, np.nan)))


def statistics(tables: list[pd.DataFrame], reference: str = "base", n_boot: int = 2000,
               decimals: int | None = 2, seed: int = 0) -> Statistics:
    """The point values and bootstrap samples behind :func:`gap_table` and
    :func:`paired_table` (eval tables read by :func:`read_eval`)."""
    models, benches, grid = _grid(tables, reference)
    gap_benches = [b for b in benches if not np.isnan(grid[b][1]).all()]
    point, boot = {}, {}  # benchmark -> (text (M,), audio (M,)) and (text (B, M), audio)
    for b in benches:
        _, text, audio = grid[b]
        point[b] = 100 * text.mean(axis=1), 100 * audio.mean(axis=1)
        means = 100 * resampled_means(np.vstack([np.nan_to_num(text), audio]), n_boot,
                                      benchmark_rng(seed, b))
        boot[b] = means[:, :len(models)], means[:, len(models):]  # one resample, both prompts
    stats = {}  # (stat, model, benchmark) -> (value, samples)
    for b in benches:
        (tp, ap), (tb, ab) = point[b], boot[b]
        has_text = b in gap_benches
        for i, m in enumerate(models):
            t_pt, t_bs = (tp[i], tb[:, i]) if has_text else (np.nan, np.full(n_boot, np.nan))
            stats[("text_acc", m, b)] = t_pt, t_bs
            stats[("audio_acc", m, b)] = ap[i], ab[:, i]
            stats[("own_gap", m, b)] = t_pt - ap[i], t_bs - ab[:, i]
    if gap_benches:
        k_text = np.stack([point[b][0][0] for b in gap_benches])          # (K,)
        k_audio = np.stack([point[b][1] for b in gap_benches], axis=-1)   # (M, K)
        s_text = np.stack([boot[b][0][:, 0] for b in gap_benches], axis=-1)      # (B, K)
        s_audio = np.stack([boot[b][1] for b in gap_benches], axis=-1)           # (B, M, K)
        gap, mean_gap, red = gap_arithmetic(k_text, k_audio, 0, decimals)
        s_gap, s_mean_gap, s_red = gap_arithmetic(s_text, s_audio, 0, decimals)
        if np.isnan(red[0]):
            log.warning("the reference '%s' has a mean gap of %.2f points: the gap reduction "
                        "is undefined", reference, mean_gap[0])
        for i, m in enumerate(models):
            for k, b in enumerate(gap_benches):
                stats[("gap", m, b)] = gap[i, k], s_gap[:, i, k]
            stats[("gap", m, MEAN)] = mean_gap[i], s_mean_gap[:, i]
            stats[("gap_reduction", m, MEAN)] = red[i], s_red[:, i]
            for stat in ("text_acc", "audio_acc", "own_gap"):
                stats[(stat, m, MEAN)] = (
                    np.mean([stats[(stat, m, b)][0] for b in gap_benches]),
                    np.mean([stats[(stat, m, b)][1] for b in gap_benches], axis=0))
    n_items = {b: len(grid[b][0]) for b in benches}
    n_items[MEAN] = sum(n_items[b] for b in gap_benches)
    return Statistics(models, benches, gap_benches, n_items, n_boot, stats)


# ----------------------------------------------------------------------------- the tables

def gap_table(tables: list[pd.DataFrame], reference: str = "base", n_boot: int = 2000,
              ci: float = 0.95, decimals: int | None = 2, seed: int = 0) -> pd.DataFrame:
    """The gap table (:data:`TABLE_COLUMNS`) of eval tables read by :func:`read_eval`."""
    return _gap_rows(statistics(tables, reference, n_boot, decimals, seed), ci, decimals)


def _gap_rows(st: Statistics, ci: float, decimals: int | None) -> pd.DataFrame:
    rows = []
    for m in st.models:
        for b in st.benches + [MEAN]:
            row = {"model": m, "benchmark": b, "n": st.n_items[b]}
            for stat in STATS:
                row.update(_value_and_interval(stat, *st.get(stat, m, b), ci))
            rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if decimals is not None:
        table = table.round({c: decimals for c in TABLE_COLUMNS[3:]})
    return GAP_SCHEMA.validate(table)


def _value_and_interval(name: str, value, samples, ci: float) -> dict[str, float]:
    lo, hi = _interval(np.asarray(samples, float)[:, None], ci)
    return {name: float(value), f"{name}_lo": float(lo[0]), f"{name}_hi": float(hi[0])}


def paired_table(tables: list[pd.DataFrame], pairs: list[list[str]],
                 reference: str = "base", n_boot: int = 2000, ci: float = 0.95,
                 decimals: int | None = 2, seed: int = 0) -> pd.DataFrame:
    """Paired differences (:data:`PAIRED_COLUMNS`) for each ``[model, reference_model]``
    of ``pairs`` whose two models have eval tables; the others are skipped (logged)."""
    return _paired_rows(statistics(tables, reference, n_boot, decimals, seed), pairs, ci,
                        decimals)


def _paired_rows(st: Statistics, pairs: list[list[str]], ci: float,
                 decimals: int | None) -> pd.DataFrame:
    rows = []
    for model, ref in pairs:
        absent = [m for m in (model, ref) if m not in st.models]
        if absent:
            log.info("summarize.pairs: %s - %s skipped: no eval tables for %s in this run "
                     "(models: %s)", model, ref, absent, st.models)
            continue
        for b in st.benches + [MEAN]:
            row = {"model": model, "reference": ref, "benchmark": b, "n": st.n_items[b]}
            for stat in PAIR_STATS:
                (v_m, s_m), (v_r, s_r) = (st.get(stat[2:], m, b) for m in (model, ref))
                row.update(_value_and_interval(stat, v_m - v_r, s_m - s_r, ci))
            rows.append(row)
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS).astype(  # typed even when empty
        {"model": str, "reference": str, "benchmark": str, "n": int,
         **{c: float for c in PAIRED_COLUMNS[4:]}})
    if decimals is not None:
        table = table.round({c: decimals for c in PAIRED_COLUMNS[4:]})
    return PAIRED_SCHEMA.validate(table)


def _lo_le_hi(df: pd.DataFrame) -> pd.Series:
    ok = pd.Series(True, index=df.index)
    for s in (c for c in df.columns if f"{c}_lo" in df.columns):
        both = df[f"{s}_lo"].notna() & df[f"{s}_hi"].notna()
        ok &= ~both | (df[f"{s}_lo"] <= df[f"{s}_hi"])
    return ok


_PERCENT = pa.Check.in_range(0, 100)
GAP_SCHEMA = pa.DataFrameSchema(
    {
        "model": pa.Column(str),
        "benchmark": pa.Column(str),
        "n": pa.Column(int, pa.Check.ge(0)),
        **{c: pa.Column(float, _PERCENT if c.startswith(("text_acc", "audio_acc")) else None,
                        nullable=True) for c in TABLE_COLUMNS[3:]},
    },
    checks=[pa.Check(_lo_le_hi, error="an interval has lo > hi")],
    strict=True,
    ordered=True,
    name="gap_table",
)
_POINTS = pa.Check.in_range(-100, 100)
PAIRED_SCHEMA = pa.DataFrameSchema(
    {
        "model": pa.Column(str),
        "reference": pa.Column(str),
        "benchmark": pa.Column(str),
        "n": pa.Column(int, pa.Check.ge(0)),
        **{c: pa.Column(float, _POINTS if c.startswith(("d_text_acc", "d_audio_acc")) else None,
                        nullable=True) for c in PAIRED_COLUMNS[4:]},
    },
    checks=[pa.Check(lambda df: (df["model"] != df["reference"]),
                     error="a pair compares a model with itself"),
            pa.Check(_lo_le_hi, error="an interval has lo > hi")],
    strict=True,
    ordered=True,
    name="paired_table",
)


# ----------------------------------------------------------------------------- the plot

def plot(table: pd.DataFrame, path: str | Path, reference: str = "base") -> None:
    """Text vs audio accuracy per model, one panel per benchmark, error bars = intervals;
    a dashed line at the reference's text accuracy (what the gap is measured from).
    Written atomically; identical tables give identical bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = table[table["benchmark"] != MEAN]
    benches = list(dict.fromkeys(rows["benchmark"]))
    models = list(dict.fromkeys(rows["model"]))
    ncols = min(len(benches), 4)
    nrows = -(-len(benches) // ncols)
    with matplotlib.rc_context({"font.size": 9, "svg.hashsalt": "cordflow"}):
        fig = Figure(figsize=(1.0 + ncols * max(2.6, 0.55 * len(models)), 0.6 + 3.2 * nrows),
                     dpi=110, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        x = np.arange(len(models))
        for ax, b in zip(axes.flat, benches):
            part = rows[rows["benchmark"] == b].set_index("model").loc[models]
            has_text = part["text_acc"].notna().any()
            if has_text:
                ax.axhline(part.loc[reference, "text_acc"], color="0.6", ls="--", lw=0.8,
                           label=f"{reference} text")
                ax.vlines(x, part["text_acc"], part["audio_acc"], color="0.75", lw=2, zorder=1)
                _errorbar(ax, x - 0.06, part, "text_acc", "o", "C0", "text prompt")
            _errorbar(ax, x + (0.06 if has_text else 0), part, "audio_acc", "s", "C1",
                      "audio prompt")
            ax.set_title(b if has_text else f"{b} (audio only)")
            ax.set_xticks(x, models, rotation=30, ha="right")
            ax.set_xlim(-0.5, len(models) - 0.5)
            ax.set_ylim(0, 100)
            ax.grid(axis="y", color="0.92")
        for ax in axes.flat[len(benches):]:
            ax.set_axis_off()
        axes[0, 0].set_ylabel("accuracy (%)")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})


def _errorbar(ax, x, part: pd.DataFrame, stat: str, marker: str, color: str, label: str):
    y = part[stat].to_numpy(float)
    err = np.abs(np.stack([y - part[f"{stat}_lo"].to_numpy(float),
                           part[f"{stat}_hi"].to_numpy(float) - y]))
    ax.errorbar(x, y, yerr=err, fmt=marker, color=color, ms=5, capsize=3, lw=1, label=label,
                zorder=2)


# ----------------------------------------------------------------------------- the stage

def run(params: dict, evals: list[str | Path], out_table: str | Path,
        out_plot: str | Path, out_paired: str | Path | None = None) -> None:
    """The gap table, its plot and (given ``out_paired``) the paired comparisons of
    ``summarize.pairs``, all from one set of resamples."""
    cfg = summarize_config(params)
    if not evals:
        raise SummarizeError("no eval tables given (--eval results/eval/<model>/<benchmark>"
                             ".parquet, repeated)")
    tables = [read_eval(p) for p in evals]
    st = statistics(tables, cfg["reference"], cfg["n_boot"], cfg["decimals"],
                    int(params.get("seed", 0)))
    table = _gap_rows(st, cfg["ci"], cfg["decimals"])
    paired = _paired_rows(st, cfg["pairs"], cfg["ci"], cfg["decimals"]) if out_paired else None
    fmt = None if cfg["decimals"] is None else f"%.{cfg['decimals']}f"
    write_text_atomic(out_table, table.to_csv(index=False, float_format=fmt, na_rep=""))
    plot(table, out_plot, cfg["reference"])
    log.info("wrote %s (%d rows) and %s", out_table, len(table), out_plot)
    for r in table[table["benchmark"] == MEAN].itertuples():
        log.info("  %s: mean gap %.2f [%.2f, %.2f], gap reduction %.1f %% [%.1f, %.1f]",
                 r.model, r.gap, r.gap_lo, r.gap_hi, r.gap_reduction, r.gap_reduction_lo,
                 r.gap_reduction_hi)
    if paired is None:
        return
    write_text_atomic(out_paired, paired.to_csv(index=False, float_format=fmt, na_rep=""))
    log.info("wrote %s (%d rows)", out_paired, len(paired))
    for r in paired[paired["benchmark"] == MEAN].itertuples():
        log.info("  %s - %s: audio acc %+.2f [%+.2f, %+.2f], text acc %+.2f [%+.2f, %+.2f], "
                 "gap reduction %+.1f [%+.1f, %+.1f] points", r.model, r.reference,
                 r.d_audio_acc, r.d_audio_acc_lo, r.d_audio_acc_hi, r.d_text_acc,
                 r.d_text_acc_lo, r.d_text_acc_hi, r.d_gap_reduction, r.d_gap_reduction_lo,
                 r.d_gap_reduction_hi)
