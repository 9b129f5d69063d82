"""Sourcing throughput: rows/s of the source stage on the default built-in config and on
a synthetic NuminaMath-like jsonl file (LaTeX problems, boxed-style answers, some bad rows).

    python benchmarks/source_throughput.py [--rows 20000]

Prints figures only; nothing is asserted (timings do not belong in tests).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from cordflow import source  # noqa: E402

TEMPLATES = [
    r"Compute $\frac{{{a}}}{{{b}}} + \frac{{{c}}}{{{d}}}$.",
    r"Find $x$ if $x^2 - {a}x + {b} = 0$ and $x > {c}$.",
    r"What is $\sqrt{{{a}{b}}} \times {c}$?",
    r"A shop sells {a} pens for {b} dollars each. How much do {c} pens cost?",
    r"Let $f(x) = {a}x^{{{b}}} - {c}$. What is $f({d})$?",
    r"Evaluate $\sum_{{i=1}}^{{{a}}} i$.",  # unspeakable: rejected
]


def synthetic(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(n):
            t = TEMPLATES[i % len(TEMPLATES)]
            q = t.format(a=rng.randint(1, 99), b=rng.randint(2, 99), c=rng.randint(1, 99),
                         d=rng.randint(2, 99))
            f.write(json.dumps({"problem": q, "answer": str(rng.randint(-99, 999))}) + "\n")


def timed(params: dict, out: Path) -> float:
    start = time.perf_counter()
    source.run(params, out)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        builtin = {"seed": 1234, "source": {}}  # schema defaults: the embedded default
        n_builtin = 3 * (400 + 60)
        secs = timed(builtin, tmp / "a")
        print(f"builtin default: {n_builtin} rows in {secs:.2f} s = {n_builtin / secs:.0f} rows/s")

        path = tmp / "numina.jsonl"
        synthetic(path, args.rows)
        params = {"seed": 1, "source": {"builtin": {"enabled": False}, "files": [
            {"path": str(path), "split": "train", "mapping": {"question": "problem"}}]}}
        secs = timed(params, tmp / "b")
        kept = len(source.read_qa(tmp / "b" / "train.parquet"))
        print(f"LaTeX jsonl: {args.rows} rows in {secs:.2f} s = {args.rows / secs:.0f} rows/s "
              f"({kept} kept, {args.rows - kept} rejected)")


if __name__ == "__main__":
    main()
