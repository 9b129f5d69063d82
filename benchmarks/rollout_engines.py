"""Rollout engines side by side: transformers generate vs vLLM, on the tiny model.

    python benchmarks/rollout_engines.py [--prompts 8] [--n 4] [--tokens 8] [--steps 6]
                                         [--model results/models/warmup]

In one run, at the CORD step's shape (B prompts x N rollouts x up to T new tokens, audio
prompts, temperature 1.5; the default shape is the default config's: 8 x 4 x 8): rollout
tokens/s of each engine (medians over --reps calls, after one warm-up call), the weight-sync
time of the vLLM engine (LoRA merged + audio encoder/projector, the default trainable parts),
and the whole CORD step (the training code's own step: rollouts, reference, judge, forward,
backward, AdamW, then the engine's sync) with each engine (median over --steps steps, the
first step, which starts the vLLM engine, left out; its start-up time is printed apart).
Without --model a fresh tiny model (the default config's preset) answers tone clips; the
figures are then about speed only. Needs the vLLM venv (`make vllm-env`). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))


def tiny_model(mcfg: dict):
    from cordflow import models

    qs = [f"What is {a} plus {b}?" for a in range(10) for b in range(10)]
    ans = [str(a + b) for a in range(10) for b in range(10)]
    model, processor = models.build_tiny(
        mcfg["tiny"], models.tiny_corpus(qs, ans, mcfg["system_prompt"]), 0)
    import torch

    return models.Loaded(model, processor, torch.device("cpu"), mcfg["system_prompt"],
                         mcfg["instruction"])


def items(n: int):
    import numpy as np
    import pandas as pd

    rate, rows = 16000, []
    for i in range(n):
        t = np.arange(int((1.5 + 0.25 * (i % 5)) * rate)) / rate
        a, b = i % 10, (3 * i) % 10
        rows.append({"id": f"{i:016x}", "question": f"What is {a} plus {b}?",
                     "answer": str(a + b), "answer_type": "number", "choices": None,
                     "audio": (0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t)).astype("float32")})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a saved model folder (default: fresh tiny)")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--prompts", type=int, default=None, help="B (default: train.batch_size)")
    ap.add_argument("--n", type=int, default=None, help="N (default: train.sequence.n)")
    ap.add_argument("--tokens", type=int, default=None, help="T (default: model.max_new_tokens)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--python", default=None, help="the vLLM venv's python")
    args = ap.parse_args()

    import torch

    from cordflow import data, models
    from cordflow.config import load_config
    from cordflow.train.judges import make_judge
    from cordflow.train.methods import method_params
    from cordflow.train.rollout import make_engine
    from cordflow.train.step import StepContext, Teacher, make_step, step_inputs

    over = {"train": {"rollout_engine": "vllm", "vllm": {"python": args.python}}}
    params = method_params(load_config(args.config, over), "cord")
    spec, mcfg = params["method"], params["model"]
    B = args.prompts or spec["loop"]["batch_size"]
    N = args.n or spec["sequence"]["n"]
    T = args.tokens or mcfg["max_new_tokens"]
    temp = spec["sequence"]["temperature"]
    torch.manual_seed(0)
    loaded = models.load(args.model, mcfg) if args.model else tiny_model(mcfg)
    loaded.model = models.add_lora(loaded.model, mcfg["lora"])
    models.set_trainable(loaded.model, spec["trainable"])
    table = items(max(B * (args.steps + 1), 4 * B))
    audio = models.encode_audio(loaded, list(table["audio"][:B]))
    print(f"torch threads {torch.get_num_threads()}; shape B={B} x N={N} x T<={T}, "
          f"temperature {temp}; {sum(p.numel() for p in loaded.model.parameters())/1e6:.2f} M "
          "parameters")

    def rate(gen) -> tuple[float, float]:
        gen()  # warm-up
        times, toks = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            comp = gen()
            times.append(time.perf_counter() - t0)
            toks.append(int(comp.mask.sum()))
        return statistics.median(toks) / statistics.median(times), statistics.median(times)

    hf_rate, hf_t = rate(lambda: models.generate(loaded, audio, T, temp, N))
    engine = make_engine("vllm", loaded, spec["vllm"], seed=0)
    try:
        t0 = time.perf_counter()
        engine.start()
        start_s = time.perf_counter() - t0
        vl_rate, vl_t = rate(lambda: engine.generate(audio, T, temp, N))
        syncs = []
        for _ in range(args.reps):
            engine.sync()
            syncs.append(engine.last_sync_s)
    finally:
        engine.close()

    def steps(name: str) -> tuple[list[float], float]:
        torch.manual_seed(0)
        eng = make_engine(name, loaded, spec["vllm"], seed=0)
        inputs = step_inputs(loaded, table, data.Batches(len(table), B, 0), prefetch=False)
        ctx = StepContext(loaded, Teacher(spec["teacher"]["kind"], loaded), inputs, T, eng,
                          make_judge(spec["judge"]))
        step = make_step(spec, ctx)
        opt = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad],
                                lr=1e-5)
        out = []
        try:
            for i in range(args.steps):
                t0 = time.perf_counter()
                loss, metrics = step(i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                eng.sync()
                out.append(time.perf_counter() - t0)
        finally:
            eng.close()
            inputs.close()
        return out[1:], out[0]

    hf_steps, _ = steps("transformers")
    vl_steps, vl_first = steps("vllm")
    hf_step, vl_step = statistics.median(hf_steps), statistics.median(vl_steps)
    print(f"rollout tokens/s   transformers {hf_rate:8.0f}   vllm {vl_rate:8.0f}   "
          f"ratio {vl_rate / hf_rate:.2f}  (one call: {hf_t:.3f} s vs {vl_t:.3f} s)")
    print(f"vLLM weight sync   median {statistics.median(syncs):.3f} s  "
          f"(min {min(syncs):.3f}, max {max(syncs):.3f}; {len(engine.pushed)} tensors)")
    print(f"whole CORD step    transformers {hf_step:.3f} s   vllm {vl_step:.3f} s  "
          f"ratio {hf_step / vl_step:.2f}  (medians of {len(vl_steps)} steps; the vLLM "
          f"run's first step, with the engine start, {vl_first:.1f} s)")
    print(f"vLLM engine start  {start_s:.1f} s")


if __name__ == "__main__":
    main()
