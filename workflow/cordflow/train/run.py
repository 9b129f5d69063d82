"""Rules ``train`` and ``warmup``: one method spec from a starting checkpoint to a model.

:func:`run_spec` trains one method spec (:mod:`cordflow.train.methods`) from a starting
checkpoint on the spoken train split and writes ``out_dir``:

    config.json, model.safetensors, ...   the trained model, adapters merged (save_pretrained)
    adapter/                              the LoRA adapter alone (PEFT save_pretrained)
    train_log.jsonl, tb/                  per-step metrics (jsonl and TensorBoard)
    verdicts.jsonl                        the judge's verdict on every rollout (GRPO methods)
    method.json                           the resolved spec it ran with
    kd_layers.json, kd_projection.safetensors   kd methods with kd_layer: the layer map and,
                                          where widths differ, its learned projections

The stage ``warmup`` is the ``sft`` method from the base with the ``warmup`` section's
budget (:func:`cordflow.train.methods.warmup_spec`; :mod:`cordflow.warmup`).

On several ranks (:mod:`cordflow.train.dist`) every rank runs this with its share of each
batch; rank 0 writes the step log, the verdicts and ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from cordflow import data, models
from cordflow.config import section
from cordflow.io import atomic_path, keep_jsonl_rows
from cordflow.stage import seed_everything
from cordflow.train import dist
from cordflow.train.loop import Checkpoints, LoopConfig, StepLog, fit, work_dir, write_tensorboard

log = logging.getLogger("cordflow.train")


def run(params: dict, init_dir: Path, qa_train: Path, manifest: Path, out_dir: Path,
        qa_acoustic: Path | None = None) -> None:
    """Rule ``train``: the method spec is in ``params["method"]``."""
    run_spec(params, params["method"], "train", init_dir, qa_train, manifest, out_dir,
             qa_acoustic=qa_acoustic)


def acoustic_table(spec: dict, qa_train: Path, qa_acoustic: Path | None = None) -> Path | None:
    """The QA table of the acoustic split a kd method reads (``train.kd.acoustic_split``):
    ``qa_acoustic``, or by default that split's table beside the train split's
    (results/qa/<split>.parquet). None for a method without the acoustic term or whose
    acoustic items are the skill items alone (``train.kd.acoustic_skills``)."""
    acoustic = spec.get("kd_acoustic")
    if acoustic is None or "split" not in acoustic:
        return None
    split = acoustic["split"]
    path = Path(qa_acoustic) if qa_acoustic else Path(qa_train).parent / f"{split}.parquet"
    if not path.is_file():
        raise SystemExit(f"train.kd.acoustic_split '{split}': no QA table {path} "
                         "(the split must be one of source.splits; or give --qa-acoustic)")
    return path


def acoustic_items(spec: dict, qa_acoustic: Path | None, manifest: Path, seed: int):
    """The acoustic teacher's items (a frame for :func:`cordflow.train.step.step_inputs`):
    the spoken questions of the acoustic split (``qa_acoustic``, its clips in
    ``manifest``) and, when the spec has ``skills`` (``train.kd.acoustic_skills``), the
    audio-skill items the base learned: ``items`` (train clip x skill) rows of the TRAIN
    split's clips asking ``skills``, the base's seeded choice with the run's seed
    (:func:`cordflow.skills.training_items`; :func:`cordflow.base.skill_rows`), each the
    skill question asked WITH its clip (``audio_text``). None without the acoustic term."""
    import pandas as pd

    acoustic = spec.get("kd_acoustic")
    if acoustic is None:
        return None
    frames = [data.spoken_pairs(qa_acoustic, manifest).items] if "split" in acoustic else []
    if "skills" in acoustic:
        from cordflow import skills

        rows = skills.training_items(manifest, "train", acoustic["items"], seed,
                                     list(acoustic["skills"]))
        if not len(rows):
            raise SystemExit(f"train.kd.acoustic_skills: {manifest} has no train clip to ask "
                             f"{list(acoustic['skills'])} about (base.skills.items is "
                             f"{acoustic['items']}; espeak voices record pitch and rate)")
        frames.append(rows)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def run_spec(params: dict, spec: dict, rule: str, init_dir: Path, qa_train: Path,
             manifest: Path, out_dir: Path, qa_acoustic: Path | None = None) -> None:
    from cordflow.train import kd
    from cordflow.train.judges import make_judge
    from cordflow.train.rollout import make_engine
    from cordflow.train.step import StepContext, Teacher, make_step, samples_on_policy, step_inputs

    mcfg = section(params, "model")
    seed = int(params.get("seed", 0))
    world = dist.init()
    qa_acoustic = acoustic_table(spec, qa_train, qa_acoustic)
    work = work_dir(out_dir, rule, params,
                    [init_dir, qa_train, manifest, *([qa_acoustic] if qa_acoustic else [])])
    work.mkdir(parents=True, exist_ok=True)

    pairs = data.spoken_pairs(qa_train, manifest)
    seed_everything(seed)  # LoRA init and rollouts: the same for every run of this spec
    loaded = models.load(init_dir, mcfg)
    if "lora" in spec["trainable"]:
        loaded.model = models.add_lora(loaded.model, mcfg["lora"])
    models.set_trainable(loaded.model, spec["trainable"])
    dist.broadcast_parameters(loaded.model, world)
    teacher_cfg = spec.get("teacher", {"kind": "init"})
    teacher = Teacher(teacher_cfg["kind"], loaded, teacher_cfg.get("ema_decay", 0.99))
    if dist.shards(world, loaded.model):  # full fine-tuning on several ranks: FSDP2
        _check_shardable(spec, teacher_cfg["kind"])
        dist.shard_model(loaded.model, world)
        if teacher.copy is not None:  # the frozen teacher is sharded too
            dist.shard_model(teacher.copy, world)
        log.info("%s: LM weights train: FSDP2 over %d ranks (model and teacher sharded)",
                 rule, world.size)
    judge = make_judge(spec["judge"], seed) if "judge" in spec else None
    loop = LoopConfig.from_cfg(spec["loop"])
    engine = make_engine(spec.get("rollout_engine", "transformers"), loaded,
                         settings=spec.get("vllm"), seed=seed,
                         log_path=work / ("vllm_engine.log" if world.main
                                          else f"vllm_engine.rank{world.rank}.log"))
    if teacher_cfg.get("engine", "rollout") == "rollout":
        teacher.use_engine(spec.get("rollout_engine", "transformers"), engine,
                           spec.get("vllm"), seed,
                           log_path=work / ("teacher_vllm_engine.log" if world.main
                                            else f"teacher_vllm_engine.rank{world.rank}.log"))
    batches = data.Batches(len(pairs), spec["loop"]["batch_size"], seed)
    inputs = step_inputs(loaded, pairs.items, lambda i: dist.shard(batches(i), world))
    parts = kd.prepare(spec, loaded, teacher, mcfg)  # kd methods: teachers, layer map
    acoustic = None
    if parts.acoustic_teacher is not None:
        items = acoustic_items(spec, qa_acoustic, manifest, seed)
        ac_batches = data.Batches(len(items), spec["kd_acoustic"]["batch_size"], seed + 1)
        acoustic = step_inputs(loaded, items, lambda i: dist.shard(ac_batches(i), world))
        n_skill = int(items["audio_text"].notna().sum()) if "audio_text" in items else 0
        log.info("%s: acoustic items: %d spoken questions of %s, %d audio-skill items of "
                 "train clips", rule, len(items) - n_skill, qa_acoustic, n_skill)
    ctx = StepContext(loaded, teacher, inputs, mcfg["max_new_tokens"], engine, judge,
                      text_teacher=parts.text_teacher, layer_map=parts.layer_map,
                      acoustic_teacher=parts.acoustic_teacher, acoustic_inputs=acoustic,
                      seed=seed)
    log.info("%s: method %s from %s, %d clips of %d spoken questions, %d steps of %d "
             "(on %d rank(s))", rule, spec["name"], init_dir, len(pairs),
             pairs.items["id"].nunique(), loop.steps, spec["loop"]["batch_size"], world.size)

    if samples_on_policy(spec):
        log.info("%s: on-policy: trains in eval mode (dropout off), as its rollouts are sampled",
                 rule)
    steplog = StepLog(work / "train_log.jsonl", work / "tb" if world.main else None,
                      spec["name"])
    verdict_log = work / "verdicts.jsonl"

    def flush_verdicts(_step: int) -> None:
        verdicts = dist.gather(list(ctx.verdicts), world)  # every rank's, in rank order
        ctx.verdicts.clear()
        if verdicts and world.main:
            with verdict_log.open("a") as f:
                f.writelines(json.dumps(v, sort_keys=True) + "\n" for v in verdicts)

    def after_step(step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        ctx.engine.sync()  # the rollout engine serves the weights of this step
        time_sync = time.perf_counter() - t0
        teacher.update(step)
        flush_verdicts(step)
        return {"time_sync": time_sync}

    def load_state(state: dict) -> None:
        teacher.load_state(state)
        # Keep the verdicts of steps up to the checkpoint only.
        step = state.get("step", 0)
        if world.main:
            keep_jsonl_rows(verdict_log, lambda row: row["step"] <= step)

    ckpt = Checkpoints(work / "ckpt")
    # The layer map's projections (if any) train with the model and are checkpointed with it.
    trained = (torch.nn.ModuleDict({"model": loaded.model, "kd_layer": parts.layer_map})
               if parts.trainable() else loaded.model)
    try:
        fit(trained, loop, make_step(spec, ctx), ckpt, steplog, f"{rule}: {spec['name']}",
            state_fn=teacher.state, load_state_fn=load_state, after_step=after_step,
            train_mode=not samples_on_policy(spec), world=world)
    finally:
        engine.close()  # a vLLM engine process ends with the job, whatever happened
        teacher.close()
        if hasattr(judge, "close"):
            judge.close()
        inputs.close()
        if acoustic is not None:
            acoustic.close()
        steplog.close()

    full = None
    if models.is_sharded(loaded.model):  # every rank gathers
        full, _ = dist.full_state(loaded.model, trainable_only=False)
    if not world.main:  # rank 0 writes the output
        dist.barrier(world)
        dist.close(world)
        return
    with atomic_path(out_dir) as tmp:
        save_trained(loaded, tmp, full)
        (tmp / "method.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        kd.save(parts, tmp)
        for name in ("train_log.jsonl", "verdicts.jsonl"):
            if (work / name).exists():
                shutil.copy(work / name, tmp / name)
        write_tensorboard(work / "train_log.jsonl", tmp / "tb")
    shutil.rmtree(work, ignore_errors=True)
    dist.barrier(world)
    dist.close(world)


def save_trained(loaded: models.Loaded, out_dir: Path, full: dict | None = None) -> None:
    """The merged model (what evaluation loads) and, with LoRA, the adapter alone; a
    sharded model is saved from its gathered ``full`` state."""
    from peft import PeftModel

    model = loaded.model
    if full is not None:
        models.save(models.core(model), loaded.processor, out_dir, state_dict=full)
        return
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
    models.save(model, loaded.processor, out_dir)


def _check_shardable(spec: dict, teacher_kind: str) -> None:
    """What FSDP2 training does not cover yet, refused before any work."""
    if "lora" in spec["trainable"]:
        raise SystemExit("train.trainable: LoRA adapters together with LM weights on several "
                         "ranks (FSDP2) is not supported: train the LM weights ('full' or "
                         "'lm') or LoRA, not both")
    if teacher_kind == "ema":
        raise SystemExit("train.teacher.kind 'ema' with LM weights training on several ranks "
                         "(FSDP2) is not supported yet: use 'init' or one rank")
    if any(spec.get(t) is not None for t in ("kd_text", "kd_layer", "kd_acoustic")):
        raise SystemExit(f"method {spec['name']}: the kd methods with LM weights training on "
                         "several ranks (FSDP2) are not supported yet: use LoRA or one rank")
