"""The extension registries and everything that names their entries agree.

Each extension point is one registry (README "Extending cordflow"): methods
(cordflow.train.methods.METHODS), TTS backends (cordflow.tts.backends.BACKEND_CLASSES and
BACKEND_ENVS). The config schema's enums and patterns, the rules' environments and the CLI
are checked against them here, so adding an entry without its checklist fails a test.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cordflow.cli import app
from cordflow.config import load_config, upgrade_config
from cordflow.train import methods
from cordflow.tts import backends

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
README = (REPO / "README.md").read_text()


def _train_props() -> dict:
    return SCHEMA["properties"]["train"]["allOf"][0]["properties"]


# -- methods ---------------------------------------------------------------------------
def test_schema_method_pattern_is_the_registry_pattern():
    assert _train_props()["methods"]["items"]["pattern"] == methods.name_pattern()


def test_summarize_pairs_name_base_warmup_or_a_method():
    """summarize.pairs: a pair names models (base, warmup, any method name); one this run
    lacks is skipped by the stage, a name that is no model fails at DAG build."""
    from cordflow.config import ConfigError, validate_and_check

    def check(pairs):
        cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        return validate_and_check({**cfg, "summarize": {"pairs": pairs}})

    ok = [["cord_a1.5_b2", "base"], ["opd", "warmup"], *[[m, "sft"] for m in methods.METHODS
                                                         if m != "sft"]]
    assert check(ok)["summarize"]["pairs"] == ok
    with pytest.raises(ConfigError, match=r"config key 'summarize.pairs\[0\]\[1\]': 'kd' is "
                                          r"no model; allowed: base, warmup or a method name"):
        check([["cord", "kd"]])
    for bad in ([["cord", "cord"]], [["cord"]]):  # a pair of two different models
        with pytest.raises(ConfigError, match=r"config key 'summarize.pairs\[0\]'"):
            check(bad)


@pytest.mark.parametrize("name", [*methods.METHODS, "cord_a1.5_b2", "cord_a2_b1"])
def test_every_name_the_schema_accepts_resolves(name):
    assert re.fullmatch(methods.name_pattern(), name)
    train = load_config(REPO / "config" / "config.yaml")["train"]
    spec = methods.resolve(name, train)
    assert spec["name"] == name and spec["kind"] in methods.METHODS


@pytest.mark.parametrize("name", ["grpo_a1_b1", "sft_a2_b2", "cord_a_b1", "CORD", "kd"])
def test_names_resolve_rejects_the_schema_rejects_too(name):
    """A sweep suffix is only for methods marked sweep: schema and resolve agree."""
    assert not re.fullmatch(methods.name_pattern(), name)
    with pytest.raises(ValueError, match="unknown method"):
        methods.resolve(name, load_config(REPO / "config" / "config.yaml")["train"])
    with pytest.raises(ValueError, match="config key 'train/methods/0'"):
        load_config(REPO / "config" / "config.yaml", {"train": {"methods": [name]}})


def test_each_method_spec_carries_exactly_its_terms():
    train = load_config(REPO / "config" / "config.yaml")["train"]
    for m in methods.METHODS.values():
        spec = methods.resolve(m.name, train)
        assert ("offpolicy" in spec) == bool(m.offpolicy), m.name
        assert ("token" in spec) == m.token, m.name
        assert ("sequence" in spec) == m.sequence, m.name
        if m.token_weights:
            assert (spec["token"]["alpha"], spec["token"]["beta"]) == m.token_weights


def test_cli_and_readme_name_every_method():
    help_text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    for name in methods.METHODS:
        assert name in help_text, f"`cordflow train --help` does not list method {name}"
        assert f"`{name}`" in README, f"README does not describe method `{name}`"


# -- TTS backends ------------------------------------------------------------------------
def test_schema_backend_enum_is_the_registry():
    tts = SCHEMA["properties"]["tts"]["properties"]
    assert tts["backend"]["enum"] == list(backends.BACKEND_CLASSES)
    assert tts["voicings"]["additionalProperties"]["properties"]["backend"]["enum"] == list(
        backends.BACKEND_CLASSES)
    assert set(backends.BACKEND_ENVS) == set(backends.BACKEND_CLASSES)


@pytest.mark.parametrize("name", list(backends.BACKEND_CLASSES))
def test_every_backend_names_a_backend_class_and_an_env_file(name):
    module, cls = backends.BACKEND_CLASSES[name].split(":")
    klass = getattr(importlib.import_module(module), cls)
    assert issubclass(klass, backends.Backend) and klass.name == name
    assert (REPO / "envs" / f"{backends.BACKEND_ENVS[name]}.yaml").is_file()


def test_unknown_backend_names_the_key():
    with pytest.raises(backends.BackendError, match="config key 'tts.backend'"):
        backends.get_backend({"backend": "festival"})


# -- deprecated names ---------------------------------------------------------------------
def test_old_sft_section_is_read_as_warmup_with_a_warning(tmp_path):
    old = tmp_path / "old.yaml"
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["sft"] = cfg.pop("warmup")
    cfg["sft"]["lr"] = 0.0042
    cfg["train"]["teacher"] = {"kind": "base"}
    old.write_text(yaml.safe_dump(cfg))
    with pytest.warns(FutureWarning) as caught:
        upgraded = load_config(old)
    assert "sft" not in upgraded and upgraded["warmup"]["lr"] == 0.0042
    assert upgraded["train"]["teacher"]["kind"] == "init"
    messages = [str(w.message) for w in caught]
    assert any("'sft' is deprecated" in m for m in messages), messages
    assert any("teacher.kind: base is deprecated" in m for m in messages), messages


def test_an_old_sft_overlay_overrides_the_default_warmup():
    cfg = {"warmup": {"steps": 300, "lr": 0.001}, "sft": {"lr": 0.5}}
    notes = upgrade_config(cfg)
    assert cfg == {"warmup": {"steps": 300, "lr": 0.5}} and len(notes) == 1


# -- rollout engines -------------------------------------------------------------------
def test_schema_engine_enum_is_the_registry():
    from cordflow.train.rollout import ENGINES

    assert _train_props()["rollout_engine"]["enum"] == list(ENGINES)


def test_every_engine_implements_the_interface():
    from cordflow.train.rollout import ENGINES

    for name, engine in ENGINES.items():
        assert callable(getattr(engine, "generate", None)), name
        assert callable(getattr(engine, "sync", None)), name


# -- stages (rules) ------------------------------------------------------------------------
def _rule_blocks() -> dict[str, str]:
    """rule name -> its text, for every rule/checkpoint in rules/*.smk."""
    blocks = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^(?:rule|checkpoint) (\w+):\n", path.read_text(), flags=re.M)
        blocks.update(zip(parts[1::2], parts[2::2]))
    return blocks


def test_every_stage_has_its_checklist():
    """README "Extending cordflow", a new stage: a rule with log, conda and a shell that
    calls its `cordflow` command; its config slice and code in cordflow.config; its threads
    and resources in the workflow profile."""
    from cordflow.config import RULE_CODE, RULE_KEYS

    blocks = _rule_blocks()
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    assert set(blocks) == set(RULE_KEYS) == set(RULE_CODE)
    for rule, text in blocks.items():
        command = rule.replace("_", "-")
        assert command in commands, f"no `cordflow {command}` command for rule {rule}"
        assert f"python -m cordflow {command} " in text, rule
        for directive in ("log:", "conda:", "params:"):
            assert f"    {directive}" in text, f"rule {rule} has no {directive}"
        assert f"code=code_version(\"{rule}\")" in text, f"rule {rule}: no code param"
        assert rule in profile["set-threads"] and rule in profile["set-resources"], rule
        for key in RULE_KEYS[rule]:
            assert key.split(".")[0] in SCHEMA["properties"], f"{rule} reads unknown {key}"


# -- benchmark kinds -----------------------------------------------------------------------
def _bench_entry_schema() -> dict:
    return SCHEMA["properties"]["evaluate"]["properties"]["benchmarks"]["items"]


def _entry_errors(entry: dict) -> list[str]:
    from cordflow.config import schema_part, validate_with_defaults

    return validate_with_defaults(dict(entry), schema_part("evaluate", "benchmarks", "items"))


def test_schema_benchmark_kind_enum_is_the_registry():
    from cordflow.evaluate.kinds import KINDS

    assert _bench_entry_schema()["properties"]["kind"]["enum"] == list(KINDS)


def test_each_kind_requires_in_the_schema_what_its_adapter_declares():
    """The schema's if/then blocks: an entry needs exactly its kind's ``requires`` keys and
    may not have a key only other kinds require."""
    from cordflow.evaluate.kinds import KINDS

    every = {key for kind in KINDS.values() for key in kind.requires}
    for name, kind in KINDS.items():
        assert kind.name == name and kind.requires, name
        entry = {"name": "b", "kind": name, **{key: "x" for key in kind.requires}}
        assert _entry_errors(entry) == [], name
        for key in kind.requires:
            without = {k: v for k, v in entry.items() if k != key}
            assert _entry_errors(without), f"{name} validates without its required {key}"
        for key in every - set(kind.requires):
            assert _entry_errors({**entry, key: "x"}), f"{name} accepts {key} (another kind's)"


def test_only_audio_only_kinds_have_no_text_form():
    from cordflow.evaluate.kinds import KINDS

    # their questions come with a sound clip and are about it: no text counterpart
    audio_only = {"mmau", "audio_skill"}
    assert {name for name, kind in KINDS.items() if not kind.has_text} == audio_only


def test_schema_skill_enums_are_the_skills_registry():
    """The audio skills an audio_skill entry and base.skills may name are cordflow.skills'."""
    from cordflow.skills import DEFAULT, SKILLS

    entry = _bench_entry_schema()["properties"]["skills"]["items"]["enum"]
    base = SCHEMA["properties"]["base"]["properties"]["skills"]["allOf"][0]["properties"]
    assert entry == base["skills"]["items"]["enum"] == list(SKILLS)
    assert base["skills"]["default"] == list(DEFAULT)


def test_dataset_kinds_map_every_field_the_schema_lets_an_entry_override():
    from cordflow.evaluate.kinds import KINDS, DatasetKind

    fields = set(_bench_entry_schema()["properties"]["mapping"]["properties"])
    for name, kind in KINDS.items():
        if isinstance(kind, DatasetKind):
            assert set(kind.mapping) == fields, name
            assert kind.stage_hint.format(subset="s", path="p", where="w"), name


def test_kind_inputs_are_evaluate_options():
    """Each input a kind reads becomes `--<name> PATH` of `cordflow evaluate` (rule
    evaluate)."""
    from cordflow.evaluate import kinds

    help_text = CliRunner().invoke(app, ["evaluate", "--help"], terminal_width=200).output
    for name, kind in kinds.KINDS.items():
        entry = {"name": "b", "kind": name, **{key: "x" for key in kind.requires}}
        for option in kind.inputs(entry):
            assert f"--{option}" in help_text, f"{name} reads --{option}: not a cli option"


# -- the README's checklists -----------------------------------------------------------------
def _extending_section() -> str:
    text = README.split("## Extending cordflow", 1)[1]
    return text.split("\n## ", 1)[0]


def test_readme_extending_names_what_exists():
    """Every file and registry the "Extending cordflow" checklists name exists, so the
    checklists cannot point at code that moved."""
    section = _extending_section()
    names = {n for n in re.findall(r"`([^`]+)`", section) if "<" not in n}
    files = {n for n in names if re.fullmatch(r"[\w./-]+\.(py|smk|yaml|md)|Snakefile", n)}
    assert "workflow/cordflow/train/methods.py" in files and len(files) > 10
    for f in files:
        assert (REPO / f).exists(), f"README 'Extending cordflow' names {f}: no such file"
    registries = {"METHODS": methods, "TERMS": "cordflow.train.step", "KINDS":
                  "cordflow.evaluate.kinds", "ENGINES": "cordflow.train.rollout",
                  "BACKEND_CLASSES": backends, "BACKEND_ENVS": backends,
                  "RULE_KEYS": "cordflow.config", "RULE_CODE": "cordflow.config"}
    for name, module in registries.items():
        assert f"`{name}`" in section or f'`{name}[' in section, f"README omits {name}"
        mod = importlib.import_module(module) if isinstance(module, str) else module
        assert isinstance(getattr(mod, name), dict), name
    for dotted in {n for n in names if n.startswith("cordflow.")}:
        module, _, attr = dotted.rstrip("()").rpartition(".")
        assert hasattr(importlib.import_module(module), attr), dotted
