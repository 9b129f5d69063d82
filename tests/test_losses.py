"""CORD's loss terms against brute force on small random tensors (python loops)."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cordflow.train.losses import (
    completion_terms,
    forward_kl,
    group_advantages,
    policy_loss,
    position_weights,
    reverse_kl,
    sampled_reverse_kl,
    sft_loss,
    token_loss,
    topk_count,
    topk_weights,
)


@pytest.fixture(autouse=True)
def float64():
    """Every tensor here is float64, so the python brute force compares closely."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)



def padded_mask(lengths, T):
    return torch.tensor([[t < n for t in range(T)] for n in lengths])


LENGTHS = [5, 1, 3, 0, 7]  # includes a length-1 and an empty rollout; T = 7


def softmax_row(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


def kl_loop(p_logits, q_logits):
    """sum_v p(v) (log p(v) - log q(v)), by python loops over the vocabulary."""
    p, q = softmax_row(p_logits), softmax_row(q_logits)
    return sum(pv * (math.log(pv) - math.log(qv)) for pv, qv in zip(p, q))


# ----------------------------------------------------------------------------- divergences

def test_reverse_kl_is_the_full_vocabulary_sum():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 11), torch.randn(3, 4, 11)
    got = reverse_kl(s, t)
    assert got.shape == (3, 4)
    for b in range(3):
        for i in range(4):
            want = kl_loop(s[b, i].tolist(), t[b, i].tolist())
            assert got[b, i].item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_forward_kl_is_kl_teacher_to_student():
    torch.manual_seed(1)
    t, s = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    got = forward_kl(t, s)
    for b in range(2):
        for i in range(3):
            assert got[b, i].item() == pytest.approx(kl_loop(t[b, i].tolist(), s[b, i].tolist()),
                                                     rel=1e-5, abs=1e-6)
    assert not torch.allclose(got, reverse_kl(s, t))  # the two directions differ


@pytest.mark.parametrize("fn", ["reverse", "forward"])
def test_kl_gradient_flows_through_the_student_only(fn):
    torch.manual_seed(2)
    s = torch.randn(2, 3, 7, requires_grad=True)
    t = torch.randn(2, 3, 7, requires_grad=True)
    d = reverse_kl(s, t) if fn == "reverse" else forward_kl(t, s)
    d.sum().backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_reverse_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    torch.manual_seed(3)
    s = torch.randn(4, 13)
    assert torch.allclose(reverse_kl(s, s + 5.0), torch.zeros(4), atol=1e-6)  # shift-invariant
    assert (reverse_kl(s, torch.randn(4, 13)) > 0).all()


def test_sampled_reverse_kl_value_is_the_k1_estimate():
    s = torch.tensor([[-0.5, -2.0]])
    t = torch.tensor([[-1.5, -0.25]])
    assert torch.allclose(sampled_reverse_kl(s, t), torch.tensor([[1.0, -1.75]]))


def test_sampled_reverse_kl_gradient_is_unbiased_for_the_full_kl_gradient():
    """Averaging the sampled estimator's gradient over y ~ p_s (enumerated exactly, no
    sampling) gives the gradient of the full-vocabulary reverse KL."""
    torch.manual_seed(4)
    V = 6
    s_logits = torch.randn(V, requires_grad=True)
    t_logits = torch.randn(V)
    reverse_kl(s_logits, t_logits).backward()
    full_grad = s_logits.grad.clone()

    p = F.softmax(s_logits.detach(), -1)
    expected = torch.zeros(V)
    for y in range(V):
        s_logits.grad = None
        log_s = F.log_softmax(s_logits, -1)
        log_t = F.log_softmax(t_logits, -1)
        sampled_reverse_kl(log_s[y], log_t[y]).backward()
        expected += p[y] * s_logits.grad
    assert torch.allclose(expected, full_grad, atol=1e-10)


def test_sampled_reverse_kl_teacher_is_detached():
    s = torch.tensor([-0.3], requires_grad=True)
    t = torch.tensor([-1.3], requires_grad=True)
    sampled_reverse_kl(s, t).sum().backward()
    assert t.grad is None
    assert s.grad.item() == pytest.approx(1.0)  # k = -0.3 - (-1.3) = 1, gradient k * 1


# ----------------------------------------------------------------------------- weights

def topk_loop(D, lengths, k, alpha):
    out = []
    for row, n in zip(D.tolist(), lengths):
        order = sorted(range(n), key=lambda t: (-row[t], t))  # ties: the earlier position
        top = set(order[:k])
        out.append([(alpha if t in top else 1.0) if t < n else 0.0 for t in range(len(row))])
    return torch.tensor(out)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 20])
def test_topk_weights_per_rollout_by_sorting(k):
    torch.manual_seed(5)
    T = max(LENGTHS)
    D = torch.rand(len(LENGTHS), T)
    D[~padded_mask(LENGTHS, T)] = 99.0  # large values on padding must never be selected
    got = topk_weights(D, padded_mask(LENGTHS, T), k=k, alpha=2.0)
    assert torch.equal(got, topk_loop(D, LENGTHS, k, 2.0))


def test_topk_weights_take_one_k_per_rollout():
    torch.manual_seed(6)
    T = max(LENGTHS)
    D, mask = torch.rand(len(LENGTHS), T), padded_mask(LENGTHS, T)
    ks = [2, 0, 1, 3, 4]
    want = torch.stack([topk_loop(D[i:i + 1], LENGTHS[i:i + 1], k, 2.0)[0]
                        for i, k in enumerate(ks)])
    assert torch.equal(topk_weights(D, mask, k=torch.tensor(ks), alpha=2.0), want)


def test_topk_count_is_k_or_a_share_of_each_rollout_length():
    """K_i = ceil(k_fraction * T_i), at least 1; without k_fraction, k."""
    mask = padded_mask(LENGTHS, max(LENGTHS))  # lengths 5, 1, 3, 0, 7
    assert topk_count(mask, 20, None) == 20
    assert topk_count(mask, 20, 0.1).tolist() == [1, 1, 1, 1, 1]
    assert topk_count(mask, 20, 0.5).tolist() == [3, 1, 2, 1, 4]
    assert topk_count(mask, 20, 1.0).tolist() == [5, 1, 3, 1, 7]


def test_topk_weights_ties_are_deterministic_earliest_first():
    D = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert topk_weights(D, mask, k=2, alpha=3.0).tolist() == [[3.0, 3.0, 1.0, 1.0, 1.0]]


def test_topk_weights_short_rollouts_get_alpha_everywhere():
    T = max(LENGTHS)
    w = topk_weights(torch.rand(len(LENGTHS), T), padded_mask(LENGTHS, T), k=20, alpha=2.0)
    assert torch.equal(w, 2.0 * padded_mask(LENGTHS, T).double())


def test_topk_selection_carries_no_gradient():
    D = torch.rand(2, 4, requires_grad=True)
    mask = torch.ones(2, 4)
    assert not topk_weights(D, mask, k=2).requires_grad


def position_loop(lengths, T, beta):
    out = []
    for n in lengths:
        row = []
        for t in range(1, T + 1):
            if t > n:
                row.append(0.0)
            elif n == 1:
                row.append(beta)
            else:
                row.append(beta - (beta - 1) * (t - 1) / (n - 1))
        out.append(row)
    return torch.tensor(out)


@pytest.mark.parametrize("beta", [1.0, 2.0, 2.5])
def test_position_weights_by_the_formula_per_rollout(beta):
    T = max(LENGTHS)
    got = position_weights(padded_mask(LENGTHS, T).float(), beta=beta)
    assert torch.allclose(got, position_loop(LENGTHS, T, beta))
    assert got[0, 0] == beta and got[0, LENGTHS[0] - 1] == 1.0  # first beta, last 1
    assert got[1, 0] == beta  # a length-1 rollout


# ----------------------------------------------------------------------------- token loss

def token_loss_loop(D, lengths, k, alpha, beta):
    T = D.shape[1]
    w_kl, w_pos = topk_loop(D, lengths, k, alpha), position_loop(lengths, T, beta)
    total = 0.0
    for b, n in enumerate(lengths):
        total += sum(w_kl[b, t].item() * w_pos[b, t].item() * D[b, t].item() for t in range(n))
    return total / len(lengths)


@pytest.mark.parametrize("k, alpha, beta", [(2, 2.0, 2.0), (20, 2.0, 2.0), (1, 2.5, 1.5)])
def test_token_loss_is_the_weighted_sum_over_tokens_mean_over_rollouts(k, alpha, beta):
    torch.manual_seed(6)
    T = max(LENGTHS)
    D = torch.rand(len(LENGTHS), T)
    got = token_loss(D, padded_mask(LENGTHS, T), k=k, alpha=alpha, beta=beta)
    assert got.item() == pytest.approx(token_loss_loop(D, LENGTHS, k, alpha, beta))


def test_token_loss_unweighted_is_the_plain_sum():
    torch.manual_seed(7)
    T = max(LENGTHS)
    D = torch.rand(len(LENGTHS), T)
    mask = padded_mask(LENGTHS, T)
    want = sum(D[b, :n].sum().item() for b, n in enumerate(LENGTHS)) / len(LENGTHS)
    assert token_loss(D, mask, k=3, alpha=1.0, beta=1.0).item() == pytest.approx(want)


def test_token_loss_gradient_is_the_weights_and_stops_at_the_student():
    """d L_tok / d D_t = w_kl_t * w_pos_t / B: the top-K choice adds no gradient of its own;
    through reverse_kl, the teacher gets none."""
    torch.manual_seed(8)
    B, T, V = len(LENGTHS), max(LENGTHS), 5
    mask = padded_mask(LENGTHS, T)
    s = torch.randn(B, T, V, requires_grad=True)
    t = torch.randn(B, T, V, requires_grad=True)
    D = reverse_kl(s, t)
    D.retain_grad()
    token_loss(D, mask, k=2, alpha=2.0, beta=2.0).backward()
    want = topk_loop(D.detach(), LENGTHS, 2, 2.0) * position_loop(LENGTHS, T, 2.0) / B
    assert torch.allclose(D.grad, want)
    assert t.grad is None


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_mean_is_the_paper_and_std_is_trl():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mean = group_advantages(r, "mean")
    std = group_advantages(r, "std")
    for g, row in enumerate(r.tolist()):
        mu, sd = statistics.fmean(row), statistics.stdev(row)  # stdev: unbiased (N - 1)
        for j, x in enumerate(row):
            assert mean[g, j].item() == pytest.approx(x - mu)
            assert std[g, j].item() == pytest.approx((x - mu) / (sd + 1e-4))
    assert torch.equal(std[2], torch.zeros(4))  # all equal: no signal, no division by 0


def test_group_advantages_single_rollout_groups_are_zero_and_shape_is_checked():
    assert torch.equal(group_advantages(torch.tensor([[1.0], [0.0]]), "std"), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"\[G, N\]"):
        group_advantages(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.ones(1, 2), "rank")


# ----------------------------------------------------------------------------- policy loss

def per_token_loop(logp, old, adv, lo, hi):
    ratio = math.exp(logp - old)
    return -min(ratio * adv, min(max(ratio, 1 - lo), 1 + hi) * adv)


def policy_loop(logp, old, adv, lengths, aggregation, lo=0.2, hi=0.2, max_len=None,
                num_tokens=None):
    rows = [[per_token_loop(logp[b, t].item(), old[b, t].item(), adv[b].item(), lo, hi)
             for t in range(n)] for b, n in enumerate(lengths)]
    B, total, n_tok = len(lengths), sum(sum(r) for r in rows), sum(lengths)
    if aggregation == "sequence":
        return total / B
    if aggregation == "grpo":
        return sum(sum(r) / max(len(r), 1) for r in rows) / B
    if aggregation == "bnpo":
        return total / n_tok
    if aggregation == "dapo":
        return total / (num_tokens if num_tokens is not None else n_tok)
    return total / (B * max_len)


@pytest.mark.parametrize("aggregation, kw", [
    ("sequence", {}), ("grpo", {}), ("bnpo", {}), ("dapo", {}), ("dapo", {"num_tokens": 40}),
    ("dr_grpo", {"max_len": 16}),
])
def test_policy_loss_aggregations(aggregation, kw):
    torch.manual_seed(9)
    B, T = len(LENGTHS), max(LENGTHS)
    logp = -torch.rand(B, T) * 3
    old = logp + 0.4 * torch.randn(B, T)  # ratios far from 1: the clip is exercised
    adv = torch.tensor([1.0, -0.5, 0.25, 0.75, -1.5])
    mask = padded_mask(LENGTHS, T)
    logp_pad = logp.clone()
    logp_pad[~mask] = 123.0  # garbage on padding must not count
    got = policy_loss(logp_pad, old, adv, mask, aggregation=aggregation, **kw)
    want = policy_loop(logp, old, adv, LENGTHS, aggregation, **kw)
    assert got.item() == pytest.approx(want)


def test_policy_loss_clips_asymmetrically():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5 against old = 0
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    pos = policy_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.28, "bnpo")
    assert pos.item() == pytest.approx(-(1.28 + 0.5) / 2)  # A > 0: high ratio clipped at 1.28
    neg = policy_loss(logp, old, torch.tensor([-1.0]), mask, 0.2, 0.28, "bnpo")
    assert neg.item() == pytest.approx((1.5 + 0.8) / 2)  # A < 0: low ratio clipped at 0.8


def test_sequence_policy_loss_gradient_is_the_papers_l_seq():
    """With old_logp = logp.detach() (one update), the gradient equals that of
    L_seq = -(1/N) sum_i A_i sum_t log p(y_i,t)."""
    torch.manual_seed(10)
    B, T = len(LENGTHS), max(LENGTHS)
    mask = padded_mask(LENGTHS, T)
    logits = torch.randn(B, T, 6, requires_grad=True)
    tokens = torch.randint(0, 6, (B, T))
    adv = torch.randn(B)

    def logp():
        return F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)

    lp = logp()
    policy_loss(lp, lp.detach(), adv, mask, aggregation="sequence").backward()
    got = logits.grad.clone()
    logits.grad = None
    l_seq = -sum(adv[b] * logp()[b, :n].sum() for b, n in enumerate(LENGTHS)) / B
    l_seq.backward()
    assert torch.allclose(got, logits.grad)


def test_policy_loss_needs_max_len_for_dr_grpo_and_a_known_aggregation():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="max_len"):
        policy_loss(x, x, torch.ones(1), torch.ones(1, 2), aggregation="dr_grpo")
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(x, x, torch.ones(1), torch.ones(1, 2), aggregation="token")


def test_sft_loss_is_the_summed_nll_mean_over_targets():
    torch.manual_seed(11)
    T = max(LENGTHS)
    logp = -torch.rand(len(LENGTHS), T)
    want = -sum(logp[b, :n].sum().item() for b, n in enumerate(LENGTHS)) / len(LENGTHS)
    assert sft_loss(logp, padded_mask(LENGTHS, T)).item() == pytest.approx(want)


# ----------------------------------------------------------------------------- chunked terms

def unchunked(hs, weight, tokens, mask, ht, kl, temperature):
    ls = F.log_softmax(hs @ weight.T / temperature, -1)
    lt = F.log_softmax(ht @ weight.T.detach() / temperature, -1).detach()
    logp = ls.gather(-1, tokens[..., None]).squeeze(-1)
    t_logp = lt.gather(-1, tokens[..., None]).squeeze(-1)
    if kl == "reverse":
        div = reverse_kl(ls, lt)
    elif kl == "forward":
        div = forward_kl(lt, ls)
    else:
        div = sampled_reverse_kl(logp, t_logp)
    m = mask.double()
    return {"logp": logp * m, "kl": div * m, "teacher_logp": t_logp * m,
            "entropy": -(ls.exp() * ls).sum(-1) * m}


def setup_terms(V=17, H=6, seed=12):
    torch.manual_seed(seed)
    B, T = len(LENGTHS), max(LENGTHS)
    head = nn.Linear(H, V, bias=False)
    hs = torch.randn(B, T, H, requires_grad=True)
    ht = torch.randn(B, T, H, requires_grad=True)  # must get no gradient
    tokens = torch.randint(0, V, (B, T))
    return head, hs, ht, tokens, padded_mask(LENGTHS, T)


@pytest.mark.parametrize("kl", ["reverse", "sampled", "forward"])
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_completion_terms_equal_the_unchunked_computation(kl, chunk_size):
    head, hs, ht, tokens, mask = setup_terms()
    temperature = 1.3
    got = completion_terms(hs, head, tokens, mask, ht, kl=kl, chunk_size=chunk_size,
                           temperature=temperature)
    # a loss that uses both outputs with different weights per position
    w = torch.rand(mask.shape)
    (got["kl"] * w + got["logp"] * (1 - w)).sum().backward()
    g_hidden, g_weight = hs.grad.clone(), head.weight.grad.clone()

    hs.grad, head.weight.grad = None, None
    want = unchunked(hs, head.weight, tokens, mask, ht, kl, temperature)
    (want["kl"] * w + want["logp"] * (1 - w)).sum().backward()
    for name in ("logp", "kl", "teacher_logp", "entropy"):
        assert torch.allclose(got[name], want[name], atol=1e-10), name
    assert torch.allclose(g_hidden, hs.grad, atol=1e-10)
    assert torch.allclose(g_weight, head.weight.grad, atol=1e-10)
    assert ht.grad is None  # the teacher's states get no gradient
    assert not got["entropy"].requires_grad and not got["teacher_logp"].requires_grad
    assert (got["logp"][~mask] == 0).all()


def test_completion_terms_take_a_weight_tensor_and_a_separate_teacher_head():
    head, hs, ht, tokens, mask = setup_terms()
    teacher = nn.Linear(hs.shape[-1], head.out_features, bias=False)
    got = completion_terms(hs, head.weight, tokens, mask, ht, kl="reverse", chunk_size=3,
                           teacher_lm_head=teacher)
    got["kl"].sum().backward()
    assert teacher.weight.grad is None  # the teacher's head is not trained
    ls = F.log_softmax(hs @ head.weight.T, -1)
    lt = F.log_softmax(ht @ teacher.weight.T, -1)
    assert torch.allclose(got["kl"], reverse_kl(ls, lt) * mask, atol=1e-10)


def test_completion_terms_without_teacher_give_logp_and_entropy_only():
    head, hs, _, tokens, mask = setup_terms()
    got = completion_terms(hs, head, tokens, mask, None, kl="reverse", chunk_size=2)
    assert set(got) == {"logp", "entropy"}
    ls = F.log_softmax(head(hs), -1)
    assert torch.allclose(got["logp"], ls.gather(-1, tokens[..., None]).squeeze(-1) * mask)


def saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_completion_terms_memory_does_not_scale_with_positions_times_vocabulary():
    """Backward keeps the chunk inputs (student and teacher states, ~2H numbers a token)
    and a few indices, not the [tokens, V] logits: the saved size does not change when V
    grows 8x, while the unchunked computation saves several copies of the logits."""
    sizes = {}
    H = 6
    for V in (64, 512):
        head, hs, ht, tokens, mask = setup_terms(V=V, H=H)
        n_tok = int(mask.sum())
        chunked = saved_bytes(lambda: completion_terms(hs, head, tokens, mask, ht,
                                                       kl="reverse", chunk_size=4))
        full = saved_bytes(lambda: unchunked(hs, head.weight, tokens, mask, ht, "reverse", 1.0))
        assert full > 2 * n_tok * V * 8  # the measurement sees the logits when they are kept
        assert chunked <= n_tok * (2 * H + 10) * 8
        sizes[V] = chunked
    assert sizes[64] == sizes[512]


def test_completion_terms_check_their_arguments():
    head, hs, ht, tokens, mask = setup_terms()
    with pytest.raises(ValueError, match="kl"):
        completion_terms(hs, head, tokens, mask, ht, kl="js")
    with pytest.raises(ValueError, match="chunk_size"):
        completion_terms(hs, head, tokens, mask, ht, chunk_size=0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        completion_terms(hs, head, tokens[:, :2], mask, ht)


def test_completion_terms_policy_logp_is_at_the_sampling_temperature():
    """policy_logp = log softmax(z / tau) of each token (gradient included); logp, the KL and
    the entropy stay at ``temperature``."""
    head, hs, ht, tokens, mask = setup_terms()
    got = completion_terms(hs, head, tokens, mask, ht, kl="reverse", chunk_size=3,
                           policy_temperature=1.7)
    at_1 = completion_terms(hs, head, tokens, mask, ht, kl="reverse", chunk_size=3)
    for name in at_1:
        assert torch.equal(got[name], at_1[name]), name
    want = F.log_softmax(head(hs) / 1.7, -1).gather(-1, tokens[..., None]).squeeze(-1) * mask
    assert torch.allclose(got["policy_logp"], want, atol=1e-10)
    assert got["policy_logp"].requires_grad
    with pytest.raises(ValueError, match="policy_temperature"):
        completion_terms(hs, head, tokens, mask, ht, policy_temperature=0.0)


def test_completion_terms_take_each_chunks_log_softmax_in_float32():
    """A bfloat16 model: each chunk's logits are upcast before the log-softmax (a bfloat16
    log-softmax over the vocabulary loses ~2 digits of every log-prob)."""
    head, hs, ht, tokens, mask = setup_terms(V=300)
    head, hs, ht = head.to(torch.bfloat16), hs.detach().bfloat16(), ht.detach().bfloat16()
    got = completion_terms(hs, head, tokens, mask, ht, kl="reverse", chunk_size=4)
    assert got["logp"].dtype == torch.float32 and got["kl"].dtype == torch.float32
    logits = head(hs).float()
    want = F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1) * mask
    in_bf16 = (F.log_softmax(head(hs), -1).gather(-1, tokens[..., None]).squeeze(-1).float()
               * mask)
    assert torch.allclose(got["logp"], want, atol=1e-6)
    assert not torch.allclose(got["logp"], in_bf16, atol=1e-3)
