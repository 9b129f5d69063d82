"""Stage ``evaluate``: one model on one benchmark, from the text prompt AND the audio prompt.

Batched greedy generation for every item under both prompts, one scorer for both
(:func:`cordflow.scoring.match`: number match, option letter, normalised text). Writes
``results/eval/{model}/{benchmark}.parquet``, one row per item:

    id, model, benchmark, answer, answer_type, category,
    text_pred, audio_pred          the decoded completions (text_pred null when the
                                   benchmark's kind has no text form, e.g. mmau)
    text_correct, audio_correct    booleans (text_correct null likewise: audio only)

Benchmarks are loaded by :func:`cordflow.evaluate.items.load` (the kind's adapter in
:mod:`cordflow.evaluate.kinds` builds the items); items it could not use are counted there
and logged, never dropped silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cordflow import infer, models
from cordflow.config import section
from cordflow.evaluate import items as benchmark_items
from cordflow.io import write_parquet

log = logging.getLogger("cordflow.evaluate")

COLUMNS = ["id", "model", "benchmark", "answer", "answer_type", "category", "text_pred",
           "audio_pred", "text_correct", "audio_correct"]


def run(params: dict, model_dir: Path, model_name: str, benchmark: str, out: Path,
        inputs: dict[str, Path] | None = None) -> None:
    """Evaluate ``model_dir`` on the benchmark named ``benchmark``; ``inputs``: the files
    its kind reads, by name (qa_split: ``qa`` and ``manifest``)."""
    mcfg, ecfg = section(params, "model"), section(params, "evaluate")
    bench = benchmark_items.load(benchmark_items.find(params, benchmark), inputs)
    loaded = models.load(model_dir, mcfg)
    loaded.model.eval()
    items = bench.items
    bs, max_new = ecfg["batch_size"], mcfg["max_new_tokens"]
    long = int((items["duration"] > loaded.chunk_seconds).sum())
    if long:
        log.warning("%s: %d of %d clips are longer than the model's %.0f s audio window and "
                    "are cut to it", benchmark, long, len(items), loaded.chunk_seconds)

    engine = None
    if ecfg["engine"] == "vllm":  # the saved folder itself, served by a vLLM process
        from cordflow.vllm_engine.engine import VLLMEngine

        engine = VLLMEngine(loaded, ecfg["vllm"], seed=int(params.get("seed", 0)),
                            model_dir=model_dir)
    try:
        audio_pred = infer.answers(loaded, items, "audio", bs, max_new,
                                   desc=f"{model_name} audio", engine=engine)
        audio_ok = infer.correct(audio_pred, items)
        if bench.has_text:
            text_pred = infer.answers(loaded, items, "text", bs, max_new,
                                      desc=f"{model_name} text", engine=engine)
            text_ok: list = infer.correct(text_pred, items)
        else:
            text_pred, text_ok = [None] * len(items), [None] * len(items)
    finally:
        if engine is not None:
            engine.close()

    table = pd.DataFrame({
        "id": items["id"], "model": model_name, "benchmark": benchmark,
        "answer": items["answer"], "answer_type": items["answer_type"],
        "category": items["category"], "text_pred": text_pred, "audio_pred": audio_pred,
        "text_correct": pd.array(text_ok, dtype="boolean"),
        "audio_correct": pd.array(audio_ok, dtype="boolean"),
    }, columns=COLUMNS)
    write_parquet(table, out)
    text_acc = table["text_correct"].mean() if bench.has_text else float("nan")
    log.info("%s on %s: n %d, text accuracy %.3f, audio accuracy %.3f", model_name, benchmark,
             len(table), text_acc, table["audio_correct"].mean())
