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
