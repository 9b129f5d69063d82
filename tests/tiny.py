"""A small tiny-preset model and spoken items for unit tests (built once per session)."""

from __future__ import annotations

import numpy as np
import pandas as pd

QUESTIONS = [f"What is {a} plus {b}?" for a in range(6) for b in range(6)]
ANSWERS = [str(a + b) for a in range(6) for b in range(6)]


def model_cfg(**tiny) -> dict:
    from cordflow.config import section

    cfg = section({"model": {"tiny": {"chunk_length": 2, "vocab_size": 320, **tiny}}}, "model")
    return cfg


def build(cfg: dict | None = None, seed: int = 0):
    from cordflow import models

    cfg = cfg or model_cfg()
    model, processor = models.build_tiny(
        cfg["tiny"], models.tiny_corpus(QUESTIONS, ANSWERS, cfg["system_prompt"]), seed)
    return model, processor


def loaded(cfg: dict | None = None, seed: int = 0):
    import torch

    from cordflow import models

    cfg = cfg or model_cfg()
    model, processor = build(cfg, seed)
    return models.Loaded(model, processor, torch.device("cpu"), cfg["system_prompt"],
                         cfg["instruction"])


def tone(seconds: float, freq: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def items(n: int = 8) -> pd.DataFrame:
    """Spoken-ish items: a tone per question stands in for speech (the model only needs
    audio of the right shape here)."""
    rows = []
    for i in range(n):
        rows.append({"id": f"{i:016x}", "question": QUESTIONS[i], "answer": ANSWERS[i],
                     "answer_type": "number", "choices": None,
                     "audio": tone(0.5 + 0.1 * (i % 5), 200 + 40 * i)})
    return pd.DataFrame(rows)


def text_lm(folder, tokenizer, hidden_size: int = 64, layers: int = 3, seed: int = 0):
    """A tiny transformers causal LM (Qwen2) saved in ``folder`` with ``tokenizer``: a
    separate text teacher for the kd methods (``train.kd.text_teacher``)."""
    import math

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab = 64 * math.ceil(len(tokenizer) / 64)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
