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
