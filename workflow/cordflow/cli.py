"""``cordflow``: one subcommand per stage. Rules call these; so can you, by hand.

Every stage takes ``--params``: the JSON config slice the rule passes (see
:data:`cordflow.config.RULE_KEYS`), or ``--config FILE`` to take that slice from a
config file yourself. Heavy imports happen inside the commands, so ``--help`` is fast
and each step's environment only needs its own packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="CORD workflow stages. Normally run by Snakemake; every stage also works by hand.",
)

ParamsOpt = Annotated[
    Optional[str],
    typer.Option("--params", help="The rule's config slice as JSON, or @file.json."),
]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="Take the slice from this config file instead of --params."),
]


def _params(rule: str, params: str | None, config: Path | None, **extra) -> dict:
    from cordflow.config import load_config, rule_params
    from cordflow.stage import parse_params

    if (params is None) == (config is None):
        raise typer.BadParameter("give exactly one of --params or --config")
    if params is not None:
        return parse_params(params)
    return rule_params(rule, load_config(config), **extra)


@app.command()
def source(
    out_dir: Annotated[Path, typer.Option(help="Writes {split}.parquet and rejected.parquet here.")],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Text QA from the built-in generator, local files and staged HF datasets."""
    from cordflow import source as stage
    from cordflow.stage import stage_run

    p = _params("source", params, config)
    outputs = stage.output_paths(p, out_dir)
    with stage_run("source", p, stage.input_paths(p), outputs):
        stage.run(p, out_dir)


@app.command("tts-plan")
def tts_plan(
    qa: Annotated[list[Path], typer.Option(help="QA tables to speak (repeat).")],
    out_dir: Annotated[Path, typer.Option(help="Writes {k}.parquet per shard here.")],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Assign items to shards by id hash (a new item touches one shard)."""
    from cordflow.stage import stage_run
    from cordflow.tts import plan as stage

    p = _params("tts_plan", params, config)
    with stage_run("tts_plan", p, qa, stage.output_paths(p, out_dir)):
        stage.run(p, qa, out_dir)


@app.command("tts-shard")
def tts_shard(
    plan: Annotated[Path, typer.Option(help="The shard's plan table.")],
    out: Annotated[Path, typer.Option(help="The shard's clip table (parquet).")],
    store: Annotated[Path, typer.Option(help="Content-addressed FLAC store.")],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Synthesise one shard into the store (clips already there are reused)."""
    from cordflow.stage import stage_run
    from cordflow.tts import shard as stage

    p = _params("tts_shard", params, config)
    with stage_run("tts_shard", p, [plan], [out]) as extra:
        extra.extend(stage.run(p, plan, out, store))


@app.command("tts-gather")
def tts_gather(
    shards: Annotated[list[Path], typer.Option(help="Shard tables (repeat).")],
    out: Annotated[Path, typer.Option(help="The audio manifest (parquet).")],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Gather shard tables into results/audio/manifest.parquet."""
    from cordflow.stage import stage_run
    from cordflow.tts import gather as stage

    p = _params("tts_gather", params, config)
    with stage_run("tts_gather", p, shards, [out]):
        stage.run(p, shards, out)


@app.command()
def base(
    qa_train: Annotated[Path, typer.Option()],
    qa_test: Annotated[Path, typer.Option()],
    manifest: Annotated[Path, typer.Option()],
    out_dir: Annotated[Path, typer.Option()],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """The model to start from (tiny: text pre-training, then audio alignment, LM frozen)."""
    from cordflow import base as stage
    from cordflow.stage import stage_run

    p = _params("base", params, config)
    with stage_run("base", p, [qa_train, qa_test, manifest], [out_dir]):
        stage.run(p, qa_train, qa_test, manifest, out_dir)


@app.command()
def sft(
    base_dir: Annotated[Path, typer.Option("--base")],
    qa_train: Annotated[Path, typer.Option()],
    manifest: Annotated[Path, typer.Option()],
    out_dir: Annotated[Path, typer.Option()],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """SFT warm-up: audio prompt -> targets sampled from the model's text prompt."""
    from cordflow import sft as stage
    from cordflow.stage import stage_run

    p = _params("sft", params, config)
    with stage_run("sft", p, [base_dir, qa_train, manifest], [out_dir]):
        stage.run(p, base_dir, qa_train, manifest, out_dir)


@app.command()
def train(
    method: Annotated[str, typer.Option(help="A name from train.methods.")],
    init_dir: Annotated[Path, typer.Option("--init", help="Checkpoint to start from.")],
    base_dir: Annotated[Path, typer.Option("--base", help="The base model (frozen teacher).")],
    qa_train: Annotated[Path, typer.Option()],
    manifest: Annotated[Path, typer.Option()],
    out_dir: Annotated[Path, typer.Option()],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Train one method (cord, sft, forward_kl, opd, grpo, opd_grpo, sweeps)."""
    from cordflow import train as stage
    from cordflow.stage import stage_run

    p = _params("train", params, config)
    with stage_run("train", p, [init_dir, base_dir, qa_train, manifest], [out_dir]):
        stage.run(p, method, init_dir, base_dir, qa_train, manifest, out_dir)


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Option("--model")],
    model_name: Annotated[str, typer.Option()],
    benchmark: Annotated[str, typer.Option(help="A name from evaluate.benchmarks.")],
    out: Annotated[Path, typer.Option(help="Per-item predictions (parquet).")],
    qa: Annotated[Optional[Path], typer.Option(help="QA table (qa_split benchmarks).")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Audio manifest.")] = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Greedy answers from the text AND the audio prompt, one scorer for both."""
    from cordflow import evaluate as stage
    from cordflow.stage import stage_run

    p = _params("evaluate", params, config)
    inputs = [model_dir, *(x for x in (qa, manifest) if x is not None)]
    with stage_run("evaluate", p, inputs, [out]):
        stage.run(p, model_dir, model_name, benchmark, out, qa=qa, manifest=manifest)


@app.command()
def summarize(
    evals: Annotated[list[Path], typer.Option("--eval", help="Per-item tables (repeat).")],
    out_table: Annotated[Path, typer.Option()],
    out_plot: Annotated[Path, typer.Option()],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """gap_table.csv (text/audio accuracy, gap, gap reduction, 95 % CIs) and a plot."""
    from cordflow import summarize as stage
    from cordflow.stage import stage_run

    p = _params("summarize", params, config)
    with stage_run("summarize", p, evals, [out_table, out_plot]):
        stage.run(p, evals, out_table, out_plot)


if __name__ == "__main__":
    app()
