"""Every training method runs for real on spoken items (tiny model, real TTS clips), logs
what the issue asks per step, and a killed run resumes to the same weights."""

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file

from cordflow import models
from cordflow.config import load_config
from cordflow.train.methods import BASE_METHODS, method_params
from cordflow.train.run import run_spec

STEPS = 2


@pytest.fixture(scope="module")
def init_dir(spoken, tmp_path_factory):
    from cordflow.source import read_qa

    qa = read_qa(spoken / "results/qa/train.parquet")
    cfg = tiny.model_cfg(chunk_length=4)
    model, processor = models.build_tiny(
        cfg["tiny"], models.tiny_corpus(list(qa["question"]), list(qa["answer"]),
                                        cfg["system_prompt"]), 0)
    out = tmp_path_factory.mktemp("init") / "warmup"
    models.save(model, processor, out)
    return out


def params_for(repo, method, base=None, **train):
    """The default config's method params, small; LoRA + encoder train (the schema's
    default and the 7B preset's) unless ``trainable`` says otherwise."""
    over = {"model": {"tiny": {"chunk_length": 4, "vocab_size": 320}, "max_new_tokens": 4},
            "base": base or {},
            "train": {"steps": STEPS, "batch_size": 2, "ckpt_every": 2,
                      "sequence": {"n": 2}, "token": {"k": 2},
                      "trainable": ["lora", "audio"], **train}}
    return method_params(load_config(repo / "config" / "config.yaml", over), method)


def train(params, init_dir, spoken, out):
    """Clip paths in the manifest are relative to the workflow's working directory."""
    import os

    os.chdir(spoken)
    run_spec(params, params["method"], "train", init_dir, spoken / "results/qa/train.parquet",
             spoken / "results/audio/manifest.parquet", out)


@pytest.fixture(autouse=True)
def _restore_cwd(monkeypatch):
    monkeypatch.chdir(".")  # undone after each test


@pytest.mark.parametrize("method", BASE_METHODS)
def test_every_method_trains_logs_and_saves(repo, spoken, init_dir, tmp_path, method):
    params = params_for(repo, method)
    out = tmp_path / method
    train(params, init_dir, spoken, out)
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    assert (out / "adapter" / "adapter_config.json").exists()  # LoRA saved on its own
    assert json.loads((out / "method.json").read_text()) == params["method"]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    want = {"loss", "grad_norm", "lr", "entropy", "len_mean", "time_generate",
            "time_student_forward", "time_backward"}
    if method in ("opd", "opd_grpo", "cord"):
        want |= {"loss_token", "kl_mean", "kl_topk_share", "time_teacher_forward"}
    if method.startswith("kd_"):
        want |= {"loss_sft", "time_teacher_forward"}
        want |= {"loss_kd_text", "kd_text_kl_mean"} if "source" in method else set()
        want |= {"loss_kd_layer"} if "layer" in method else set()
        assert (out / "kd_layers.json").exists() == ("layer" in method)
    if method in ("grpo", "opd_grpo", "cord"):
        want |= {"loss_sequence", "reward_mean", "adv_std"}
        verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
        assert len(verdicts) == STEPS * 2 * 2  # steps x prompts x rollouts
        assert {v["reward"] for v in verdicts} <= {0, 1} and all(v["reason"] for v in verdicts)
    else:
        assert not (out / "verdicts.jsonl").exists()
    for r in rows:
        assert want <= set(r), want - set(r)
        assert all(v == v for k, v in r.items() if k != "phase")  # no NaN
    assert (out / "tb").is_dir()
    loaded = models.load(out, params["model"])  # evaluation loads the merged model
    assert not hasattr(loaded.model, "peft_config")


def test_the_defaults_audio_only_training_keeps_every_text_answer(repo, spoken, init_dir,
                                                                  tmp_path):
    """The tiny default trains the speech path only (train.trainable: [audio]): cord
    changes the audio encoder and projector, saves no adapter, and leaves every language
    model weight, so every text answer (and the in-model teacher) is the init's."""
    assert load_config(repo / "config" / "config.yaml")["train"]["trainable"] == ["audio"]
    params = params_for(repo, "cord", trainable=["audio"], lr=0.05)
    out = tmp_path / "cord"
    train(params, init_dir, spoken, out)
    assert not (out / "adapter").exists()
    before, after = (load_file(d / "model.safetensors") for d in (init_dir, out))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("audio_tower.", "multi_modal_projector."))
                           for k in changed), sorted(changed)[:5]


def test_kd_with_acoustic_items_and_a_separate_text_teacher(repo, spoken, init_dir, tmp_path,
                                                          monkeypatch):
    """kd_source_layer with the test split as the acoustic items and a separate, narrower
    text LM: every term runs, the layer map's projections are saved beside the model; with
    lambda_ac = 0 the acoustic teacher is never even built."""
    from safetensors.torch import load_file as load

    from cordflow.train import kd

    loaded = models.load(init_dir, params_for(repo, "sft")["model"])
    teacher_dir = tiny.text_lm(tmp_path / "text_lm", loaded.tokenizer, hidden_size=32, layers=3)
    kd_cfg = {"acoustic_split": "test", "text_teacher": str(teacher_dir), "layers": "top"}
    params = params_for(repo, "kd_source_layer", kd=kd_cfg)
    out = tmp_path / "kd"
    train(params, init_dir, spoken, out)
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    for r in rows:
        assert {"loss_sft", "loss_kd_text", "loss_kd_layer", "loss_kd_acoustic",
                "kd_acoustic_kl_mean"} <= set(r)
        assert all(v == v for k, v in r.items() if k != "phase")
    assert json.loads((out / "kd_layers.json").read_text())["pairs"] == [[3, 2]]
    proj = load(str(out / "kd_projection.safetensors"))
    assert [tuple(v.shape) for v in proj.values()] == [(32, 128)]
    models.load(out, params["model"])  # still a plain Qwen2-Audio

    built = []

    class Counted(kd.AcousticTeacher):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(kd, "AcousticTeacher", Counted)
    no_ac = params_for(repo, "kd_source", kd={**kd_cfg, "lambda_ac": 0.0})
    train(no_ac, init_dir, spoken, tmp_path / "no_ac")
    assert built == []
    rows = [json.loads(x) for x in (tmp_path / "no_ac" / "train_log.jsonl").read_text()
            .splitlines()]
    assert all("loss_kd_acoustic" not in r for r in rows)


def test_kd_acoustic_teacher_on_the_bases_skill_items(repo, spoken, init_dir, tmp_path,
                                                      monkeypatch):
    """train.kd.acoustic_skills: kd_source's acoustic teacher answers the audio-skill items
    the base learned (base.skills: the skill question asked WITH a train clip, never a test
    one) and the student is kept close to its answers there; with lambda_ac = 0 it is never
    built and no skill item is read."""
    import hashlib

    from cordflow import skills
    from cordflow.train import kd
    from cordflow.tts.schema import read_manifest

    seen = []  # (prompt texts, prompt clips) of every acoustic-teacher generate call

    class Recorded(kd.AcousticTeacher):
        def generate(self, prompt, *args, **kwargs):
            seen.append((self.loaded.tokenizer.batch_decode(prompt["input_ids"],
                                                            skip_special_tokens=True),
                         list(prompt.clips)))
            return super().generate(prompt, *args, **kwargs)

    monkeypatch.setattr(kd, "AcousticTeacher", Recorded)
    base = {"skills": {"items": 6, "skills": ["rate"]}}
    params = params_for(repo, "kd_source", base=base, kd={"acoustic_skills": True})
    assert {"skills": ["rate"], "items": 6}.items() <= params["method"]["kd_acoustic"].items()
    train(params, init_dir, spoken, tmp_path / "kd")
    rows = [json.loads(x) for x in (tmp_path / "kd" / "train_log.jsonl").read_text()
            .splitlines()]
    assert len(rows) == STEPS and all(
        {"loss_kd_acoustic", "kd_acoustic_kl_mean"} <= set(r) for r in rows)
    assert all(r["loss_kd_acoustic"] == r["loss_kd_acoustic"] for r in rows)  # no NaN

    manifest = read_manifest(spoken / "results/audio/manifest.parquet")

    def digest(clip):
        return hashlib.sha256(clip.astype("float32").tobytes()).hexdigest()

    split_of = {digest(models.read_audio(spoken / p)): s
                for p, s in zip(manifest["path"], manifest["split"], strict=True)}
    assert len(seen) == STEPS and all(len(clips) == 2 for _, clips in seen)
    question = skills.SKILLS["rate"].question
    for texts, clips in seen:
        assert all(question in t for t in texts), texts  # the skill question, with the clip
        assert {split_of[digest(c)] for c in clips} == {"train"}

    built = []

    class Counted(kd.AcousticTeacher):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    def forbidden(*a, **k):
        raise AssertionError("the skill items were read with lambda_ac = 0")

    monkeypatch.setattr(kd, "AcousticTeacher", Counted)
    monkeypatch.setattr(skills, "training_items", forbidden)
    no_ac = params_for(repo, "kd_source", base=base, kd={"acoustic_skills": True,
                                                          "lambda_ac": 0.0})
    train(no_ac, init_dir, spoken, tmp_path / "no_ac")
    assert built == []
    rows = [json.loads(x) for x in (tmp_path / "no_ac" / "train_log.jsonl").read_text()
            .splitlines()]
    assert rows and all("loss_kd_acoustic" not in r for r in rows)


def test_acoustic_items_of_a_split_and_the_skills_together(repo, spoken, init_dir,
                                                          monkeypatch):
    """Both train.kd.acoustic_split and acoustic_skills: the split's spoken questions (the
    clip alone) then the skill items (the clip + the skill question), one frame whose
    batches are audio prompts."""
    from cordflow import data
    from cordflow.train.run import acoustic_items
    from cordflow.train.step import step_inputs

    monkeypatch.chdir(spoken)
    params = params_for(repo, "kd_source", base={"skills": {"items": 4}},
                        kd={"acoustic_split": "test", "acoustic_skills": True})
    qa, manifest = spoken / "results/qa/test.parquet", spoken / "results/audio/manifest.parquet"
    items = acoustic_items(params["method"], qa, manifest, params["seed"])
    spoken_test = data.spoken_pairs(qa, manifest).items
    n = len(spoken_test)
    assert len(items) == n + 4
    assert items["id"].iloc[:n].tolist() == spoken_test["id"].tolist()
    assert items["audio_text"].iloc[:n].isna().all()
    assert set(items["split"].iloc[n:]) == {"train"}
    assert (items["audio_text"].iloc[n:] == items["question"].iloc[n:]).all()
    loaded = models.load(init_dir, params["model"])
    batch = step_inputs(loaded, items, lambda i: [0, n], prefetch=False)(0)
    assert batch.audio["input_ids"].shape[0] == 2 and len(batch.audio.clips) == 2


class Killed(Exception):
    pass


def test_a_killed_cord_run_resumes_to_the_same_weights(repo, spoken, init_dir, tmp_path,
                                                      monkeypatch):
    params = params_for(repo, "cord", steps=4)
    train(params, init_dir, spoken, tmp_path / "straight")

    from cordflow.train import step as step_mod

    real = step_mod.make_step

    def dying(spec, ctx):
        inner = real(spec, ctx)

        def step(i):
            if i == 3:
                raise Killed()
            return inner(i)
        return step

    monkeypatch.setattr(step_mod, "make_step", dying)
    with pytest.raises(Killed):
        train(params, init_dir, spoken, tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists()  # nothing that looks complete
    work = [p for p in tmp_path.iterdir() if p.name.startswith(".resumed.work-")]
    assert len(work) == 1 and (work[0] / "ckpt" / "step-2").is_dir()
    monkeypatch.setattr(step_mod, "make_step", real)
    train(params, init_dir, spoken, tmp_path / "resumed")
    assert not work[0].exists()  # cleaned up after success

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()
    lb = (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    def strip(rows):
        return [{k: v for k, v in json.loads(r).items() if not k.startswith("time")}
                for r in rows]
    assert strip(la) == strip(lb)
    assert (tmp_path / "straight" / "verdicts.jsonl").read_text() == \
        (tmp_path / "resumed" / "verdicts.jsonl").read_text()
    # TensorBoard: each step once (the killed attempt logged step 3 before dying), as straight
    assert tb_steps(tmp_path / "resumed") == tb_steps(tmp_path / "straight") == [1, 2, 3, 4]


def tb_steps(model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(model_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars("cord/loss")]


def test_prefetched_step_inputs_equal_inline_ones(spoken, init_dir, monkeypatch):
    """The GPU default (next batch prepared in a background thread) feeds every step exactly
    the batch the CPU default (inline) does, also after a jump such as a resume."""
    from cordflow import data
    from cordflow.train.step import step_inputs

    monkeypatch.chdir(spoken)
    loaded = models.load(init_dir, tiny.model_cfg(chunk_length=4))
    pairs = data.spoken_pairs(spoken / "results/qa/train.parquet",
                              spoken / "results/audio/manifest.parquet")
    batches = data.Batches(len(pairs), 3, seed=5)
    inline = step_inputs(loaded, pairs.items, batches, prefetch=False)
    ahead = step_inputs(loaded, pairs.items, batches, prefetch=True)
    for step in (0, 1, 2, 6, 7):
        a, b = inline(step), ahead(step)
        assert list(a.rows["id"]) == list(b.rows["id"])
        for prompt_a, prompt_b in ((a.audio, b.audio), (a.text, b.text)):
            assert prompt_a.keys() == prompt_b.keys()
            for k in prompt_a:
                assert torch.equal(prompt_a[k], prompt_b[k]), k
    inline.close()
    ahead.close()
