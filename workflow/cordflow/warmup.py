"""Stage ``warmup`` (results/models/warmup): the paper's off-policy SFT, before any method.

Audio prompt in; targets sampled from the base model under the TEXT prompt (or the gold
answers, ``warmup.targets``); trainable parts from ``warmup.trainable`` (LoRA on the LM, the
audio encoder/projector, or all). On-policy reverse KL needs a student that is already
partly right, so the training methods start from here (``train.init: warmup``). It runs
the ``sft`` method of :mod:`cordflow.train.run` with the ``warmup`` section's budget: one
code path, and the ``sft`` METHOD's row of the gap table is this warm-up continued for the
training budget.
"""

from __future__ import annotations

from pathlib import Path

from cordflow.config import section
from cordflow.train.methods import warmup_spec
from cordflow.train.run import run_spec


def run(params: dict, base_dir: Path, qa_train: Path, manifest: Path, out_dir: Path) -> None:
    spec = warmup_spec(section(params, "warmup"))
    run_spec(params, spec, "warmup", base_dir, qa_train, manifest, out_dir)
