# Helpers shared by every rule file. The config slice a rule reads is defined once, in
# cordflow.config.RULE_KEYS; rules pass it as params so a change reruns exactly that rule
# and its dependants. `code` params hash the stage's source so a code edit reruns it too.
import os
import re
import shlex
import sys
from pathlib import Path

PKG_ROOT = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(PKG_ROOT))
# Jobs (local or Slurm) inherit this, so `python -m cordflow` runs this checkout's code.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(PKG_ROOT), os.environ.get("PYTHONPATH", "")) if p
)


# Declared (it is set just above, so the check always passes) so that executors that
# pass variables on explicitly pass this one too, and `snakemake --lint` is satisfied.
envvars:
    "PYTHONPATH",


from snakemake.exceptions import WorkflowError

from cordflow.config import (
    BUILT_PRESETS,
    ConfigError,
    benchmark_params,
    code_version,
    dumps,
    rule_params,
    upgrade_config,
    validate_and_check,
)
from cordflow.evaluate.kinds import KINDS, MANIFEST, QA_TABLE
from cordflow.train.methods import method_params
from cordflow.tts.backends import shard_env

# Deprecated keys (e.g. the `sft` section, now `warmup`) are moved to their new place with
# a warning, then the config is validated (defaults filled) and what its values name
# (splits, voices, models, files...) checked before any job is planned: every problem,
# one line each ("config key 'a.b': what is wrong, what is allowed").
for note in upgrade_config(config):
    logger.warning(f"cordflow: {note}")
try:
    validate_and_check(config, workflow.source_path("../config/schema.yaml"))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

SPLITS = config["source"]["splits"]
N_SHARDS = config["tts"]["n_shards"]
METHODS = config["train"]["methods"]
MODELS = ["base", "warmup", *METHODS]
BENCHMARKS = {b["name"]: b for b in config["evaluate"]["benchmarks"]}
# MANIFEST (the TTS stage's output) and QA_TABLE (a source split) are the paths the
# benchmark kinds read, defined once in cordflow.evaluate.kinds.


wildcard_constraints:
    split="|".join(SPLITS),
    model="|".join(map(re.escape, MODELS)),
    method="|".join(map(re.escape, METHODS)) if METHODS else "(?!)",
    benchmark="|".join(BENCHMARKS),
    k=r"\d+",


def params_of(rule, **extra):
    """The rule's config slice as canonical JSON (passed quoted: never shell-parsed)."""
    return dumps(rule_params(rule, config, **extra))


def train_params(wildcards):
    """One method's resolved spec: a knob reruns only the methods that read it."""
    return dumps(method_params(config, wildcards.method))


def eval_params(wildcards):
    """One benchmark's entry (plus the model settings evaluation reads)."""
    return dumps(benchmark_params(config, wildcards.benchmark))


def train_kd_inputs(wildcards):
    """A kd method's acoustic split (train.kd.acoustic_split): that split's QA table, an
    input only of the methods whose spec has the acoustic term on a split
    (cordflow.train.kd). Skill items (train.kd.acoustic_skills) come from the manifest,
    already an input."""
    acoustic = method_params(config, wildcards.method)["method"].get("kd_acoustic")
    if acoustic is None or "split" not in acoustic:
        return {}
    if acoustic["split"] not in SPLITS:  # cordflow.config.check_config says it first
        raise ValueError(
            f"config key 'train.kd.acoustic_split': '{acoustic['split']}' is not one of "
            f"source.splits {SPLITS}"
        )
    return {"qa_acoustic": qa_table(acoustic["split"])}


def train_init(wildcards):
    """The checkpoint every method starts from (train.init)."""
    return model_dir("warmup" if config["train"]["init"] == "warmup" else "base")


def tts_env():
    """The conda env of the configured TTS backends: tts.backend's and the voicings' must
    share one (cordflow.tts.backends.shard_env, from BACKEND_ENVS)."""
    return f"../envs/{shard_env(config['tts'])}.yaml"


def repeat_opt(flag, paths):
    """`--flag a --flag b`, each path shell-quoted."""
    return " ".join(f"{flag} {shlex.quote(str(p))}" for p in paths)


def qa_table(split):
    return QA_TABLE.format(split=split)


def bar_table():
    """The table the built base checks base.text.bar on (its bar_split); a staged base
    reads none."""
    if config["model"]["preset"] not in BUILT_PRESETS:
        return []
    return [qa_table(config["base"]["text"]["bar_split"])]


def local_source_files():
    """User QA files are inputs, so editing one reruns sourcing (checksummed)."""
    return [f["path"] for f in config["source"]["files"]]


def shard_plan(wildcards):
    """Shard plans come from a checkpoint: after it runs, unchanged plans keep their
    checksum and their shards do not rerun (a new item touches one shard)."""
    plan_dir = checkpoints.tts_plan.get().output[0]
    return f"{plan_dir}/{wildcards.k}.parquet"


def model_dir(model):
    return f"results/models/{model}"


def eval_inputs(wildcards):
    """The model, and the files the benchmark's kind reads (cordflow.evaluate.kinds:
    qa_split reads its QA table and the manifest; a staged dataset, nothing here)."""
    bench = BENCHMARKS[wildcards.benchmark]
    return {"model": model_dir(wildcards.model), **KINDS[bench["kind"]].inputs(bench)}


def eval_tables():
    return expand(
        "results/eval/{model}/{benchmark}.parquet", model=MODELS, benchmark=BENCHMARKS
    )


def intermediate_outputs():
    """What the final outputs are made from, also targets of `all` (the QA tables, the
    shard tables, the manifest, every model and every evaluation). A forced rerun that is
    killed or fails has deleted its output (Snakemake does so before the job), while the
    final outputs made from it remain; as a target, a plain `snakemake` then makes it
    again, and, being newer, reruns what was made from it (never "Nothing to be done"
    beside a gap table of a model that is gone)."""
    return [
        *expand(QA_TABLE, split=SPLITS),
        *expand("results/audio/shards/{k}.parquet", k=range(N_SHARDS)),
        MANIFEST,
        *[model_dir(m) for m in MODELS],
        *eval_tables(),
    ]


def final_outputs():
    return [
        "results/eval/gap_table.csv",
        "results/eval/gap_plot.png",
        "results/eval/paired.csv",
        # rules/provenance.smk: the lineage of all the others, for the report.
        "results/provenance/summary.csv",
    ]
