"""``cordflow``: one subcommand per stage. Rules call these; so can you, by hand.

Every stage takes ``--params``: the JSON config slice the rule passes (see
:data:`cordflow.config.RULE_KEYS`), or ``--config FILE`` to take that slice from a
config file yourself. Heavy imports happen inside the commands, so ``--help`` is fast
and each step's environment only needs its own packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="CORD workflow stages. Normally run by Snakemake; every stage also works by hand.",
)

ParamsOpt = Annotated[
    str | None,
    typer.Option("--params", help="The rule's config slice as JSON, or @file.json."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Take the slice from this config file instead of --params."),
]
RanksOpt = Annotated[int, typer.Option(
    min=1, help="Ranks per node (one per GPU; the rule's 'ranks' resource): more than 1 "
                "re-runs this command under torchrun (srun + torchrun on several Slurm "
                "nodes), data parallel (cordflow.train.dist).")]


def _ranks(ranks: int) -> None:
    """With ``ranks`` > 1, outside torchrun: run this command as that many ranks and exit
    with their exit code (inside, each rank goes on)."""
    import sys

    from cordflow.train import dist

    if ranks > 1 and not dist.launched():
        raise typer.Exit(dist.relaunch(ranks, sys.argv[1:]))


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
    out_dir: Annotated[Path, typer.Option(
        help="Writes {split}.parquet and rejected.parquet here.")],
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
    threads: Annotated[int, typer.Option(min=1, help="2+: synthesise ahead in a thread.")] = 1,
):
    """Synthesise one shard into the store (clips already there are reused).

    Clips get no provenance record each: the shard table lists every clip's path and
    sha256, and the store keeps a JSON beside each FLAC with what made it."""
    from cordflow.stage import stage_run
    from cordflow.tts import shard as stage
    from cordflow.tts.schema import read_clips
    from cordflow.tts.store import Store

    p = _params("tts_shard", params, config)
    with stage_run("tts_shard", p, [plan], [out]) as extra:
        stage.run(p, plan, out, store, threads=threads)
        # The shard table's record lists every clip it uses (FLAC + JSON) with its sha256
        # (stage_run's companions), so `cordflow audit --all` covers the store.
        clips = sorted(set(read_clips(out)["path"]))
        extra.extend(f for c in clips for f in (Path(c), Store(store).meta_path(Path(c).stem)))


@app.command("tts-gather")
def tts_gather(
    shards: Annotated[list[Path], typer.Option(help="Shard tables (repeat).")],
    out: Annotated[Path, typer.Option(help="The audio manifest (parquet).")],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Gather shard tables into results/audio/manifest.parquet (+ rejected.parquet)."""
    from cordflow.stage import stage_run
    from cordflow.tts import gather as stage

    p = _params("tts_gather", params, config)
    with stage_run("tts_gather", p, shards, stage.output_paths(out)):
        stage.run(p, shards, out)


@app.command()
def base(
    qa_train: Annotated[Path, typer.Option()],
    qa_test: Annotated[Path, typer.Option()],
    manifest: Annotated[Path, typer.Option()],
    out_dir: Annotated[Path, typer.Option()],
    qa_bar: Annotated[Path | None, typer.Option(
        help="The base.text.bar_split table (built presets).")] = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
    ranks: RanksOpt = 1,
):
    """The model to start from (tiny: text pre-training, then audio alignment, LM frozen)."""
    from cordflow import base as stage
    from cordflow.stage import stage_run

    _ranks(ranks)
    p = _params("base", params, config)
    inputs = [qa_train, *([qa_bar] if qa_bar else []), qa_test, manifest]
    with stage_run("base", p, inputs, [out_dir]):
        stage.run(p, qa_train, qa_test, manifest, out_dir, qa_bar)


@app.command()
def warmup(
    base_dir: Annotated[Path, typer.Option("--base")],
    qa_train: Annotated[Path, typer.Option()],
    manifest: Annotated[Path, typer.Option()],
    out_dir: Annotated[Path, typer.Option()],
    params: ParamsOpt = None,
    config: ConfigOpt = None,
    ranks: RanksOpt = 1,
):
    """The warm-up (off-policy SFT): audio prompt -> targets sampled from the text prompt."""
    from cordflow import warmup as stage
    from cordflow.stage import stage_run

    _ranks(ranks)

    p = _params("warmup", params, config)
    with stage_run("warmup", p, [base_dir, qa_train, manifest], [out_dir]):
        stage.run(p, base_dir, qa_train, manifest, out_dir)


def _method_names() -> str:
    from cordflow.train.methods import METHODS  # light: no torch

    sweeps = [f"{m.name}_a<A>_b<B>" for m in METHODS.values() if m.sweep]
    return ", ".join([*METHODS, *sweeps])


@app.command()
def train(
    init_dir: Annotated[Path, typer.Option("--init", help="Checkpoint to start from.")],
    qa_train: Annotated[Path, typer.Option()],
    manifest: Annotated[Path, typer.Option()],
    out_dir: Annotated[Path, typer.Option()],
    method: Annotated[str | None, typer.Option(help="With --config: a method name: "
                                                  f"{_method_names()}.")] = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
    qa_acoustic: Annotated[Path | None, typer.Option(
        help="kd methods with train.kd.acoustic_split: that split's QA table (default: "
             "<split>.parquet beside --qa-train; train.kd.acoustic_skills items come from "
             "--manifest).")] = None,
    ranks: RanksOpt = 1,
):
    """Train one method of train.methods (cordflow.train.methods.METHODS).

    --params is the method's resolved spec (what the rule passes); with --config give
    --method and the spec is resolved from the file."""
    from cordflow.stage import stage_run
    from cordflow.train import run as stage

    _ranks(ranks)
    if config is not None:
        from cordflow.config import load_config
        from cordflow.train.methods import method_params

        if method is None or params is not None:
            raise typer.BadParameter("with --config give --method (and no --params)")
        p = method_params(load_config(config), method)
    else:
        p = _params("train", params, None)
    qa_acoustic = stage.acoustic_table(p["method"], qa_train, qa_acoustic)
    inputs = [init_dir, qa_train, manifest, *([qa_acoustic] if qa_acoustic else [])]
    with stage_run("train", p, inputs, [out_dir]):
        stage.run(p, init_dir, qa_train, manifest, out_dir, qa_acoustic)


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Option("--model")],
    model_name: Annotated[str, typer.Option()],
    benchmark: Annotated[str, typer.Option(help="A name from evaluate.benchmarks.")],
    out: Annotated[Path, typer.Option(help="Per-item predictions (parquet).")],
    qa: Annotated[Path | None, typer.Option(help="QA table (qa_split benchmarks).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Audio manifest.")] = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """Greedy answers from the text AND the audio prompt, one scorer for both."""
    from cordflow.evaluate import run as stage
    from cordflow.stage import stage_run

    if config is not None and params is None:  # the rule's slice: this benchmark's entry
        from cordflow.config import benchmark_params, load_config

        p = benchmark_params(load_config(config), benchmark)
    else:
        p = _params("evaluate", params, config)
    # The files the benchmark's kind reads, by name (cordflow.evaluate.kinds: inputs).
    inputs = {k: v for k, v in {"qa": qa, "manifest": manifest}.items() if v is not None}
    with stage_run("evaluate", p, [model_dir, *inputs.values()], [out]):
        stage.run(p, model_dir, model_name, benchmark, out, inputs)


@app.command()
def summarize(
    evals: Annotated[list[Path], typer.Option("--eval", help="Per-item tables (repeat).")],
    out_table: Annotated[Path, typer.Option()],
    out_plot: Annotated[Path, typer.Option()],
    out_paired: Annotated[
        Path | None,
        typer.Option(help="Also write the paired comparisons of summarize.pairs here."),
    ] = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """gap_table.csv (text/audio accuracy, gap, gap reduction, 95 % CIs), a plot and the
    paired differences (paired.csv: e.g. cord - sft, paired bootstrap intervals)."""
    from cordflow import summarize as stage
    from cordflow.stage import stage_run

    p = _params("summarize", params, config)
    outs = [out_table, out_plot, *([out_paired] if out_paired else [])]
    with stage_run("summarize", p, evals, outs):
        stage.run(p, evals, out_table, out_plot, out_paired)


# -- provenance: the report's summary (a rule), audit and RO-Crate export (by hand) --------
ResultsOpt = Annotated[
    Path | None,
    typer.Option("--results", help="The results folder: files in it need a record "
                 "(default: the 'results' folder the file is in, else ./results)."),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Glob (relative to the folder) of files to leave out, "
                 "e.g. report.html (repeat)."),
]


@app.command("provenance-summary")
def provenance_summary(
    target: Annotated[list[Path], typer.Option(help="Artifacts whose lineage to list (repeat).")],
    out: Annotated[Path, typer.Option(help="The summary table (csv).")],
    results: ResultsOpt = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
):
    """results/provenance/summary.csv: every artifact behind the targets, for the report."""
    from cordflow import provenance_summary as stage
    from cordflow.stage import stage_run

    p = _params("provenance_summary", params, config)
    with stage_run("provenance_summary", p, target, [out]):
        stage.run(p, target, out, results or Path("results"))


@app.command()
def audit(
    path: Annotated[
        Path | None,
        typer.Argument(help="An artifact (or its .prov.json); with --all, the folder "
                       "(default: the --results folder)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Check every file and record in the "
                                       "folder, not one lineage.")] = False,
    results: ResultsOpt = None,
    exclude: ExcludeOpt = None,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Re-read every file. Without it, a file whose size, mtime, ctime and "
                       "inode are those of an earlier audit is not read again "
                       "(.cordflow/audit-cache.sqlite beside the results).")] = False,
):
    """Check an artifact's lineage back to the sources (printed as a tree); exit 1 naming
    every changed, missing or unrecorded file."""
    from rich.console import Console

    from cordflow import audit as au

    out, err = Console(), Console(stderr=True)
    # Piped or logged: lines as long as they are (no wrapping at 80 columns).
    out, err = (c if c.is_terminal else Console(stderr=c.stderr, width=200, no_color=True)
                for c in (out, err))
    if all_:
        folder = path or results or Path("results")
        try:
            report = au.audit_all_report(folder, exclude or (), deep=deep)
        except FileNotFoundError as e:
            err.print(f"[red]{e}[/]")
            raise typer.Exit(2) from None
        n = len(report.auditor.records)
        summary = f"{au.shown(folder)}: {n} artifacts, {report.files_hashed} files read"
        for work in report.resume_folders:
            out.print(f"skipped {au.shown(work)}: the resume folder of an unfinished or killed "
                      "training job (not an artifact; keep it: the job's rerun resumes from "
                      "it and removes it)", highlight=False, soft_wrap=True)
    else:
        if path is None:
            raise typer.BadParameter("give an artifact PATH, or --all [DIR]")
        report = au.audit(path, results, deep=deep)
        out.print(au.tree(report.root))
        summary = (f"{au.shown(path)}: {len(report.auditor.records)} artifacts in its lineage, "
                   f"{report.files_hashed} files read")
    summary += f" ({report.bytes_hashed / 1e6:.1f} MB) in {report.seconds:.2f} s"
    if report.problems:
        for problem in report.problems:
            err.print(f"[red]{problem}[/]", highlight=False, soft_wrap=True)
        if report.commands:
            err.print("to repair with the fewest jobs, run in this order (with the run's "
                      "own --configfile/--profile options):", highlight=False)
            for command in report.commands:
                err.print(f"    {command}", highlight=False, soft_wrap=True, markup=False)
        err.print(f"{summary}: [red]{len(report.problems)} problem(s)[/]", highlight=False)
        raise typer.Exit(1)
    out.print(f"{summary}: [green]all consistent[/]", highlight=False)


@app.command("export-crate")
def export_crate(
    results_dir: Annotated[Path, typer.Argument(help="The results folder of a run.")],
    out: Annotated[Path, typer.Option("--out", help="The crate folder (new or empty).")],
    exclude: ExcludeOpt = None,
):
    """Write a Workflow Run RO-Crate (wfrun/workflow 0.5) of the run, every file with its
    sha256; refuses if `cordflow audit --all` would fail."""
    from cordflow import crate
    from cordflow.stage import setup_logging

    setup_logging()
    try:
        crate.export_crate(results_dir, out, exclude or ())
    except crate.CrateError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out / crate.METADATA}")


@app.command("plan")
def plan_command(  # not 'plan': tts_shard's --plan option would shadow it
    configs: Annotated[list[Path], typer.Option(
        "--config", help="Config files, layered in order (as snakemake --configfile).")],
    ranks: Annotated[int, typer.Option(min=1, help="GPUs (ranks) of the train job.")] = 1,
    trainable: Annotated[str | None, typer.Option(
        help="Override train.trainable, e.g. 'full' or 'lora,audio'.")] = None,
    gpu_gb: Annotated[float, typer.Option(help="Memory of one GPU (GiB).")] = 80.0,
    peak_tflops: Annotated[float, typer.Option(help="bf16 dense peak of one GPU.")] = 989.0,
    mfu: Annotated[float, typer.Option(help="Model FLOP utilisation of training.")] = 0.35,
    decode_tok_s: Annotated[float, typer.Option(
        help="Generated tokens/s of the rollout engine on one GPU (measure it: "
             "benchmarks/gpu_smoke.py).")] = 2500.0,
    audio_seconds: Annotated[float, typer.Option(help="Typical clip length.")] = 10.0,
):
    """Memory per rank and time of the train stage for a config and a GPU count
    (cordflow/plan.py says what is exact and what is assumed)."""
    import yaml

    from cordflow import plan as planner
    from cordflow.config import deep_merge, validate_config

    merged: dict = {}
    for path in configs:
        merged = deep_merge(merged, yaml.safe_load(path.read_text()) or {})
    if trainable:
        merged = deep_merge(merged, {"train": {"trainable": trainable.split(",")}})
    cfg = validate_config(merged)
    hw = planner.Hardware(gpu_gb, peak_tflops, mfu, decode_tok_s)
    result = planner.plan(cfg, ranks, hw, audio_seconds, planner.profile_runtime("train"))
    typer.echo(planner.render(result, ranks, cfg["train"]["trainable"]))


# `cordflow profile install|show`: the Slurm profile (cordflow/profile.py).
from cordflow.profile import app as _profile_app  # noqa: E402

app.add_typer(_profile_app, name="profile")


if __name__ == "__main__":
    app()
