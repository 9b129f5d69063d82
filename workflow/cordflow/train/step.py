"""One training step of a method: rollouts, teacher forward, student forward, the loss.

:class:`Teacher` is the text-conditioned teacher: the same model under the TEXT prompt,
with the weights its ``kind`` says. :func:`make_step` turns a method spec
(:mod:`cordflow.train.methods`) into ``step(step_index) -> (loss, metrics)`` for
:func:`cordflow.training.fit`. Per step, for a batch of B spoken questions:

- off-policy (sft, forward_kl): targets y ~ p(. | x_t) from the teacher (the STARTING
  weights by default, always for sft), or the gold answers; sft: L = -(1/B) sum_i sum_t log p(y_t | y_<t, x_a); forward_kl:
  L = (1/B) sum_i sum_t KL(p(.|y_<t, x_t) || p(.|y_<t, x_a)).
- token level (opd, opd_grpo, cord): one rollout y ~ p(. | x_a) per question at
  token.temperature (or the GRPO rollouts, token.rollouts = reuse); D_t = full-vocabulary
  reverse KL to the teacher on the same prefix; L_tok = losses.token_loss (top-K alpha,
  position beta, SUM over tokens, mean over rollouts).
- sequence level (grpo, opd_grpo, cord): N rollouts per question at sequence.temperature and
  one reference answer y_hat from the teacher's text prompt; r_i = judge(y_i, y_hat);
  A = r - mean (or / std); L_seq = losses.policy_loss (ratio 1, single update).
- total = weights.token * L_tok + weights.sequence * L_seq.

Metrics per step: each loss term, mean KL per token, top-K share of the KL, reward,
advantage spread, entropy, rollout length, and the time of generation, teacher forward and
student forward (the loop adds the backward time). Judge verdicts go to ``verdicts`` (one
row per rollout) for the rollout log.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from cordflow import data, infer, models
from cordflow.train import losses


class Teacher:
    """The same model under the text prompt, no gradient, with the weights of ``kind``:

    - ``base``: the starting weights, frozen: adapters disabled while it runs (free), or a
      frozen merged copy when LM weights themselves train;
    - ``live``: the current weights (no gradient through them);
    - ``ema``: an exponential moving average of the current weights (``ema_decay``).
    """

    def __init__(self, kind: str, loaded: models.Loaded, ema_decay: float = 0.99):
        self.kind, self.loaded, self.decay = kind, loaded, ema_decay
        self.copy: torch.nn.Module | None = None
        if kind == "ema" or (kind == "base" and models.lm_trainable(loaded.model)):
            self.copy = copy.deepcopy(loaded.model).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)
        elif kind not in ("base", "live"):
            raise ValueError(f"teacher kind '{kind}' is not one of base, live, ema")

    def _context(self):
        if self.kind == "base" and self.copy is None:
            return models.adapters_disabled(self.loaded.model)
        return torch.no_grad()

    @property
    def model(self) -> torch.nn.Module:
        return self.copy if self.copy is not None else self.loaded.model

    @torch.no_grad()
    def hidden(self, prompt: dict, comp: models.Completions) -> torch.Tensor:
        with self._context():
            return models.completion_hidden(self.model, prompt, comp)

    @property
    def lm_head(self) -> torch.nn.Module:
        return models.lm_head(self.model)

    @torch.no_grad()
    def generate(self, prompt: dict, max_new: int, temperature: float, n: int = 1):
        with self._context():
            return models.generate(self.loaded, prompt, max_new, temperature, n, model=self.model)

    @torch.no_grad()
    def update(self, _step: int) -> None:
        """EMA: p_ema <- d * p_ema + (1 - d) * p for every trainable weight."""
        if self.kind != "ema":
            return
        live = dict(self.loaded.model.named_parameters())
        for name, p in self.copy.named_parameters():
            if live[name].requires_grad:
                p.mul_(self.decay).add_(live[name].detach(), alpha=1 - self.decay)

    def state(self) -> dict:
        if self.kind != "ema":
            return {}
        return {"ema": {n: p.detach().cpu().clone() for n, p in self.copy.named_parameters()}}

    def load_state(self, state: dict) -> None:
        if self.kind == "ema" and "ema" in state:
            with torch.no_grad():
                for n, p in self.copy.named_parameters():
                    p.copy_(state["ema"][n])


@dataclass
class StepInputs:
    """One step's batch: its rows, the audio prompts and the text prompts."""

    rows: pd.DataFrame
    audio: dict
    text: dict


def step_inputs(loaded: models.Loaded, items: pd.DataFrame, batches: Callable[[int], np.ndarray],
                prefetch: bool | None = None) -> data.Prefetch[StepInputs]:
    """``inputs(i)``: batch ``i`` of ``items`` as prompts. With ``prefetch`` (default: when
    the model is not on the CPU) the next batch is prepared in a background thread while
    step ``i`` computes; on the CPU the step's compute already uses every core, and a
    prefetch thread only competes with it (benchmarks/cord_step.py measures both). The
    worker has its own copy of the processor (a fast tokenizer must not be used from two
    threads at once)."""
    if prefetch is None:
        prefetch = loaded.device.type != "cpu"
    worker = (dataclasses.replace(loaded, processor=copy.deepcopy(loaded.processor))
              if prefetch else loaded)

    def prepare(i: int) -> StepInputs:
        rows = items.iloc[batches(i)]
        return StepInputs(rows, infer.prompts(worker, rows, "audio"),
                          models.encode_text(worker, list(rows["question"])))

    return data.Prefetch(prepare, background=prefetch)


@dataclass
class StepContext:
    loaded: models.Loaded
    teacher: Teacher | None
    inputs: Callable[[int], StepInputs]  # see step_inputs
    max_new: int
    engine: object  # cordflow.train.rollout.RolloutEngine
    judge: object | None = None
    verdicts: list[dict] = field(default_factory=list)


class _Timer:
    """Accumulated wall time per named span of one step."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def _mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.float()
    return float((x.detach().float() * m).sum() / m.sum().clamp(min=1))


def _kl_metrics(kl: torch.Tensor, mask: torch.Tensor, k: int) -> dict[str, float]:
    """Mean KL per token and the share of each rollout's KL in its top-K positions."""
    kl = kl.detach().float() * mask.float()
    top = losses.topk_weights(kl, mask, k, alpha=2.0) > 1.0
    total = kl.sum()
    return {"kl_mean": _mean(kl, mask),
            "kl_topk_share": float((kl * top).sum() / total) if total > 0 else float("nan")}


def make_step(spec: dict, ctx: StepContext) -> Callable[[int], tuple[torch.Tensor, dict]]:
    """``step(i) -> (loss, metrics)`` for method ``spec`` (see the module docstring)."""
    loaded, teacher = ctx.loaded, ctx.teacher
    model = loaded.model
    head = models.lm_head(model)
    tok_cfg, seq_cfg, off_cfg = spec.get("token"), spec.get("sequence"), spec.get("offpolicy")
    weights = spec.get("weights", {})

    def student_terms(timer, prompt, comp, teacher_prompt, kl, chunk):
        with timer("student_forward"):
            hidden = models.completion_hidden(model, prompt, comp)
        teacher_hidden = None
        if teacher_prompt is not None:
            with timer("teacher_forward"):
                teacher_hidden = teacher.hidden(teacher_prompt, comp)
        return losses.completion_terms(
            hidden, head, comp.ids, comp.mask, teacher_hidden, kl=kl, chunk_size=chunk,
            teacher_lm_head=teacher.lm_head if teacher_hidden is not None else None)

    def step(i: int):
        timer = _Timer()
        with timer("inputs"):  # preparation inline; the wait for it when prefetched
            batch = ctx.inputs(i)
        rows, audio, text = batch.rows, batch.audio, batch.text
        metrics: dict[str, float] = {}
        loss = torch.zeros((), device=loaded.device)
        chunk = (tok_cfg or {}).get("chunk_size", 64)

        if off_cfg is not None:  # sft, forward_kl
            with timer("generate"):
                if off_cfg["targets"] == "gold":
                    comp = models.encode_targets(loaded, list(rows["answer"]))
                else:
                    comp = teacher.generate(text, ctx.max_new, off_cfg["temperature"])
            if off_cfg["loss"] == "nll":
                terms = student_terms(timer, audio, comp, None, None, chunk)
                loss = losses.sft_loss(terms["logp"], comp.mask)
                metrics["loss_sft"] = loss.item()
            else:
                terms = student_terms(timer, audio, comp, text, "forward", chunk)
                loss = losses.token_loss(terms["kl"], comp.mask, k=1, alpha=1.0, beta=1.0)
                metrics.update(loss_forward_kl=loss.item(), kl_mean=_mean(terms["kl"], comp.mask))
            metrics.update(entropy=_mean(terms["entropy"], comp.mask),
                           len_mean=float(comp.lengths.float().mean()))

        group = None
        if seq_cfg is not None:
            n = seq_cfg["n"]
            with timer("generate"):
                group = ctx.engine.generate(audio, ctx.max_new, seq_cfg["temperature"], n)
                reference = teacher.generate(text, ctx.max_new, seq_cfg["reference_temperature"])
            texts, refs = models.decode(loaded, group), models.decode(loaded, reference)
            records = rows.to_dict("records")
            item_rows = [records[j // n] for j in range(len(texts))]
            ref_rows = [refs[j // n] for j in range(len(texts))]
            verdicts = ctx.judge(texts, ref_rows, item_rows)
            rewards = torch.tensor([v.reward for v in verdicts], dtype=torch.float,
                                   device=loaded.device).view(-1, n)
            adv = losses.group_advantages(rewards, seq_cfg["advantage"]).view(-1)
            ctx.verdicts.extend(
                {"step": i + 1, "id": r["id"], "rollout": t, "reference": ref, "reward": v.reward,
                 "reason": v.reason}
                for r, t, ref, v in zip(item_rows, texts, ref_rows, verdicts))
            reuse = tok_cfg is not None and tok_cfg["rollouts"] == "reuse"
            kl_kind = ("reverse" if tok_cfg["estimator"] == "full" else "sampled") if reuse else None
            terms = student_terms(timer, models.repeat_batch(audio, n), group,
                                  models.repeat_batch(text, n) if reuse else None, kl_kind, chunk)
            l_seq = losses.policy_loss(terms["logp"], terms["logp"].detach(), adv, group.mask,
                                       seq_cfg["clip_low"], seq_cfg["clip_high"],
                                       seq_cfg["aggregation"], max_len=seq_cfg["max_len"])
            loss = loss + weights["sequence"] * l_seq
            metrics.update(loss_sequence=l_seq.item(), reward_mean=float(rewards.mean()),
                           adv_std=float(adv.std()) if adv.numel() > 1 else 0.0,
                           reward_groups_mixed=float(((rewards.min(1).values == 0)
                                                      & (rewards.max(1).values == 1)).float().mean()),
                           entropy=_mean(terms["entropy"], group.mask),
                           len_mean=float(group.lengths.float().mean()))
            if reuse:
                l_tok = losses.token_loss(terms["kl"], group.mask, tok_cfg["k"], tok_cfg["alpha"],
                                          tok_cfg["beta"])
                loss = loss + weights["token"] * l_tok
                metrics.update(loss_token=l_tok.item(), **_kl_metrics(terms["kl"], group.mask,
                                                                      tok_cfg["k"]))

        if tok_cfg is not None and tok_cfg["rollouts"] == "separate":
            with timer("generate"):
                comp = ctx.engine.generate(audio, ctx.max_new, tok_cfg["temperature"])
            kl_kind = "reverse" if tok_cfg["estimator"] == "full" else "sampled"
            terms = student_terms(timer, audio, comp, text, kl_kind, chunk)
            l_tok = losses.token_loss(terms["kl"], comp.mask, tok_cfg["k"], tok_cfg["alpha"],
                                      tok_cfg["beta"])
            loss = loss + weights["token"] * l_tok
            metrics.update(loss_token=l_tok.item(), **_kl_metrics(terms["kl"], comp.mask,
                                                                  tok_cfg["k"]))
            if group is None:
                metrics.update(entropy=_mean(terms["entropy"], comp.mask),
                               len_mean=float(comp.lengths.float().mean()))

        metrics.update({f"time_{k}": v for k, v in timer.times.items()})
        return loss, metrics

    return step

