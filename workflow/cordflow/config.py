"""Configuration: schema validation with defaults, and the config slice each rule reads.

The Snakefile validates with ``snakemake.utils.validate``; :func:`load_config` does the
same outside Snakemake (for the CLI by hand and for tests), so both see identical values.
:data:`RULE_KEYS` is the single place that says which config a rule reads: the rules pass
exactly that slice as ``params`` (a change reruns that rule and its dependants only).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

PKG_DIR = Path(__file__).resolve().parent
REPO_DIR = PKG_DIR.parent.parent
SCHEMA = REPO_DIR / "config" / "schema.yaml"

# rule -> dotted config keys it reads (its params). Keep in step with the stage code.
RULE_KEYS: dict[str, list[str]] = {
    "source": ["seed", "source"],
    "tts_plan": ["tts.n_shards"],
    "tts_shard": [
        "seed",
        "tts.backend",
        "tts.heldout_splits",
        "tts.train_takes",
        "tts.voices",
        "tts.post",
        "tts.quality",
        "tts.coqui",
    ],
    "tts_gather": [],
    "base": ["seed", "model", "base"],
    "warmup": ["seed", "model", "warmup"],
    "train": ["seed", "model", "train"],
    "evaluate": ["seed", "model", "evaluate.batch_size"],
    "summarize": ["seed", "summarize"],
    "provenance_summary": [],
}

# rule -> the package files (relative to cordflow/) whose code it runs. Their content hash
# is a param, so editing one stage's code reruns that stage (shell rules are otherwise blind
# to code changes). Shared infrastructure that only moves bytes around is not listed.
# tests/test_reruns.py checks each list is exactly the code the stage's CLI command reaches
# (the table readers in source/schema.py and tts/schema.py included).
_TTS_SYNTH = ["tts/__init__.py", "tts/backends.py", "tts/coqui.py", "tts/espeak.py",
              "tts/post.py", "tts/quality.py", "tts/schema.py", "tts/shard.py", "tts/store.py",
              "tts/voices.py"]
_TABLES = ["source/schema.py", "tts/schema.py"]
_TRAIN = ["train/run.py", "train/methods.py", "train/loop.py", "train/step.py",
          "train/losses.py", "train/judges.py", "train/rollout.py"]
RULE_CODE: dict[str, list[str]] = {
    "source": ["source"],
    "tts_plan": ["tts/__init__.py", "tts/plan.py", "tts/schema.py", "source/schema.py"],
    "tts_shard": _TTS_SYNTH,
    "tts_gather": ["tts/gather.py", "tts/schema.py"],
    "base": ["models.py", "audio.py", "base.py", "train/loop.py", "data.py",
             "infer.py", "scoring.py", "train/losses.py", *_TABLES],
    "warmup": ["models.py", "audio.py", "warmup.py", *_TRAIN, "data.py", "infer.py", "scoring.py",
               *_TABLES],
    "train": ["models.py", "audio.py", *_TRAIN, "data.py", "infer.py", "scoring.py", *_TABLES],
    "evaluate": ["models.py", "audio.py", "evaluate/run.py", "evaluate/items.py",
                 "evaluate/kinds.py", "evaluate/staged.py", "infer.py", "scoring.py",
                 "source/rows.py", "source/hf.py", *_TABLES],
    "summarize": ["summarize.py"],
    "provenance_summary": ["audit.py", "provenance_summary.py"],
}


def _defaults_validator():
    """Draft 2020-12 validation that also fills each property's ``default`` (as Snakemake's
    ``validate`` does), so every reader of the config sees the same values."""
    import jsonschema
    from jsonschema import validators

    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for prop, sub in properties.items():
            if "default" in sub and isinstance(instance, dict):
                instance.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(base, {"properties": set_defaults})


def validate_with_defaults(instance: Any, schema: dict, where: str = "", registry=None
                           ) -> list[str]:
    """Validate ``instance`` in place against ``schema``, filling defaults; the problems as
    ``"config key 'where/a/b': message"`` lines (empty when valid)."""
    kwargs = {"registry": registry} if registry is not None else {}
    validator = _defaults_validator()(schema, **kwargs)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    keys = ("/".join([where, *map(str, e.absolute_path)]).strip("/") for e in errors)
    return [f"config key '{key or '(top level)'}': {e.message}" for key, e in zip(keys, errors)]


def schema_part(*path: str) -> dict:
    """The sub-schema at ``path`` (e.g. ``("evaluate", "benchmarks", "items")`` walks
    ``properties``/``items``), with the root's ``$defs`` so its references resolve."""
    root = yaml.safe_load(SCHEMA.read_text())
    node = root
    for key in path:
        node = node["items"] if key == "items" else node["properties"][key]
    return {**node, "$defs": root.get("$defs", {})}


# Deprecated config spellings: (what it was, what it is now). :func:`upgrade_config` moves
# them to their new place and says so; the schema knows only the new names.
DEPRECATED = [
    ("sft (section)", "warmup (section): the warm-up stage is `warmup` since 0.2; the "
     "training METHOD `sft` is unchanged"),
    ("train.teacher.kind: base", "train.teacher.kind: init (the weights this run starts "
     "from, train.init), since 0.2"),
]


def upgrade_config(config: dict) -> list[str]:
    """Rewrite deprecated keys and values of ``config`` in place to their current form (see
    :data:`DEPRECATED`); one warning line per rewrite. Called before validation, in the
    Snakefile and in :func:`load_config`."""
    notes = []
    if "sft" in config:
        old = config.pop("sft") or {}
        config["warmup"] = deep_merge(config.get("warmup") or {}, old)
        notes.append("config key 'sft' is deprecated: it is now 'warmup' (the warm-up "
                     "stage; the training method 'sft' is unchanged); read as 'warmup'")
    teacher = (config.get("train") or {}).get("teacher") or {}
    if teacher.get("kind") == "base":
        teacher["kind"] = "init"
        notes.append("config value train.teacher.kind: base is deprecated: it is now 'init' "
                     "(the weights the run starts from, train.init); read as 'init'")
    return notes


def validate_config(config: dict, schema_path: Path = SCHEMA) -> dict:
    """Validate ``config`` in place against the schema, filling defaults (as Snakemake does)."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    schema_path = Path(schema_path).resolve()

    def retrieve(uri: str):
        path = Path(uri.removeprefix("file://"))
        return Resource.from_contents(yaml.safe_load(path.read_text()), DRAFT202012)

    schema = yaml.safe_load(schema_path.read_text())
    schema["$id"] = schema_path.as_uri()
    problems = validate_with_defaults(config, schema, registry=Registry(retrieve=retrieve))
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config, merge ``overrides`` (nested dicts), upgrade deprecated keys (with
    a warning), validate and fill defaults."""
    import warnings

    config = yaml.safe_load(Path(path).read_text()) or {}
    if overrides:
        config = deep_merge(config, overrides)
    for note in upgrade_config(config):
        warnings.warn(f"{path}: {note}", FutureWarning, stacklevel=2)
    return validate_config(config)


def deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def get_key(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def rule_params(rule: str, config: dict, **extra: Any) -> dict:
    """The config slice ``rule`` reads, as a nested dict (plus ``extra`` items).

    Rules with one job per method or benchmark narrow it further: ``train`` params are the
    method's resolved spec (:func:`cordflow.train.methods.method_params`), ``evaluate``
    params hold only the benchmark's own entry (:func:`benchmark_params`)."""
    out: dict = {}
    for dotted in RULE_KEYS[rule]:
        parts = dotted.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = copy.deepcopy(get_key(config, dotted))
    out.update(extra)
    return out


def benchmark_params(config: dict, name: str) -> dict:
    """The ``evaluate`` rule's params for benchmark ``name``: its entry alone, so editing one
    benchmark reruns only its evaluations."""
    out = rule_params("evaluate", config)
    entry = [b for b in config["evaluate"]["benchmarks"] if b["name"] == name]
    out["evaluate"]["benchmarks"] = copy.deepcopy(entry)
    return out


def code_version(rule: str) -> str:
    """sha256 (16 hex) over the source files of the modules ``rule`` runs."""
    h = hashlib.sha256()
    for rel in RULE_CODE[rule]:
        target = PKG_DIR / rel
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for f in files:
            if f.exists():
                h.update(str(f.relative_to(PKG_DIR)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def section(params: dict, name: str) -> dict:
    """Config section ``name`` of a rule's params, validated against its part of the schema
    with defaults filled in (so ``--params`` written by hand may leave keys out)."""
    cfg = copy.deepcopy(params.get(name) or {})
    problems = validate_with_defaults(cfg, schema_part(name), where=name)
    if problems:
        raise ValueError(f"invalid {name} config:\n  " + "\n  ".join(problems))
    return cfg


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): stable params strings for Snakemake."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
