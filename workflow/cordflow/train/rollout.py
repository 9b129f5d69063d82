"""Rollout engines: who samples the student's on-policy completions.

The training step asks an engine for completions of a prompt batch and tells it after each
optimiser step that the weights changed (:meth:`RolloutEngine.sync`); the job closes it at
the end (:meth:`RolloutEngine.close`). ``transformers`` (the default) samples with the
training model itself, so it is always in sync. ``vllm``
(:class:`cordflow.vllm_engine.engine.VLLMEngine`) samples in a vLLM process of its own venv
(vLLM needs other transformers/torch versions than training), started by the job, that
``sync`` gives the current weights after every optimiser step (LoRA merged: vLLM's
Qwen2-Audio has no LoRA support), as TRL's server mode does.
"""

from __future__ import annotations

from typing import Protocol

from cordflow import models
from cordflow.vllm_engine.engine import VLLMEngine


class RolloutEngine(Protocol):
    def generate(self, prompt: dict, max_new: int, temperature: float, n: int = 1,
                 seeds: list[int] | None = None) -> models.Completions:
        """``n`` completions per prompt (grouped per prompt), audio/control tokens never;
        with ``seeds`` (one per prompt) a prompt's samples depend on its seed alone."""

    def sync(self) -> None:
        """The training weights changed: make the next rollouts use them."""

    def close(self) -> None:
        """The job is done with the engine (stop any process it runs)."""


class TransformersEngine:
    """``model.generate`` of the training model (LoRA adapters active)."""

    def __init__(self, loaded: models.Loaded):
        self.loaded = loaded

    def generate(self, prompt: dict, max_new: int, temperature: float, n: int = 1,
                 seeds: list[int] | None = None) -> models.Completions:
        return models.generate(self.loaded, prompt, max_new, temperature, n, seeds=seeds)

    def sync(self) -> None:
        """Nothing to do: it samples from the weights being trained."""

    def close(self) -> None:
        """Nothing to stop."""


# The engine registry: ``train.rollout_engine`` value -> class. A new engine is a class
# with ``generate`` and ``sync`` (:class:`RolloutEngine`), its entry here and the schema's
# enum (README "Extending cordflow"; tests/test_registries.py keeps them in step).
ENGINES: dict[str, type] = {
    "transformers": TransformersEngine,
    "vllm": VLLMEngine,
}


def make_engine(name: str, loaded: models.Loaded, settings: dict | None = None,
                seed: int = 0, log_path=None) -> RolloutEngine:
    """The engine ``name`` on ``loaded``; ``settings`` (``train.vllm``), the run's ``seed``
    and a ``log_path`` for the engine process's log are for engines that run one."""
    if name not in ENGINES:
        raise SystemExit(f"config key 'train.rollout_engine': '{name}' is not an engine of "
                         f"this build ({', '.join(ENGINES)}); see README 'The method'")
    if name == "vllm":
        return VLLMEngine(loaded, settings, seed=seed, log_path=log_path)
    return ENGINES[name](loaded)
