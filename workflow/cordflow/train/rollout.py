"""Rollout engines: who samples the student's on-policy completions.

The training step asks an engine for completions of a prompt batch and tells it after each
optimiser step that the weights changed (:meth:`RolloutEngine.sync`). ``transformers``
(the default, and the only engine in this build) samples with the training model itself,
so it is always in sync. A vLLM engine would implement the same two methods (vLLM's
Qwen2-Audio has no LoRA support, so ``sync`` would push merged weights, as TRL's colocate
mode does); it needs its own environment (envs/vllm.yaml) and a GPU.
"""

from __future__ import annotations

from typing import Protocol

from cordflow import models


class RolloutEngine(Protocol):
    def generate(self, prompt: dict, max_new: int, temperature: float,
                 n: int = 1) -> models.Completions:
        """``n`` completions per prompt (grouped per prompt), audio/control tokens never."""

    def sync(self) -> None:
        """The training weights changed: make the next rollouts use them."""


class TransformersEngine:
    """``model.generate`` of the training model (LoRA adapters active)."""

    def __init__(self, loaded: models.Loaded):
        self.loaded = loaded

    def generate(self, prompt: dict, max_new: int, temperature: float,
                 n: int = 1) -> models.Completions:
        return models.generate(self.loaded, prompt, max_new, temperature, n)

    def sync(self) -> None:
        """Nothing to do: it samples from the weights being trained."""


# The engine registry: ``train.rollout_engine`` value -> class. A new engine is a class
# with ``generate`` and ``sync`` (:class:`RolloutEngine`), its entry here and the schema's
# enum (README "Extending cordflow"; tests/test_registries.py keeps them in step).
ENGINES: dict[str, type] = {
    "transformers": TransformersEngine,
}


def make_engine(name: str, loaded: models.Loaded) -> RolloutEngine:
    if name not in ENGINES:
        raise SystemExit(f"config key 'train.rollout_engine': '{name}' is not an engine of "
                         f"this build ({', '.join(ENGINES)}); see README 'The method'")
    return ENGINES[name](loaded)
