"""Stage ``base``: the audio language model every later stage starts from.

Real presets: the staged checkpoint itself. The output folder then holds ``staged.json``
(the folder's path and the sha256 of every file in it) and :func:`cordflow.models.load`
follows it, so 15 GB of weights are neither copied nor downloaded.

``tiny`` (and ``qwen2-audio-shape``, the same with the 7B's tokenizer, vocabulary and audio
window): build the base the way real audio LMs are built, so that a real audio-text gap
exists:

(a) text pre-training of a fresh model on the QA train split (all of it, text prompts ->
    gold answers) with warm-up and gradient clipping, until TEXT accuracy on new questions,
    those of ``base.text.bar_split`` (dev: a selection split, never a benchmark's), reaches
    ``base.text.bar`` (checked every ``eval_every`` steps; the stage fails if the step budget
    ends below it);
(b) audio alignment with the language model FROZEN (audio encoder + projector only) on the
    spoken train questions for ``base.audio.steps`` steps. Training all weights on audio
    destroys text ability at this scale (measured), so the LM stays frozen;
(c) audio skills, when ``base.skills.items`` > 0 (:mod:`cordflow.skills`): questions whose
    answer is in the sound, not the words ("Is the speaker talking fast or slow?"), asked
    with train-split clips and answered from the rate (or pitch) the manifest records for
    the clip's voice. LM and audio encoder/projector train for ``base.skills.steps`` steps on
    ``batch_size`` skill items, ``text_batch_size`` text questions (gold answers) and
    ``audio_batch_size`` spoken train questions whose targets are the model's OWN greedy
    answers from before (c): the text and speech answers (a) and (b) gave are kept, neither
    taught further nor lost (measured: without the spoken ones every spoken question got a
    skill answer). Only this stage trains the skill: the ``audio_skill`` benchmark shows
    whether later stages keep it. With ``items: 0`` (the schema's default) there is no (c)
    and the base is the one built before skills existed (the same tokenizer corpus).

Measured on the default while choosing (c): a frozen LM (skill items in (b)) never learned
the new answer; pitch was learned only by a FRESH model (100 % in 200 steps), and a base
that learned it first then failed its speech alignment (8-25 % held-out audio); after (b),
rate is learned (95 % on held-out voices in 400 steps) and pitch is not.

The output is a ``save_pretrained`` folder (safetensors) with ``metrics.json`` (text and audio
accuracy on the held-out split at the end of each phase, and the held-out skill accuracy)
and ``train_log.jsonl`` / ``tb/``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import torch

from cordflow import data, infer, models, skills
from cordflow.config import BUILT_PRESETS, section
from cordflow.io import atomic_path, sha256_file, write_text_atomic
from cordflow.train import dist
from cordflow.train.loop import Checkpoints, LoopConfig, StepLog, fit, work_dir, write_tensorboard

log = logging.getLogger("cordflow.base")


def run(params: dict, qa_train: Path, qa_test: Path, manifest: Path, out_dir: Path,
        qa_bar: Path | None = None) -> None:
    """Build (or point to) the base in ``out_dir``. ``qa_bar``: the table of
    ``base.text.bar_split`` (a built preset needs it); ``qa_test``: the held-out split its
    final accuracies are reported on (metrics.json; nothing is chosen on it)."""
    mcfg = section(params, "model")
    cfg = section(params, "base")
    if mcfg["preset"] not in BUILT_PRESETS:
        stage_pointer(mcfg, out_dir)
        return
    if qa_bar is None:
        raise SystemExit("base: a built preset checks base.text.bar on the table of "
                         "base.text.bar_split: pass it with --qa-bar")
    seed = int(params.get("seed", 0))
    world = dist.init()  # several ranks: data parallel, replicated (a built model is small)
    work = work_dir(out_dir, "base", params, [qa_train, qa_bar, qa_test, manifest])
    work.mkdir(parents=True, exist_ok=True)

    text_train = data.spoken_pairs(qa_train, None).items
    text_test = data.spoken_pairs(qa_test, None).items
    audio_train = data.spoken_pairs(qa_train, manifest).items
    audio_test = data.spoken_pairs(qa_test, manifest).items
    text_bar = data.spoken_pairs(qa_bar, None).items
    bar_items = text_bar.sample(n=min(cfg["text"]["eval_items"], len(text_bar)),
                                random_state=seed)
    scfg = cfg["skills"]
    skill_train = (skill_rows(scfg, manifest, "train", scfg["items"], seed) if scfg["items"]
                   else None)  # None: no skill phase

    corpus = models.tiny_corpus(list(text_train["question"]), list(text_train["answer"]),
                                mcfg["system_prompt"])
    corpus += skills.corpus() if skill_train is not None else []
    model, processor = models.build(mcfg, corpus, seed)
    device = models.resolve_device(mcfg)
    model.to(device)
    dist.broadcast_parameters(model, world)
    loaded = models.Loaded(model, processor, device, mcfg["system_prompt"], mcfg["instruction"])
    steplog = StepLog(work / "train_log.jsonl", work / "tb" if world.main else None, "text")
    eval_bs = cfg["eval_batch_size"]
    max_new = mcfg["max_new_tokens"]

    # (a) text pre-training, to the text bar on new questions (once: a rerun loads its result)
    text_done = work / "text_done"
    if text_done.is_dir():
        log.info("text phase already done in %s: loading it", text_done)
        loaded = models.load(text_done, mcfg)
        metrics = json.loads((text_done / "metrics.json").read_text())
    else:
        metrics = {"text_phase": text_phase(loaded, cfg, max_new, text_train, bar_items, seed,
                                            work, steplog, world)}
        if world.main:
            with atomic_path(text_done) as tmp:
                models.save(loaded.model, processor, tmp)
                (tmp / "metrics.json").write_text(json.dumps(metrics))
        dist.barrier(world)

    # (b) audio alignment, LM frozen (with (c) to follow, once: a rerun loads its result)
    audio_done = work / "audio_done"
    if skill_train is not None and audio_done.is_dir():
        log.info("audio phase already done in %s: loading it", audio_done)
        loaded = models.load(audio_done, mcfg)
    else:
        audio_phase(loaded, cfg["audio"], audio_train, seed, work, steplog, world)
        if skill_train is not None:
            if world.main:
                with atomic_path(audio_done) as tmp:
                    models.save(loaded.model, processor, tmp)
            dist.barrier(world)

    # (c) audio skills, LM and encoder, keeping the text and speech answers
    if skill_train is not None:
        skill_phase(loaded, scfg, skill_train, text_train, audio_train, seed, max_new, eval_bs,
                    work, steplog, world)
        metrics["skills_phase"] = {"steps": scfg["steps"], "items": len(skill_train)}
    steplog.close()
    if not world.main:  # every rank holds the same weights: rank 0 evaluates and writes
        dist.barrier(world)
        dist.close(world)
        return

    text_acc = infer.accuracy(loaded, text_test, "text", eval_bs, max_new)
    audio_acc = infer.accuracy(loaded, audio_test, "audio", eval_bs, max_new)
    metrics["final"] = {"heldout_text_acc": text_acc, "heldout_audio_acc": audio_acc,
                        "n_text": len(text_test), "n_audio": len(audio_test)}
    log.info("base: held-out text accuracy %.3f, audio accuracy %.3f (a gap of %.3f)",
             text_acc, audio_acc, text_acc - audio_acc)
    if skill_train is not None:
        heldout = skill_rows(scfg, manifest, "test", None, seed)
        metrics["final"]["heldout_skill_acc"] = skill_acc = infer.accuracy(
            loaded, heldout, "audio", eval_bs, max_new)
        metrics["final"]["n_skill"] = len(heldout)
        log.info("base: held-out audio-skill accuracy %.3f (%d items; chance 0.5)",
                 skill_acc, len(heldout))
    with atomic_path(out_dir) as tmp:
        models.save(loaded.model, processor, tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        shutil.copy(work / "train_log.jsonl", tmp / "train_log.jsonl")
        write_tensorboard(work / "train_log.jsonl", tmp / "tb")
    shutil.rmtree(work, ignore_errors=True)
    dist.barrier(world)
    dist.close(world)


def text_phase(loaded: models.Loaded, cfg: dict, max_new: int, text_train, bar_items,
               seed: int, work: Path, steplog: StepLog, world: dist.World = dist.ONE) -> dict:
    """Phase (a): train the language model of ``loaded`` on text prompts -> gold answers
    until the text accuracy on ``bar_items`` (new questions of ``base.text.bar_split``,
    checked every ``eval_every`` steps) reaches ``base.text.bar``; fail if the step budget
    ends below it. ``cfg``: the ``base`` section. Returns the phase's steps and final text
    accuracy on ``bar_items``. On several ranks each takes its share of every batch; each
    evaluates the bar (the same weights give the same verdict on every rank)."""
    models.set_trainable(loaded.model, ["lm"])
    tcfg = cfg["text"]
    batches = data.Batches(len(text_train), tcfg["batch_size"], seed)

    def text_step(step: int):
        rows = text_train.iloc[dist.shard(batches(step), world)]
        loss = target_nll(loaded, models.encode_text(loaded, list(rows["question"])),
                          list(rows["answer"]))
        return loss, {}

    def text_eval(step: int):
        acc = infer.accuracy(loaded, bar_items, "text", cfg["eval_batch_size"], max_new)
        log.info("text phase step %d: %s text accuracy %.3f", step, tcfg["bar_split"], acc)
        return {"bar_text_acc": acc}, acc >= tcfg["bar"]

    res = fit(loaded.model, LoopConfig.from_cfg(tcfg), text_step,
              Checkpoints(work / "ckpt-text"), steplog, "base: text", eval_fn=text_eval,
              eval_every=tcfg["eval_every"], world=world)
    acc = res.last.get("bar_text_acc", float("nan"))
    if not acc >= tcfg["bar"]:
        raise SystemExit(
            f"base: {tcfg['bar_split']} text accuracy {acc:.3f} after {res.steps} steps is "
            f"below base.text.bar = {tcfg['bar']}; raise base.text.steps or lr, or lower the bar")
    return {"steps": res.steps, "bar_split": tcfg["bar_split"], "bar_text_acc": acc}


def audio_phase(loaded: models.Loaded, acfg: dict, audio_train, seed: int, work: Path,
                steplog: StepLog, world: dist.World = dist.ONE) -> None:
    """Phase (b): align the audio encoder and projector of ``loaded`` (the language model
    frozen) on the spoken train questions for ``acfg["steps"]`` steps (``acfg``: the
    ``base.audio`` section); logged as phase ``audio`` in ``steplog``."""
    models.set_trainable(loaded.model, ["audio"])
    batches = data.Batches(len(audio_train), acfg["batch_size"], seed + 1)
    steplog.phase = "audio"

    def audio_step(step: int):
        rows = audio_train.iloc[dist.shard(batches(step), world)]
        loss = target_nll(loaded, infer.prompts(loaded, rows, "audio"), list(rows["answer"]))
        return loss, {}

    fit(loaded.model, LoopConfig.from_cfg(acfg), audio_step, Checkpoints(work / "ckpt-audio"),
        steplog, "base: audio", world=world)


def skill_phase(loaded: models.Loaded, scfg: dict, skill_train: pd.DataFrame, text_train,
                audio_train, seed: int, max_new: int, eval_bs: int, work: Path,
                steplog: StepLog, world: dist.World = dist.ONE) -> None:
    """Phase (c): teach ``loaded`` the audio skills, language model AND audio
    encoder/projector trainable, for ``scfg["steps"]`` steps (``scfg``: the ``base.skills``
    section). Per step: ``batch_size`` of ``skill_train`` (the question asked with a train
    clip -> its answer, e.g. "fast"), ``text_batch_size`` text questions -> gold answers, and
    ``audio_batch_size`` spoken train questions -> the answers the model gave them before
    this phase (greedy), the losses weighted by their rows; logged as phase ``skills`` with
    each part's loss."""
    models.set_trainable(loaded.model, ["lm", "audio"])
    steplog.phase = "skills"
    own = audio_train
    if scfg["audio_batch_size"]:  # what (a) and (b) made of the spoken questions, kept
        loaded.model.eval()
        own = audio_train.assign(answer=infer.answers(loaded, audio_train, "audio", eval_bs,
                                                      max_new))
    parts = {  # name: (rows, rows per step, modality, target column)
        "skill": (skill_train, scfg["batch_size"], "audio", "target"),
        "text": (text_train, scfg["text_batch_size"], "text", "answer"),
        "audio": (own, scfg["audio_batch_size"], "audio", "answer"),
    }
    batches = {name: data.Batches(len(rows), n, seed + 2 + i)
               for i, (name, (rows, n, _, _)) in enumerate(parts.items()) if n}

    def skill_step(step: int):
        losses, sizes = {}, {}
        for name, part in batches.items():
            rows, _, modality, target = parts[name]
            rows = rows.iloc[dist.shard(part(step), world)]
            losses[name] = target_nll(loaded, infer.prompts(loaded, rows, modality),
                                      list(rows[target]))
            sizes[name] = len(rows)
        loss = sum(losses[k] * sizes[k] for k in losses) / sum(sizes.values())
        return loss, {f"loss_{k}": v.item() for k, v in losses.items()}

    fit(loaded.model, LoopConfig.from_cfg(scfg), skill_step, Checkpoints(work / "ckpt-skills"),
        steplog, "base: skills", world=world)


def skill_rows(scfg: dict, manifest: Path, split: str, n: int | None, seed: int
               ) -> pd.DataFrame:
    """The audio-skill items (``scfg["skills"]``) of ``split``'s clips: ``n`` of them, a
    seeded choice (:func:`cordflow.skills.training_items`), or all (``n`` None)."""
    rows = skills.training_items(manifest, split, n, seed, list(scfg["skills"]))
    if n is not None and len(rows) < n:
        log.warning("base.skills.items is %d but %s has %d %s clip x skill item(s) (a clip "
                    "needs an espeak voice with that setting): training on %d", n, manifest,
                    len(rows), split, len(rows))
    if split == "train" and not len(rows):
        raise SystemExit(f"base.skills.items is {n} but {manifest} has no train clip to ask "
                         f"{list(scfg['skills'])} about (espeak voices record pitch and rate); "
                         "set base.skills.items: 0")
    return rows


def target_nll(loaded: models.Loaded, prompt: dict, answers: list[str]) -> torch.Tensor:
    """Mean token NLL of the gold answers (+ stop token) after ``prompt``."""
    from cordflow.train.losses import completion_terms, sft_loss

    targets = models.encode_targets(loaded, answers)
    hidden = models.completion_hidden(loaded.model, prompt, targets)
    terms = completion_terms(hidden, models.lm_head(loaded.model), targets.ids, targets.mask)
    return sft_loss(terms["logp"], targets.mask)


def stage_pointer(mcfg: dict, out_dir: Path) -> None:
    """A real preset's base: record the staged folder and its file hashes (no copy)."""
    folder = models.require_staged(mcfg["path"], mcfg["preset"])
    files = {str(f.relative_to(folder)): sha256_file(f)
             for f in sorted(folder.rglob("*")) if f.is_file()}
    pointer = {"preset": mcfg["preset"], "path": str(folder.resolve()), "files": files}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_text_atomic(tmp / models.POINTER, json.dumps(pointer, indent=1, sort_keys=True))
    log.info("base: staged %s (%d files) recorded in %s", folder, len(files), out_dir)
