"""A ``vllm.general_plugins`` entry point: vLLM's Qwen2-Audio for any audio window.

vLLM's Qwen2-Audio input schema hard-codes Whisper's 30 s window: ``input_features`` must be
``(na, nmb, 3000)`` and ``feature_attention_mask`` ``(na, 3000)``. A model whose processor has
another ``chunk_length`` (the tiny preset's few seconds; its encoder has
``max_source_positions = chunk_length * 50``) loads, and then its first audio request kills
the engine ("input_features dim[2] expected 3000, got 400"). The encoder itself takes any
length its position table covers, so :func:`register` makes the frame count a symbolic
dimension shared by both tensors (checked equal, as before, just not pinned to 3000).
A 30 s model is unaffected.

Registered in pyproject.toml (``[project.entry-points."vllm.general_plugins"]``), so vLLM
calls it in every process of an engine in a venv where cordflow is installed (.venv-vllm);
the engine server also calls it itself. Idempotent. Imports vLLM: only ever run inside the
vLLM environment.
"""

from __future__ import annotations

FRAMES = "nfr"  # the symbolic frame dimension


def register() -> None:
    from typing import Annotated

    import torch
    from vllm.model_executor.models import qwen2_audio
    from vllm.utils.tensor_schema import TensorShape

    schema = qwen2_audio.Qwen2AudioFeatureInputs
    if getattr(schema, "_cordflow_any_window", False):
        return
    schema.__annotations__["input_features"] = Annotated[
        torch.Tensor | list[torch.Tensor], TensorShape("na", "nmb", FRAMES)]
    schema.__annotations__["feature_attention_mask"] = Annotated[
        torch.Tensor, TensorShape("na", FRAMES)]
    schema._cordflow_any_window = True
