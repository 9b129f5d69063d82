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
# model.preset values built here with fresh random weights (the base stage trains them);
# the others are staged checkpoints (cordflow.models).
BUILT_PRESETS = ("tiny", "qwen2-audio-shape")

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
        "tts.voicings",
        "tts.piper",
    ],
    "tts_gather": [],
    "base": ["seed", "model", "base"],
    "warmup": ["seed", "model", "warmup"],
    "train": ["seed", "model", "train"],
    "evaluate": ["seed", "model", "evaluate.batch_size", "evaluate.engine", "evaluate.vllm"],
    "summarize": ["seed", "summarize"],
    "provenance_summary": [],
}

# rule -> the package files (relative to cordflow/) whose code it runs. Their content hash
# is a param, so editing one stage's code reruns that stage (shell rules are otherwise blind
# to code changes). Shared infrastructure that only moves bytes around is not listed.
# tests/test_reruns.py checks each list is exactly the code the stage's CLI command reaches
# (the table readers in source/schema.py and tts/schema.py included).
_TTS_SYNTH = ["audio.py", "tts/__init__.py", "tts/backends.py", "tts/coqui.py", "tts/espeak.py",
              "tts/piper.py", "tts/post.py", "tts/quality.py", "tts/asr.py", "tts/schema.py",
              "tts/shard.py", "tts/store.py", "tts/voices.py"]
_TABLES = ["source/schema.py", "tts/schema.py"]
# The vLLM engine: the job's side, and the server and plugin it runs in the vLLM venv.
_VLLM = ["vllm_engine/engine.py", "vllm_engine/process.py", "vllm_engine/protocol.py",
         "vllm_engine/weights.py", "vllm_engine/server.py", "vllm_engine/plugin.py", "procs.py"]
_TRAIN = ["train/run.py", "train/methods.py", "train/loop.py", "train/step.py",
          "train/losses.py", "train/judges.py", "train/rollout.py", "train/kd.py",
          "train/dist.py", *_VLLM]
RULE_CODE: dict[str, list[str]] = {
    "source": ["source", "scoring.py"],  # source/rows.py canonicalises numbers as scored
    "tts_plan": ["tts/__init__.py", "tts/plan.py", "tts/schema.py", "source/schema.py"],
    "tts_shard": _TTS_SYNTH,
    "tts_gather": ["tts/gather.py", "tts/schema.py"],
    "base": ["models.py", "audio.py", "base.py", "train/loop.py", "train/dist.py", "procs.py",
             "data.py", "infer.py", "scoring.py", "train/losses.py", "skills.py", *_TABLES],
    # skills.py: a kd method's acoustic items (train.kd.acoustic_skills; train/run.py)
    "warmup": ["models.py", "audio.py", "warmup.py", *_TRAIN, "data.py", "infer.py", "scoring.py",
               "skills.py", *_TABLES],
    "train": ["models.py", "audio.py", *_TRAIN, "data.py", "infer.py", "scoring.py",
              "skills.py", *_TABLES],
    "evaluate": ["models.py", "audio.py", "evaluate/run.py", "evaluate/items.py", *_VLLM,
                 "evaluate/kinds.py", "evaluate/staged.py", "infer.py", "scoring.py",
                 "source/rows.py", "source/hf.py", "skills.py", *_TABLES],
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


# -- checks when the DAG is built (rules/common.smk) -----------------------------------------
# The schema checks each value's form; :func:`check_config` checks what the values NAME
# against what exists (splits, voices, models, methods, judges, local files, staged data),
# so a typo stops the run before any job, naming the key, the value and what is allowed.
# Light on purpose (the Snakefile calls it on every `snakemake -n`): no torch, no pandas;
# where a stage has its own check and it imports lightly, it is called rather than copied.


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem, one per line, as
    ``config key 'a.b': what is wrong, what is allowed``."""


def _dotted(parts) -> str:
    """``['tts', 'voices', 'train', 0]`` -> ``tts.voices.train[0]``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _allowed_keys(schema: dict, root: dict) -> list[str]:
    """The property names a (sub-)schema allows, through allOf and local $refs."""
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref.startswith("#/$defs/"):
            schema = {**root.get("$defs", {}).get(ref.split("/")[-1], {}), **{
                k: v for k, v in schema.items() if k != "$ref"}}
    keys = list(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        keys += [k for k in _allowed_keys(sub, root) if k not in keys]
    return keys


def schema_problems(config: dict, schema_path: Path = SCHEMA) -> list[str]:
    """Validate ``config`` in place against the schema, filling defaults (as
    :func:`validate_config`); each problem as ``config key 'a.b[0]': message``, an unknown
    key with the keys allowed there."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    schema_path = Path(schema_path).resolve()

    def retrieve(uri: str):
        return Resource.from_contents(yaml.safe_load(Path(uri.removeprefix("file://"))
                                                     .read_text()), DRAFT202012)

    schema = yaml.safe_load(schema_path.read_text())
    schema["$id"] = schema_path.as_uri()
    validator = _defaults_validator()(schema, registry=Registry(retrieve=retrieve))
    out = []
    for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        message = e.message
        if e.validator in ("additionalProperties", "unevaluatedProperties"):
            allowed = _allowed_keys(e.schema, schema)
            if allowed:
                message += f"; allowed: {', '.join(allowed)}"
        out.append(f"config key '{_dotted(e.absolute_path)}': {message}")
    return out


def _listed(values) -> str:
    return ", ".join(map(str, values)) if values else "(none)"


def _split_problems(config: dict) -> list[str]:
    splits = list(config["source"]["splits"])
    allowed = f"allowed: the splits of source.splits ({_listed(splits)})"
    out = []
    for required, why in (("train", "every model stage trains on it"),
                          ("test", "the base stage reports its held-out accuracy on it")):
        if required not in splits:
            out.append(f"config key 'source.splits': has no '{required}' split ({why}); "
                       f"add it")
    named = [(f"tts.heldout_splits[{i}]", s) for i, s in
             enumerate(config["tts"]["heldout_splits"])]
    builtin = config["source"]["builtin"]
    named += [(f"source.builtin.n_per_family.{s}", s)
              for s in builtin["n_per_family"] if builtin["enabled"]]
    named += [(f"source.files[{i}].split", f["split"])
              for i, f in enumerate(config["source"]["files"]) if f.get("split")]
    named += [(f"source.hf[{i}].splits.{k}", v) for i, h in enumerate(config["source"]["hf"])
              for k, v in (h.get("splits") or {}).items()]
    named += [(f"evaluate.benchmarks[{i}].split", b["split"])
              for i, b in enumerate(config["evaluate"]["benchmarks"]) if "split" in b]
    if config["model"]["preset"] in BUILT_PRESETS:
        named += [("base.text.bar_split", config["base"]["text"]["bar_split"])]
    acoustic = config["train"].get("kd", {}).get("acoustic_split")
    named += [("train.kd.acoustic_split", acoustic)] if acoustic else []
    for key, value in named:
        if value not in splits:
            out.append(f"config key '{key}': '{value}' is not a source split; {allowed}")
    out += [f"config key 'evaluate.benchmarks[{i}].split': an audio_skill benchmark on "
            f"'train' asks about the clips the base stage trains its skills on (base.skills); "
            f"allowed: another split (test: held-out voices)"
            for i, b in enumerate(config["evaluate"]["benchmarks"])
            if b["kind"] == "audio_skill" and b.get("split") == "train"]
    if "train" in config["tts"]["heldout_splits"]:
        out.append("config key 'tts.heldout_splits': lists 'train': the training split "
                   "cannot be spoken in the held-out voices; allowed: the other splits")
    names = [b["name"] for b in config["evaluate"]["benchmarks"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            out.append(f"config key 'evaluate.benchmarks[{i}].name': '{name}' is the name of "
                       f"an earlier benchmark too; allowed: a name of its own")
    return out


def _model_problems(config: dict) -> list[str]:
    from cordflow.train.methods import method_params

    out = []
    methods = list(config["train"]["methods"])
    specs = {}
    for i, name in enumerate(methods):
        try:
            specs[name] = method_params(config, name)["method"]
        except (ValueError, KeyError) as e:
            out.append(f"config key 'train.methods[{i}]': {name!r} cannot be resolved: {e}")
    models = ["base", "warmup", *methods]
    ref = config.get("summarize", {}).get("reference", "base")
    if ref not in models:
        out.append(f"config key 'summarize.reference': '{ref}' is not a model of this run; "
                   f"allowed: {_listed(models)} (base, warmup and train.methods)")
    model = config["model"]
    if model["preset"] not in BUILT_PRESETS:
        how = (f"preset '{model['preset']}' loads staged weights only (nothing is "
               "downloaded): stage them in a local folder (config.json, "
               "preprocessor_config.json, tokenizer files, *.safetensors) and set model.path "
               "to it (see config/presets/)")
        if not model.get("path"):
            out.append(f"config key 'model.path': is not set; {how}")
        elif not Path(model["path"]).is_dir():
            out.append(f"config key 'model.path': {model['path']} is not a folder; {how}")
        elif not (Path(model["path"]) / "config.json").is_file():
            out.append(f"config key 'model.path': {model['path']} has no config.json; {how}")
    if any("judge" in spec for spec in specs.values()):
        out += _judge_problems(config["train"]["judge"])
    return out


def _kd_problems(config: dict) -> list[str]:
    """train.kd.acoustic_skills takes the base's skill items (base.skills): there must be
    some."""
    kd, scfg = config["train"].get("kd", {}), config["base"]["skills"]
    if kd.get("acoustic_skills") and not scfg["items"]:
        return ["config key 'train.kd.acoustic_skills': is true but base.skills.items is 0 "
                "(no audio-skill items: the base learns none); allowed: base.skills.items > 0, "
                "or acoustic_skills false"]
    return []


def _judge_problems(judge: dict) -> list[str]:
    """The judge's required keys (as cordflow.train.judges.make_judge, which imports too
    much to run here, and LocalLMJudge/EndpointJudge check them when the job starts)."""
    if judge.get("kind") != "llm":
        return []
    local, url = judge.get("model_path"), judge.get("base_url")
    if (local is None) == (url is None):
        has = "both" if local is not None else "neither"
        return [f"config key 'train.judge': kind llm needs exactly one of model_path (a "
                f"staged local model) and base_url (an OpenAI-compatible server); it has {has}"]
    if local is not None:
        if not (Path(local) / "config.json").is_file():
            return [f"config key 'train.judge.model_path': no transformers model at {local} "
                    "(config.json missing); stage the judge model there with "
                    "save_pretrained (nothing is downloaded)"]
        return []
    out = []
    if not str(url).startswith(("http://", "https://")):
        out.append(f"config key 'train.judge.base_url': '{url}' is not an http(s) URL; "
                   "allowed: e.g. http://127.0.0.1:8000/v1")
    if not judge.get("model"):
        out.append("config key 'train.judge.model': is not set; base_url needs the served "
                   "model's name (as the server lists it under /v1/models)")
    return out


def _file_problems(config: dict) -> list[str]:
    out = []
    for i, f in enumerate(config["source"]["files"]):
        if not Path(f["path"]).is_file():
            out.append(f"config key 'source.files[{i}].path': {f['path']} is not a file (from "
                       f"{Path.cwd()}); allowed: a jsonl, csv or parquet file")
    from cordflow.evaluate.kinds import KINDS

    for i, b in enumerate(config["evaluate"]["benchmarks"]):
        kind = KINDS.get(b["kind"])
        if kind is None or "path" not in b or _dataset_staged(b["path"], b.get("cache_dir")):
            continue
        where = f"evaluate.benchmarks[{i}]"
        hint = " ".join((kind.stage_hint or "").format(
            subset=b.get("subset") or "<subset>", path=b["path"], where=where).split())
        out.append(f"config key '{where}.path': the {kind.name} dataset '{b['path']}' is not "
                   f"staged on this machine (no such file or folder from {Path.cwd()}, nor "
                   f"in the datasets cache) and nothing is downloaded; to stage it, {hint}")
    return out


def _dataset_staged(path: str, cache_dir: str | None) -> bool:
    """Whether ``path`` is a local file or folder, or a dataset name with a folder in a
    Hugging Face cache (datasets: ``org___name``; the hub: ``datasets--org--name``)."""
    import os

    if Path(path).exists():
        return True
    names = {path.replace("/", "___").lower(), "datasets--" + path.replace("/", "--").lower()}
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    roots = [cache_dir, os.environ.get("HF_DATASETS_CACHE"), os.environ.get("HF_HUB_CACHE"),
             hf_home / "datasets", hf_home / "hub"]
    for root in filter(None, roots):
        root = Path(root)
        if root.is_dir() and any(c.name.lower() in names for c in root.iterdir()):
            return True
    return False


class _NamedVoices:
    """A stand-in backend for :class:`cordflow.tts.voices.VoiceChooser` where the real one
    is too costly to start here: a voice per name (Coqui's voice set is its names)."""

    def voice_set(self, names: list[str], voices_cfg: dict, key: str) -> list:
        from cordflow.tts.backends import Voice

        return [Voice(n) for n in names]


def _voice_problems(config: dict) -> list[str]:
    """The stage's own voice checks (VoiceChooser: every voice exists in the backend,
    held-out voices are not training voices, train_takes <= training voices), with the
    backend's voice list where that is cheap (espeak; Coqui: its model files exist)."""
    from cordflow.tts.backends import BackendError, VoiceError
    from cordflow.tts.voices import VoiceChooser

    tts = config["tts"]
    out: list[str] = []
    backend: object = _NamedVoices()
    if tts["backend"] == "espeak":
        try:
            from cordflow.tts.espeak import EspeakBackend

            backend = EspeakBackend(tts)
        except (ImportError, BackendError):
            pass  # not installed where Snakemake runs: the tts_shard job checks
    elif tts["backend"] == "coqui":
        from cordflow.tts import coqui

        for check in (coqui.locate, coqui.reference_wavs):
            try:
                check(tts["coqui"])
            except BackendError as e:
                out.append(str(e))
    else:  # a backend whose voice set is not its names: only the names are compared
        tts = {**tts, "train_takes": 1}
    try:
        VoiceChooser(backend, tts, config["seed"], _voicing_backends(tts, out))
    except VoiceError as e:
        out.append(str(e))
    return out


def _voicing_backends(tts: dict, out: list[str]) -> dict:
    """The backends of tts.voicings whose voice list is cheap to get here (espeak; piper:
    its files located and hashed, its voice config read, nothing loaded), where their
    packages are installed (else the tts_shard job checks); a problem goes to ``out``."""
    import importlib.util

    from cordflow.tts.backends import BackendError

    used = {v["backend"] for v in tts["voicings"].values()}
    found: dict = {}
    if "espeak" in used:
        try:
            from cordflow.tts.espeak import EspeakBackend

            found["espeak"] = EspeakBackend(tts)
        except (ImportError, BackendError):
            pass
    if "piper" in used:
        from cordflow.tts import piper

        try:
            if tts["piper"].get("model_path"):
                piper.locate(tts["piper"])  # files on this disk: checked anywhere
            if importlib.util.find_spec("piper") is not None:
                found["piper"] = piper.PiperBackend(tts)
        except BackendError as e:
            out.append(str(e))
    return found


def _voicing_problems(config: dict) -> list[str]:
    """tts.voicings: their splits are source splits, their backends share the environment
    of one tts_shard job, and each benchmark's `voicing` is one that speaks its split."""
    from cordflow.tts.backends import MAIN_VOICING, BackendError, shard_env

    tts, splits = config["tts"], list(config["source"]["splits"])
    out = []
    for name, v in sorted(tts["voicings"].items()):
        out += [f"config key 'tts.voicings.{name}.splits[{i}]': '{s}' is not a source split; "
                f"allowed: {_listed(splits)}" for i, s in enumerate(v["splits"]) if s not in splits]
    try:
        shard_env(tts)
    except BackendError as e:
        out.append(str(e))
    for i, b in enumerate(config["evaluate"]["benchmarks"]):
        voicing = b.get("voicing", MAIN_VOICING)
        if voicing == MAIN_VOICING:
            continue
        if voicing not in tts["voicings"]:
            out.append(f"config key 'evaluate.benchmarks[{i}].voicing': '{voicing}' is not a "
                       f"voicing; allowed: {_listed([MAIN_VOICING, *tts['voicings']])}")
        elif b.get("split") not in tts["voicings"][voicing]["splits"]:
            out.append(f"config key 'evaluate.benchmarks[{i}].voicing': voicing '{voicing}' "
                       f"does not speak split '{b.get('split')}' (its splits: "
                       f"{_listed(tts['voicings'][voicing]['splits'])}); add the split to "
                       f"tts.voicings.{voicing}.splits")
    return out


def _pairs_problems(config: dict) -> list[str]:
    """summarize.pairs name models: base, warmup or a method name (one this run does not
    train is skipped by the stage, with a log line, so the default pairs fit any run)."""
    import re

    from cordflow.train.methods import name_pattern

    out = []
    for i, pair in enumerate(config.get("summarize", {}).get("pairs", [])):
        for j, name in enumerate(pair):
            if name not in ("base", "warmup") and not re.fullmatch(name_pattern(), name):
                out.append(f"config key 'summarize.pairs[{i}][{j}]': '{name}' is no model; "
                           f"allowed: base, warmup or a method name (as in train.methods)")
    return out


def check_config(config: dict) -> list[str]:
    """What the values of a validated ``config`` (defaults filled) name that does not
    exist or cannot work; one ``config key 'a.b': ...`` line each (empty: fine)."""
    # Each check called by name, not through a module-level tuple: tests/test_reruns.py
    # reads a module-level registry as code that every stage importing this module runs.
    return [*_split_problems(config), *_model_problems(config), *_kd_problems(config),
            *_file_problems(config), *_voice_problems(config), *_voicing_problems(config),
            *_pairs_problems(config)]


def validate_and_check(config: dict, schema_path: Path = SCHEMA) -> dict:
    """The DAG's gate (rules/common.smk): validate ``config`` in place (defaults filled),
    then :func:`check_config`; :class:`ConfigError` listing every problem."""
    problems = schema_problems(config, schema_path)
    if not problems:
        problems = check_config(config)
    if problems:
        raise ConfigError(f"invalid configuration ({len(problems)} problem"
                          f"{'s' if len(problems) > 1 else ''}):\n  " + "\n  ".join(problems))
    return config
