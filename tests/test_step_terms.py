"""A training step is its method's loss terms, weighted and summed (cordflow.train.step):
each method runs exactly the terms it names, the step's loss is the weighted sum of the term
losses it reports, and a term weighted 0 changes nothing."""

import pytest
import tiny
import torch

from cordflow import data, models
from cordflow.config import load_config
from cordflow.train.judges import Verdict
from cordflow.train.methods import BASE_METHODS, method_params
from cordflow.train.rollout import make_engine
from cordflow.train.step import StepContext, Teacher, make_step, step_inputs, terms_of

MAX_NEW = 4
TERMS_OF = {  # method -> the terms it runs, in order
    "sft": ["offpolicy"], "forward_kl": ["offpolicy"], "opd": ["token"], "grpo": ["sequence"],
    "opd_grpo": ["sequence", "token"], "cord": ["sequence", "token"],
    "cord_a1.5_b2": ["sequence", "token"],
    # kd methods (tests/test_losses_kd.py runs them; kd_acoustic needs train.kd.acoustic_split)
    "kd_source": ["offpolicy", "kd_text"], "kd_layer": ["offpolicy", "kd_layer"],
    "kd_source_layer": ["offpolicy", "kd_text", "kd_layer"],
}


def spec_of(repo, method, **train):
    over = {"model": {"tiny": {"chunk_length": 2, "vocab_size": 320}, "max_new_tokens": MAX_NEW},
            "train": {"batch_size": 2, "sequence": {"n": 2}, "token": {"k": 2}}}
    for key, value in train.items():
        over["train"][key] = {**over["train"].get(key, {}), **value}
    return method_params(load_config(repo / "config" / "config.yaml", over), method)["method"]


class ParityJudge:
    """Mixed rewards in every group, whatever an untrained model samples: 1 for every other
    rollout (the rollouts of a prompt are consecutive)."""

    def __call__(self, rollouts, references, items):
        return [Verdict(int(i % 2 == 0), "parity") for i in range(len(rollouts))]


class Engine:
    """The training-model engine, counting its generate calls. It cuts every other rollout
    after 2 tokens, as if it had stopped there: the tiny model's rollouts all run to the
    limit, and with equal lengths the sequence loss's value is exactly 0."""

    def __init__(self, loaded):
        self.inner, self.calls = make_engine("transformers", loaded), 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        comp = self.inner.generate(*args, **kwargs)
        mask = comp.mask.clone()
        mask[1::2, 2:] = 0
        return models.Completions(comp.ids, mask)


@pytest.fixture(scope="module")
def loaded():
    return tiny.loaded()


def run_step(loaded, spec, seed=0):
    """Step 0 of ``spec`` on the tiny model: (loss, metrics, ctx)."""
    torch.manual_seed(seed)
    items = tiny.items(4)
    inputs = step_inputs(loaded, items, data.Batches(len(items), 2, seed), prefetch=False)
    ctx = StepContext(loaded, Teacher("init", loaded), inputs, MAX_NEW, Engine(loaded),
                      ParityJudge())
    loss, metrics = make_step(spec, ctx)(0)
    return loss, metrics, ctx


def loss_metric(spec, term):
    """The metric that reports ``term``'s loss."""
    if term == "offpolicy":
        return {"nll": "loss_sft", "forward_kl": "loss_forward_kl"}[spec["offpolicy"]["loss"]]
    return {"sequence": "loss_sequence", "token": "loss_token"}[term]


def grads(loaded, loss):
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("method", TERMS_OF)
def test_a_method_runs_exactly_the_terms_it_names(repo, method):
    assert terms_of(spec_of(repo, method)) == TERMS_OF[method]


def test_every_method_is_checked():
    assert set(BASE_METHODS) <= set(TERMS_OF)


@pytest.mark.parametrize("method", ["sft", "forward_kl", "opd", "grpo", "cord"])
def test_the_loss_is_the_weighted_sum_of_the_term_losses(repo, loaded, method):
    spec = spec_of(repo, method, weights={"token": 0.5, "sequence": 2.0})
    loss, metrics, _ = run_step(loaded, spec)
    keys = {term: loss_metric(spec, term) for term in terms_of(spec)}
    assert {k for k in metrics if k.startswith("loss_")} == set(keys.values())
    weights = spec.get("weights", {})  # off-policy methods have none: their loss counts once
    want = sum(weights.get(term, 1.0) * metrics[key] for term, key in keys.items())
    assert loss.item() == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert {"entropy", "len_mean", "time_inputs", "time_generate",
            "time_student_forward"} <= set(metrics)


def test_cord_with_token_weight_0_is_grpo(repo, loaded):
    """The sequence term's rollouts come first, so with the token term weighted 0 the step's
    loss is the sequence loss and its gradient is grpo's, exactly."""
    cord = spec_of(repo, "cord", weights={"token": 0.0})
    loss, metrics, _ = run_step(loaded, cord)
    assert metrics["loss_token"] > 0 and metrics["loss_sequence"] != 0
    assert loss.item() == metrics["loss_sequence"]
    grpo_loss, grpo_metrics, _ = run_step(loaded, spec_of(repo, "grpo"))
    assert grpo_metrics["loss_sequence"] == metrics["loss_sequence"]
    for a, b in zip(grads(loaded, loss), grads(loaded, grpo_loss), strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("rollouts, calls", [("separate", 2), ("reuse", 1)])
def test_the_token_term_reuses_the_sequence_rollouts_when_asked(repo, loaded, rollouts, calls):
    spec = spec_of(repo, "cord", token={"rollouts": rollouts})
    loss, metrics, ctx = run_step(loaded, spec)
    assert ctx.engine.calls == calls  # reuse: no rollout of its own
    assert len(ctx.verdicts) == 2 * 2  # prompts x rollouts, judged once
    assert {"loss_token", "kl_mean", "kl_topk_share", "loss_sequence"} <= set(metrics)
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- on-policy wiring
# A review found places where the real model would silently train off-policy (issue 12, §3):
# each test below fails if the step's wiring regresses to them.

class Replay:
    """An engine that samples once with the training model, then returns those rollouts to
    every call with the same prompt shape (so the test can score them itself)."""

    def __init__(self, loaded):
        self.inner, self.calls, self.seen = make_engine("transformers", loaded), 0, {}

    def generate(self, prompt, max_new, temperature, n=1, seeds=None):
        self.calls += 1
        key = (tuple(prompt["input_ids"].shape), n)
        if key not in self.seen:
            self.seen[key] = self.inner.generate(prompt, max_new, temperature, n, seeds=seeds)
        return self.seen[key]


def replay_step(loaded, spec, student_drift: float = 0.0):
    """Step 0 of ``spec`` with a :class:`Replay` engine: (loss, metrics, ctx, batch). With a
    ``student_drift``, the student's weights move away from the (init) teacher's first."""
    torch.manual_seed(0)
    items = tiny.items(4)
    inputs = step_inputs(loaded, items, data.Batches(len(items), 2, 0), prefetch=False)
    ctx = StepContext(loaded, Teacher("init", loaded), inputs, MAX_NEW, Replay(loaded),
                      ParityJudge())
    if student_drift:
        with torch.no_grad():
            for p in loaded.model.parameters():
                p.add_(torch.randn_like(p) * student_drift)
    loss, metrics = make_step(spec, ctx)(0)
    return loss, metrics, ctx, inputs(0)


def logp_at(loaded, prompt, comp, temperature):
    from cordflow.train import losses as L

    hidden = models.completion_hidden(loaded.model, prompt, comp)
    logits = models.lm_head(loaded.model)(hidden).float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, comp.ids.unsqueeze(-1)).squeeze(-1), L


def test_grpo_scores_its_rollouts_at_the_temperature_they_were_sampled_at(repo, loaded):
    """The policy gradient uses log softmax(z / tau) at sequence.temperature tau (TRL, verl):
    the step's gradient equals that of the policy loss at tau, and not the one at 1."""
    spec = spec_of(repo, "grpo", sequence={"temperature": 2.5})
    loss, _, ctx, batch = replay_step(loaded, spec)
    n, cfg = spec["sequence"]["n"], spec["sequence"]
    (comp,) = [c for (shape, k), c in ctx.engine.seen.items() if k == n]
    audio = models.repeat_batch(batch.audio, n)
    rewards = torch.tensor([v["reward"] for v in ctx.verdicts], dtype=torch.float).view(-1, n)

    def policy(temperature):
        logp, L = logp_at(loaded, audio, comp, temperature)
        adv = L.group_advantages(rewards, cfg["advantage"]).view(-1)
        return L.policy_loss(logp, logp.detach(), adv, comp.mask, cfg["clip_low"],
                             cfg["clip_high"], cfg["aggregation"], max_len=cfg["max_len"])

    got, at_tau, at_1 = (torch.cat([g.flatten() for g in grads(loaded, x) if g is not None])
                         for x in (loss, policy(2.5), policy(1.0)))
    torch.testing.assert_close(got, at_tau, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, at_1, rtol=1e-2, atol=1e-4)


def test_the_token_kl_puts_the_student_on_audio_and_the_teacher_on_text(repo):
    """L_tok = sum_t w_t KL(p(.|y_<t, x_a) || p_T(.|y_<t, x_t)), p_T the frozen teacher: with
    the prompts swapped, or the models swapped, the loss differs."""
    from cordflow.train import losses as L

    loaded = tiny.loaded()  # its student drifts from the teacher
    spec = spec_of(repo, "opd")
    _, metrics, ctx, batch = replay_step(loaded, spec, student_drift=0.1)
    (comp,) = ctx.engine.seen.values()
    tok, student, teacher = spec["token"], loaded.model, ctx.teacher.model
    assert teacher is not student

    def token_loss(s_model, s_prompt, t_model, t_prompt):
        with torch.no_grad():
            s = models.lm_head(s_model)(
                models.completion_hidden(s_model, s_prompt, comp)).float()
            t = models.lm_head(t_model)(
                models.completion_hidden(t_model, t_prompt, comp)).float()
        return L.token_loss(L.reverse_kl(s, t), comp.mask, tok["k"], tok["alpha"],
                            tok["beta"]).item()

    right = token_loss(student, batch.audio, teacher, batch.text)
    assert metrics["loss_token"] == pytest.approx(right, rel=1e-4)
    for wrong in (token_loss(student, batch.text, teacher, batch.audio),
                  token_loss(teacher, batch.audio, student, batch.text),
                  token_loss(student, batch.audio, teacher, batch.audio)):
        assert metrics["loss_token"] != pytest.approx(wrong, rel=2e-3)


def test_the_token_weights_take_k_as_a_share_of_each_rollout(repo):
    """train.token.k_fraction: the K_i = ceil(k_fraction * T_i) most divergent positions of
    each rollout get alpha (the default's answers are shorter than the paper's K = 20)."""
    from cordflow.train import losses as L

    loaded = tiny.loaded()
    spec = spec_of(repo, "cord", token={"k": 20, "k_fraction": 0.25})
    assert spec["token"]["k_fraction"] == 0.25 and spec["token"]["alpha"] > 1
    _, metrics, ctx, batch = replay_step(loaded, spec, student_drift=0.1)
    comp = ctx.engine.seen[(tuple(batch.audio["input_ids"].shape), 1)]  # the KL rollout
    with torch.no_grad():
        student, teacher = loaded.model, ctx.teacher.model
        s = models.lm_head(student)(models.completion_hidden(student, batch.audio, comp))
        t = models.lm_head(teacher)(models.completion_hidden(teacher, batch.text, comp))
    D = L.reverse_kl(s.float(), t.float())
    k = L.topk_count(comp.mask, 20, 0.25)
    assert k.tolist() == [1 if n <= 4 else 2 for n in comp.mask.sum(-1).tolist()]

    def loss(k):
        return L.token_loss(D, comp.mask, k, spec["token"]["alpha"], spec["token"]["beta"])

    assert metrics["loss_token"] == pytest.approx(loss(k).item(), rel=1e-4)
    assert metrics["loss_token"] != pytest.approx(loss(20).item(), rel=1e-3)


@pytest.mark.parametrize("reference, calls", [("teacher", 1), ("current", 2)])
def test_the_reference_answer_comes_from_the_setting(repo, loaded, reference, calls):
    """train.sequence.reference: the teacher's text answer, or the current model's through
    the rollout engine (the paper's)."""
    spec = spec_of(repo, "grpo", sequence={"reference": reference})
    _, _, ctx, batch = replay_step(loaded, spec)
    assert ctx.engine.calls == calls
    text_shape = tuple(batch.text["input_ids"].shape)
    assert ((text_shape, 1) in ctx.engine.seen) == (reference == "current")


def test_generation_ignores_a_staged_generation_config(loaded):
    """A staged generation_config.json (a repetition penalty, top-k, n-gram blocking) must
    not change rollouts: generation runs from models.generation_config alone."""
    from cordflow import infer

    prompt = infer.prompts(loaded, tiny.items(4), "audio")

    def both():
        torch.manual_seed(3)
        greedy = models.generate(loaded, prompt, 6, 0.0)
        torch.manual_seed(3)
        return greedy, models.generate(loaded, prompt, 6, 1.5, 2)

    clean = both()
    staged = models.core(loaded.model).generation_config
    saved = staged.to_dict()
    staged.update(repetition_penalty=50.0, no_repeat_ngram_size=1, top_k=1, top_p=0.1,
                  temperature=0.05, do_sample=True)
    try:
        for a, b in zip(clean, both(), strict=True):
            assert torch.equal(a.ids, b.ids)
    finally:
        staged.update(**saved)


def test_the_effective_generation_config_is_explicit_and_logged(loaded, caplog):
    config = models.generation_config(loaded, 7, 1.5, 4)
    assert (config.do_sample, config.temperature, config.top_k, config.top_p,
            config.repetition_penalty, config.max_new_tokens,
            config.num_return_sequences) == (True, 1.5, 0, 1.0, 1.0, 7, 4)
    assert models.generation_config(loaded, 7, 0.0).do_sample is False
    models._logged_configs.clear()
    with caplog.at_level("INFO", logger="cordflow.models"):
        models.generate(loaded, models.encode_text(loaded, ["What is 1 plus 2?"]), 2, 1.5)
    assert any("generation config" in r.message and '"temperature": 1.5' in r.message
               for r in caplog.records)


def test_the_teachers_head_runs_with_the_adapters_off():
    """LoRA on lm_head too: the init teacher's head is the starting head, not the student's."""
    loaded = tiny.loaded()
    loaded.model = models.add_lora(loaded.model, {"r": 2, "alpha": 4, "dropout": 0.0,
                                                  "target_modules": r".*lm_head"})
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    teacher = Teacher("init", loaded)
    h = torch.randn(3, models.lm_head(loaded.model).in_features)
    with torch.no_grad(), models.adapters_disabled(loaded.model):
        start = models.lm_head(loaded.model)(h)
    with torch.no_grad():
        student = models.lm_head(loaded.model)(h)
        assert torch.equal(teacher.lm_head(h), start)
    assert not torch.allclose(student, start)


def test_on_policy_methods_train_in_the_mode_they_sample_in(repo):
    from cordflow.train.step import samples_on_policy

    on = {m for m in TERMS_OF if samples_on_policy(spec_of(repo, m))}
    assert on == {"opd", "grpo", "opd_grpo", "cord", "cord_a1.5_b2"}


def test_keyed_sampling_depends_on_the_prompts_seed_alone(loaded):
    """Rollouts with seeds: the same question and seed give the same samples in any batch
    (so 1 rank and 2 ranks, or a resumed run, sample the same), another seed others."""
    from cordflow import infer

    items = tiny.items(4)
    seeds = [models.row_seed(7, 0, "sequence", i) for i in items["id"]]
    torch.manual_seed(0)
    whole = models.generate(loaded, infer.prompts(loaded, items, "audio"), 6, 1.5, 2,
                            seeds=seeds)
    torch.manual_seed(99)  # the global random state plays no part
    part = models.generate(loaded, infer.prompts(loaded, items.iloc[[2, 0]], "audio"), 6,
                           1.5, 2, seeds=[seeds[2], seeds[0]])

    def rows(comp, i):
        return [comp.ids[r][comp.mask[r].bool()].tolist() for r in (2 * i, 2 * i + 1)]

    assert rows(part, 0) == rows(whole, 2) and rows(part, 1) == rows(whole, 0)
    other = models.generate(loaded, infer.prompts(loaded, items, "audio"), 6, 1.5, 2,
                            seeds=[s + 1 for s in seeds])
    assert not torch.equal(other.ids, whole.ids)


def test_keyed_sampling_samples_the_softmax_at_the_temperature():
    """Gumbel-max with keyed noise: over many seeds the token frequencies are softmax(z/T)."""
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    temperature, draws = 1.5, 4000
    counts = torch.zeros(5)
    for s in range(draws):
        noised = models._KeyedGumbel(temperature, [s], 1, 0)(torch.zeros(1, 0), z.clone())
        counts[noised.argmax()] += 1
    want = torch.softmax(z / temperature, -1)[0]
    assert counts[-1] == 0  # a suppressed token is never drawn
    # within 4 standard errors of each share
    assert ((counts / draws - want).abs() <= 4 * (want * (1 - want) / draws).sqrt()).all()
