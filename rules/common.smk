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


from snakemake.utils import validate

from cordflow.config import (
    benchmark_params,
    code_version,
    dumps,
    rule_params,
    upgrade_config,
)
from cordflow.evaluate.kinds import KINDS, MANIFEST, QA_TABLE
from cordflow.train.methods import method_params
from cordflow.tts.backends import BACKEND_ENVS

# Deprecated keys (e.g. the `sft` section, now `warmup`) are moved to their new place with
# a warning, then the config is validated (defaults filled) before any job is planned.
for note in upgrade_config(config):
    logger.warning(f"cordflow: {note}")
validate(config, workflow.source_path("../config/schema.yaml"))

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


def train_init(wildcards):
    """The checkpoint every method starts from (train.init)."""
    return model_dir("warmup" if config["train"]["init"] == "warmup" else "base")


def tts_env():
    """The conda env of the configured TTS backend (cordflow.tts.backends.BACKEND_ENVS)."""
    return f"../envs/{BACKEND_ENVS[config['tts']['backend']]}.yaml"


def repeat_opt(flag, paths):
    """`--flag a --flag b`, each path shell-quoted."""
    return " ".join(f"{flag} {shlex.quote(str(p))}" for p in paths)


def qa_table(split):
    return QA_TABLE.format(split=split)


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


def final_outputs():
    return [
        "results/eval/gap_table.csv",
        "results/eval/gap_plot.png",
        # rules/provenance.smk: the lineage of all the others, for the report.
        "results/provenance/summary.csv",
    ]
