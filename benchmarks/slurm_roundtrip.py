"""Slurm test harness timings: start-up of the private single-node Slurm, one sbatch
round trip (submit -> COMPLETED as squeue sees it), one GPU job, and shut-down.

    python benchmarks/slurm_roundtrip.py [--jobs 5]

Needs root (it starts munged, slurmctld and slurmd; see tests/slurm/minicluster.py).
Prints figures only; nothing is asserted (timings do not belong in tests).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "slurm"))

import minicluster  # noqa: E402


def roundtrip(cluster: minicluster.Cluster, *sbatch_args: str) -> float:
    t0 = time.perf_counter()
    job = cluster.run("sbatch", "--parsable", "-o", "/dev/null", *sbatch_args,
                      "--wrap", "true").strip()
    while True:
        state = cluster.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%T").strip()
        if state == "COMPLETED":
            return time.perf_counter() - t0
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            raise RuntimeError(f"job {job} ended {state}")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5, help="round trips to time per kind")
    args = ap.parse_args()

    t0 = time.perf_counter()
    minicluster.ensure_packages()
    print(f"packages present/installed: {time.perf_counter() - t0:6.2f} s")
    root = tempfile.mkdtemp(prefix="cordflow-slurm-")
    try:
        t0 = time.perf_counter()
        cluster = minicluster.start(root)
        print(f"start (munged, slurmctld, slurmd idle): {time.perf_counter() - t0:6.2f} s")
        try:
            cpu = [roundtrip(cluster) for _ in range(args.jobs)]
            gpu = [roundtrip(cluster, "-p", minicluster.GPU_PARTITION,
                             f"--gpus={minicluster.GPU_TYPE}:1") for _ in range(args.jobs)]
            for name, times in (("cpu job", cpu), ("gpu job", gpu)):
                print(f"{name} round trip: median {sorted(times)[len(times) // 2]:5.2f} s, "
                      f"max {max(times):5.2f} s over {len(times)}")
        finally:
            t0 = time.perf_counter()
            cluster.stop()
            print(f"stop: {time.perf_counter() - t0:6.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
