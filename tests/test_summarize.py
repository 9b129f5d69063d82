"""The gap table and plot: the paper's Table 1 arithmetic, bootstrap intervals, audio-only
benchmarks, bad inputs, the stage's files."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cordflow import summarize as sm

# Table 1 of the paper (method.md section 6): audio accuracy / gap per benchmark
# (MMSU, OBQA, GSM8K) and the mean gap, per model family; headline reductions.
TABLE_1 = {
    "Qwen2-Audio-7B-Instruct": {
        "rows": {"base": ([36.04, 51.20, 20.73], [8.42, 17.59, 19.74], 15.25),
                 "sft": ([36.47, 49.49, 33.68], [7.99, 19.30, 6.79], 11.36),
                 "forward_kl": ([36.77, 48.21, 36.05], [7.69, 20.58, 4.42], 10.90),
                 "cord": ([38.06, 52.77, 36.20], [6.40, 16.02, 4.27], 8.90)},
        "reduction": 41.6},
    "Step-Audio2-mini": {
        "rows": {"base": ([52.31, 72.30, 43.75], [8.16, 7.70, 16.72], 10.86),
                 "sft": ([54.68, 74.72, 27.89], [5.79, 5.28, 32.58], 14.55),
                 "forward_kl": ([53.12, 72.08, 46.57], [7.35, 7.92, 13.90], 9.72),
                 "cord": ([57.63, 77.74, 47.56], [2.84, 2.26, 12.91], 6.00)},
        "reduction": 44.8},
}


@pytest.mark.parametrize("family", TABLE_1)
def test_gap_arithmetic_reproduces_the_papers_table_1(family):
    rows, headline = TABLE_1[family]["rows"], TABLE_1[family]["reduction"]
    base_audio, base_gap, _ = rows["base"]
    base_text = np.add(base_audio, base_gap)  # the base's text accuracy, fixed per family
    audio = np.array([r[0] for r in rows.values()])
    gap, mean_gap, reduction = sm.gap_arithmetic(base_text, audio, reference=0)
    np.testing.assert_allclose(gap, [r[1] for r in rows.values()], atol=1e-9)
    np.testing.assert_allclose(mean_gap, [r[2] for r in rows.values()], atol=1e-9)
    assert reduction[0] == 0.0
    assert round(float(reduction[-1]), 1) == headline  # CORD: 41.6 % and 44.8 %
    # From unrounded mean gaps the ratio is 41.66 / 44.72 %: the paper used its printed ones.
    _, _, exact = sm.gap_arithmetic(base_text, audio, reference=0, decimals=None)
    assert abs(exact[-1] - headline) < 0.1 and round(float(exact[-1]), 1) != headline


def test_gap_arithmetic_broadcasts_over_resamples_and_guards_a_zero_gap():
    base_text = np.array([[50.0, 60.0], [40.0, 40.0]])           # two resamples, K=2
    audio = np.array([[[40.0, 50.0], [45.0, 55.0]],               # (2, M=2, K=2)
                      [[40.0, 40.0], [30.0, 30.0]]])
    gap, mean_gap, reduction = sm.gap_arithmetic(base_text, audio, reference=0)
    assert gap.shape == (2, 2, 2) and mean_gap.tolist() == [[10.0, 5.0], [0.0, 10.0]]
    assert reduction[0].tolist() == [0.0, 50.0]
    assert np.isnan(reduction[1]).all()  # the reference has no gap: undefined


def items(rng, model, bench, n, p_text, p_audio, text=True):
    t = rng.random(n) < p_text
    a = rng.random(n) < p_audio
    return pd.DataFrame({"id": [f"{bench}-{i:04d}" for i in range(n)], "model": model,
                         "benchmark": bench, "text": t.astype(float) if text else np.nan,
                         "audio": a.astype(float)})


def evals(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for model, (pt, pa) in {"base": (0.8, 0.5), "cord": (0.8, 0.7)}.items():
        out += [items(rng, model, "builtin", n, pt, pa), items(rng, model, "gsm8k", n, pt - .1, pa)]
        out.append(items(rng, model, "mmau", n, 0, pa, text=False))
    return out


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_n():
    small = sm.gap_table(evals(60), n_boot=500, seed=1)
    large = sm.gap_table(evals(3000), n_boot=500, seed=1)
    for table in (small, large):
        for stat in sm.STATS:
            v, lo, hi = (table[c] for c in (stat, f"{stat}_lo", f"{stat}_hi"))
            known = v.notna()
            assert ((lo[known] <= v[known]) & (v[known] <= hi[known])).all(), stat
    cord = (slice(None), "cord")
    s, big = (t.set_index(["benchmark", "model"]).sort_index() for t in (small, large))
    for stat in ("text_acc", "audio_acc", "gap", "own_gap", "gap_reduction"):
        width_small = (s[f"{stat}_hi"] - s[f"{stat}_lo"]).loc[cord].dropna()
        width_large = (big[f"{stat}_hi"] - big[f"{stat}_lo"]).loc[cord].dropna()
        assert len(width_small) and (width_large.values < width_small.values / 3).all(), stat
    assert sm.gap_table(evals(60), n_boot=500, seed=1).equals(small)  # seeded
    assert not sm.gap_table(evals(60), n_boot=500, seed=2).equals(small)


def test_resampling_is_paired_across_prompts_and_models():
    rng = np.random.default_rng(3)
    base = items(rng, "base", "builtin", 200, 0.7, 0.7)
    base["audio"] = base["text"]  # the same answers from both prompts
    twin = base.assign(model="twin")
    table = sm.gap_table([base, twin], n_boot=300, seed=0).set_index(["model", "benchmark"])
    for model in ("base", "twin"):
        row = table.loc[(model, "builtin")]
        assert row["own_gap"] == row["own_gap_lo"] == row["own_gap_hi"] == 0
        assert row["gap"] == row["gap_lo"] == row["gap_hi"] == 0  # base text vs twin audio
    assert table.loc[("base", "builtin"), "text_acc_hi"] > table.loc[("base", "builtin"),
                                                                     "text_acc_lo"]


def test_audio_only_benchmarks_carry_no_gap_and_stay_out_of_the_mean():
    table = sm.gap_table(evals(200), n_boot=200, seed=0).set_index(["model", "benchmark"])
    for model in ("base", "cord"):
        mmau = table.loc[(model, "mmau")]
        assert mmau["n"] == 200 and 0 < mmau["audio_acc"] < 100
        no_gap = [c for c in sm.TABLE_COLUMNS[3:] if not c.startswith("audio_acc")]
        assert mmau[no_gap].isna().all()
        mean = table.loc[(model, "mean")]
        with_text = table.loc[[(model, "builtin"), (model, "gsm8k")]]
        assert mean["n"] == 400
        for stat in ("text_acc", "audio_acc", "gap", "own_gap"):
            assert mean[stat] == pytest.approx(with_text[stat].mean(), abs=0.006), stat
    assert table.loc[("base", "mean"), "gap_reduction"] == 0
    assert table.loc[("cord", "mean"), "gap_reduction"] > 0
    assert table.loc[("cord", "builtin")][["gap_reduction", "gap_reduction_lo"]].isna().all()


def test_a_model_is_compared_to_the_configured_reference():
    tables = evals(100)
    by_base = sm.gap_table(tables, n_boot=100).set_index(["model", "benchmark"])
    by_cord = sm.gap_table(tables, reference="cord", n_boot=100)
    assert by_cord["model"].iloc[0] == "cord"  # the reference comes first
    by_cord = by_cord.set_index(["model", "benchmark"])
    cord_text = by_base.loc[("cord", "builtin"), "text_acc"]
    base_audio = by_base.loc[("base", "builtin"), "audio_acc"]
    assert by_cord.loc[("base", "builtin"), "gap"] == pytest.approx(cord_text - base_audio,
                                                                    abs=0.011)
    assert by_cord.loc[("cord", "mean"), "gap_reduction"] == 0


# ----------------------------------------------------------------------------- paired

def correlated_evals(n, flip=0.1, seed=0):
    """base, sft and cord on builtin, gsm8k (text and audio) and mmau (audio only): sft and
    cord answer alike but for a fraction ``flip`` of items, where cord tends to be right."""
    rng = np.random.default_rng(seed)
    out = []
    for bench, text in (("builtin", True), ("gsm8k", True), ("mmau", False)):
        base = items(rng, "base", bench, n, 0.8, 0.45, text=text)
        sft = items(rng, "sft", bench, n, 0.8, 0.6, text=text)
        cord = sft.assign(model="cord")
        for col in ("text", "audio") if text else ("audio",):
            changed = rng.random(n) < flip
            cord.loc[changed, col] = (rng.random(int(changed.sum())) < 0.8).astype(float)
        out += [base, sft, cord]
    return out


def brute_force_paired(tables, pair, n_boot, seed, ci, reference="base"):
    """The paired bootstrap by an explicit loop over resamples: resample k draws the same
    items (sm.resample_counts with each benchmark's generator) for every model."""
    by = {(t["model"].iloc[0], t["benchmark"].iloc[0]): t.set_index("id").sort_index()
          for t in tables}
    benches = list(dict.fromkeys(b for _, b in by))
    with_text = [b for b in benches if by[(reference, b)]["text"].notna().all()]
    draws = {}
    for b in benches:
        n = len(by[(reference, b)])
        counts = np.concatenate(list(sm.resample_counts(n, n_boot, sm.benchmark_rng(seed, b))))
        draws[b] = [np.repeat(np.arange(n), c) for c in counts]  # item indices per resample

    def acc(model, b, col, idx=None):
        x = by[(model, b)][col].to_numpy()
        return 100 * float(np.mean(x if idx is None else x[idx]))

    def reduction(accs):  # accs[(model, bench, col)]: the gap table's mean-row arithmetic
        def mean_gap(model):
            return sum(accs[(reference, b, "text")] - accs[(model, b, "audio")]
                       for b in with_text) / len(with_text)
        ref = mean_gap(reference)
        return {m: 100 * (ref - mean_gap(m)) / ref if ref > 0 else np.nan for m in pair}

    models = {reference, *pair}
    point, samples = {}, {}
    for k in range(n_boot + 1):  # k == n_boot: the point estimate (every item once)
        accs = {(m, b, col): acc(m, b, col, None if k == n_boot else draws[b][k])
                for m in models for b in benches for col in ("text", "audio")}
        row = {}
        for b in benches:
            for col in ("text", "audio"):
                d = accs[(pair[0], b, col)] - accs[(pair[1], b, col)]
                row[(b, f"d_{col}_acc")] = d if b in with_text or col == "audio" else np.nan
        for col in ("text", "audio"):
            row[("mean", f"d_{col}_acc")] = np.mean([row[(b, f"d_{col}_acc")]
                                                     for b in with_text])
        red = reduction(accs)
        row[("mean", "d_gap_reduction")] = red[pair[0]] - red[pair[1]]
        if k == n_boot:
            point = row
        else:
            for key, value in row.items():
                samples.setdefault(key, []).append(value)
    out = {}
    for key, value in point.items():
        s = np.array(samples[key], float)
        if np.isnan(s).all():  # no text on an audio-only benchmark
            out[key] = (np.nan, np.nan, np.nan)
            continue
        lo, hi = (np.nanpercentile(s, q) for q in (50 * (1 - ci), 50 * (1 + ci)))
        out[key] = (value, lo, hi)
    return out


@pytest.mark.parametrize("pair", [("cord", "sft"), ("cord", "base"), ("sft", "cord")])
def test_paired_bootstrap_matches_a_brute_force_loop(pair):
    tables = correlated_evals(90, seed=4)
    table = sm.paired_table(tables, [list(pair)], n_boot=150, ci=0.9, decimals=None, seed=11)
    want = brute_force_paired(tables, pair, n_boot=150, seed=11, ci=0.9)
    assert table[["model", "reference"]].drop_duplicates().values.tolist() == [list(pair)]
    assert table["benchmark"].tolist() == ["builtin", "gsm8k", "mmau", "mean"]
    assert table["n"].tolist() == [90, 90, 90, 180]
    checked = 0
    for row in table.itertuples():
        for stat in sm.PAIR_STATS:
            got = [getattr(row, stat), getattr(row, f"{stat}_lo"), getattr(row, f"{stat}_hi")]
            expect = want.get((row.benchmark, stat), (np.nan,) * 3)
            np.testing.assert_allclose(got, expect, rtol=0, atol=1e-9,
                                       err_msg=f"{row.benchmark} {stat}")
            checked += not np.isnan(expect[0])
    assert checked == 2 + 2 + 1 + 3  # mmau: audio only; gap reduction: mean row only


def test_paired_interval_is_narrower_than_unpaired_when_models_agree():
    tables = correlated_evals(400, flip=0.1, seed=1)
    paired = sm.paired_table(tables, [["cord", "sft"]], n_boot=1000, seed=3)
    row = paired.set_index("benchmark").loc["builtin"]
    # unpaired: each model's items resampled on their own
    audio = {t["model"].iloc[0]: t["audio"].to_numpy() for t in tables
             if t["benchmark"].iloc[0] == "builtin"}
    rng = np.random.default_rng(3)
    diffs = [100 * (rng.choice(audio["cord"], 400).mean() - rng.choice(audio["sft"], 400).mean())
             for _ in range(1000)]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert row["d_audio_acc_lo"] <= row["d_audio_acc"] <= row["d_audio_acc_hi"]
    assert lo < row["d_audio_acc"] < hi
    assert (row["d_audio_acc_hi"] - row["d_audio_acc_lo"]) < (hi - lo) / 2
    # and narrower than the two models' own intervals in the gap table put together
    gap = sm.gap_table(tables, n_boot=1000, seed=3).set_index(["model", "benchmark"])
    own = sum(gap.loc[(m, "builtin"), "audio_acc_hi"] - gap.loc[(m, "builtin"), "audio_acc_lo"]
              for m in ("cord", "sft"))
    assert (row["d_audio_acc_hi"] - row["d_audio_acc_lo"]) < own / 3


def test_paired_rows_are_differences_of_the_gap_table(caplog):
    tables = correlated_evals(120, seed=2)
    gap = sm.gap_table(tables, n_boot=300, seed=5).set_index(["model", "benchmark"])
    pairs = [["cord", "sft"], ["cord", "forward_kl"], ["cord", "base"], ["opd", "warmup"]]
    with caplog.at_level("INFO", logger="cordflow.summarize"):
        paired = sm.paired_table(tables, pairs, n_boot=300, seed=5)
    assert "summarize.pairs: cord - forward_kl skipped: no eval tables for ['forward_kl']" \
        in caplog.text
    assert "opd - warmup skipped: no eval tables for ['opd', 'warmup']" in caplog.text
    assert paired[["model", "reference"]].drop_duplicates().values.tolist() == [
        ["cord", "sft"], ["cord", "base"]]
    for row in paired.itertuples():
        m, r = (gap.loc[(x, row.benchmark)] for x in (row.model, row.reference))
        assert row.n == m["n"]
        for stat in sm.PAIR_STATS:
            want = m[stat[2:]] - r[stat[2:]]
            assert getattr(row, stat) == pytest.approx(want, abs=0.011, nan_ok=True), stat
    mean = paired.set_index(["reference", "benchmark"]).loc[("base", "mean")]
    assert mean["d_gap_reduction"] == gap.loc[("cord", "mean"), "gap_reduction"]
    assert sm.paired_table(tables, [["sft", "forward_kl"]], n_boot=300).empty


# ----------------------------------------------------------------------------- files

def write_evals(tmp_path, tables):
    paths = []
    for t in tables:
        path = tmp_path / "eval" / t["model"].iloc[0] / f"{t['benchmark'].iloc[0]}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = [None if np.isnan(x) else bool(x) for x in t["text"]]
        pd.DataFrame({"id": t["id"], "model": t["model"], "benchmark": t["benchmark"],
                      "text_pred": "7", "audio_pred": "7", "text_correct": text,
                      "audio_correct": t["audio"].astype(bool)}).to_parquet(path)
        paths.append(path)
    return paths


PARAMS = {"seed": 5, "summarize": {"n_boot": 200, "pairs": [["cord", "base"], ["cord", "sft"]]}}


def test_run_writes_the_csv_and_a_deterministic_plot(tmp_path):
    paths = write_evals(tmp_path, evals(80))
    out1, out2 = tmp_path / "a", tmp_path / "b"
    for out in (out1, out2):
        sm.run(PARAMS, paths, out / "gap_table.csv", out / "gap_plot.png", out / "paired.csv")
    csv = pd.read_csv(out1 / "gap_table.csv")
    assert list(csv.columns) == sm.TABLE_COLUMNS == [
        "model", "benchmark", "n", "text_acc", "text_acc_lo", "text_acc_hi", "audio_acc",
        "audio_acc_lo", "audio_acc_hi", "gap", "gap_lo", "gap_hi", "own_gap", "own_gap_lo",
        "own_gap_hi", "gap_reduction", "gap_reduction_lo", "gap_reduction_hi"]
    assert csv[["model", "benchmark"]].values.tolist() == [
        [m, b] for m in ("base", "cord") for b in ("builtin", "gsm8k", "mmau", "mean")]
    png = (out1 / "gap_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert png == (out2 / "gap_plot.png").read_bytes()
    assert (out1 / "gap_table.csv").read_bytes() == (out2 / "gap_table.csv").read_bytes()
    paired = pd.read_csv(out1 / "paired.csv")
    assert list(paired.columns) == sm.PAIRED_COLUMNS == [
        "model", "reference", "benchmark", "n", "d_text_acc", "d_text_acc_lo", "d_text_acc_hi",
        "d_audio_acc", "d_audio_acc_lo", "d_audio_acc_hi", "d_gap_reduction",
        "d_gap_reduction_lo", "d_gap_reduction_hi"]
    assert paired[["model", "reference", "benchmark"]].values.tolist() == [
        ["cord", "base", b] for b in ("builtin", "gsm8k", "mmau", "mean")]  # no sft: skipped
    assert (out1 / "paired.csv").read_bytes() == (out2 / "paired.csv").read_bytes()
    sm.run(PARAMS, paths, out1 / "t.csv", out1 / "p.png")  # by hand: paired.csv optional
    assert (out1 / "t.csv").read_bytes() == (out1 / "gap_table.csv").read_bytes()


def test_a_pair_of_other_than_two_models_is_a_config_error(tmp_path):
    """(A name that is no model, say 'kd', fails when the DAG is built: check_config,
    tests/test_registries.py; the stage by hand skips it like a model not in the run.)"""
    paths = write_evals(tmp_path, evals(20))
    out = (tmp_path / "t.csv", tmp_path / "p.png", tmp_path / "paired.csv")
    for pairs in ([["cord", "cord"]], [["cord"]], [["cord", "base", "sft"]]):
        with pytest.raises(ValueError, match=r"invalid summarize config:\n  config key "
                                             r"'summarize/pairs/0'"):
            sm.run({"seed": 1, "summarize": {"pairs": pairs}}, paths, *out)
    assert not any(p.exists() for p in out)


def test_missing_or_bad_eval_tables_fail_with_a_clear_message(tmp_path):
    paths = write_evals(tmp_path, evals(20))
    out = (tmp_path / "t.csv", tmp_path / "p.png")
    gone = tmp_path / "eval" / "sft" / "builtin.parquet"
    with pytest.raises(sm.SummarizeError, match=rf"{gone}: no such eval table; run the "
                                                r"evaluate step for it \(snakemake "):
        sm.run(PARAMS, [*paths, gone], *out)
    empty = tmp_path / "empty.parquet"
    pd.read_parquet(paths[0]).iloc[:0].to_parquet(empty)
    with pytest.raises(sm.SummarizeError, match=r"empty.parquet: the eval table is empty"):
        sm.run(PARAMS, [*paths, empty], *out)
    mixed = tmp_path / "mixed.parquet"
    df = pd.read_parquet(paths[0])
    df["text_correct"] = df["text_correct"].astype(object)
    df.loc[0, "text_correct"] = None
    df.to_parquet(mixed)
    with pytest.raises(sm.SummarizeError, match=r"text_correct is null for 1 of 20 items"):
        sm.run(PARAMS, [mixed, *paths[1:]], *out)
    lacking = tmp_path / "lacking.parquet"
    df.drop(columns=["audio_correct"]).to_parquet(lacking)
    with pytest.raises(sm.SummarizeError, match=r"lacks column\(s\) \['audio_correct'\]"):
        sm.run(PARAMS, [lacking], *out)
    with pytest.raises(sm.SummarizeError, match=r"every model needs every benchmark; no "
                                                r"eval table for \['cord/mmau'\]"):
        sm.run(PARAMS, paths[:-1], *out)
    with pytest.raises(sm.SummarizeError, match=r"summarize.reference is 'base' but"):
        sm.run(PARAMS, paths[3:], *out)
    assert not out[0].exists() and not out[1].exists()


def test_the_cli_writes_the_reports_with_provenance(repo, tmp_path):
    paths = write_evals(tmp_path, evals(30))
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    args = [sys.executable, "-m", "cordflow", "summarize", "--params", json.dumps(PARAMS),
            *[a for p in paths for a in ("--eval", str(p))],
            "--out-table", "gap_table.csv", "--out-plot", "gap_plot.png",
            "--out-paired", "paired.csv"]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "cord: mean gap" in res.stderr and "gap reduction" in res.stderr
    assert "cord - base: audio acc" in res.stderr
    assert "summarize.pairs: cord - sft skipped: no eval tables for ['sft']" in res.stderr
    for name in ("gap_table.csv", "gap_plot.png", "paired.csv"):
        prov = json.loads((tmp_path / f"{name}.prov.json").read_text())
        assert prov["rule"] == "summarize" and len(prov["inputs"]) == len(paths)
