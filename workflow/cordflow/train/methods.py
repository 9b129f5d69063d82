"""The training methods as data: the registry of methods and the loss terms each uses.

A method is resolved from its name and the ``train`` config (:func:`resolve`) into a spec
that holds exactly the settings that method reads. The spec is the ``train`` rule's params
for that method's job, so changing a knob reruns only the methods that use it (the GRPO
temperature does not rerun ``opd``; alpha does not rerun ``grpo``). Light on purpose: the
Snakefile imports this module to build params (no torch, no pandas here).

:data:`METHODS` is the one list of methods: the config schema's pattern for
``train.methods`` (:func:`name_pattern`), the CLI's help and the README are checked
against it by tests/test_registries.py. A new method is one :class:`Method` entry here
(plus, if it needs a new loss term, that term in ``train/step.py`` and its formula in
``train/losses.py``); README "Extending cordflow" has the checklist.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

LOOP_KEYS = ("steps", "lr", "batch_size", "warmup_steps", "schedule", "min_lr_ratio",
             "weight_decay", "grad_clip", "ckpt_every")
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"


@dataclass(frozen=True)
class Method:
    """One training method: which loss terms it uses, with which fixed settings.

    ``offpolicy``: the off-policy loss on text-prompt targets (``nll`` or ``forward_kl``),
    or None; ``token`` / ``sequence``: whether the token-level reverse KL / the
    sequence-level GRPO term are in the loss; ``token_weights``: (alpha, beta) fixed by the
    method (None: from ``train.token``); ``sweep``: whether ``<name>_a<A>_b<B>`` names
    this method with alpha = A, beta = B; ``kd``: the knowledge-distillation parts it uses
    (``text``: KL to the text teacher, ``layer``: hidden states through the layer map,
    ``acoustic``: KL to the acoustic teacher; :mod:`cordflow.train.kd`), on top of its
    SFT term on the text teacher's answers."""

    name: str
    summary: str
    offpolicy: str | None = None
    token: bool = False
    sequence: bool = False
    token_weights: tuple[float, float] | None = None
    sweep: bool = False
    kd: tuple[str, ...] = ()


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "the warm-up continued: -sum_t log p(y_t | y_<t, x_a) on text-prompt "
           "targets", offpolicy="nll"),
    Method("forward_kl", "off-policy: on text rollouts, sum_t KL(p(.|x_t) || p(.|x_a))",
           offpolicy="forward_kl"),
    Method("opd", "on-policy reverse KL on audio rollouts, alpha = beta = 1, no GRPO",
           token=True, token_weights=(1.0, 1.0)),
    Method("grpo", "sequence loss only (GRPO on the judge reward)", sequence=True),
    Method("opd_grpo", "opd + grpo", token=True, sequence=True, token_weights=(1.0, 1.0)),
    Method("cord", "weighted reverse KL (top-K alpha, position beta) + grpo: the paper",
           token=True, sequence=True, sweep=True),
    Method("kd_source", "source-wise KD (arXiv 2509.18579): sft on the text teacher's answers "
           "+ KL to the text teacher + KL to the acoustic teacher on acoustic items",
           offpolicy="nll", kd=("text", "acoustic")),
    Method("kd_layer", "layer-wise KD: sft on the text teacher's answers + hidden-state "
           "distance to the text teacher through a layer map", offpolicy="nll", kd=("layer",)),
    Method("kd_source_layer", "kd_source + kd_layer", offpolicy="nll",
           kd=("text", "layer", "acoustic")),
)}
BASE_METHODS = tuple(METHODS)


def name_pattern() -> str:
    """The regular expression of every valid method name (the schema's pattern)."""
    names = "|".join(METHODS)
    sweeps = "|".join(f"{m.name}_a{_NUMBER}_b{_NUMBER}" for m in METHODS.values() if m.sweep)
    return f"^({names}|{sweeps})$" if sweeps else f"^({names})$"


def parse(name: str) -> tuple[Method, tuple[float, float] | None]:
    """The registry entry of ``name`` and the (alpha, beta) a sweep name sets (or None)."""
    if name in METHODS:
        return METHODS[name], None
    for m in METHODS.values():
        sweep = re.fullmatch(f"{m.name}_a(?P<alpha>{_NUMBER})_b(?P<beta>{_NUMBER})", name)
        if m.sweep and sweep:
            return m, (float(sweep["alpha"]), float(sweep["beta"]))
    sweeps = [f"{m.name}_a<alpha>_b<beta>" for m in METHODS.values() if m.sweep]
    raise ValueError(f"train.methods: unknown method '{name}'; known: {list(METHODS)} and "
                     f"{', '.join(sweeps)}")


def resolve(name: str, train: dict, max_new_tokens: int | None = None,
            skills: dict | None = None) -> dict:
    """The spec of method ``name`` under the (defaults-filled) ``train`` section;
    ``skills``: the ``base.skills`` section (a kd method with ``train.kd.acoustic_skills``
    takes its acoustic items from it)."""
    method, sweep = parse(name)
    kind, offpolicy, token, sequence = method.name, method.offpolicy, method.token, method.sequence
    spec: dict = {
        "name": name,
        "kind": kind,
        "init": train["init"],
        "loop": {k: train[k] for k in LOOP_KEYS},
        "trainable": list(train["trainable"]),
    }
    if token or sequence:
        spec["rollout_engine"] = train["rollout_engine"]
        if train["rollout_engine"] == "vllm":
            spec["vllm"] = copy.deepcopy(train["vllm"])
    if offpolicy:
        spec["offpolicy"] = {"loss": offpolicy, **train["offpolicy"]}
    kd = train.get("kd", {})
    # sft's targets come from the starting weights, not a teacher; a kd method's from its
    # text teacher: train.teacher, unless a separate text LM (kd.text_teacher)
    if offpolicy != "nll" or (method.kd and not kd["text_teacher"]):
        spec["teacher"] = copy.deepcopy(train["teacher"])
        if spec["teacher"]["kind"] != "ema":
            spec["teacher"].pop("ema_decay", None)
    if token:
        tok = copy.deepcopy(train["token"])
        if method.token_weights:
            tok["alpha"], tok["beta"] = method.token_weights
        if sweep:
            tok["alpha"], tok["beta"] = sweep
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
    if method.kd:
        spec.update(_kd_sections(method, kd, train["batch_size"], skills))
    return spec


def _kd_sections(method: Method, kd: dict, batch_size: int, skills: dict | None) -> dict:
    """A kd method's sections: its text teacher (None: the model itself), each kd term it
    uses with the settings that term reads, and their weights (the lambdas). A term
    weighted 0, and the acoustic term without acoustic items, is left out: it never runs
    (the acoustic teacher is not even built).

    The acoustic items: the spoken questions of the QA split ``kd.acoustic_split``
    (``split``), and with ``kd.acoustic_skills`` the audio-skill items the base learned
    (``skills`` and ``items``: base.skills' list and count, chosen from the train split's
    clips as the base chose them), or both."""
    out: dict = {"text_teacher": kd["text_teacher"], "weights": {}}
    divergence = {"kl": kd["kl"], "temperature": kd["temperature"]}
    if "text" in method.kd and kd["lambda_text"] > 0:
        out["kd_text"] = dict(divergence)
        out["weights"]["kd_text"] = kd["lambda_text"]
    if "layer" in method.kd and kd["lambda_layer"] > 0:
        layer = {"layers": copy.deepcopy(kd["layers"]), "distance": kd["distance"]}
        if kd["layers"] == "every_k":
            layer["k"] = kd["k"]
        out["kd_layer"] = layer
        out["weights"]["kd_layer"] = kd["lambda_layer"]
    items: dict = {"split": kd["acoustic_split"]} if kd["acoustic_split"] else {}
    if kd.get("acoustic_skills"):
        if skills is None:
            raise ValueError("train.kd.acoustic_skills takes its items from base.skills, "
                             "which was not given (method_params passes it)")
        items.update(skills=list(skills["skills"]), items=skills["items"])
    if "acoustic" in method.kd and kd["lambda_ac"] > 0 and items:
        out["kd_acoustic"] = {**items,
                              "batch_size": kd["acoustic_batch_size"] or batch_size,
                              **divergence}
        out["weights"]["kd_acoustic"] = kd["lambda_ac"]
    return out


def warmup_spec(warmup: dict) -> dict:
    """The ``warmup`` stage as a spec: the sft method from the base, with the ``warmup``
    section's own budget and targets."""
    return {
        "name": "warmup",
        "kind": "sft",
        "init": "base",
        "loop": {k: warmup[k] for k in LOOP_KEYS},
        "trainable": list(warmup["trainable"]),
        "offpolicy": {"loss": "nll", "targets": warmup["targets"],
                      "temperature": warmup["temperature"]},
    }


def method_params(config: dict, name: str) -> dict:
    """The ``train`` rule's params for method ``name``: seed, model and the method's spec
    (which holds base.skills' skills and items only for a kd method whose acoustic items
    are the skill items, ``train.kd.acoustic_skills``)."""
    return {
        "seed": config["seed"],
        "model": copy.deepcopy(config["model"]),
        "method": resolve(name, config["train"], config["model"]["max_new_tokens"],
                          config.get("base", {}).get("skills")),
    }
