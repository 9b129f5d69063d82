"""The knowledge-distillation terms of the kd methods (arXiv 2509.18579; cordflow.train.kd):
each loss against brute force (python loops over items, layers, positions), the layer map
and its projection, and the step: a kd method's loss is SFT + the lambdas times its terms,
an empty layer map is exactly SFT, and with lambda_ac = 0 the acoustic teacher never runs."""

import inspect
import math

import pytest
import tiny
import torch

from cordflow import data, models
from cordflow.config import load_config
from cordflow.train import kd
from cordflow.train.losses import (
    completion_terms,
    distill_loss,
    hidden_distance,
    layer_loss,
    token_loss,
)
from cordflow.train.methods import method_params
from cordflow.train.rollout import make_engine
from cordflow.train.step import StepContext, Teacher, make_step, step_inputs, terms_of

MAX_NEW = 4


def padded_mask(lengths, T):
    return torch.tensor([[t < n for t in range(T)] for n in lengths])


LENGTHS = [4, 1, 0, 3]  # a length-1 and an empty answer; T = 4


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def softmax_row(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def kl_loop(p_logits, q_logits):
    p, q = softmax_row(p_logits), softmax_row(q_logits)
    return sum(pv * (math.log(pv) - math.log(qv)) for pv, qv in zip(p, q, strict=True))


def distance_loop(s, t, distance):
    if distance == "mse":
        return sum((a - b) ** 2 for a, b in zip(s, t, strict=True)) / len(s)
    dot = sum(a * b for a, b in zip(s, t, strict=True))
    ns = max(math.sqrt(sum(a * a for a in s)), 1e-8)
    nt = max(math.sqrt(sum(b * b for b in t)), 1e-8)
    return 1 - dot / (ns * nt)


def matvec(W, v):
    return [sum(W[r][c] * v[c] for c in range(len(v))) for r in range(len(W))]


# ----------------------------------------------------------------------------- the losses

@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distill_loss_is_the_masked_sum_mean_over_items(float64, temperature):
    torch.manual_seed(0)
    D = torch.rand(len(LENGTHS), 4)
    mask = padded_mask(LENGTHS, 4)
    want = temperature ** 2 * sum(
        sum(D[i, t].item() for t in range(4) if mask[i, t]) for i in range(len(LENGTHS))
    ) / len(LENGTHS)
    assert distill_loss(D, mask, temperature).item() == pytest.approx(want, rel=1e-12)
    # tau = 1: the unweighted token loss (forward_kl's aggregation)
    assert distill_loss(D, mask).item() == pytest.approx(
        token_loss(D, mask, k=1, alpha=1.0, beta=1.0).item(), rel=1e-12)


@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_the_text_teacher_kl_of_another_width_is_the_loop_over_tokens(float64, kl):
    """A separate text teacher of another width: its own states and output layer, the KL on
    the shared vocabulary at temperature tau, summed over answer tokens, mean over items."""
    torch.manual_seed(1)
    B, T, Hs, Ht, V, tau = len(LENGTHS), 4, 5, 7, 9, 2.0
    hs, ht = torch.randn(B, T, Hs), torch.randn(B, T, Ht)
    Ws, Wt = torch.randn(V, Hs), torch.randn(V, Ht)
    tokens, mask = torch.randint(0, V, (B, T)), padded_mask(LENGTHS, T)
    D = completion_terms(hs, Ws, tokens, mask, ht, kl=kl, chunk_size=3, temperature=tau,
                         teacher_lm_head=Wt)["kl"]
    got = distill_loss(D, mask, tau).item()
    total = 0.0
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            s = [x / tau for x in (Ws @ hs[i, t]).tolist()]
            te = [x / tau for x in (Wt @ ht[i, t]).tolist()]
            total += kl_loop(te, s) if kl == "forward" else kl_loop(s, te)
    assert got == pytest.approx(tau ** 2 * total / B, rel=1e-9)


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_hidden_distance_by_the_formula(float64, distance):
    torch.manual_seed(2)
    s, t = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    got = hidden_distance(s, t, distance)
    for i in range(3):
        for p in range(4):
            want = distance_loop(s[i, p].tolist(), t[i, p].tolist(), distance)
            assert got[i, p].item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert hidden_distance(s, s, distance).abs().max() < 1e-12
    with pytest.raises(ValueError, match="distance"):
        hidden_distance(s, t, "l1")


def layer_loop(student, teacher, pairs, mask, distance, W=None):
    """Brute force: items x mapped layer pairs x positions, projection by a matrix product."""
    B, T = mask.shape
    total = 0.0
    for i in range(B):
        for j, (t_layer, s_layer) in enumerate(pairs):
            for p in range(T):
                if not mask[i, p]:
                    continue
                h = student[s_layer][i, p].tolist()
                if W is not None:
                    h = matvec(W[j], h)
                total += distance_loop(h, teacher[t_layer][i, p].tolist(), distance)
    return total / B


@pytest.mark.parametrize("distance", ["cosine", "mse"])
@pytest.mark.parametrize("pairs", [[(3, 2)], [(1, 1), (2, 2), (3, 2)], [(0, 0), (2, 1)]])
def test_layer_loss_through_a_map_is_the_loop(float64, distance, pairs):
    """Same widths (the model itself as teacher): the hand map as given, no projection."""
    torch.manual_seed(3)
    B, T, H = len(LENGTHS), 4, 6
    student = [torch.randn(B, T, H) for _ in range(3)]  # layers 0..2
    teacher = [torch.randn(B, T, H) for _ in range(4)]  # layers 0..3
    mask = padded_mask(LENGTHS, T)
    got = layer_loss(student, teacher, pairs, mask, distance)
    assert got.item() == pytest.approx(layer_loop(student, teacher, pairs, mask, distance),
                                       rel=1e-10)


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_layer_loss_with_projections_is_the_loop_and_trains_them(float64, distance):
    """Widths differ (a separate text teacher): a linear map per pair, student -> teacher
    width; the gradient reaches the student states and the projections, never the teacher."""
    torch.manual_seed(4)
    B, T, Hs, Ht = len(LENGTHS), 4, 5, 7
    student = [torch.randn(B, T, Hs, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(B, T, Ht, requires_grad=True) for _ in range(3)]
    pairs = [(1, 2), (2, 1)]
    lm = kd.LayerMap(pairs, Hs, Ht, distance)
    assert lm.projections is not None and len(lm.projections) == 2
    mask = padded_mask(LENGTHS, T)
    got = layer_loss(student, teacher, pairs, mask, distance, lm.projection_list())
    W = [p.weight.tolist() for p in lm.projections]
    assert got.item() == pytest.approx(layer_loop(student, teacher, pairs, mask, distance, W),
                                       rel=1e-10)
    got.backward()
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0
               for p in lm.projections)
    assert student[2].grad.abs().sum() > 0 and student[0].grad is None
    assert all(t.grad is None for t in teacher)
    assert student[2].grad[~mask].abs().sum() == 0  # padding gets nothing


def test_an_empty_layer_map_gives_zero_without_gradient(float64):
    mask = padded_mask(LENGTHS, 4)
    loss = layer_loss([torch.randn(4, 4, 3)], [torch.randn(4, 4, 3)], [], mask)
    assert loss.item() == 0.0 and not loss.requires_grad
    assert kd.LayerMap([], 3, 5).projections is None


# ----------------------------------------------------------------------------- the layer map

def test_layer_map_presets_and_hand_maps():
    assert kd.layer_pairs("top", 1, 2, 2) == [(2, 2)]
    assert kd.layer_pairs("every_k", 1, 2, 2) == [(1, 1), (2, 2)]  # the model itself: identity
    assert kd.layer_pairs("every_k", 7, 28, 28) == [(7, 7), (14, 14), (21, 21), (28, 28)]
    assert kd.layer_pairs("every_k", 2, 36, 4) == [(18, 2), (36, 4)]  # same relative depth
    assert kd.layer_pairs("top", 1, 36, 28) == [(36, 28)]
    assert kd.layer_pairs([[3, 1], [0, 0]], 1, 3, 2) == [(3, 1), (0, 0)]
    assert kd.layer_pairs([], 1, 3, 2) == []
    with pytest.raises(ValueError, match="selects no layer"):
        kd.layer_pairs("every_k", 3, 2, 2)
    with pytest.raises(ValueError, match=r"pair \[4, 1\]"):
        kd.layer_pairs([[4, 1]], 1, 3, 2)


def test_projection_only_where_widths_differ():
    assert kd.LayerMap([(1, 1)], 8, 8).projections is None
    lm = kd.LayerMap([(1, 1), (2, 2)], 8, 12)
    assert [tuple(p.weight.shape) for p in lm.projections] == [(12, 8), (12, 8)]
    assert all(p.bias is None for p in lm.projections)


def test_char_alignment_takes_the_teacher_token_holding_the_last_character():
    # "12 apples": student "1","2"," apples" (ends 1, 2, 9); teacher "12"," app","les"
    assert kd.char_alignment([1, 2, 9], [2, 6, 9]) == [0, 0, 2]
    assert kd.char_alignment([2, 6, 9], [1, 2, 9]) == [1, 2, 2]
    assert kd.char_alignment([3, 5], [3, 5]) == [0, 1]  # same tokens: the identity
    assert kd.char_alignment([4], []) == [0]


# ----------------------------------------------------------------------------- the step

@pytest.fixture(scope="module")
def loaded():
    return tiny.loaded()


def spec_of(repo, method, **kd_cfg):
    over = {"model": {"tiny": {"chunk_length": 2, "vocab_size": 320}, "max_new_tokens": MAX_NEW},
            "train": {"batch_size": 2, "kd": kd_cfg}}
    return method_params(load_config(repo / "config" / "config.yaml", over), method)["method"]


class Spy:
    """Counts every call into the acoustic teacher it wraps (our own object, not a mock)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if inspect.ismethod(attr):
            def counted(*args, **kwargs):
                self.calls.append(name)
                return attr(*args, **kwargs)
            return counted
        self.calls.append(name)
        return attr


def make_ctx(loaded, spec, seed=0, acoustic_teacher=None):
    items = tiny.items(4)
    inputs = step_inputs(loaded, items, data.Batches(len(items), 2, seed), prefetch=False)
    teacher = Teacher(spec.get("teacher", {"kind": "init"})["kind"], loaded)
    parts = kd.prepare(spec, loaded, teacher, tiny.model_cfg())
    acoustic_items = tiny.items(8).iloc[4:].reset_index(drop=True)
    acoustic = step_inputs(loaded, acoustic_items, data.Batches(4, 2, seed + 1), prefetch=False)
    return StepContext(loaded, teacher, inputs, MAX_NEW, make_engine("transformers", loaded),
                       None, text_teacher=parts.text_teacher, layer_map=parts.layer_map,
                       acoustic_teacher=acoustic_teacher or parts.acoustic_teacher,
                       acoustic_inputs=acoustic), parts


def run_step(ctx, spec, seed=0):
    torch.manual_seed(seed)
    return make_step(spec, ctx)(0)


def grads(loaded, loss, extra=()):
    params = [p for p in loaded.model.parameters() if p.requires_grad] + list(extra)
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("method, want", [
    ("kd_source", ["offpolicy", "kd_text"]),
    ("kd_layer", ["offpolicy", "kd_layer"]),
    ("kd_source_layer", ["offpolicy", "kd_text", "kd_layer"]),
])
def test_kd_methods_run_their_terms_the_acoustic_one_only_with_acoustic_items(repo, method, want):
    assert terms_of(spec_of(repo, method)) == want
    with_split = spec_of(repo, method, acoustic_split="test")
    assert terms_of(with_split) == want + (["kd_acoustic"] if "source" in method else [])
    assert terms_of(spec_of(repo, method, acoustic_split="test", lambda_ac=0.0)) == want
    with_skills = spec_of(repo, method, acoustic_skills=True)  # the base's skill items
    assert terms_of(with_skills) == want + (["kd_acoustic"] if "source" in method else [])
    assert terms_of(spec_of(repo, method, acoustic_skills=True, lambda_ac=0.0)) == want


def test_an_empty_layer_map_is_exactly_sft(repo, loaded):
    """kd_layer with the zero layer map: the sft method's loss and gradients, bit for bit
    (the same targets from the same teacher, nothing added)."""
    spec = spec_of(repo, "kd_layer", layers=[])
    ctx, parts = make_ctx(loaded, spec)
    assert parts.layer_map.pairs == [] and not parts.trainable()
    loss, metrics = run_step(ctx, spec)
    assert metrics["loss_kd_layer"] == 0.0
    sft = spec_of(repo, "sft")
    sft_ctx, _ = make_ctx(loaded, sft)
    sft_loss, sft_metrics = run_step(sft_ctx, sft)
    assert loss.item() == sft_loss.item() == metrics["loss_sft"] == sft_metrics["loss_sft"]
    for a, b in zip(grads(loaded, loss), grads(loaded, sft_loss), strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("method", ["kd_source", "kd_source_layer"])
@pytest.mark.parametrize("kd_cfg", [{"acoustic_split": "test", "lambda_ac": 0.0},
                                    {"acoustic_skills": True, "lambda_ac": 0.0},
                                    {"acoustic_split": None, "lambda_ac": 1.0}])
def test_without_lambda_ac_or_items_the_acoustic_teacher_never_runs(repo, loaded, method,
                                                                     kd_cfg):
    spec = spec_of(repo, method, **kd_cfg)
    assert "kd_acoustic" not in spec
    ctx, parts = make_ctx(loaded, spec)
    assert parts.acoustic_teacher is None  # not even built
    spy = Spy(kd.AcousticTeacher(loaded))
    ctx.acoustic_teacher = spy
    loss, metrics = run_step(ctx, spec)
    assert spy.calls == [] and "loss_kd_acoustic" not in metrics
    assert torch.isfinite(loss)


def test_with_lambda_ac_the_acoustic_teacher_runs_and_the_loss_is_the_weighted_sum(repo, loaded):
    spec = spec_of(repo, "kd_source_layer", acoustic_split="test", lambda_text=0.5,
                   lambda_layer=2.0, lambda_ac=0.25, layers="top")
    ctx, parts = make_ctx(loaded, spec)
    spy = Spy(parts.acoustic_teacher)
    ctx.acoustic_teacher = spy
    loss, metrics = run_step(ctx, spec)
    assert {"generate", "hidden"} <= set(spy.calls)
    want = (metrics["loss_sft"] + 0.5 * metrics["loss_kd_text"] + 2.0 * metrics["loss_kd_layer"]
            + 0.25 * metrics["loss_kd_acoustic"])
    assert loss.item() == pytest.approx(want, rel=1e-6)
    # the acoustic teacher is the starting weights: before any update, the student equals it
    assert metrics["loss_kd_acoustic"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["loss_kd_text"] > 0 and metrics["loss_kd_layer"] > 0
    assert {"kd_text_kl_mean", "kd_acoustic_kl_mean", "time_teacher_forward"} <= set(metrics)


def test_the_text_kl_of_the_model_itself_is_forward_kl_on_the_same_targets(repo, loaded):
    """The text teacher as the model itself under the text prompt: kd_text (forward KL, tau
    1) is the forward_kl method's loss on the same batch and targets."""
    spec = spec_of(repo, "kd_source")
    ctx, parts = make_ctx(loaded, spec)
    assert isinstance(parts.text_teacher, kd.SelfTextTeacher)
    _, metrics = run_step(ctx, spec)
    fkl = spec_of(repo, "forward_kl")
    fkl_ctx, _ = make_ctx(loaded, fkl)
    _, fkl_metrics = run_step(fkl_ctx, fkl)
    assert metrics["loss_kd_text"] == pytest.approx(fkl_metrics["loss_forward_kl"], rel=1e-5)


def test_the_model_itself_as_teacher_maps_layers_by_identity_without_projection(repo, loaded):
    for layers, pairs in (("every_k", [(1, 1), (2, 2)]), ("top", [(2, 2)])):
        _, parts = make_ctx(loaded, spec_of(repo, "kd_layer", layers=layers))
        assert parts.layer_map.pairs == pairs and parts.layer_map.projections is None


# ----------------------------------------------------------------------------- a separate text LM

@pytest.fixture(scope="module")
def text_lms(loaded, tmp_path_factory):
    """Two tiny causal LMs: one with the student's tokenizer (narrower, 3 layers), one with
    another tokenizer (trained with another vocabulary size)."""
    root = tmp_path_factory.mktemp("text_lms")
    same = tiny.text_lm(root / "same", loaded.tokenizer, hidden_size=64, layers=3)
    cfg = tiny.model_cfg()
    other_tok = models.train_tokenizer(
        models.tiny_corpus(tiny.QUESTIONS, tiny.ANSWERS, cfg["system_prompt"]), 300)
    other = tiny.text_lm(root / "other", other_tok, hidden_size=48, layers=2)
    return {"same": str(same), "other": str(other)}


def test_a_text_lm_with_the_students_vocabulary_distils_tokens_and_layers(repo, loaded,
                                                                          text_lms):
    spec = spec_of(repo, "kd_source_layer", text_teacher=text_lms["same"], layers="every_k",
                   k=1)
    assert "teacher" not in spec  # train.teacher is not read
    ctx, parts = make_ctx(loaded, spec)
    assert isinstance(parts.text_teacher, kd.TextLM) and parts.text_teacher.same_vocab
    assert parts.layer_map.pairs == [(2, 1), (3, 2)]  # 3 teacher layers over 2 student ones
    loss, metrics = run_step(ctx, spec)
    assert metrics["loss_kd_text"] > 0 and metrics["loss_kd_layer"] > 0
    g = grads(loaded, loss, parts.trainable())
    assert all(x is not None and x.abs().sum() > 0 for x in g[-2:])  # projections learn
    want = metrics["loss_sft"] + metrics["loss_kd_text"] + metrics["loss_kd_layer"]
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_a_text_lm_with_another_tokenizer_distils_on_the_text_of_its_answers(repo, loaded,
                                                                            text_lms):
    spec = spec_of(repo, "kd_source_layer", text_teacher=text_lms["other"], layers="top")
    ctx, parts = make_ctx(loaded, spec)
    teacher = parts.text_teacher
    assert not teacher.same_vocab
    batch = ctx.inputs(0)
    torch.manual_seed(0)
    targets = teacher.answers(batch, MAX_NEW, 1.0)
    # student tokens of the teacher's answer text, ending in the student's stop token
    texts = [models.decode(loaded, models.Completions(targets.ids[i:i + 1],
                                                      targets.mask[i:i + 1]))[0]
             for i in range(len(targets.ids))]
    assert torch.equal(models.encode_targets(loaded, texts).ids, targets.ids)
    states = teacher.hidden_states(batch, targets)
    assert len(states) == 3 and states[-1].shape == (*targets.ids.shape, 48)
    loss, metrics = run_step(ctx, spec)
    assert metrics["kd_text_skipped"] == 1.0 and metrics["loss_kd_text"] == 0.0
    assert metrics["loss_kd_layer"] > 0 and torch.isfinite(loss)


def test_alignment_by_characters_is_the_identity_for_the_same_tokenizer(repo, loaded,
                                                                        text_lms):
    """The other-tokenizer path run on a teacher that has the student's tokenizer: each
    student token aligns with itself, so the states equal the same-vocabulary path's."""
    spec = spec_of(repo, "kd_layer", text_teacher=text_lms["same"])
    ctx, parts = make_ctx(loaded, spec)
    teacher = parts.text_teacher
    batch = ctx.inputs(0)
    comp = models.encode_targets(loaded, ["12", "7"])
    direct = teacher.hidden_states(batch, comp)
    own, index = teacher._own_tokens(comp)
    assert torch.equal(own.ids * own.mask, comp.ids * comp.mask)
    for i, n in enumerate(comp.lengths.tolist()):
        assert index[i, :n].tolist() == list(range(n))
    teacher.same_vocab = False
    aligned = teacher.hidden_states(batch, comp)
    teacher.same_vocab = True
    m = comp.mask.bool()
    for a, b in zip(direct, aligned, strict=True):
        assert torch.allclose(a[m], b[m], atol=1e-5)


def test_a_missing_text_teacher_folder_says_what_to_stage(repo, loaded, tmp_path):
    spec = spec_of(repo, "kd_source", text_teacher=str(tmp_path / "nope"))
    with pytest.raises(SystemExit, match="train.kd.text_teacher"):
        kd.prepare(spec, loaded, Teacher("init", loaded), tiny.model_cfg())
