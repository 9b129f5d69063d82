"""CORD's loss terms (arXiv 2601.16547, method.md sections 2, 3 and 5), as pure functions.

Shapes: ``B`` rollouts, ``T`` completion positions (right-padded), ``V`` vocabulary.
``mask`` is ``[B, T]`` (bool or float; 1 = a real token of the rollout, 0 = padding). Every
term is zero on padding and works for rollouts of length 1 (and 0). Full-vocabulary terms
are computed in at least float32 (half and bfloat16 inputs are upcast).

Token level (CORD): ``D = reverse_kl(student, teacher)`` per position, weighted by
:func:`topk_weights` and :func:`position_weights` and summed by :func:`token_loss`.
Sequence level: :func:`group_advantages` of judge rewards, then :func:`policy_loss`.
Baselines: :func:`sft_loss`, :func:`forward_kl`. Knowledge distillation (arXiv 2509.18579,
the ``kd_*`` methods): :func:`distill_loss` (text and acoustic teachers, per-token KL) and
:func:`layer_loss` (hidden states through a layer map). For a real vocabulary (151k) use
:func:`completion_terms`, which gives the per-token terms without ever holding the
``[B, T, V]`` logits for backward.

Scale: :func:`token_loss`, the ``"sequence"`` :func:`policy_loss` and :func:`sft_loss` all
SUM over a rollout's tokens and average over rollouts, so the CORD loss
``token_loss + policy_loss`` adds its two terms 1:1 on the same scale, as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "reverse_kl", "sampled_reverse_kl", "forward_kl", "topk_count", "topk_weights",
    "position_weights", "token_loss", "group_advantages", "policy_loss", "sft_loss",
    "completion_terms", "AGGREGATIONS", "distill_loss", "hidden_distance", "layer_loss",
    "DISTANCES",
]

DISTANCES = ("cosine", "mse")

AGGREGATIONS = ("sequence", "grpo", "bnpo", "dapo", "dr_grpo")


def _float_mask(mask: Tensor) -> Tensor:
    return (mask > 0).to(torch.get_default_dtype())


def _up(x: Tensor) -> Tensor:
    """At least float32 (half and bfloat16 are upcast; float64 stays)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum_v p(v) (log p(v) - log q(v)) from log-probabilities over the last axis."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


# ----------------------------------------------------------------------------- divergences

def reverse_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Reverse KL per position over the FULL vocabulary, ``[..., V]`` -> ``[...]``::

        D_t = sum_v p_s(v) * (log p_s(v) - log p_t(v))

    ``p_s = softmax(student_logits)`` (on-policy, audio prompt), ``p_t =
    softmax(teacher_logits)`` (text prompt). The teacher is detached: the gradient flows
    through the student only.
    """
    log_s = F.log_softmax(_up(student_logits), dim=-1)
    log_t = F.log_softmax(_up(teacher_logits.detach()), dim=-1)
    return _kl(log_s, log_t)


def sampled_reverse_kl(student_logp_tok: Tensor, teacher_logp_tok: Tensor) -> Tensor:
    """The sampled-token estimate of the reverse KL at each position of a rollout::

        value    k_t = log p_s(y_t) - log p_t(y_t)                  (the k1 estimator)
        gradient     = k_t.detach() * grad log p_s(y_t)

    ``y_t`` is the rollout's own token, sampled from ``p_s``. Differentiating ``k_t``
    itself would give ``grad log p_s(y_t)``, whose expectation is zero; so, as in
    on-policy distillation, the divergence is used as a per-token (negative) advantage
    ``-(log p_t - log p_s)`` on ``log p_s(y_t)``, a REINFORCE step with no credit to later
    tokens. Averaged over ``y_t ~ p_s`` that gradient is exactly the gradient of the
    full-vocabulary :func:`reverse_kl` at that position (same prefix). The teacher is
    detached.
    """
    k = (student_logp_tok - teacher_logp_tok.detach()).detach()
    return k + k * (student_logp_tok - student_logp_tok.detach())


def forward_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Forward KL per position, ``KL(p_t || p_s)``, ``[..., V]`` -> ``[...]``::

        F_t = sum_v p_t(v) * (log p_t(v) - log p_s(v))

    The off-policy baseline (on text-prompt rollouts). Teacher detached.
    """
    log_t = F.log_softmax(_up(teacher_logits.detach()), dim=-1)
    log_s = F.log_softmax(_up(student_logits), dim=-1)
    return _kl(log_t, log_s)


# ----------------------------------------------------------------------------- weights

@torch.no_grad()
def topk_count(mask: Tensor, k: int = 20, k_fraction: float | None = None) -> int | Tensor:
    """How many positions of each rollout :func:`topk_weights` weights: ``k``, or with
    ``k_fraction`` a share of each rollout's own length ``T_i`` (a ``[B]`` tensor)::

        K_i = ceil(k_fraction * T_i)        (at least 1)

    The paper's K = 20 of up to 200 tokens is ``k_fraction = 0.1``; a fixed K = 20 on
    answers of a few tokens would give every token ``alpha``.
    """
    if k_fraction is None:
        return k
    return torch.ceil(k_fraction * _float_mask(mask).sum(-1)).long().clamp(min=1)


@torch.no_grad()
def topk_weights(D: Tensor, mask: Tensor, k: int | Tensor = 20, alpha: float = 2.0) -> Tensor:
    """Importance weights ``[B, T]``: ``alpha`` on the ``k`` largest ``D_t`` of EACH
    rollout among its real tokens, 1 on its other real tokens, 0 on padding::

        w_kl_t = alpha if t is among the k largest D_t of its rollout else 1

    ``k``: one K, or a ``[B]`` tensor of one per rollout (:func:`topk_count`). A rollout
    with at most ``k`` tokens gets ``alpha`` everywhere. Ties go to the earlier position (a
    stable sort), so the choice is deterministic. Computed on ``D.detach()``: the selection
    is a constant, it carries no gradient.
    """
    if bool((torch.as_tensor(k) < 0).any()):
        raise ValueError(f"topk_weights: k is {k}; it must be >= 0")
    if isinstance(k, Tensor):
        k = k.to(D.device).view(-1, 1)
    m = mask > 0
    d = _up(D.detach()).masked_fill(~m, float("-inf"))
    order = torch.sort(d, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(d.shape[-1], device=d.device).expand_as(order))
    w = torch.where(rank < k, torch.full_like(d, alpha), torch.ones_like(d))
    return w * m


@torch.no_grad()
def position_weights(mask: Tensor, beta: float = 2.0) -> Tensor:
    """Position weights ``[B, T]``, decreasing linearly from ``beta`` to 1 over each
    rollout's OWN length ``T_i``, 0 on padding::

        w_pos_t = beta - (beta - 1) * (t - 1) / (T_i - 1)      t = 1..T_i

    ``T_i = 1`` gives ``beta`` (no division by zero). ``t`` counts the real tokens.
    """
    m = _float_mask(mask)
    t = m.cumsum(-1)  # 1-based index among the rollout's real tokens
    length = m.sum(-1, keepdim=True)
    frac = (t - 1) / (length - 1).clamp(min=1)
    return (beta - (beta - 1) * frac) * m


def token_loss(D: Tensor, mask: Tensor, k: int | Tensor = 20, alpha: float = 2.0,
               beta: float = 2.0) -> Tensor:
    """CORD's token-level loss (scalar)::

        L_tok = (1/B) sum_i sum_t w_kl_{i,t} * w_pos_{i,t} * D_{i,t}

    a SUM over each rollout's tokens (no 1/T), averaged over the ``B`` rollouts; weights
    from :func:`topk_weights` and :func:`position_weights` (no gradient through them).
    ``alpha = beta = 1`` is the unweighted on-policy distillation ("OPD") ablation.
    """
    w = topk_weights(D, mask, k, alpha) * position_weights(mask, beta)
    return (w * _up(D)).sum(-1).mean()


# ----------------------------------------------------------------------------- sequence level

def group_advantages(rewards: Tensor, scale: str = "mean", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages, ``[G, N]`` (G prompts x N rollouts) -> ``[G, N]``::

        "mean" (the paper): A_ij = r_ij - mean_j r_ij
        "std"  (TRL's GRPO): A_ij = (r_ij - mean_j r_ij) / (std_j r_ij + eps)

    ``std`` is the UNBIASED standard deviation of the group (``torch.std``, divisor N-1), as
    in TRL's GRPOTrainer. A group of one rollout has advantage 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"group_advantages: rewards must be [G, N], got {list(rewards.shape)}")
    r = rewards.float() if not rewards.is_floating_point() else _up(rewards)
    centred = r - r.mean(-1, keepdim=True)
    if scale == "mean":
        return centred
    if scale == "std":
        if r.shape[-1] < 2:
            return torch.zeros_like(r)
        return centred / (r.std(-1, keepdim=True) + eps)
    raise ValueError(f"group_advantages: scale '{scale}' is not one of ['mean', 'std']")


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, aggregation: str = "sequence",
                max_len: int | None = None, num_tokens: float | None = None) -> Tensor:
    """The clipped policy-gradient loss (scalar) of TRL's GRPOTrainer, no KL penalty::

        ratio_t = exp(logp_t - old_logp_t)
        l_t     = -min(ratio_t * A_i, clip(ratio_t, 1 - clip_low, 1 + clip_high) * A_i)

    ``logp``/``old_logp`` ``[B, T]`` are the log-probs of the rollout tokens now and at
    sampling (``old_logp = logp.detach()`` for a single update: ratio 1, gradient
    ``-A_i * grad logp_t``); ``advantages`` ``[B]``. Aggregation of ``l`` over real tokens:

    - ``"sequence"`` (default, the paper): ``sum_{i,t} l / B``. With ratio 1 its gradient is
      that of ``L_seq = -(1/B) sum_i A_i log p(y_i | x_a)`` with ``log p(y_i | x_a) =
      sum_t logp_t``: a SUM over tokens, the scale of :func:`token_loss` (its value is then
      ``-(1/B) sum_i A_i T_i``, not ``L_seq``'s value).
    - ``"grpo"``: mean over each sequence's tokens, then mean over sequences.
    - ``"bnpo"``: ``sum l / (number of real tokens in this batch)``.
    - ``"dapo"``: ``sum l / num_tokens``, the real tokens of the whole accumulated batch
      (all micro-batches of one optimiser step); ``num_tokens=None`` = this batch's, so
      with one micro-batch it equals ``"bnpo"``.
    - ``"dr_grpo"``: ``sum l / (B * max_len)``, ``max_len`` = the generation limit.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"policy_loss: aggregation '{aggregation}' is not one of "
                         f"{list(AGGREGATIONS)}")
    m = _float_mask(mask)
    adv = _up(advantages.detach()).reshape(-1, 1)
    ratio = torch.exp(_up(logp) - _up(old_logp.detach()))
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.min(ratio * adv, clipped * adv) * m
    n_rollouts = logp.shape[0]
    if aggregation == "sequence":
        return per_token.sum() / n_rollouts
    if aggregation == "grpo":
        return (per_token.sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if aggregation == "bnpo" or (aggregation == "dapo" and num_tokens is None):
        return per_token.sum() / m.sum().clamp(min=1)
    if aggregation == "dapo":
        return per_token.sum() / max(float(num_tokens), 1.0)
    if max_len is None or max_len < 1:
        raise ValueError("policy_loss: aggregation 'dr_grpo' needs max_len (the generation "
                         "limit, model.max_new_tokens)")
    return per_token.sum() / (n_rollouts * max_len)


def sft_loss(logp_tok: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood of off-policy targets (scalar), the SFT baseline::

        L_sft = -(1/B) sum_i sum_t logp_{i,t}

    a SUM over each target's tokens, averaged over the ``B`` targets (the paper's
    ``-sum_t log p(y_t | y_<t, x_a)``, on the scale of :func:`token_loss`).
    """
    return -(_up(logp_tok) * _float_mask(mask)).sum(-1).mean()


# ----------------------------------------------------------------------------- distillation

def distill_loss(D: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """A knowledge-distillation term from per-token divergences (scalar)::

        L_kd = tau^2 * (1/B) sum_i sum_t m_{i,t} * D_{i,t}

    ``D`` ``[B, T]`` is the divergence between the student's and a teacher's next-token
    distributions at each answer token (:func:`completion_terms`' ``kl``: KL(p_T || p_S) by
    default, on logits / tau); ``tau`` the softmax temperature, tau^2 keeping the gradient's
    scale (Hinton et al.; tau = 1: the plain sum). A SUM over each answer's tokens, averaged
    over the ``B`` answers: the scale of :func:`sft_loss`. The text-teacher term (student
    under the audio prompt vs the text teacher under the text prompt) and the
    acoustic-teacher term (student vs its frozen starting weights, both under the audio
    prompt) of the ``kd_*`` methods.
    """
    return temperature ** 2 * (_up(D) * _float_mask(mask)).sum(-1).mean()


def hidden_distance(student: Tensor, teacher: Tensor, distance: str = "cosine",
                    eps: float = 1e-8) -> Tensor:
    """Distance per position between hidden states, ``[..., H]`` -> ``[...]``::

        "cosine": d = 1 - <s, t> / (max(|s|, eps) * max(|t|, eps))     in [0, 2]
        "mse":    d = (1/H) sum_h (s_h - t_h)^2

    The teacher ``t`` is detached: the gradient flows through the student only.
    """
    if distance not in DISTANCES:
        raise ValueError(f"hidden_distance: distance '{distance}' is not one of "
                         f"{list(DISTANCES)}")
    s, t = _up(student), _up(teacher.detach())
    if distance == "mse":
        return (s - t).pow(2).mean(-1)
    norms = s.norm(dim=-1).clamp(min=eps) * t.norm(dim=-1).clamp(min=eps)
    return 1 - (s * t).sum(-1) / norms


def layer_loss(student_states: Sequence[Tensor], teacher_states: Sequence[Tensor],
               pairs: Sequence[tuple[int, int]], mask: Tensor, distance: str = "cosine",
               projections: Sequence[Callable[[Tensor], Tensor] | None] | None = None
               ) -> Tensor:
    """Layer-wise distillation through a layer map (scalar)::

        L_layer = (1/B) sum_i sum_{j = (t, s) in map} sum_p m_{i,p} *
                  d(P_j(h^S_{s,i,p}), h^T_{t,i,p})

    ``student_states[s]`` ``[B, T, H_s]``: the student's hidden state after layer ``s`` (0
    = the embeddings, L = the final normed output) at the answer positions;
    ``teacher_states[t]`` ``[B, T, H_t]`` the teacher's, at the same answer positions (no
    gradient). ``pairs``: the layer map, (teacher layer, student layer) pairs;
    ``projections[j]``: ``P_j``, a map H_s -> H_t for pair j (the learned linear projection
    where the widths differ; None or no list: the identity). ``d``: :func:`hidden_distance`.
    A SUM over mapped layers and answer tokens, mean over the ``B`` answers (the scale of
    :func:`sft_loss`); an empty map gives 0 (no gradient).
    """
    m = _float_mask(mask)
    per_item = m.new_zeros(m.shape[0])
    for j, (t, s) in enumerate(pairs):
        h = student_states[s]
        project = projections[j] if projections is not None else None
        if project is not None:
            h = project(_up(h))
        per_item = per_item + (hidden_distance(h, teacher_states[t], distance) * m).sum(-1)
    return per_item.mean()


# ----------------------------------------------------------------------------- chunked terms

def _head_fn(lm_head: nn.Module | Tensor) -> Callable[[Tensor], Tensor]:
    if isinstance(lm_head, Tensor):
        return lambda h: F.linear(h, lm_head)
    if isinstance(lm_head, nn.Module):
        return lm_head
    raise TypeError(f"lm_head must be an nn.Module or a weight tensor, not {type(lm_head)}")


def _check_completion_args(student_hidden: Tensor, tokens: Tensor, mask: Tensor,
                           teacher_hidden: Tensor | None, kl: str | None, chunk_size: int,
                           temperature: float, policy_temperature: float | None) -> None:
    """The argument checks of :func:`completion_terms` (a clear error, not a shape crash)."""
    if kl not in ("reverse", "sampled", "forward", None):
        raise ValueError(f"completion_terms: kl '{kl}' is not one of "
                         "['reverse', 'sampled', 'forward', None]")
    if chunk_size < 1:
        raise ValueError(f"completion_terms: chunk_size is {chunk_size}; it must be >= 1")
    if temperature <= 0:
        raise ValueError(f"completion_terms: temperature is {temperature}; it must be > 0")
    if policy_temperature is not None and policy_temperature <= 0:
        raise ValueError(f"completion_terms: policy_temperature is {policy_temperature}; "
                         "it must be > 0 (the temperature the rollouts were sampled at)")
    B, T, _ = student_hidden.shape
    if tokens.shape != (B, T) or mask.shape != (B, T):
        raise ValueError(f"completion_terms: tokens {list(tokens.shape)} and mask "
                         f"{list(mask.shape)} must be [B, T] = {[B, T]}")
    if teacher_hidden is not None and teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(f"completion_terms: teacher_hidden {list(teacher_hidden.shape)} "
                         f"must match student_hidden {list(student_hidden.shape)} in [B, T]")


def completion_terms(
    student_hidden: Tensor,
    lm_head: nn.Module | Tensor,
    tokens: Tensor,
    mask: Tensor,
    teacher_hidden: Tensor | None = None,
    kl: str | None = "reverse",
    chunk_size: int = 256,
    temperature: float = 1.0,
    teacher_lm_head: nn.Module | Tensor | None = None,
    policy_temperature: float | None = None,
) -> dict[str, Tensor]:
    """Per-token terms of a completion from final hidden states, memory-bounded.

    ``student_hidden`` ``[B, T, H]`` is the state that predicts ``tokens[:, t]`` (already
    shifted by the caller), ``teacher_hidden`` the same for the teacher prompt (same
    tokens; ``[B, T, H_t]``: a teacher of another width brings its own head). ``lm_head``
    is the output layer (an ``nn.Module`` such as ``model.lm_head``, or its ``[V, H]``
    weight); ``teacher_lm_head`` defaults to it. Logits are
    ``head(hidden) / temperature`` for both models; each chunk's logits are upcast to
    float32 (a bfloat16 model) before its log-softmax.

    Returns ``[B, T]`` tensors, 0 on padding:

    - ``logp``: student log-prob of each token (with gradient);
    - ``entropy``: student entropy per position (no gradient);
    - with a ``policy_temperature`` tau: ``policy_logp``, the student log-prob of each token
      under ``head(hidden) / tau``, the distribution the rollouts were SAMPLED from (the
      policy gradient's log-prob, as TRL and verl compute it; with gradient);
    - with a teacher: ``teacher_logp`` (no gradient) and ``kl`` by ``kl``:
      ``"reverse"`` (:func:`reverse_kl`), ``"sampled"`` (:func:`sampled_reverse_kl`),
      ``"forward"`` (:func:`forward_kl`), or ``None`` (no ``kl``). Gradient through the
      student only.

    Only real tokens are computed: they are taken ``chunk_size`` at a time, the head is
    applied per chunk and each chunk runs under ``torch.utils.checkpoint``, so backward
    keeps the chunk inputs (``[chunk, H]``) rather than ``[chunk, V]`` logits; the logits of
    one chunk are recomputed during backward. Peak extra memory is about one chunk's
    logits (a few ``chunk_size x V`` float32 buffers).
    """
    _check_completion_args(student_hidden, tokens, mask, teacher_hidden, kl, chunk_size,
                           temperature, policy_temperature)
    B, T, _ = student_hidden.shape

    head = _head_fn(lm_head)
    teacher_head = _head_fn(teacher_lm_head if teacher_lm_head is not None else lm_head)
    with_teacher = teacher_hidden is not None
    where = (mask > 0).nonzero(as_tuple=True)
    hs = student_hidden[where]
    toks = tokens[where].long().unsqueeze(-1)
    ht = teacher_hidden[where].detach() if with_teacher else None

    def chunk_terms(h_s: Tensor, tok: Tensor, h_t: Tensor | None) -> tuple[Tensor, ...]:
        logits = _up(head(h_s))
        log_s = F.log_softmax(logits / temperature, dim=-1)
        logp = log_s.gather(-1, tok).squeeze(-1)
        entropy = -(log_s.exp() * log_s).sum(-1).detach()
        policy = ((F.log_softmax(logits / policy_temperature, dim=-1).gather(-1, tok)
                   .squeeze(-1),) if policy_temperature is not None else ())
        if h_t is None:
            return logp, entropy, *policy
        with torch.no_grad():
            log_t = F.log_softmax(_up(teacher_head(h_t)) / temperature, dim=-1)
        t_logp = log_t.gather(-1, tok).squeeze(-1)
        if kl == "reverse":
            div = _kl(log_s, log_t)
        elif kl == "forward":
            div = _kl(log_t, log_s)
        elif kl == "sampled":
            div = sampled_reverse_kl(logp, t_logp)
        else:
            div = torch.zeros_like(logp)
        return logp, entropy, *policy, t_logp, div

    pieces: list[tuple[Tensor, ...]] = []
    for start in range(0, hs.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        args = (hs[sl], toks[sl], ht[sl] if with_teacher else None)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(chunk_terms, *args, use_reentrant=False))
        else:
            pieces.append(chunk_terms(*args))

    names = (["logp", "entropy"] + (["policy_logp"] if policy_temperature is not None else [])
             + (["teacher_logp", "kl"] if with_teacher else []))
    out: dict[str, Tensor] = {}
    for j, name in enumerate(names):
        flat = (torch.cat([p[j] for p in pieces]) if pieces
                else _up(student_hidden.new_zeros(0)))
        full = flat.new_zeros((B, T))
        out[name] = full.index_put(where, flat)
    if with_teacher and kl is None:
        del out["kl"]
    return out
