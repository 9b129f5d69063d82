"""The training model's weights as vLLM loads them: LoRA merged, checkpoint names.

vLLM's Qwen2-Audio has no LoRA support, so the engine gets merged weights W + B A * scale,
computed out of place (the training model's own weights are never touched, so no drift from
merging and unmerging). Names are those of a checkpoint that transformers saves, which is
what vLLM's loader (and ``Worker.reload_weights(..., is_checkpoint_format=True)``) expects:

    in memory (transformers 5)           checkpoint
    model.language_model.X               language_model.model.X
    lm_head.weight                       language_model.lm_head.weight
    model.audio_tower.X                  audio_tower.X
    model.multi_modal_projector.X        multi_modal_projector.X

:func:`trained_names` is what a sync pushes: the weights with a gradient and the weights of
every LoRA-wrapped layer (their merge changes when the adapters train); nothing else.

Under FSDP2 (LM weights training on several ranks) each weight is a shard (a DTensor):
:func:`merged_weights` gathers it (``full_tensor()``, a collective: every rank calls it for
the same names in the same order, which a sync or a start on every rank does), so each
rank's engine serves the whole model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

RENAMES = (("model.language_model.", "language_model.model."),
           ("lm_head.", "language_model.lm_head."),
           ("model.audio_tower.", "audio_tower."),
           ("model.multi_modal_projector.", "multi_modal_projector."))


def checkpoint_name(name: str) -> str:
    """The checkpoint name of an in-memory parameter name of the core model."""
    for old, new in RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(f"parameter {name!r} is not one of Qwen2-Audio's (no checkpoint name)")


def model_class_name(core: torch.nn.Module) -> str:
    """The transformers class of ``core`` (what save_pretrained records as its
    architecture), also when FSDP2 has wrapped it in its ``FSDP<class>`` subclass."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2: nothing can be wrapped
        return type(core).__name__
    return next(c for c in type(core).__mro__ if not issubclass(c, FSDPModule)).__name__


def _core(model: torch.nn.Module) -> torch.nn.Module:
    from cordflow.models import core

    return core(model)


def _lora_layers(core: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """LoRA-wrapped layers by their name (``...q_proj``)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in core.named_modules() if isinstance(m, LoraLayer)}


def _base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def trained_names(model: torch.nn.Module) -> list[str]:
    """Checkpoint names of what training changes: weights with a gradient and the weight of
    every LoRA layer whose adapters have one."""
    core = _core(model)
    lora = _lora_layers(core)
    lora_training = {name for name, m in lora.items()
                     if any(p.requires_grad for n, p in m.named_parameters() if "lora_" in n)}
    out = []
    for name, p in core.named_parameters():
        if "lora_" in name:
            continue
        layer = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        merged = layer in lora_training and name.endswith(".base_layer.weight")
        if p.requires_grad or merged:
            out.append(checkpoint_name(_base_name(name)))
    return out


@torch.no_grad()
def merged_weights(model: torch.nn.Module, names: list[str] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Checkpoint name -> weight (LoRA merged, contiguous, on the CPU) for ``names`` (all
    weights when None)."""
    from cordflow.models import is_dtensor

    core = _core(model)
    lora = _lora_layers(core)
    want = set(names) if names is not None else None
    out: dict[str, torch.Tensor] = {}
    for name, p in core.named_parameters():
        if "lora_" in name:
            continue
        ckpt = checkpoint_name(_base_name(name))
        if want is not None and ckpt not in want:
            continue
        w = p.detach()
        if is_dtensor(w):  # an FSDP2 shard: every rank gathers the whole weight
            w = w.full_tensor()
        if name.endswith(".base_layer.weight"):
            layer = lora[name.rsplit(".base_layer.", 1)[0]]
            if not layer.merged and not layer.disable_adapters:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        w = w + layer.get_delta_weight(adapter).to(w.dtype)
        out[ckpt] = w.to("cpu").contiguous()
    if want is not None and (missing := want - set(out)):
        raise KeyError(f"no such weights: {sorted(missing)[:5]}")
    return out


def save_folder(model: torch.nn.Module, processor, folder: Path,
                dtype: torch.dtype | None = None) -> Path:
    """A model folder vLLM loads: config.json and the processor files, and every weight
    (merged) in model.safetensors, in ``dtype`` (default: as trained). No
    generation_config.json: every sampling setting is explicit."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    core = _core(model)
    config = copy.deepcopy(core.config)
    config.architectures = [model_class_name(core)]  # what save_pretrained records
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    weights = merged_weights(model)
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "generation_config.json").unlink(missing_ok=True)
    (folder / "cordflow_vllm.json").write_text(json.dumps({"weights": len(weights)}))
    return folder
