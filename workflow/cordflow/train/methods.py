"""The training methods as data: which loss terms each uses, with which settings.

A method is resolved from its name and the ``train`` config (:func:`resolve`) into a spec
that holds exactly the settings that method reads. The spec is the ``train`` rule's params
for that method's job, so changing a knob reruns only the methods that use it (the GRPO
temperature does not rerun ``opd``; alpha does not rerun ``grpo``). Light on purpose: the
Snakefile imports this module to build params (no torch here).

    sft          off-policy: targets sampled from the starting model's TEXT prompt become
                 targets for the AUDIO prompt, -sum_t log p(y_t | y_<t, x_a)
    forward_kl   off-policy: on those text rollouts, sum_t KL(p(.|x_t) || p(.|x_a))
    opd          on-policy reverse KL on audio rollouts, alpha = beta = 1, no GRPO
    grpo         sequence loss only (GRPO on the judge reward)
    opd_grpo     opd + grpo
    cord         weighted reverse KL (top-K alpha, position beta) + grpo: the paper
    cord_a<A>_b<B>   cord with alpha = A, beta = B (the sweep), e.g. cord_a1.5_b2
"""

from __future__ import annotations

import copy
import re

BASE_METHODS = ("sft", "forward_kl", "opd", "grpo", "opd_grpo", "cord")
SWEEP = re.compile(r"^cord_a(?P<alpha>[0-9]+(?:\.[0-9]+)?)_b(?P<beta>[0-9]+(?:\.[0-9]+)?)$")
LOOP_KEYS = ("steps", "lr", "batch_size", "warmup_steps", "schedule", "min_lr_ratio",
             "weight_decay", "grad_clip", "ckpt_every")

# name -> (off-policy loss, token level, sequence level, fixed token weights)
_TERMS = {
    "sft": ("nll", False, False, None),
    "forward_kl": ("forward_kl", False, False, None),
    "opd": (None, True, False, (1.0, 1.0)),
    "grpo": (None, False, True, None),
    "opd_grpo": (None, True, True, (1.0, 1.0)),
    "cord": (None, True, True, None),
}


def resolve(name: str, train: dict, max_new_tokens: int | None = None) -> dict:
    """The spec of method ``name`` under the (defaults-filled) ``train`` section."""
    sweep = SWEEP.match(name)
    kind = "cord" if sweep else name
    if kind not in _TERMS:
        raise ValueError(f"train.methods: unknown method '{name}'; known: {list(BASE_METHODS)} "
                         "and cord_a<alpha>_b<beta>")
    offpolicy, token, sequence, fixed = _TERMS[kind]
    spec: dict = {
        "name": name,
        "kind": kind,
        "init": train["init"],
        "loop": {k: train[k] for k in LOOP_KEYS},
        "trainable": list(train["trainable"]),
    }
    if token or sequence:
        spec["rollout_engine"] = train["rollout_engine"]
    if offpolicy:
        spec["offpolicy"] = {"loss": offpolicy, **train["offpolicy"]}
    if kind != "sft":
        spec["teacher"] = copy.deepcopy(train["teacher"])
        if spec["teacher"]["kind"] != "ema":
            spec["teacher"].pop("ema_decay", None)
    if token:
        tok = copy.deepcopy(train["token"])
        if fixed:
            tok["alpha"], tok["beta"] = fixed
        if sweep:
            tok["alpha"], tok["beta"] = float(sweep["alpha"]), float(sweep["beta"])
        if not sequence:
            tok["rollouts"] = "separate"  # nothing to reuse
        if tok["rollouts"] == "reuse":
            tok.pop("temperature")  # the GRPO rollouts' temperature applies
        spec["token"] = tok
    if sequence:
        seq = copy.deepcopy(train["sequence"])
        if seq["aggregation"] != "dr_grpo":
            max_new_tokens = None
        seq["max_len"] = max_new_tokens
        spec["sequence"] = seq
        spec["judge"] = copy.deepcopy(train["judge"])
    if token or sequence:
        spec["weights"] = {"token": train["weights"]["token"] if token else 0.0,
                           "sequence": train["weights"]["sequence"] if sequence else 0.0}
    return spec


def warmup_spec(sft: dict) -> dict:
    """The ``sft`` stage (the warm-up) as a spec: the sft method from the base, with the
    ``sft`` section's own budget and targets."""
    return {
        "name": "warmup",
        "kind": "sft",
        "init": "base",
        "loop": {k: sft[k] for k in LOOP_KEYS},
        "trainable": list(sft["trainable"]),
        "offpolicy": {"loss": "nll", "targets": sft["targets"], "temperature": sft["temperature"]},
    }


def method_params(config: dict, name: str) -> dict:
    """The ``train`` rule's params for method ``name``: seed, model and the method's spec."""
    return {
        "seed": config["seed"],
        "model": copy.deepcopy(config["model"]),
        "method": resolve(name, config["train"], config["model"]["max_new_tokens"]),
    }
