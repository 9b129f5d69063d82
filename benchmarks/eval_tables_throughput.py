"""Benchmark loading and the gap table at the paper's scale.

- loading: a VoiceBench-like subset (hub parquet layout, WAV bytes at 24 kHz, 2-6 s
  clips) read by the voicebench loader (every clip's header probed), cold and warm, then
  every clip decoded to 16 kHz (soxr) as evaluation does, clip by clip;
- summarize: 6 models x MMSU (3074 items), OBQA (455), GSM8K (1319), MMAU (1000), with the
  default 2000 bootstrap resamples, plus the plot.

    python benchmarks/eval_tables_throughput.py [--clips 400] [--n-boot 2000]

Prints figures only; nothing is asserted (timings do not belong in tests).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from cordflow import summarize  # noqa: E402
from cordflow.audio import SAMPLE_RATE  # noqa: E402
from cordflow.evaluate import items as benchmarks  # noqa: E402

RATE = 24000


def voicebench_like(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    audio = []
    for i in range(n):
        x = (0.1 * rng.standard_normal(int(RATE * rng.uniform(2, 6)))).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, x, RATE, format="WAV")
        audio.append({"bytes": buf.getvalue(), "path": f"{i}.wav"})
    prompts = [f"Question {i}?\nA. one\nB. two\nC. three\nD. four" for i in range(n)]
    table = pa.table({"audio": pa.array(audio, type=pa.struct([("bytes", pa.binary()),
                                                                ("path", pa.string())])),
                      "prompt": prompts, "reference": ["ABCD"[i % 4] for i in range(n)]})
    features = {"audio": {"_type": "Audio", "sampling_rate": 16000},
                "prompt": {"dtype": "string", "_type": "Value"},
                "reference": {"dtype": "string", "_type": "Value"}}
    table = table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    (root / "openbookqa").mkdir(parents=True)
    pq.write_table(table, root / "openbookqa" / "test-00000-of-00001.parquet")


def eval_tables(n_boot_models: int = 6) -> list[pd.DataFrame]:
    rng = np.random.default_rng(0)
    sizes = {"mmsu": 3074, "openbookqa": 455, "gsm8k": 1319, "mmau": 1000}
    out = []
    for m in ["base", "warmup", "sft", "forward_kl", "opd", "cord"][:n_boot_models]:
        for b, n in sizes.items():
            out.append(pd.DataFrame({
                "id": [f"{b}:{i}" for i in range(n)], "model": m, "benchmark": b,
                "text": np.nan if b == "mmau" else (rng.random(n) < 0.6).astype(float),
                "audio": (rng.random(n) < 0.45).astype(float)}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        voicebench_like(tmp / "vb", args.clips)
        entry = {"name": "obqa", "kind": "voicebench", "path": str(tmp / "vb"),
                 "subset": "openbookqa"}
        start = time.perf_counter()
        bench = benchmarks.load(entry)
        t_cold = time.perf_counter() - start
        start = time.perf_counter()
        bench = benchmarks.load(entry)
        t_load = time.perf_counter() - start
        start = time.perf_counter()
        seconds = sum(len(c.load()) for c in bench.items["audio"]) / SAMPLE_RATE
        t_decode = time.perf_counter() - start
        print(f"voicebench load: {len(bench.items)} items in {t_cold:.2f} s the first time "
              f"(datasets builds its arrow cache), then {t_load:.2f} s "
              f"({len(bench.items) / t_load:.0f} items/s, every header probed)")
        print(f"decode to 16 kHz: {seconds:.0f} s of audio in {t_decode:.2f} s "
              f"({len(bench.items) / t_decode:.0f} clips/s, {seconds / t_decode:.0f}x real time)")

        tables = eval_tables()
        start = time.perf_counter()
        table = summarize.gap_table(tables, n_boot=args.n_boot, seed=1)
        t_table = time.perf_counter() - start
        start = time.perf_counter()
        summarize.plot(table, tmp / "gap_plot.png")
        t_plot = time.perf_counter() - start
        n_items = sum(len(t) for t in tables)
        print(f"gap table: 6 models x 4 benchmarks ({n_items} item rows), {args.n_boot} "
              f"resamples in {t_table:.2f} s; plot in {t_plot:.2f} s")


if __name__ == "__main__":
    main()
