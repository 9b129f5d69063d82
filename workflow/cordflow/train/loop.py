"""The training loop the model stages share (base, sft, every method in train).

One readable function, :func:`fit`: the stage gives it the trainable parameters and a
``step_fn(step) -> (loss, metrics)`` that builds its own batch from the step number (so a
resumed run sees exactly the batches an uninterrupted one would). The loop does the rest:
AdamW, warm-up + schedule, gradient clipping, a NaN/inf guard that stops with a clear
message, atomic checkpoints every ``ckpt_every`` steps and resume from the last one, a
per-step log (jsonl + TensorBoard) and a progress bar with rate and ETA.

Checkpoints hold only what training changes: trainable weights (safetensors), optimizer
state, torch RNG states (CPU and every GPU's) and the step's extra state (e.g. an EMA
teacher), loaded back with ``torch.load(weights_only=True)``. They live outside the
stage's output folder (Snakemake clears that before a job), in a folder named after the
run's identity (see :func:`run_key`), so a changed config never resumes a stale run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cordflow.io import RESUME_DIR, atomic_path, keep_jsonl_rows
from cordflow.models import is_sharded
from cordflow.train import dist

log = logging.getLogger("cordflow.training")

StepFn = Callable[[int], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class LoopConfig:
    """Optimisation settings of one training phase (from a stage's config section)."""

    steps: int
    lr: float
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ckpt_every: int = 50
    log_every: int = 1

    @classmethod
    def from_cfg(cls, cfg: dict) -> LoopConfig:
        keys = cls.__dataclass_fields__
        kw = {k: cfg[k] for k in keys if k in cfg}
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine/linear decay to
    ``min_lr_ratio * lr`` at the last step (or constant)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    decay = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1 - frac
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)


def run_key(*parts: Any) -> str:
    """A short stable hash of a run's identity (params, input hashes, code version)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class NonFiniteLoss(SystemExit):
    pass


# ------------------------------------------------------------------------------ checkpoints

def rng_state() -> dict[str, Any]:
    """The torch random states a step draws from: the CPU generator and, on a GPU node,
    every CUDA device's (sampling on the GPU draws from those: without them a resumed GPU
    run samples other rollouts than an uninterrupted one)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (a checkpoint without CUDA states, or a
    different number of GPUs, restores the CPU state and says so)."""
    torch.set_rng_state(state["torch_rng"])
    cuda = state.get("cuda_rng") or []
    if not torch.cuda.is_available():
        if cuda:
            log.warning("the checkpoint has the random state of %d GPU(s); this job has none: "
                        "rollouts after the resume differ from an uninterrupted run", len(cuda))
        return
    if len(cuda) != torch.cuda.device_count():
        log.warning("the checkpoint has the random state of %d GPU(s), this job sees %d: "
                    "rollouts after the resume differ from an uninterrupted run",
                    len(cuda), torch.cuda.device_count())
        return
    torch.cuda.set_rng_state_all(cuda)


class Checkpoints:
    """Atomic checkpoints ``step-<N>/`` under ``root``; keeps the newest ``keep``."""

    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def _dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        done = [d for d in self.root.glob("step-*") if (d / "state.json").exists()]
        return sorted(done, key=lambda d: int(d.name.split("-")[1]))

    def latest(self) -> Path | None:
        dirs = self._dirs()
        return dirs[-1] if dirs else None

    def save(self, step: int, named: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
             extra: dict[str, Any], opt_state: dict | None = None) -> Path:
        """Write checkpoint ``step``: the trainable weights ``named``, the optimiser's state
        (``opt_state``, e.g. the full state of a sharded model, or ``opt``'s own), the RNG
        states and ``extra``."""
        from safetensors.torch import save_file

        target = self.root / f"step-{step}"
        with atomic_path(target) as tmp:
            tmp.mkdir()
            save_file({k: p.detach().cpu().contiguous() for k, p in named.items()},
                      str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": opt_state if opt_state is not None else opt.state_dict(),
                        **rng_state(), "extra": extra}, tmp / "state.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step}))
        for old in self._dirs()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def load(self, ckpt: Path, named: dict[str, torch.nn.Parameter],
             opt: torch.optim.Optimizer,
             sharded: torch.nn.Module | None = None) -> tuple[int, dict[str, Any]]:
        """Load checkpoint ``ckpt`` into the weights ``named`` and ``opt`` (of the FSDP2
        model ``sharded``: every rank takes its shard of the full state)."""
        from safetensors.torch import load_file

        weights = load_file(str(ckpt / "trainable.safetensors"))
        missing = set(named) ^ set(weights)
        if missing:
            raise SystemExit(f"checkpoint {ckpt} does not match the trainable parameters "
                             f"({sorted(missing)[:3]}...); delete {self.root} to start over")
        state = torch.load(ckpt / "state.pt", weights_only=True)
        if sharded is not None:
            dist.load_full_state(sharded, opt, weights, state["optimizer"])
        else:
            with torch.no_grad():
                for k, p in named.items():
                    p.copy_(weights[k].to(p.device, p.dtype))
            opt.load_state_dict(state["optimizer"])
        set_rng_state(state)
        step = json.loads((ckpt / "state.json").read_text())["step"]
        return step, state["extra"]

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------ logging

class StepLog:
    """One JSON object per line in ``path`` and the same scalars in TensorBoard."""

    def __init__(self, path: str | Path, tb_dir: str | Path | None, phase: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.phase = phase
        self.tb = None
        if tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tb_dir))
            except ImportError:  # tensorboard not in this environment
                log.warning("tensorboard is not installed: logging to %s only", self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        row = {"phase": self.phase, "step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{self.phase}/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows of this phase logged after the checkpoint's step (rows of
        other phases, e.g. an earlier phase of the same stage, stay)."""
        keep_jsonl_rows(self.path, lambda row: row.get("phase") != self.phase
                        or row["step"] <= step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_tensorboard(log_path: str | Path, tb_dir: str | Path) -> None:
    """TensorBoard events of a finished run, written fresh from its step log (one event per
    phase, step and metric): the live events of the work folder also hold the steps a killed
    attempt logged after its last checkpoint, which the step log drops on resume."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no %s", tb_dir)
        return
    writer = SummaryWriter(str(tb_dir))
    try:
        for line in Path(log_path).read_text().splitlines():
            row = json.loads(line)
            for k, v in row.items():
                if k not in ("phase", "step") and isinstance(v, (int, float)) \
                        and math.isfinite(v):
                    writer.add_scalar(f"{row['phase']}/{k}", v, row["step"])
    finally:
        writer.close()


# ------------------------------------------------------------------------------ the loop

@dataclass
class FitResult:
    steps: int
    resumed_from: int | None
    last: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


def _progress(total: int, initial: int, desc: str, disable: bool = False) -> Iterator:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", mininterval=2.0,
                dynamic_ncols=False, ncols=100, disable=disable)


def fit(
    model: torch.nn.Module,
    cfg: LoopConfig,
    step_fn: StepFn,
    ckpt: Checkpoints,
    steplog: StepLog,
    desc: str,
    eval_fn: Callable[[int], tuple[dict[str, float], bool]] | None = None,
    eval_every: int = 0,
    state_fn: Callable[[], dict[str, Any]] | None = None,
    load_state_fn: Callable[[dict[str, Any]], None] | None = None,
    after_step: Callable[[int], dict | None] | None = None,
    train_mode: bool = True,
    world: dist.World = dist.ONE,
) -> FitResult:
    """Run ``cfg.steps`` optimiser steps of ``step_fn`` over the model's trainable weights.

    ``eval_fn(step) -> (metrics, stop)`` runs every ``eval_every`` steps (and at the end);
    ``stop`` ends training early (e.g. an accuracy bar reached). ``state_fn`` /
    ``load_state_fn`` carry extra state through checkpoints (``load_state_fn`` also gets the
    checkpoint's ``"step"``); ``after_step`` runs after each optimiser step (e.g. an EMA
    update). ``train_mode`` False trains in eval mode (dropout and the audio encoder's
    layer drop off): an on-policy method scores its rollouts in the mode they were sampled
    in (generation runs in eval mode), as TRL's ``disable_dropout``. On several ranks
    (``world``, :mod:`cordflow.train.dist`) each rank's ``step_fn`` computes its share of the
    batch, gradients and metrics are averaged over the ranks, and rank 0 alone writes the
    step log and the checkpoints (every rank resumes from them).
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    opt = _optimizer(params, cfg)
    sharded = model if is_sharded(model) else None
    resumed = _resume(ckpt, named, opt, steplog if world.main else None, load_state_fn, desc,
                      cfg.steps, sharded)
    start = resumed if resumed is not None else 0
    dist.barrier(world)  # no rank writes a checkpoint before every rank has read the last

    result = FitResult(steps=start, resumed_from=resumed)
    bar = _progress(cfg.steps, start, desc, disable=not world.main)
    model.train(train_mode)
    try:
        for step in range(start, cfg.steps):
            metrics = _optimise(step, cfg, step_fn, opt, params, after_step, desc, ckpt.root,
                                world)
            done = step + 1
            stop = False
            if eval_fn is not None and eval_every and (done % eval_every == 0 or done == cfg.steps):
                evaluation, stop = eval_fn(done)
                metrics.update(evaluation)
            if world.main and (done % cfg.log_every == 0 or done == cfg.steps or stop):
                steplog.write(done, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
            result.steps, result.last = done, metrics
            if stop:
                result.stopped_early = True
                log.info("%s: stopping at step %d (%s)", desc, done, evaluation)
                break
            if cfg.ckpt_every and done % cfg.ckpt_every == 0 and done < cfg.steps:
                extra = {**(state_fn() if state_fn else {}), "step": done}
                if sharded is not None:  # every rank gathers, rank 0 writes
                    weights, opt_state = dist.full_state(sharded, opt)
                    if world.main:
                        ckpt.save(done, weights, opt, extra, opt_state=opt_state)
                elif world.main:  # the ranks hold the same weights and optimiser state
                    ckpt.save(done, named, opt, extra)
                dist.barrier(world)
    finally:
        bar.close()
    return result


def _optimizer(params: list[torch.nn.Parameter], cfg: LoopConfig) -> torch.optim.AdamW:
    """AdamW over the trainable weights; biases and norms (1-d) get no weight decay."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas)


def _resume(ckpt: Checkpoints, named: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
            steplog: StepLog | None, load_state_fn: Callable[[dict[str, Any]], None] | None,
            desc: str, total: int, sharded: torch.nn.Module | None = None) -> int | None:
    """Load the latest checkpoint, if any, into the weights, the optimizer, the torch RNG
    and (``load_state_fn``) the step's extra state, and drop the log rows written after it
    (``steplog``: rank 0's); return its step (None: no checkpoint, start from step 0)."""
    latest = ckpt.latest()
    if latest is None:
        return None
    start, extra = ckpt.load(latest, named, opt, sharded)
    if load_state_fn is not None:
        load_state_fn(extra)
    if steplog is not None:
        steplog.truncate_after(start)
    log.info("%s: resumed from %s (step %d of %d)", desc, latest, start, total)
    return start


def _optimise(step: int, cfg: LoopConfig, step_fn: StepFn, opt: torch.optim.Optimizer,
              params: list[torch.nn.Parameter], after_step: Callable[[int], dict | None] | None,
              desc: str, ckpt_root: Path, world: dist.World = dist.ONE) -> dict[str, float]:
    """One optimiser step at ``step``: set the scheduled learning rate, run ``step_fn``,
    backpropagate, clip the gradient of ``params`` (the trainable weights, in the model's
    order), step, run ``after_step``. A non-finite loss or gradient norm stops training
    with :class:`NonFiniteLoss`. Returns the step's metrics: loss, grad_norm, lr, timings,
    then ``step_fn``'s own, then any that ``after_step`` returns (``time_sync``); on several
    ranks each averaged over them, the gradients averaged before clipping."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    t0 = time.perf_counter()
    loss, metrics = step_fn(step)
    mean_loss = dist.mean_metrics({"loss": loss.item()}, world, loss.device)["loss"]
    if not math.isfinite(mean_loss):  # every rank sees it (the mean) and stops
        raise NonFiniteLoss(
            f"{desc}: loss is {loss.item()} at step {step} (terms: "
            f"{ {k: v for k, v in metrics.items() if 'loss' in k} }); stopping. Lower "
            "the learning rate or raise grad_clip strictness; the last good checkpoint "
            f"is in {ckpt_root}")
    opt.zero_grad(set_to_none=True)
    t1 = time.perf_counter()
    loss.backward()
    dist.average_gradients(params, world)
    t_backward = time.perf_counter() - t1
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if dist.is_dtensor(grad_norm):  # FSDP2: the norm over every rank's shards
        grad_norm = grad_norm.full_tensor()
    if not torch.isfinite(grad_norm):
        raise NonFiniteLoss(f"{desc}: gradient norm is {grad_norm.item()} at step {step}; "
                            "stopping (see the step log for the loss terms)")
    opt.step()
    after = (after_step(step) if after_step is not None else None) or {}
    out = {"grad_norm": grad_norm.item(), "lr": opt.param_groups[0]["lr"],
           "time_step": time.perf_counter() - t0, "time_backward": t_backward,
           **metrics, **after}
    return {"loss": mean_loss, **dist.mean_metrics(out, world, loss.device)}


def work_dir(out_dir: str | Path, rule: str, params: dict, inputs: list[str | Path]) -> Path:
    """Where a run keeps checkpoints and its growing logs until it succeeds: a hidden folder
    beside the output (``.<name>.work-<key>``), keyed by the rule's params, code version and
    inputs (path, size, mtime), so only an identical rerun resumes from it."""
    from cordflow.config import code_version

    out_dir = Path(out_dir)
    stamp = [(str(p), *(_stat(Path(p)))) for p in inputs]
    key = run_key(rule, params, code_version(rule), stamp)
    work = out_dir.parent / f".{out_dir.name}.work-{key}"
    assert RESUME_DIR.match(work.name), work  # what the audits skip
    return work


def _stat(path: Path) -> tuple[int, float]:
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files), max((f.stat().st_mtime for f in files),
                                                         default=0.0)
    return path.stat().st_size, path.stat().st_mtime
