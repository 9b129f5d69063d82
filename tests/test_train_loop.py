"""The shared training loop: schedule, NaN guard, atomic checkpoints and exact resume."""

import json

import pytest
import torch

from cordflow.io import keep_jsonl_rows
from cordflow.train.loop import Checkpoints, LoopConfig, NonFiniteLoss, StepLog, fit, lr_at


class Crash(Exception):
    pass


def _toy(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _step_fn(model, crash_at=None):
    """A step that draws random data from the global torch RNG (like sampled rollouts)."""
    def step(i):
        if i == crash_at:
            raise Crash(f"killed at step {i}")
        x = torch.randn(16, 4)
        y = x.sum(-1, keepdim=True)
        return torch.nn.functional.mse_loss(model(x), y), {"seen": float(i)}
    return step


def _run(tmp_path, name, crash_at=None, steps=7):
    cfg = LoopConfig(steps=steps, lr=0.05, warmup_steps=2, ckpt_every=2)
    model = _toy()
    torch.manual_seed(123)
    log = StepLog(tmp_path / name / "log.jsonl", None, "toy")
    fit(model, cfg, _step_fn(model, crash_at), Checkpoints(tmp_path / name / "ckpt"), log, name)
    return model, log


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = LoopConfig(steps=10, lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lrs[-1] == pytest.approx(0.1)
    assert lr_at(5, LoopConfig(steps=10, lr=1.0, schedule="constant")) == 1.0


def test_a_killed_run_resumed_matches_an_uninterrupted_one(tmp_path):
    straight, straight_log = _run(tmp_path, "straight")
    with pytest.raises(Crash):
        _run(tmp_path, "resumed", crash_at=5)
    ckpts = sorted(p.name for p in (tmp_path / "resumed" / "ckpt").iterdir())
    assert ckpts == ["step-2", "step-4"]  # atomic, newest two kept, no temp leftovers
    resumed, resumed_log = _run(tmp_path, "resumed")
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    rows = [json.loads(x) for x in resumed_log.path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8))  # no duplicated steps after resume
    straight_rows = [json.loads(x) for x in straight_log.path.read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]


def test_a_changed_parameter_set_refuses_to_resume(tmp_path):
    with pytest.raises(Crash):
        _run(tmp_path, "r", crash_at=3)
    model = torch.nn.Linear(4, 1)
    with pytest.raises(SystemExit, match="does not match the trainable parameters"):
        fit(model, LoopConfig(steps=3, lr=0.1), _step_fn(model),
            Checkpoints(tmp_path / "r" / "ckpt"),
            StepLog(tmp_path / "r" / "log.jsonl", None, "toy"), "r")


def test_a_non_finite_loss_stops_with_a_clear_message(tmp_path):
    model = _toy()

    def step(i):
        loss = model(torch.randn(2, 4)).sum()
        return loss * float("nan") if i == 2 else loss, {"loss_token": 1.0}

    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 2.*loss_token"):
        fit(model, LoopConfig(steps=5, lr=0.1), step, Checkpoints(tmp_path / "c"),
            StepLog(tmp_path / "l.jsonl", None, "toy"), "toy")


def test_an_eval_bar_stops_early_and_is_logged(tmp_path):
    model = _toy()
    calls = []

    def evaluate(step):
        calls.append(step)
        return {"acc": step / 10}, step >= 4

    res = fit(model, LoopConfig(steps=10, lr=0.01), _step_fn(model), Checkpoints(tmp_path / "c"),
              StepLog(tmp_path / "l.jsonl", None, "toy"), "toy", eval_fn=evaluate, eval_every=2)
    assert calls == [2, 4] and res.stopped_early and res.steps == 4
    last = json.loads((tmp_path / "l.jsonl").read_text().splitlines()[-1])
    assert last["acc"] == 0.4 and "time_backward" in last and "grad_norm" in last


def test_resume_drops_only_this_phases_rows_after_the_checkpoint(tmp_path):
    text = StepLog(tmp_path / "log.jsonl", None, "text")
    for step in range(1, 4):
        text.write(step, {"loss": 1.0})
    audio = StepLog(tmp_path / "log.jsonl", None, "audio")
    for step in range(1, 5):
        audio.write(step, {"loss": 2.0})
    audio.truncate_after(2)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [
        ("text", 1), ("text", 2), ("text", 3), ("audio", 1), ("audio", 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]  # no temp leftovers
    StepLog(tmp_path / "none.jsonl", None, "text").truncate_after(1)
    assert not (tmp_path / "none.jsonl").exists()


def test_keep_jsonl_rows_keeps_the_accepted_lines_in_order(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    lines = [json.dumps({"step": s, "reward": r}, sort_keys=True) for s, r in
             [(1, 0), (1, 1), (2, 1), (3, 0)]]
    path.write_text("".join(x + "\n" for x in lines))
    keep_jsonl_rows(path, lambda row: row["step"] <= 2)
    assert path.read_text() == "".join(x + "\n" for x in lines[:3])
    keep_jsonl_rows(path, lambda row: False)
    assert path.read_text() == ""


@pytest.mark.parametrize("train_mode", [True, False])
def test_fit_trains_in_the_mode_it_is_asked(tmp_path, train_mode):
    """An on-policy method trains in eval mode (its rollouts are sampled in eval mode)."""
    model = _toy()
    modes = []

    def step(i):
        modes.append(model.training)
        return _step_fn(model)(i)

    fit(model, LoopConfig(steps=2, lr=0.01), step, Checkpoints(tmp_path / "ckpt"),
        StepLog(tmp_path / "log.jsonl", None, "toy"), "toy", train_mode=train_mode)
    assert modes == [train_mode, train_mode]


def test_checkpoints_carry_every_gpus_random_state(tmp_path, monkeypatch):
    """A resumed GPU run samples the rollouts an uninterrupted one would: the checkpoint
    holds what torch.cuda.get_rng_state_all returns and gives it back to set_rng_state_all
    (the CUDA calls are stood in for: this machine has no GPU)."""
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    model = _toy()
    named = dict(model.named_parameters())
    opt = torch.optim.AdamW(model.parameters())
    ckpts = Checkpoints(tmp_path / "ckpt")
    path = ckpts.save(3, named, opt, {})
    ckpts.load(path, named, opt)
    assert [t.tolist() for t in restored] == [[1, 2, 3], [4]]
