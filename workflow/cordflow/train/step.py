"""One training step of a method: its batch, its loss terms, their weighted sum.

:func:`make_step` turns a method spec (:mod:`cordflow.train.methods`) into
``step(step_index) -> (loss, metrics)`` for :func:`cordflow.train.loop.fit`. A step is::

    batch = the step's B spoken questions: audio prompts x_a, text prompts x_t (StepInputs)
    terms = each loss term the spec has a section for, in the order of TERMS
    loss  = sum over those terms of weights[term] * L_term   (no weight: counts once)

The terms (:data:`TERMS`; each is a function ``term(spec, ctx, state) -> (loss, metrics)``
below, its formula a function of :mod:`cordflow.train.losses`):

- ``offpolicy`` (sft, forward_kl): targets y ~ p(. | x_t) from the teacher (this run's
  starting weights by default, always for sft), or the gold answers. sft:
  L = -(1/B) sum_i sum_t log p(y_t | y_<t, x_a) (``losses.sft_loss``); forward_kl:
  L = (1/B) sum_i sum_t KL(p(.|y_<t, x_t) || p(.|y_<t, x_a)) (``losses.forward_kl``,
  summed by ``losses.token_loss`` with no weighting).
- ``sequence`` (grpo, opd_grpo, cord): N rollouts per question at sequence.temperature tau
  and one reference answer y_hat to the text prompt (the teacher's, or the current
  model's: ``sequence.reference``); r_i = judge(y_i, y_hat); A = r - mean (or / std)
  (``losses.group_advantages``); L_seq = ``losses.policy_loss`` of the log-probs at tau,
  the sampling distribution (ratio 1, single update).
- ``token`` (opd, opd_grpo, cord): one rollout y ~ p(. | x_a) per question at
  token.temperature (``token.rollouts: separate``), or the sequence term's rollouts and
  its student forward (``reuse``); D_t = reverse KL to the teacher on the same prefix (the
  full vocabulary, or its sampled-token estimate); L_tok = ``losses.token_loss`` (top-K
  alpha, position beta, SUM over tokens, mean over rollouts).
- ``kd_text``, ``kd_layer``, ``kd_acoustic`` (kd_source, kd_layer, kd_source_layer; arXiv
  2509.18579, :mod:`cordflow.train.kd`): on the offpolicy term's targets (the text
  teacher's answers), the per-token KL to the text teacher (``losses.distill_loss``) and
  the hidden-state distance through the layer map (``losses.layer_loss``); on a batch of
  the acoustic items (the acoustic split's spoken questions and/or the audio-skill items
  of train clips), the per-token KL to the acoustic teacher (the starting weights) on
  its greedy answers. Weighted by ``train.kd``'s lambda_text, lambda_layer, lambda_ac.

The terms run in the order of :data:`TERMS`, which is the order in which they draw random
numbers (rollouts): keep it, or every run's results change. The sequence term leaves its
rollouts and its student forward in the step's :class:`StepState` for a token term that
reuses them.

Adding a loss term:

1. its formula: a short function in :mod:`cordflow.train.losses` whose docstring gives it;
2. its term: a function ``<name>_term(spec, ctx, state) -> (loss, metrics)`` here that makes
   its rollouts and forward passes (timed with ``state.timer``), calls the formula and
   reports ``loss_<name>`` and what else describes it; then an entry ``"<name>": ...`` in
   :data:`TERMS` (its place there is when it runs: add it at the end);
3. a method that uses it: a section ``spec["<name>"]`` (and ``spec["weights"]["<name>"]``)
   in :func:`cordflow.train.methods.resolve`.

Metrics per step: each term's loss; mean KL per token and the top-K share of the KL; reward,
advantage spread and the share of groups with mixed rewards; entropy and length of the
step's main rollouts (the sequence term's when there is one); and the time of input
preparation, generation, teacher forward and student forward (the loop adds the backward
time). Judge verdicts go to ``ctx.verdicts`` (one row per rollout) for the rollout log.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cordflow import data, infer, models
from cordflow.train import losses


class Teacher:
    """The same model under the text prompt, no gradient, with the weights of ``kind``:

    - ``init``: this run's starting weights (the checkpoint ``train.init`` names: the
      warm-up by default), frozen: adapters disabled while it runs (free), or a frozen
      merged copy when LM weights themselves train;
    - ``live``: the current weights (no gradient through them);
    - ``ema``: an exponential moving average of the current weights (``ema_decay``).

    It answers text prompts (:meth:`generate`) with transformers, or through a rollout
    engine attached by :meth:`use_engine` (``train.teacher.engine: rollout``).
    """

    KINDS = ("init", "live", "ema")

    def __init__(self, kind: str, loaded: models.Loaded, ema_decay: float = 0.99):
        if kind not in self.KINDS:
            hint = " ('base' is now called 'init')" if kind == "base" else ""
            raise ValueError(f"teacher kind '{kind}' is not one of {', '.join(self.KINDS)}{hint}")
        self.kind, self.loaded, self.decay = kind, loaded, ema_decay
        self.copy: torch.nn.Module | None = None
        self.engine = None  # answers generate() when set (use_engine)
        self._own_engine = False
        if kind == "ema" or (kind == "init" and models.lm_trainable(loaded.model)):
            self.copy = copy.deepcopy(loaded.model).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)

    def _context(self):
        if self.kind == "init" and self.copy is None:
            return models.adapters_disabled(self.loaded.model)
        return torch.no_grad()

    @property
    def model(self) -> torch.nn.Module:
        return self.copy if self.copy is not None else self.loaded.model

    @torch.no_grad()
    def hidden(self, prompt: dict, comp: models.Completions) -> torch.Tensor:
        with self._context():
            return models.completion_hidden(self.model, prompt, comp)

    @torch.no_grad()
    def hidden_states(self, prompt: dict, comp: models.Completions) -> tuple[torch.Tensor, ...]:
        """Every layer's hidden states at the completion positions (layer-wise KD)."""
        with self._context():
            return models.completion_hidden_states(self.model, prompt, comp)

    @property
    def lm_head(self) -> torch.nn.Module:
        """The teacher's output layer, applied inside its context like its forward (with
        LoRA on ``lm_head``, outside it the head would be the student's)."""
        return _InContext(models.lm_head(self.model), self._context)

    def use_engine(self, name: str, policy_engine, settings: dict | None = None,
                   seed: int = 0, log_path=None) -> None:
        """Answer through the rollout engine ``name`` (``train.rollout_engine``): for vllm,
        a second engine serving the teacher's weights (read in its context: adapters off),
        synced after each EMA update; kind ``live`` answers from ``policy_engine`` itself.
        For transformers nothing changes (generate is that engine's)."""
        if name != "vllm":
            return
        if self.kind == "live":
            self.engine = policy_engine
            return
        from cordflow.vllm_engine.engine import VLLMEngine

        self.engine = VLLMEngine(self.loaded, settings, seed=seed, log_path=log_path,
                                 model=self.model, weights_context=self._context)
        self._own_engine = True

    def close(self) -> None:
        """Stop the teacher's own engine (not the policy's)."""
        if self._own_engine and self.engine is not None:
            self.engine.close()

    @torch.no_grad()
    def generate(self, prompt: dict, max_new: int, temperature: float, n: int = 1,
                 seeds: list[int] | None = None):
        if self.engine is not None:
            return self.engine.generate(prompt, max_new, temperature, n, seeds=seeds)
        with self._context():
            return models.generate(self.loaded, prompt, max_new, temperature, n,
                                   model=self.model, seeds=seeds)

    @torch.no_grad()
    def update(self, _step: int) -> None:
        """EMA: p_ema <- d * p_ema + (1 - d) * p for every trainable weight."""
        if self.kind != "ema":
            return
        live = dict(self.loaded.model.named_parameters())
        for name, p in self.copy.named_parameters():
            if live[name].requires_grad:
                p.mul_(self.decay).add_(live[name].detach(), alpha=1 - self.decay)
        if self._own_engine:
            self.engine.sync()  # the engine serves the new average

    def state(self) -> dict:
        if self.kind != "ema":
            return {}
        return {"ema": {n: p.detach().cpu().clone() for n, p in self.copy.named_parameters()}}

    def load_state(self, state: dict) -> None:
        if self.kind == "ema" and "ema" in state:
            with torch.no_grad():
                for n, p in self.copy.named_parameters():
                    p.copy_(state["ema"][n])


class _InContext(torch.nn.Module):
    """A module run inside a context manager (the teacher's: adapters disabled)."""

    def __init__(self, module: torch.nn.Module, context: Callable):
        super().__init__()
        self.module, self.context = module, context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.module(x)


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
    """What every step of a run uses: the model, the teacher, the batches, the rollout
    engine, the judge, and the list the judge's verdicts are appended to."""

    loaded: models.Loaded
    teacher: Teacher | None
    inputs: Callable[[int], StepInputs]  # see step_inputs
    max_new: int
    engine: object  # cordflow.train.rollout.RolloutEngine
    judge: object | None = None
    verdicts: list[dict] = field(default_factory=list)
    # kd methods (cordflow.train.kd.KDParts): the text teacher whose answers are the SFT
    # targets, the layer map, the acoustic teacher and its batches (acoustic split items)
    text_teacher: object | None = None
    layer_map: object | None = None
    acoustic_teacher: object | None = None
    acoustic_inputs: Callable[[int], StepInputs] | None = None
    seed: int = 0  # the run's: with the step and the item, the key of every rollout's sampling


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


@dataclass
class StepState:
    """One step as its terms see it: its index, its batch, its timer and the lm_head chunk
    size; the sequence term fills ``rollouts`` (its N rollouts per question) and
    ``forward`` (their student forward, with the token KL when the token term reuses them);
    the offpolicy term fills ``targets``, and the kd terms share their hidden states of
    those targets in ``cache``."""

    index: int
    batch: StepInputs
    timer: _Timer
    chunk_size: int
    seed: int = 0
    rollouts: models.Completions | None = None
    forward: dict[str, torch.Tensor] | None = None
    targets: models.Completions | None = None  # the offpolicy term's, for the kd terms
    cache: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def seeds(self, stream: str, batch: StepInputs | None = None) -> list[int]:
        """One sampling seed per question of ``batch`` (the step's by default): a
        function of the run's seed, the step, the ``stream`` (which rollouts: a term's
        rollouts and its reference answers differ) and the item's id, so a question's
        rollouts are the same whichever batch, rank or resumed run samples them."""
        rows = (batch or self.batch).rows
        return [models.row_seed(self.seed, self.index, stream, str(i)) for i in rows["id"]]


# What a term returns: its loss (a scalar, with gradient) and its metrics.
TermResult = tuple[torch.Tensor, dict[str, float]]


# ----------------------------------------------------------------------------- helpers

def _mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.float()
    return float((x.detach().float() * m).sum() / m.sum().clamp(min=1))


def _kl_metrics(kl: torch.Tensor, mask: torch.Tensor,
                k: int | torch.Tensor) -> dict[str, float]:
    """Mean KL per token and the share of each rollout's KL in its top-K positions."""
    kl = kl.detach().float() * mask.float()
    top = losses.topk_weights(kl, mask, k, alpha=2.0) > 1.0
    total = kl.sum()
    return {"kl_mean": _mean(kl, mask),
            "kl_topk_share": float((kl * top).sum() / total) if total > 0 else float("nan")}


def _rollout_metrics(forward: dict[str, torch.Tensor],
                     comp: models.Completions) -> dict[str, float]:
    """Mean entropy per token and mean length of the rollouts ``comp``."""
    return {"entropy": _mean(forward["entropy"], comp.mask),
            "len_mean": float(comp.lengths.float().mean())}


def _kl_kind(token: dict) -> str:
    """The divergence of the token term: ``losses.completion_terms``'s ``kl``."""
    return "reverse" if token["estimator"] == "full" else "sampled"


def _reuses_rollouts(spec: dict) -> bool:
    """The token term takes the sequence term's rollouts (and student forward)."""
    return spec.get("token") is not None and spec["token"]["rollouts"] == "reuse"


def _forward(ctx: StepContext, state: StepState, prompt: dict, comp: models.Completions,
             teacher_prompt: dict | None = None, kl: str | None = None,
             policy_temperature: float | None = None) -> dict[str, torch.Tensor]:
    """Per-token terms of completions ``comp`` under the student's ``prompt``
    (``losses.completion_terms``): log-probs and entropy (at temperature 1), with a
    ``policy_temperature`` the log-probs at the temperature ``comp`` was sampled at, and,
    with a ``teacher_prompt``, the divergence ``kl`` from the teacher on the same tokens
    (at temperature 1). The student runs first."""
    model = ctx.loaded.model
    with state.timer("student_forward"):
        hidden = models.completion_hidden(model, prompt, comp)
    teacher_hidden = None
    if teacher_prompt is not None:
        with state.timer("teacher_forward"):
            teacher_hidden = ctx.teacher.hidden(teacher_prompt, comp)
    return losses.completion_terms(
        hidden, models.lm_head(model), comp.ids, comp.mask, teacher_hidden, kl=kl,
        chunk_size=state.chunk_size, policy_temperature=policy_temperature,
        teacher_lm_head=ctx.teacher.lm_head if teacher_hidden is not None else None)


def _judged_rewards(ctx: StepContext, state: StepState, group: models.Completions,
                    reference: models.Completions, n: int) -> torch.Tensor:
    """The judge's rewards ``[B, n]`` of ``n`` rollouts per question against each question's
    reference answer; every verdict is appended to ``ctx.verdicts``."""
    texts, refs = models.decode(ctx.loaded, group), models.decode(ctx.loaded, reference)
    records = state.batch.rows.to_dict("records")
    item_rows = [records[j // n] for j in range(len(texts))]
    ref_rows = [refs[j // n] for j in range(len(texts))]
    verdicts = ctx.judge(texts, ref_rows, item_rows)
    ctx.verdicts.extend(
        {"step": state.index + 1, "id": r["id"], "rollout": t, "reference": ref,
         "reward": v.reward, "reason": v.reason}
        for r, t, ref, v in zip(item_rows, texts, ref_rows, verdicts, strict=True))
    return torch.tensor([v.reward for v in verdicts], dtype=torch.float,
                        device=ctx.loaded.device).view(-1, n)


# ----------------------------------------------------------------------------- the terms

def offpolicy_term(spec: dict, ctx: StepContext, state: StepState) -> TermResult:
    """sft / forward_kl: the student learns the teacher's text-prompt answers (or the gold
    ones) under the audio prompt, by their likelihood (``loss: nll``) or by the forward KL
    to the teacher on them. The kd methods' SFT term: the answers of their text teacher
    (``ctx.text_teacher``), kept in ``state.targets`` for their kd terms."""
    cfg, batch = spec["offpolicy"], state.batch
    with state.timer("generate"):
        if cfg["targets"] == "gold":
            comp = models.encode_targets(ctx.loaded, list(batch.rows["answer"]))
        elif ctx.text_teacher is not None:  # a kd method: its text teacher's answers
            comp = ctx.text_teacher.answers(batch, ctx.max_new, cfg["temperature"],
                                            seeds=state.seeds("offpolicy"))
        else:
            comp = ctx.teacher.generate(batch.text, ctx.max_new, cfg["temperature"],
                                        seeds=state.seeds("offpolicy"))
    state.targets = comp
    if cfg["loss"] == "nll":
        forward = _forward(ctx, state, batch.audio, comp)
        loss = losses.sft_loss(forward["logp"], comp.mask)
        metrics = {"loss_sft": loss.item()}
    else:
        forward = _forward(ctx, state, batch.audio, comp, batch.text, "forward")
        loss = losses.token_loss(forward["kl"], comp.mask, k=1, alpha=1.0, beta=1.0)
        metrics = {"loss_forward_kl": loss.item(), "kl_mean": _mean(forward["kl"], comp.mask)}
    return loss, {**metrics, **_rollout_metrics(forward, comp)}


def sequence_term(spec: dict, ctx: StepContext, state: StepState) -> TermResult:
    """GRPO on the judge's reward: N audio rollouts per question at
    ``sequence.temperature`` tau, each judged against the answer y_hat to the text prompt,
    from the frozen teacher (``sequence.reference: teacher``) or from the current model
    (``current``, the paper's: through the rollout engine). The policy gradient's
    log-probs are those of the distribution the rollouts were sampled from, log
    softmax(z / tau) (as TRL and verl); the token KL stays at temperature 1. Leaves its
    rollouts and their forward in ``state`` (with the token KL computed in the same forward
    when the token term reuses them)."""
    cfg, batch = spec["sequence"], state.batch
    n = cfg["n"]
    with state.timer("generate"):
        group = ctx.engine.generate(batch.audio, ctx.max_new, cfg["temperature"], n,
                                    seeds=state.seeds("sequence"))
        answerer = ctx.engine if cfg["reference"] == "current" else ctx.teacher
        reference = answerer.generate(batch.text, ctx.max_new, cfg["reference_temperature"],
                                      seeds=state.seeds("reference"))
    rewards = _judged_rewards(ctx, state, group, reference, n)
    adv = losses.group_advantages(rewards, cfg["advantage"]).view(-1)
    reuse = _reuses_rollouts(spec)
    forward = _forward(ctx, state, models.repeat_batch(batch.audio, n), group,
                       models.repeat_batch(batch.text, n) if reuse else None,
                       _kl_kind(spec["token"]) if reuse else None,
                       policy_temperature=cfg["temperature"])
    state.rollouts, state.forward = group, forward
    logp = forward["policy_logp"]
    loss = losses.policy_loss(logp, logp.detach(), adv, group.mask,
                              cfg["clip_low"], cfg["clip_high"], cfg["aggregation"],
                              max_len=cfg["max_len"])
    mixed = (rewards.min(1).values == 0) & (rewards.max(1).values == 1)
    return loss, {"loss_sequence": loss.item(), "reward_mean": float(rewards.mean()),
                  "adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
                  "reward_groups_mixed": float(mixed.float().mean()),
                  **_rollout_metrics(forward, group)}


def token_term(spec: dict, ctx: StepContext, state: StepState) -> TermResult:
    """CORD's token level: the weighted reverse KL to the teacher on the student's own audio
    rollouts, one per question (``rollouts: separate``) or the sequence term's (``reuse``).
    Reports entropy and length only when it is the step's main rollouts (no sequence term)."""
    cfg, batch = spec["token"], state.batch
    if cfg["rollouts"] == "reuse":
        if state.rollouts is None:
            raise ValueError("token.rollouts 'reuse' needs a sequence term to take the "
                             "rollouts of")
        comp, forward = state.rollouts, state.forward
    else:
        with state.timer("generate"):
            comp = ctx.engine.generate(batch.audio, ctx.max_new, cfg["temperature"],
                                       seeds=state.seeds("token"))
        forward = _forward(ctx, state, batch.audio, comp, batch.text, _kl_kind(cfg))
    k = losses.topk_count(comp.mask, cfg["k"], cfg["k_fraction"])
    loss = losses.token_loss(forward["kl"], comp.mask, k, cfg["alpha"], cfg["beta"])
    metrics = {"loss_token": loss.item(), **_kl_metrics(forward["kl"], comp.mask, k)}
    if spec.get("sequence") is None:
        metrics.update(_rollout_metrics(forward, comp))
    return loss, metrics


def _kd_targets(state: StepState) -> models.Completions:
    if state.targets is None:
        raise ValueError("the kd terms distil on the offpolicy term's targets: a kd method "
                         "needs the offpolicy section (loss nll)")
    return state.targets


def _kd_student(ctx: StepContext, state: StepState) -> tuple[torch.Tensor, ...]:
    """The student's hidden states (every layer) under the audio prompt on the targets,
    computed once per step for kd_text and kd_layer."""
    if "kd_student" not in state.cache:
        with state.timer("student_forward"):
            state.cache["kd_student"] = models.completion_hidden_states(
                ctx.loaded.model, state.batch.audio, _kd_targets(state))
    return state.cache["kd_student"]


def _kd_text_teacher(ctx: StepContext, state: StepState) -> tuple[torch.Tensor, ...]:
    """The text teacher's hidden states (every layer) under the text prompt on the same
    answer positions, computed once per step."""
    if "kd_teacher" not in state.cache:
        with state.timer("teacher_forward"):
            state.cache["kd_teacher"] = ctx.text_teacher.hidden_states(state.batch,
                                                                       _kd_targets(state))
    return state.cache["kd_teacher"]


def kd_text_term(spec: dict, ctx: StepContext, state: StepState) -> TermResult:
    """Source-wise KD, the text teacher: L = ``losses.distill_loss`` of the per-token KL
    (``kd_text.kl``: forward KL(p_T || p_S), or reverse) between the student under the
    audio prompt and the text teacher under the text prompt, on the answer tokens of the
    SFT term (the text teacher's answers). A separate text teacher with another tokenizer
    shares no vocabulary with the student: the term is 0 (``kd_text_skipped``)."""
    cfg, comp = spec["kd_text"], _kd_targets(state)
    if not ctx.text_teacher.same_vocab:
        return (torch.zeros((), device=ctx.loaded.device),
                {"loss_kd_text": 0.0, "kd_text_skipped": 1.0})
    student, teacher = _kd_student(ctx, state)[-1], _kd_text_teacher(ctx, state)[-1]
    student_head, teacher_head = ctx.text_teacher.heads(models.lm_head(ctx.loaded.model))
    kl = losses.completion_terms(student, student_head, comp.ids, comp.mask, teacher,
                                 kl=cfg["kl"], chunk_size=state.chunk_size,
                                 temperature=cfg["temperature"],
                                 teacher_lm_head=teacher_head)["kl"]
    loss = losses.distill_loss(kl, comp.mask, cfg["temperature"])
    return loss, {"loss_kd_text": loss.item(), "kd_text_kl_mean": _mean(kl, comp.mask)}


def kd_layer_term(spec: dict, ctx: StepContext, state: StepState) -> TermResult:
    """Layer-wise KD: L = ``losses.layer_loss``, the distance (``kd_layer.distance``)
    between the student's hidden states under the audio prompt and the text teacher's under
    the text prompt at the answer positions, over the pairs of the layer map
    (``ctx.layer_map``; through its projections where the widths differ). An empty map: 0,
    and nothing runs."""
    cfg, comp, layer_map = spec["kd_layer"], _kd_targets(state), ctx.layer_map
    if not layer_map.pairs:
        return torch.zeros((), device=ctx.loaded.device), {"loss_kd_layer": 0.0}
    student, teacher = _kd_student(ctx, state), _kd_text_teacher(ctx, state)
    loss = losses.layer_loss(student, teacher, layer_map.pairs, comp.mask, cfg["distance"],
                             layer_map.projection_list())
    return loss, {"loss_kd_layer": loss.item()}


def kd_acoustic_term(spec: dict, ctx: StepContext, state: StepState) -> TermResult:
    """Source-wise KD, the acoustic teacher: on a batch of the acoustic items
    (``ctx.acoustic_inputs``: the acoustic split's spoken questions, x_a = the clip, and/or
    the audio-skill items of train clips, x_a = the clip + the skill question), the
    acoustic teacher AC (the starting weights, frozen) answers x_a greedily, y; then
    (``losses.distill_loss``; ``kl: forward``, the default; ``reverse`` swaps AC and S)::

        L_ac = tau^2 (1/B) sum_i sum_t m_it KL(p_AC(. | y_<t, x_a) || p_S(. | y_<t, x_a))

    the student S and the acoustic teacher both under the audio prompt, on y's tokens."""
    cfg = spec["kd_acoustic"]
    with state.timer("inputs"):
        batch = ctx.acoustic_inputs(state.index)
    with state.timer("generate"):
        comp = ctx.acoustic_teacher.generate(batch.audio, ctx.max_new, 0.0)
    model = ctx.loaded.model
    with state.timer("student_forward"):
        hidden = models.completion_hidden(model, batch.audio, comp)
    with state.timer("teacher_forward"):
        teacher_hidden = ctx.acoustic_teacher.hidden(batch.audio, comp)
    kl = losses.completion_terms(hidden, models.lm_head(model), comp.ids, comp.mask,
                                 teacher_hidden, kl=cfg["kl"], chunk_size=state.chunk_size,
                                 temperature=cfg["temperature"],
                                 teacher_lm_head=ctx.acoustic_teacher.lm_head)["kl"]
    loss = losses.distill_loss(kl, comp.mask, cfg["temperature"])
    return loss, {"loss_kd_acoustic": loss.item(),
                  "kd_acoustic_kl_mean": _mean(kl, comp.mask),
                  "kd_acoustic_len_mean": float(comp.lengths.float().mean())}


Term = Callable[[dict, StepContext, StepState], TermResult]

# name (the spec's section) -> term, in the order the terms run (see the module docstring)
TERMS: dict[str, Term] = {
    "offpolicy": offpolicy_term,
    "sequence": sequence_term,
    "token": token_term,
    "kd_text": kd_text_term,
    "kd_layer": kd_layer_term,
    "kd_acoustic": kd_acoustic_term,
}


# ----------------------------------------------------------------------------- the step

def terms_of(spec: dict) -> list[str]:
    """The terms method ``spec`` uses, in the order they run: those it has a section for."""
    return [name for name in TERMS if spec.get(name) is not None]


def samples_on_policy(spec: dict) -> bool:
    """Whether method ``spec`` scores its own rollouts (a sequence or token term): it then
    trains in eval mode, the mode its rollouts are sampled in (``loop.fit``'s
    ``train_mode``)."""
    return spec.get("sequence") is not None or spec.get("token") is not None


def make_step(spec: dict, ctx: StepContext) -> Callable[[int], tuple[torch.Tensor, dict]]:
    """``step(i) -> (loss, metrics)`` for method ``spec`` (see the module docstring)."""
    names = terms_of(spec)
    weights = spec.get("weights", {})
    chunk_size = (spec.get("token") or {}).get("chunk_size", 64)

    def step(i: int):
        timer = _Timer()
        with timer("inputs"):  # preparation inline; the wait for it when prefetched
            batch = ctx.inputs(i)
        state = StepState(i, batch, timer, chunk_size, ctx.seed)
        loss = torch.zeros((), device=ctx.loaded.device)
        metrics: dict[str, float] = {}
        for name in names:
            term_loss, term_metrics = TERMS[name](spec, ctx, state)
            loss = loss + weights.get(name, 1.0) * term_loss
            metrics.update(term_metrics)
        metrics.update({f"time_{k}": v for k, v in timer.times.items()})
        return loss, metrics

    return step
