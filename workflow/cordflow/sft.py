"""Stage ``sft``: the warm-up (results/models/warmup), the paper's off-policy SFT.

Audio prompt in; targets sampled from the base model under the TEXT prompt (or the gold
answers, ``sft.targets``); trainable parts from ``sft.trainable`` (LoRA on the LM, the
audio encoder/projector, or all). On-policy reverse KL needs a student that is already
partly right, so the training methods start from here. It runs the ``sft`` method of
:mod:`cordflow.train` with the ``sft`` section's budget: one code path, and the ``sft``
row of the table is this warm-up continued for the training budget.
"""

from __future__ import annotations

from pathlib import Path

from cordflow.config import section
from cordflow.train import run_spec
from cordflow.train.methods import warmup_spec


def run(params: dict, base_dir: Path, qa_train: Path, manifest: Path, out_dir: Path) -> None:
    spec = warmup_spec(section(params, "sft"))
    run_spec(params, spec, "sft", base_dir, qa_train, manifest, out_dir)
