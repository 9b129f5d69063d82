"""What a change reruns (issue #5 section 2): exactly the changed stage's jobs and their
dependants, nothing else.

Against the completed run of tests/dagrun.py (config/test.yaml: two TTS shards, methods
sft and cord, one benchmark), ``snakemake -n`` must list exactly the expected jobs after
one knob of every stage changes (a config file layered after the run's own), after one
question is added to a local QA file, and after one stage's code is edited (in a copy of
the run). The static test checks that ``cordflow.config.RULE_CODE`` lists exactly the
code each stage runs, so that editing any of it reruns that stage and nothing else.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from dagrun import (  # noqa: F401
    LOCAL_QA,
    LOCAL_ROWS,
    REPO,
    completed_run,
    config_args,
    copy_run,
    dry_run,
    snakemake,
)

from cordflow.config import RULE_CODE
from cordflow.tts.plan import shard_of

N_SHARDS = 2


def shards(n: int = N_SHARDS) -> set[str]:
    return {f"tts_shard[k={k}]" for k in range(n)}


BENCHMARKS = ("builtin", "audio_skill")  # config/test.yaml's


def evals(*models: str, benchmark: str | None = None) -> set[str]:
    """The evaluate jobs of ``models`` on ``benchmark`` (default: every benchmark)."""
    return {f"evaluate[model={m},benchmark={b}]" for m in models
            for b in ([benchmark] if benchmark else BENCHMARKS)}


TRAIN = {"train[method=sft]", "train[method=cord]"}
LAST = {"summarize", "provenance_summary"}
ALL_EVALS = evals("base", "warmup", "sft", "cord")
FROM_BASE = {"base", "warmup", *TRAIN, *ALL_EVALS, *LAST}
FROM_SHARDS = {*shards(), "tts_gather", *FROM_BASE}
EVERYTHING = {"source", "tts_plan", *FROM_SHARDS}

# (knob, config layer, the jobs `snakemake -n` must list). Before the tts_plan checkpoint
# has rerun, a dry run cannot know which shard plans change, so a change upstream of it
# lists every shard (test_new_question_reruns_one_shard shows the run itself reruns one).
KNOBS = [
    ("seed", {"seed": 99}, EVERYTHING),
    ("source.builtin.n_per_family", {"source": {"builtin": {"n_per_family": {"test": 7}}}},
     EVERYTHING),
    ("tts.n_shards", {"tts": {"n_shards": 3}},
     {"tts_plan", *shards(3), "tts_gather", *FROM_BASE}),
    ("tts.post.loudness_lufs", {"tts": {"post": {"loudness_lufs": -20.0}}}, FROM_SHARDS),
    ("tts.train_takes", {"tts": {"train_takes": 2}}, FROM_SHARDS),
    ("tts.piper.length_scale", {"tts": {"piper": {"length_scale": 1.1}}}, FROM_SHARDS),
    ("model.max_new_tokens", {"model": {"max_new_tokens": 5}}, FROM_BASE),
    ("base.audio.steps", {"base": {"audio": {"steps": 3}}}, FROM_BASE),
    ("base.skills.items", {"base": {"skills": {"items": 5}}}, FROM_BASE),
    ("warmup.lr", {"warmup": {"lr": 3e-4}},
     {"warmup", *TRAIN, *evals("warmup", "sft", "cord"), *LAST}),
    ("train.lr", {"train": {"lr": 3e-4}}, {*TRAIN, *evals("sft", "cord"), *LAST}),
    ("train.init", {"train": {"init": "base"}}, {*TRAIN, *evals("sft", "cord"), *LAST}),
    ("train.offpolicy.temperature", {"train": {"offpolicy": {"temperature": 0.5}}},
     {"train[method=sft]", *evals("sft"), *LAST}),
    ("train.token.alpha", {"train": {"token": {"alpha": 3.0}}},
     {"train[method=cord]", *evals("cord"), *LAST}),
    ("train.sequence.temperature", {"train": {"sequence": {"temperature": 0.7}}},
     {"train[method=cord]", *evals("cord"), *LAST}),
    ("evaluate.batch_size", {"evaluate": {"batch_size": 8}}, {*ALL_EVALS, *LAST}),
    ("evaluate.benchmarks (one added)",
     {"evaluate": {"benchmarks": [{"name": "builtin", "kind": "qa_split", "split": "test"},
                                  {"name": "seen", "kind": "qa_split", "split": "train"}]}},
     {*evals("base", "warmup", "sft", "cord", benchmark="seen"), *LAST}),
    ("evaluate.benchmarks (entry changed)",
     {"evaluate": {"benchmarks": [{"name": "builtin", "kind": "qa_split", "split": "train"},
                                  {"name": "audio_skill", "kind": "audio_skill",
                                   "split": "test", "skills": ["rate"]}]}},
     {*evals("base", "warmup", "sft", "cord", benchmark="builtin"), *LAST}),
    ("summarize.n_boot", {"summarize": {"n_boot": 500}}, LAST),
]


def test_the_test_config_is_what_these_expectations_assume():
    import yaml

    from cordflow.config import load_config

    # as Snakemake merges them: the Snakefile's configfile, then --configfile test.yaml
    test = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg = load_config(REPO / "config" / "config.yaml", overrides=test)
    assumed = {"methods": ["sft", "cord"], "n_shards": N_SHARDS, "init": "warmup",
               "benchmarks": list(BENCHMARKS)}
    actual = {"methods": cfg["train"]["methods"], "n_shards": cfg["tts"]["n_shards"],
              "init": cfg["train"]["init"],
              "benchmarks": [b["name"] for b in cfg["evaluate"]["benchmarks"]]}
    assert actual == assumed, "config/test.yaml changed: update the job sets in this file"


def _diff(got: set[str], want: set[str]) -> str:
    return f"unexpected: {sorted(got - want)}; missing: {sorted(want - got)}"


@pytest.mark.slow
@pytest.mark.parametrize("knob,layer,want", KNOBS, ids=[k[0] for k in KNOBS])
def test_a_knob_reruns_its_stage_and_dependants_only(completed_run, tmp_path, knob, layer, want):
    got = dry_run(completed_run.require().path, layer, tmp=tmp_path)
    assert got == want, f"{knob}: {_diff(got, want)}"


@pytest.mark.slow
def test_nothing_changed_lists_nothing(completed_run, tmp_path):
    assert dry_run(completed_run.require().path, tmp=tmp_path) == set()


@pytest.mark.slow
def test_touching_files_reruns_nothing(completed_run, tmp_path):
    """Inputs are compared by checksum: a new mtime with the same bytes is no change."""
    run = copy_run(completed_run, tmp_path / "run")
    for rel in (LOCAL_QA, "results/qa/train.parquet", "results/audio/plan/0.parquet",
                "results/audio/manifest.parquet"):
        (run / rel).touch()
    assert dry_run(run, tmp=tmp_path) == set()


@pytest.mark.slow
def test_new_question_reruns_one_shard(completed_run, tmp_path):
    run = copy_run(completed_run, tmp_path / "run")
    new = {"question": "How many wheels does a tricycle have?", "answer": "3"}
    with open(run / LOCAL_QA, "a") as f:
        f.write(json.dumps(new) + "\n")
    # the edited file is an input of source: the dry run lists it, and the checkpoint
    assert {"source", "tts_plan"} <= dry_run(run, tmp=tmp_path)
    res = snakemake(run, "--cores", "2", "--until", "tts_plan", *config_args())
    assert res.returncode == 0, res.stderr[-3000:]
    train = pd.read_parquet(run / "results" / "qa" / "train.parquet")
    added = train[train["origin"] == f"{LOCAL_QA}:{len(LOCAL_ROWS) + 1}"]
    assert added["question"].tolist() == [new["question"]]
    k = shard_of(added["id"].iloc[0], N_SHARDS)
    want = {f"tts_shard[k={k}]", "tts_gather", *FROM_BASE}
    got = dry_run(run, tmp=tmp_path)
    assert got == want, _diff(got, want)


# (file under workflow/cordflow, the jobs an edit of it reruns)
CODE_EDITS = [
    ("summarize.py", LAST),
    ("tts/post.py", FROM_SHARDS),
    ("tts/gather.py", {"tts_gather", *FROM_BASE}),
    ("evaluate/kinds.py", {*ALL_EVALS, *LAST}),
    ("skills.py", FROM_BASE),  # the base's skill items and the audio_skill benchmark
    ("train/judges.py", {"warmup", *TRAIN, *evals("warmup", "sft", "cord"), *LAST}),
]


@pytest.mark.slow
@pytest.mark.parametrize("rel,want", CODE_EDITS, ids=[c[0] for c in CODE_EDITS])
def test_a_code_edit_reruns_its_stage_and_dependants_only(completed_run, tmp_path, rel, want):
    run = copy_run(completed_run, tmp_path / "run")
    with open(run / "workflow" / "cordflow" / rel, "a") as f:
        f.write("\n# edited by test_reruns\n")
    got = dry_run(run, tmp=tmp_path)
    assert got == want, f"{rel}: {_diff(got, want)}"


# -- RULE_CODE is the code each stage runs ---------------------------------------------
PKG = REPO / "workflow" / "cordflow"
# Shared infrastructure RULE_CODE leaves out on purpose (config.py: it moves bytes, reads
# params, writes records; profile.py is the CLI's `profile` command, loaded with the CLI);
# editing it reruns nothing.
INFRA = {"__init__.py", "__main__.py", "cli.py", "profile.py", "config.py", "io.py",
         "stage.py", "provenance.py"}
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _module_file(name: str) -> Path | None:
    p = REPO.joinpath("workflow", *name.split("."))
    return next((f for f in (p / "__init__.py", p.with_suffix(".py")) if f.is_file()), None)


def _imports(path: Path, node: ast.AST) -> list[tuple[str, str | None, str]]:
    """(module, imported name or None, name bound) of one cordflow import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None, (a.asname or a.name).split(".")[0])
                for a in node.names if a.name.split(".")[0] == "cordflow"]
    module = node.module or ""
    if node.level:
        pkg = path.relative_to(REPO / "workflow").with_suffix("").parts[:-1]
        pkg = pkg[: len(pkg) - node.level + 1]
        module = ".".join(pkg) + (f".{module}" if module else "")
    if module.split(".")[0] != "cordflow":
        return []
    return [(module, a.name, a.asname or a.name) for a in node.names]


def _uses(path: Path, names: set[str] | None) -> tuple[list, bool]:
    """The cordflow imports that using ``names`` of a module (None: all of it) needs, and
    whether any of its own code is used (not just names it re-exports)."""
    tree = ast.parse(path.read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, _DEFS)}
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    body = [n for n in tree.body if n not in top and (names is None or n not in defs.values())]
    # Module-level code (a registry such as TERMS = {"token": token_term}) uses the
    # definitions it names whenever the module is imported.
    registered = {m.id for n in body for m in ast.walk(n) if isinstance(m, ast.Name)}
    wanted, todo = set(), list(defs if names is None else (names | registered) & defs.keys())
    while todo:  # the definitions used, and the same-module ones they refer to
        if (d := todo.pop()) not in wanted:
            wanted.add(d)
            todo += [m.id for m in ast.walk(defs[d]) if isinstance(m, ast.Name) and m.id in defs]
    nodes = [m for n in body + [defs[d] for d in wanted] for m in ast.walk(n)]
    refs = {m.id for m in nodes if isinstance(m, ast.Name)} | (names or set())
    found = [i for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))
             for i in _imports(path, n)]
    found += [i for n in top for i in _imports(path, n) if i[2] in refs]
    # A registry names its classes as "cordflow.module:Class" (imported when chosen, e.g.
    # cordflow.tts.backends.BACKEND_CLASSES): those are imports of what the stage may run.
    found += [(m[1], m[2], m[2]) for n in ast.walk(tree)
              if isinstance(n, ast.Constant) and isinstance(n.value, str)
              for m in [re.fullmatch(r"(cordflow[\w.]*):(\w+)", n.value)] if m]
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    return found, names is None or bool(names & (defs.keys() | assigned))


def stage_code(rule: str) -> set[str]:
    """Files (relative to cordflow/) whose code ``python -m cordflow <rule>`` runs: from
    the CLI command, every cordflow import it reaches (in function bodies too), following a
    ``from m import f`` into f (and what f uses) rather than all of m."""
    used: dict[Path, set[str] | None] = {}
    own: set[Path] = set()
    todo: list[tuple[Path | None, set[str] | None]] = [(PKG / "cli.py", {rule})]
    while todo:
        path, names = todo.pop()
        if path is None:
            continue
        if path in used:
            prev = used[path]
            if prev is None or (names is not None and names <= prev):
                continue
            names = None if names is None else names | prev
        used[path] = names
        found, runs_own = _uses(path, names)
        if runs_own:
            own.add(path)
        for module, name, _ in found:
            sub = _module_file(f"{module}.{name}") if name else None
            if sub is not None:  # a module imported by name: all of it
                todo.append((sub, None))
            else:
                todo.append((_module_file(module), None if name is None else {name}))
    return {p.relative_to(PKG).as_posix() for p in own}


def rule_code_files(rule: str) -> set[str]:
    files: set[str] = set()
    for rel in RULE_CODE[rule]:
        target = PKG / rel
        found = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        files |= {f.relative_to(PKG).as_posix() for f in found}
    return files


@pytest.mark.parametrize("rule", sorted(RULE_CODE))
def test_rule_code_lists_exactly_the_code_the_stage_runs(rule):
    runs, listed = stage_code(rule) - INFRA, rule_code_files(rule)
    assert runs, f"found no code for rule {rule}: is there a cli command '{rule}'?"
    missing, extra = sorted(runs - listed), sorted(listed - runs)
    assert not missing, (f"rule {rule} runs {missing} but cordflow.config.RULE_CODE does "
                         "not list them: an edit there would not rerun it (add them)")
    assert not extra, (f"cordflow.config.RULE_CODE lists {extra} for rule {rule}, which "
                       "does not run them: an edit there reruns it for nothing (remove them)")
