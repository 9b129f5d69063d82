"""Data-parallel training on every rank a job is given: one process per GPU (or, on a CPU
machine, per rank with gloo), launched by torchrun.

Contract: a training stage asked for R ranks (``--ranks R``, the rule's ``ranks``
resource in the workflow profile) re-executes itself under ``torchrun`` (:func:`relaunch`:
one node ``--standalone``; several Slurm nodes: ``srun`` starts one torchrun per node
with a c10d rendezvous on the first node). Each rank then:

- joins the process group (:func:`init`: nccl on GPUs, gloo on CPUs) and takes GPU
  ``LOCAL_RANK``;
- takes its contiguous slice of every global batch (:func:`shard`: the global batch of
  ``train.batch_size`` questions is the same for any R, so all N rollouts of a question
  stay on one rank, as GRPO's group advantage needs);
- computes the mean loss over its questions; after backward the gradients are averaged
  over the ranks by one all-reduce (:func:`average_gradients`: DDP's reduction, done once
  after backward since the loss runs the model's parts, not its ``forward``), so every rank
  steps to the same weights: the mean over ranks of per-rank means is the global mean;
- reports metrics averaged over the ranks (:func:`mean_metrics`); rank 0 alone writes the
  step log, the rollout verdicts (gathered from every rank), checkpoints and the output.

With the seeded, batch-independent sampling of the step (``StepState.seeds``) a question's
rollouts are the same on any rank, so R ranks train what 1 rank trains at the same global
batch, up to float reduction order (tests/test_distributed.py). Losses that normalise by
the batch's token count (``sequence.aggregation`` grpo/bnpo/dapo) are normalised per rank,
as TRL's per-device loss is; the default (``sequence``, the paper's) is exact.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cordflow.models import is_dtensor
from cordflow.procs import die_with_parent

log = logging.getLogger("cordflow.dist")


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` ranks, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


ONE = World()  # a job of one rank


def launched() -> bool:
    """Whether this process is a rank that torchrun started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current() -> World:
    """The world of this process (one rank when not launched by torchrun)."""
    if not launched():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                 int(os.environ.get("LOCAL_RANK", 0)))


def relaunch_command(ranks: int, argv: Sequence[str], env: dict | None = None) -> list[str]:
    """The command that runs ``python -m cordflow <argv>`` as ``ranks`` ranks per node:
    torchrun on this node, or, in a Slurm job of several nodes, srun with one torchrun per
    node (a c10d rendezvous on the job's first node, keyed by the job id)."""
    env = os.environ if env is None else env
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    nodes = int(env.get("SLURM_NNODES", "1") or 1)
    tail = ["-m", "cordflow", *argv]
    if nodes <= 1:
        return [*run, "--standalone", *tail]
    head = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    port = 29500 + int(env.get("SLURM_JOB_ID", "0") or 0) % 1000
    srun = shutil.which("srun") or "srun"
    return [srun, "--ntasks-per-node=1", f"--nodes={nodes}", *run, f"--nnodes={nodes}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}",
            f"--rdzv-id={env.get('SLURM_JOB_ID', 'cordflow')}", *tail]


def relaunch(ranks: int, argv: Sequence[str]) -> int:
    """Run this command again as ``ranks`` ranks per node (:func:`relaunch_command`) and
    return its exit code. torchrun stops every rank when one fails."""
    if torch.cuda.is_available() and ranks > torch.cuda.device_count():
        raise SystemExit(f"{ranks} ranks asked (the rule's 'ranks' resource) but this job "
                         f"sees {torch.cuda.device_count()} GPU(s): give the rule as many "
                         "GPUs as ranks in the workflow profile (set-resources: gpu, ranks)")
    cmd = relaunch_command(ranks, argv)
    log.info("launching %d ranks: %s", ranks, " ".join(cmd))
    # torchrun ends (stopping its ranks) if this process is killed (e.g. SIGKILL)
    return subprocess.run(cmd, check=False,
                          preexec_fn=lambda: die_with_parent(signal.SIGTERM)).returncode




def init() -> World:
    """Join the process group of a launched rank (nccl on GPUs, gloo on CPUs) and take this
    rank's GPU; one rank: nothing to join."""
    world = current()
    if world.distributed and not torch.distributed.is_initialized():
        # a rank whose torchrun was killed must not train on (and race the rerun for the
        # checkpoint folder)
        die_with_parent(signal.SIGKILL)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(world.local_rank)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        log.info("rank %d of %d (local %d) on %s", world.rank, world.size, world.local_rank,
                 f"cuda:{world.local_rank}" if cuda else "cpu (gloo)")
    return world


def close(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        torch.distributed.barrier()


def shard(indices: np.ndarray, world: World) -> np.ndarray:
    """This rank's contiguous slice of a global batch's indices."""
    if not world.distributed:
        return indices
    if len(indices) % world.size:
        raise SystemExit(f"a batch of {len(indices)} questions does not split over "
                         f"{world.size} ranks: make train.batch_size (or the stage's "
                         f"batch_size) a multiple of the rule's 'ranks' resource")
    per = len(indices) // world.size
    return indices[world.rank * per:(world.rank + 1) * per]


def average_gradients(params: Sequence[torch.nn.Parameter], world: World) -> None:
    """Every rank's gradient of ``params`` becomes the mean over the ranks (one all-reduce
    of the flattened gradients; a parameter without a gradient counts as 0)."""
    if not world.distributed:
        return
    params = [p for p in params if not is_dtensor(p)]  # FSDP2 reduces its own
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def mean_metrics(metrics: dict[str, float], world: World,
                 device: torch.device | None = None) -> dict[str, float]:
    """Each scalar metric averaged over the ranks (every rank reports the same keys)."""
    if not world.distributed:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                          device=device)
    torch.distributed.all_reduce(values)
    values /= world.size
    return dict(zip(keys, values.tolist(), strict=True))


def gather(rows: list, world: World) -> list:
    """Every rank's ``rows``, in rank order (on every rank)."""
    if not world.distributed:
        return rows
    parts: list = [None] * world.size
    torch.distributed.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def broadcast_parameters(model: torch.nn.Module, world: World) -> None:
    """Rank 0's weights on every rank (each rank built them from the same seed already;
    this makes sure)."""
    if not world.distributed:
        return
    with torch.no_grad():
        for p in model.parameters():
            torch.distributed.broadcast(p.data, 0)


# ----------------------------------------------------------------------------- FSDP2

def shards(world: World, model: torch.nn.Module) -> bool:
    """Whether ``model`` trains sharded (FSDP2) on ``world``: several ranks and language-model
    weights that train (full fine-tuning; LoRA and the audio encoder train replicated)."""
    from cordflow import models

    return world.distributed and models.lm_trainable(model)


def shard_model(model: torch.nn.Module, world: World) -> None:
    """FSDP2 (``fully_shard``) over the ranks, in place: each decoder layer and each audio
    encoder layer its own unit, then the backbone (embeddings, norms, projector) and the
    lm_head as two roots, since the step runs the backbone and the head on their own
    (``models.completion_hidden``, chunked lm_head), and generation runs both."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from cordflow import models

    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (world.size,))
    inner = models.core(model)
    for layer in [*inner.model.language_model.layers, *inner.model.audio_tower.layers]:
        fully_shard(layer, mesh=mesh)
    fully_shard(inner.model, mesh=mesh)
    fully_shard(inner.lm_head, mesh=mesh)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None,
               trainable_only: bool = True) -> tuple[dict, dict]:
    """The full (unsharded) model and optimiser state on rank 0, CPU, by name (every rank
    must call it: it gathers); empty on the other ranks."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                               ignore_frozen_params=trainable_only)
    if opt is None:
        return get_model_state_dict(model, options=options), {}
    return get_state_dict(model, opt, options=options)


def load_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, weights: dict,
                    opt_state: dict) -> None:
    """A full state (:func:`full_state`, read back from a checkpoint by every rank) into
    every rank's shards of ``model`` and ``opt``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, opt, model_state_dict=weights, optim_state_dict=opt_state,
                   options=StateDictOptions(full_state_dict=True, strict=False))
