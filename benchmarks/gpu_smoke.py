"""GPU smoke check: a few CORD steps of Qwen2-Audio-7B (random weights) with each engine.

    python benchmarks/gpu_smoke.py [--steps 4] [--engines transformers vllm] [--prompts 8]
                                   [--n 4] [--tokens 64] [--python .venv-vllm/bin/python]

Builds Qwen2-Audio-7B-Instruct FROM ITS CONFIG (the published sizes below; nothing is
downloaded: Qwen2's tokenizer is built offline, cordflow.models.qwen2_tokenizer) with random
bf16 weights on the GPU, LoRA on the language model + the audio encoder/projector trainable
(the default), then runs --steps CORD steps (the training code's own step, backward, AdamW
and the engine's sync) with each engine, and prints per engine: peak GPU memory (the
trainer's, and the whole device's used memory, which includes the vLLM process), median
step time, rollout tokens/s, and the median weight-sync time. Tone clips stand in for
speech (speed, not quality). Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

# Qwen2-Audio-7B-Instruct's config.json (the sizes that matter for cost).
AUDIO_7B = dict(model_type="qwen2_audio_encoder", num_mel_bins=128, encoder_layers=32,
                encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
                max_source_positions=1500)
TEXT_7B = dict(model_type="qwen2", vocab_size=156032, hidden_size=4096,
               intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, max_position_embeddings=8192, rope_theta=10000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=False)


def build_7b(seed: int):
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    from cordflow import models

    tok = models.qwen2_tokenizer()
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30,
                                 hop_length=160, n_fft=400)
    processor = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok,
                                    chat_template=models.CHAT_TEMPLATE)
    config = Qwen2AudioConfig(audio_config=AUDIO_7B,
                              text_config={**TEXT_7B, "pad_token_id": tok.pad_token_id,
                                           "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>")},
                              audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"))
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = Qwen2AudioForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model, processor


def tones(n: int):
    import numpy as np
    import pandas as pd

    rate, rows = 16000, []
    for i in range(n):
        t = np.arange(int((2.0 + 0.3 * (i % 5)) * rate)) / rate
        a, b = i % 10, (3 * i) % 10
        rows.append({"id": f"{i:016x}", "question": f"What is {a} plus {b}?",
                     "answer": str(a + b), "answer_type": "number", "choices": None,
                     "audio": (0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t)).astype("float32")})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--engines", nargs="+", default=["transformers", "vllm"])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--python", default=None, help="the vLLM env's python (envs/vllm.yaml)")
    ap.add_argument("--config", default="config/config.yaml")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible (torch.cuda.is_available() is False): "
              "nothing measured. Run it on a GPU node.")
        return 0

    from cordflow import data, models
    from cordflow.config import load_config
    from cordflow.train.judges import make_judge
    from cordflow.train.methods import method_params
    from cordflow.train.rollout import make_engine
    from cordflow.train.step import StepContext, Teacher, make_step, step_inputs

    over = {"model": {"max_new_tokens": args.tokens},
            "train": {"batch_size": args.prompts, "sequence": {"n": args.n},
                      "vllm": {"python": args.python, "enforce_eager": False}}}
    params = method_params(load_config(args.config, over), "cord")
    spec, mcfg = params["method"], params["model"]
    t0 = time.perf_counter()
    model, processor = build_7b(0)
    print(f"Qwen2-Audio-7B from its config: {sum(p.numel() for p in model.parameters())/1e9:.2f}"
          f" B parameters, bf16, built in {time.perf_counter() - t0:.0f} s on "
          f"{torch.cuda.get_device_name()}")
    loaded = models.Loaded(model, processor, torch.device("cuda"), mcfg["system_prompt"],
                           mcfg["instruction"])
    loaded.model = models.add_lora(loaded.model, mcfg["lora"])
    models.set_trainable(loaded.model, spec["trainable"])
    table = tones(args.prompts * (args.steps + 1))

    for name in args.engines:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        settings = {**spec["vllm"], "dtype": "bfloat16"}
        engine = make_engine(name, loaded, settings, seed=0)
        gen_time, gen_tokens = [0.0], [0]
        inner = engine.generate

        def timed_generate(*a, **k):
            t = time.perf_counter()
            comp = inner(*a, **k)
            torch.cuda.synchronize()
            gen_time[0] += time.perf_counter() - t
            gen_tokens[0] += int(comp.mask.sum())
            return comp

        engine.generate = timed_generate
        inputs = step_inputs(loaded, table, data.Batches(len(table), args.prompts, 0))
        ctx = StepContext(loaded, Teacher("init", loaded), inputs, args.tokens, engine,
                          make_judge(spec["judge"]))
        step = make_step(spec, ctx)
        opt = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad],
                                lr=1e-6)
        times, syncs, rates, used = [], [], [], 0
        try:
            for i in range(args.steps):
                gen_time[0], gen_tokens[0] = 0.0, 0
                t = time.perf_counter()
                loss, _ = step(i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ts = time.perf_counter()
                engine.sync()
                torch.cuda.synchronize()
                syncs.append(time.perf_counter() - ts)
                times.append(time.perf_counter() - t)
                rates.append(gen_tokens[0] / max(gen_time[0], 1e-9))
                free, total = torch.cuda.mem_get_info()
                used = max(used, total - free)
        finally:
            engine.close()
            inputs.close()
        keep = slice(1, None) if len(times) > 1 else slice(None)  # step 1 starts the engine
        print(f"{name:12s} peak GPU: trainer {torch.cuda.max_memory_allocated()/2**30:.1f} GiB, "
              f"device used {used/2**30:.1f} GiB | step {statistics.median(times[keep]):.2f} s"
              f" | rollout {statistics.median(rates[keep]):.0f} tokens/s | sync "
              f"{statistics.median(syncs[keep]):.3f} s | first step {times[0]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
