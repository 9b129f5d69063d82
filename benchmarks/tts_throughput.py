"""Speech-synthesis throughput, in ONE run, on the embedded default's questions:

1. raw in-process espeak: clips/s of ``EspeakBackend.synthesize`` alone (the ceiling);
2. the full tts shard (voice choice, synthesis, post-processing, quality checks, store
   writes, the shard table) with 1 and with 2 threads, as clips/s and as a ratio of (1);
3. a rerun with unchanged data (must synthesise 0 clips), in seconds;
4. where post-processing time goes (ms per clip per step);
5. raw Piper (the `neural` voicing: en_US-joe-medium, one onnxruntime thread): its start
   (model load, patch, determinism probe) and clips/s on ``--piper`` test questions.

    python benchmarks/tts_throughput.py [--items 1380] [--repeat 3] [--piper 60]

Timings are the best of ``--repeat`` runs (the machine is shared: CPU-ms/clip, CPU time
of all threads per clip, moves less with other load than wall time). Prints figures only;
nothing is asserted (timings do not belong in tests).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from cordflow import source  # noqa: E402
from cordflow.tts import plan, post, shard, tts_config  # noqa: E402
from cordflow.tts.espeak import EspeakBackend  # noqa: E402
from cordflow.tts.schema import read_plan  # noqa: E402
from cordflow.tts.voices import VoiceChooser  # noqa: E402

SEED = 1234


def best(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall time and best CPU time (all threads) of ``repeat`` calls, last result."""
    wall, busy, out = [], [], None
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - start)
        busy.append(time.process_time() - cpu_start)
    return min(wall), min(busy), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1380, help="questions (default: all 1380)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--piper", type=int, default=60,
                    help="test questions for the Piper figure (0: skip it)")
    ap.add_argument("--workdir", default=".", help="the store goes in a temporary folder "
                    "here (default: the current folder, as the workflow's results/)")
    args = ap.parse_args()
    params = {"seed": SEED, "tts": {"n_shards": 1}}
    cfg = tts_config(params)
    with tempfile.TemporaryDirectory(prefix=".tts_bench_", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        source.run({"seed": SEED, "source": {}}, tmp / "qa")
        plan.run(params, [tmp / "qa" / "train.parquet", tmp / "qa" / "test.parquet"],
                 tmp / "plan")
        plan_path = tmp / "plan" / "0.parquet"
        full = read_plan(plan_path)
        items = full.head(args.items)
        items.to_parquet(plan_path, index=False)
        n = len(items)

        backend = EspeakBackend(cfg)
        choose = VoiceChooser(backend, cfg, SEED)
        work = [(t, choose(i, s)) for i, s, t in items[["id", "split", "spoken"]].itertuples(
            index=False)]
        raw_s, raw_cpu, raws = best(lambda: [backend.synthesize(t, v) for t, v in work],
                                    args.repeat)
        audio_s = sum(len(a.samples) / a.sample_rate for a in raws)
        raw_rate = n / raw_s
        print(f"{n} questions, {audio_s / n:.2f} s of raw audio each on average")
        print(f"raw espeak (in-process, 1 thread): {raw_rate:.0f} clips/s "
              f"({1000 * raw_s / n:.2f} ms/clip, {1000 * raw_cpu / n:.2f} CPU-ms/clip)")

        if args.piper:
            piper_speed(full, cfg, args.piper)

        post.process(raws[0].samples, raws[0].sample_rate, cfg["post"])  # imports, filters
        for threads in (1, 2):
            def full():
                shutil.rmtree(tmp / "store", ignore_errors=True)
                return shard.run(params, plan_path, tmp / "shard.parquet", tmp / "store",
                                 threads=threads)

            secs, busy, stats = best(full, args.repeat)
            print(f"full tts shard, {threads} thread(s): {n / secs:.0f} clips/s = "
                  f"{n / secs / raw_rate:.0%} of raw espeak ({1000 * busy / n:.2f} CPU-ms/clip; "
                  f"{stats.synthesised} synthesised; {stats.ok} ok, {stats.flagged} flagged, "
                  f"{stats.rejected} rejected)")

        secs, _, stats = best(lambda: shard.run(params, plan_path, tmp / "shard.parquet",
                                                tmp / "store"), args.repeat)
        print(f"rerun, unchanged data: {secs:.2f} s, {stats.synthesised} clips synthesised, "
              f"{stats.reused} reused")

        p = cfg["post"]
        steps = {
            "trim": lambda a: post.trim(a.samples, a.sample_rate, p["trim_db"]),
            "resample (soxr HQ)": lambda a: post.resample(a.samples, a.sample_rate,
                                                          p["sample_rate"]),
        }
        at16 = [post.resample(a.samples, a.sample_rate, p["sample_rate"]) for a in raws]
        pcm = [post.to_pcm16(x * 0.3) for x in at16]
        rate = p["sample_rate"]
        timings = {}
        for name, fn in steps.items():
            timings[name] = best(lambda fn=fn: [fn(a) for a in raws], args.repeat)[1]
        timings["loudness (BS.1770)"] = best(
            lambda: [post.integrated_loudness(x, rate) for x in at16], args.repeat)[1]
        timings["silence ratio"] = best(
            lambda: [post.silence_ratio(x, rate, p["trim_db"]) for x in at16], args.repeat)[1]
        timings["FLAC encode"] = best(lambda: [post.encode_flac(x, rate) for x in pcm],
                                      args.repeat)[1]
        timings["post.process, all"] = best(
            lambda: [post.process(a.samples, a.sample_rate, p) for a in raws], args.repeat)[1]
        print("post-processing, CPU-ms per clip:")
        for name, secs in timings.items():
            print(f"  {name:<20} {1000 * secs / n:6.3f}")


def piper_speed(items, cfg: dict, n: int) -> None:
    """Raw Piper on the first ``n`` test questions (the split the `neural` voicing speaks),
    once: its start, then clips/s (wall and CPU; onnxruntime runs one thread)."""
    from cordflow.tts.backends import Voice
    from cordflow.tts.piper import PiperBackend

    texts = list(items.loc[items["split"] == "test", "spoken"].head(n))
    start, cpu_start = time.perf_counter(), time.process_time()
    backend = PiperBackend(cfg)
    voice = Voice(next(iter(backend.speakers)))
    backend.synthesize("Seven plus five?", voice)  # loads the model and probes it
    started = time.perf_counter() - start
    secs, busy, out = best(lambda: [backend.synthesize(t, voice) for t in texts], 1)
    audio_s = sum(len(a.samples) / a.sample_rate for a in out)
    print(f"raw piper ({backend.model_name}, 1 onnxruntime thread): start {started:.1f} s "
          f"({time.process_time() - cpu_start - busy:.1f} CPU-s); {len(texts) / secs:.2f} "
          f"clips/s ({1000 * busy / len(texts):.0f} CPU-ms/clip, {audio_s / len(texts):.2f} s "
          f"of audio each, {audio_s / secs:.1f}x real time) on {len(texts)} test questions")


if __name__ == "__main__":
    main()
