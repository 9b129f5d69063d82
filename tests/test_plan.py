"""`cordflow plan`: parameter counts are exact (checked against a real model with real PEFT
adapters), memory adds up per rank, and the run is checked against the profile's runtime."""

import subprocess
import sys

import pytest
import tiny

from cordflow import models, plan
from cordflow.config import load_config


def test_counts_match_a_real_model_with_real_lora_adapters(repo):
    cfg = load_config(repo / "config" / "config.yaml")
    mcfg = cfg["model"]
    model, _ = tiny.build(tiny.model_cfg())
    total = sum(p.numel() for p in model.parameters())
    got = plan.counts(model.config, mcfg["lora"], ["lora", "audio"])
    peft = models.add_lora(model, mcfg["lora"])
    models.set_trainable(peft, ["lora", "audio"])
    assert got["total"] == total
    assert got["trainable"] == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert got["lora"] == sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)


def test_the_7b_plan_per_rank(repo):
    cfg = load_config(repo / "config" / "config.yaml",
                      load_config_layer(repo / "config" / "presets" / "qwen2-audio-7b.yaml"))
    hw = plan.Hardware()
    lora = plan.plan(cfg, 8, hw, runtime_min=720)
    c = lora["counts"]
    assert 8.3e9 < c["total"] < 8.5e9  # Qwen2-Audio-7B-Instruct: 8.4 B parameters
    # r = 8 on q, k, v, o, gate, up, down of 32 layers: 8 (4 x 8192 + 2 x 15104 + 15104) x 32
    assert c["lora"] == 8 * (4 * 8192 + 3 * 15104) * 32
    assert lora["memory_total"] == sum(lora["memory"].values())
    assert lora["memory_total"] < lora["gpu_bytes"] and lora["jobs"] == 1
    full = plan.plan(load_config(repo / "config" / "config.yaml", deep(
        load_config_layer(repo / "config" / "presets" / "qwen2-audio-7b.yaml"),
        {"train": {"trainable": ["full"]}})), 8, hw)
    # full fine-tuning on 8 ranks is FSDP2-sharded: weights, teacher copy and optimizer / 8
    assert full["sharded"] and not lora["sharded"]
    assert full["memory"]["weights"] == lora["memory"]["weights"] / 8
    assert full["memory"]["frozen teacher copy"] == full["memory"]["weights"]
    assert full["memory"]["optimizer (AdamW, 2 states)"] == 4 * c["total"] / 8
    assert full["memory"]["vLLM engine (weights + KV cache)"] > 0  # vLLM with FSDP2 too
    slow = plan.plan(cfg, 8, plan.Hardware(decode_tok_s=10.0), runtime_min=720)
    assert slow["jobs"] > 1  # resumed across jobs from the checkpoints
    with pytest.raises(SystemExit, match="does not split"):
        plan.plan(cfg, 3, hw)


def test_the_cli_prints_the_plan(repo):
    run = subprocess.run([sys.executable, "-m", "cordflow", "plan", "--config",
                          str(repo / "config/config.yaml"), "--config",
                          str(repo / "config/presets/qwen2-audio-7b.yaml"), "--ranks", "8"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "memory per rank" in run.stdout and "profile runtime for train: 720 min" in run.stdout


def load_config_layer(path):
    import yaml

    return yaml.safe_load(path.read_text())


def deep(a, b):
    from cordflow.config import deep_merge

    return deep_merge(a, b)
