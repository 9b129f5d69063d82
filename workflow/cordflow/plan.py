"""Memory and time plan of the ``train`` stage per rank: ``cordflow plan``.

For a config (a preset layered over the default) and a rank count it prints, per rank: the
weights, gradients and AdamW state of what trains, a frozen teacher copy when LM weights
train, the activations kept for backward, the lm_head chunk, and the rollout engine's share
of the GPU (vLLM's weights and KV cache live inside ``train.vllm.gpu_memory_utilization``);
then the step time and the run time of ``train.steps`` steps, checked against the
``runtime`` the workflow profile asks Slurm for.

What is exact and what is a model:

- when LM weights train on several ranks (FSDP2, :mod:`cordflow.train.dist`) the weights,
  gradients, AdamW state and the frozen teacher copy are divided by the ranks (one layer at
  a time is gathered on top: not counted); otherwise every rank holds them whole;
- parameter counts are exact: the model is built on PyTorch's meta device (no memory) from
  the staged ``config.json`` when ``model.path`` has one, else from Qwen2-Audio-7B-Instruct's
  published architecture (:data:`QWEN2_AUDIO_7B`) for the 7B preset; LoRA adds
  r x (in + out) per adapted linear layer (``model.lora.target_modules``, matched as PEFT
  does);
- activations follow Korthikanti et al. (2022), ~34 h bytes per token per layer in bf16
  with fused attention, for every sequence the step forwards with gradient: N GRPO
  rollouts + 1 token-level rollout per question (the step keeps both graphs to one
  backward; the audio encoder runs once per rollout), each question's prompt + answer;
- time = FLOPs / (peak x MFU) for the forward/backward passes (6 P tokens when every weight
  trains, 4 P tokens with LoRA: no weight gradients for frozen weights) and the teacher's
  forward (2 P tokens), plus generated tokens / the engine's decode rate. The peak, the MFU
  and the decode rate are NOT measured here (this machine has no GPU): they are options,
  with defaults for an H100 SXM (989 bf16 TFLOP/s dense, 35 % MFU, 2,500 decoded tokens/s
  per GPU for a 7B model in vLLM at batch ~32); measure yours with
  ``benchmarks/gpu_smoke.py`` and pass them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from cordflow.config import REPO_DIR

GB = 1024**3

# Qwen/Qwen2-Audio-7B-Instruct config.json (architecture keys).
QWEN2_AUDIO_7B = {
    "audio_config": {"model_type": "qwen2_audio_encoder", "d_model": 1280, "encoder_layers": 32,
                     "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                     "num_mel_bins": 128, "max_source_positions": 1500},
    "text_config": {"model_type": "qwen2", "vocab_size": 156032, "hidden_size": 4096,
                    "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 32,
                    "max_position_embeddings": 8192, "tie_word_embeddings": False},
}

AUDIO_TOKENS_PER_S = 25  # Qwen2-Audio: 750 audio tokens for Whisper's 30 s window
TEMPLATE_TOKENS = 40  # the chat template around a question (system, roles, audio markers)
ENCODER_FRAMES_PER_S = 50  # the encoder's positions before its 2x pooling


@dataclass
class Hardware:
    gpu_gb: float = 80.0
    peak_tflops: float = 989.0
    mfu: float = 0.35
    decode_tok_s: float = 2500.0


def model_config(mcfg: dict):
    """The Qwen2AudioConfig of the run's model: the staged folder's, else the 7B's."""
    from transformers import AutoConfig, Qwen2AudioConfig

    path = mcfg.get("path")
    if path and (Path(path) / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    if mcfg["preset"] != "qwen2-audio-7b":
        raise SystemExit(f"model.preset '{mcfg['preset']}': plan needs a staged model.path "
                         "with a config.json, or the qwen2-audio-7b preset")
    return Qwen2AudioConfig(**QWEN2_AUDIO_7B)


def counts(config, lora: dict | None, trainable: list[str]) -> dict[str, int]:
    """Exact parameter counts (meta device): total, audio (encoder + projector), lm, lora,
    trainable."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    total = audio = 0
    lora_n = 0
    pattern = re.compile(lora["target_modules"]) if lora else None
    for name, module in model.named_modules():
        if pattern is not None and isinstance(module, torch.nn.Linear) \
                and pattern.fullmatch(name):
            lora_n += lora["r"] * (module.in_features + module.out_features)
    for name, p in model.named_parameters():
        total += p.numel()
        if "audio_tower" in name or "multi_modal_projector" in name:
            audio += p.numel()
    lm = total - audio
    parts = set(trainable)
    train_n = (total if "full" in parts else
               (lora_n if "lora" in parts else 0) + (audio if "audio" in parts else 0)
               + (lm if "lm" in parts else 0))
    return {"total": total, "audio": audio, "lm": lm, "lora": lora_n, "trainable": train_n}


def plan(config: dict, ranks: int, hw: Hardware, audio_seconds: float = 10.0,
         runtime_min: float | None = None) -> dict:
    """The plan's figures (bytes, seconds) for ``config``'s train stage on ``ranks`` GPUs."""
    mcfg, tcfg = config["model"], config["train"]
    arch = model_config(mcfg)
    text, audio_cfg = arch.text_config, arch.audio_config
    trainable = list(tcfg["trainable"])
    n = counts(arch, mcfg.get("lora") if "lora" in trainable else None, trainable)
    batch, rollouts = tcfg["batch_size"], tcfg["sequence"]["n"]
    if batch % ranks:
        raise SystemExit(f"train.batch_size {batch} does not split over {ranks} ranks")
    per_rank = batch // ranks
    answer = mcfg["max_new_tokens"]
    prompt = int(audio_seconds * AUDIO_TOKENS_PER_S) + TEMPLATE_TOKENS
    seqs = per_rank * (rollouts + 1)  # GRPO rollouts + the token term's own rollout
    tokens = seqs * (prompt + answer)
    h, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    w = 2  # bf16 weights, gradients, AdamW states (the params' dtype)
    lm_trains = "full" in trainable or "lm" in trainable
    act = tokens * layers * 34 * h
    if "audio" in trainable or "full" in trainable:  # the encoder's activations too
        frames = int(audio_seconds * ENCODER_FRAMES_PER_S)
        act += seqs * frames * audio_cfg.encoder_layers * 34 * audio_cfg.d_model
    shard = ranks if lm_trains else 1  # FSDP2 when LM weights train on several ranks
    memory = {
        "weights": n["total"] * w / shard,
        "gradients": n["trainable"] * w / shard,
        "optimizer (AdamW, 2 states)": 2 * n["trainable"] * w / shard,
        "frozen teacher copy": n["total"] * w / shard if lm_trains else 0,
        "activations": act,
        "lm_head chunk (fp32)": 3 * tcfg["token"]["chunk_size"] * vocab * 4,
    }
    engine = tcfg.get("rollout_engine", "transformers")
    if engine == "vllm":
        memory["vLLM engine (weights + KV cache)"] = (
            tcfg["vllm"]["gpu_memory_utilization"] * hw.gpu_gb * GB)
        teacher = tcfg["teacher"]
        if teacher["engine"] == "rollout" and teacher["kind"] != "live":
            memory["vLLM teacher engine (train.teacher.engine)"] = (
                tcfg["vllm"]["gpu_memory_utilization"] * hw.gpu_gb * GB)
    total_mem = sum(memory.values())
    active = n["total"]
    train_flops = (6 if lm_trains else 4) * active * tokens
    teacher_flops = 2 * active * per_rank * (rollouts + 1) * (TEMPLATE_TOKENS + answer)
    compute_s = (train_flops + teacher_flops) / (hw.peak_tflops * 1e12 * hw.mfu)
    generated = per_rank * (rollouts + 2) * answer  # rollouts, token rollout, reference
    generate_s = generated / hw.decode_tok_s
    step_s = compute_s + generate_s
    steps = tcfg["steps"]
    run_s = steps * step_s
    out = {"counts": n, "memory": memory, "sharded": shard > 1, "memory_total": total_mem,
           "gpu_bytes": hw.gpu_gb * GB,
           "tokens_per_rank": tokens, "step_s": step_s, "compute_s": compute_s,
           "generate_s": generate_s, "steps": steps, "run_s": run_s}
    if runtime_min:
        out["runtime_min"] = runtime_min
        out["jobs"] = math.ceil(run_s / 60 / runtime_min)
    return out


def profile_runtime(rule: str = "train", root: Path | None = None) -> float | None:
    """The ``runtime`` (minutes) the workflow profile asks Slurm for, for ``rule``."""
    import yaml

    root = root or REPO_DIR
    profile = root / "profiles" / "default" / "config.yaml"
    if not profile.is_file():
        return None
    return (yaml.safe_load(profile.read_text()).get("set-resources", {})
            .get(rule, {}).get("runtime"))


def render(p: dict, ranks: int, trainable: list[str]) -> str:
    """The plan as text."""
    c = p["counts"]
    how = "FSDP2-sharded" if p["sharded"] else "replicated (data parallel)"
    lines = [f"train on {ranks} rank(s), {how}, trainable {'+'.join(trainable)}: "
             f"{c['total'] / 1e9:.2f} B parameters ({c['audio'] / 1e9:.2f} B audio encoder + "
             f"projector), {c['trainable'] / 1e6:.1f} M train (LoRA {c['lora'] / 1e6:.1f} M)",
             f"per rank: {p['tokens_per_rank']:,} tokens forwarded with gradient per step", "",
             "memory per rank"]
    for name, b in p["memory"].items():
        lines.append(f"  {name:<36} {b / GB:8.1f} GiB")
    fits = "fits" if p["memory_total"] <= p["gpu_bytes"] else "DOES NOT FIT"
    lines += [f"  {'total':<36} {p['memory_total'] / GB:8.1f} GiB of "
              f"{p['gpu_bytes'] / GB:.0f} GiB: {fits}", "",
              f"step: {p['step_s']:.1f} s ({p['compute_s']:.1f} s forward/backward, "
              f"{p['generate_s']:.1f} s generation)",
              f"run: {p['steps']} steps = {p['run_s'] / 3600:.1f} h"]
    if "runtime_min" in p:
        verdict = ("fits in one job" if p["jobs"] == 1 else
                   f"needs {p['jobs']} jobs: rerun snakemake after each time limit, the "
                   "run resumes from its last checkpoint (train.ckpt_every)")
        lines.append(f"profile runtime for train: {p['runtime_min']:.0f} min -> {verdict}")
    if "note" in p:
        lines.append(f"note: {p['note']}")
    return "\n".join(lines)
