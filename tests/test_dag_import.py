"""Building the DAG is light: what the Snakefile imports of cordflow pulls in no torch,
pandas or transformers (every `snakemake -n` would pay seconds for them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "transformers", "peft", "pyarrow", "pandera")


def _snakefile_imports() -> list[str]:
    """The cordflow modules the Snakefile and rules/*.smk import."""
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *REPO.glob("rules/*.smk")])
    found = re.findall(r"^\s*from (cordflow[\w.]*) import|^\s*import (cordflow[\w.]*)", text,
                       re.M)
    return sorted({a or b for a, b in found})


def test_the_snakefile_imports_cordflow_modules():
    assert "cordflow.config" in _snakefile_imports()  # the parser below finds them


def test_what_the_snakefile_imports_is_free_of_heavy_packages():
    modules = _snakefile_imports()
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO / "workflow")}, check=True)
    assert out.stdout.strip() == "[]", f"importing {modules} loads {out.stdout.strip()}"


def test_a_dry_run_imports_no_torch():
    """The whole `snakemake -n` (Snakemake's own imports included: its Slurm plugin
    loads pandas, which is not ours to avoid) never imports torch or transformers."""
    snakemake = Path(sys.executable).parent / "snakemake"
    run = subprocess.run([sys.executable, "-X", "importtime", str(snakemake), "-n", "--quiet",
                          "rules", "--cores", "1"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {ln.rsplit("|", 1)[1].strip() for ln in run.stderr.splitlines()
                if ln.startswith("import time:") and "|" in ln}
    assert "cordflow.config" in imported  # the Snakefile's own imports are in this log
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers")}
