"""A run that lost or damaged an artifact comes back to a consistent state (issue 16
section 1), on copies of the completed test-config run of tests/dagrun.py.

- A forced rerun that is killed or fails has deleted its output (Snakemake deletes a job's
  output before the job) while what was made from it remains: a plain ``snakemake`` must
  make it again and rerun what was made from it, not say "Nothing to be done" beside a gap
  table of a model that is gone.
- ``cordflow audit``'s advice repairs with the fewest jobs: a changed shard table is made
  again by its one job, an edited model by its job and the jobs made from it; afterwards
  nothing is left to do and the audit passes.
"""

from __future__ import annotations

import shlex
import shutil

import pytest
from dagrun import (  # noqa: F401
    completed_run,
    config_args,
    copy_run,
    dry_run,
    parse_jobs,
    snakemake,
)

from cordflow import audit

SFT_AND_AFTER = {"train[method=sft]", "evaluate[model=sft,benchmark=builtin]",
                 "evaluate[model=sft,benchmark=audio_skill]", "summarize", "provenance_summary"}


@pytest.mark.slow
@pytest.mark.parametrize("lost, want", [
    ("results/models/sft", SFT_AND_AFTER),
    ("results/eval/sft/builtin.parquet",
     {"evaluate[model=sft,benchmark=builtin]", "summarize", "provenance_summary"}),
    ("results/audio/manifest.parquet", None),  # the manifest and everything made from it
], ids=["model", "evaluation", "manifest"])
def test_a_plain_run_makes_a_lost_artifact_again_and_what_was_made_from_it(
        completed_run, tmp_path, lost, want):
    run = copy_run(completed_run, tmp_path / "run")
    path = run / lost
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    got = dry_run(run, tmp=tmp_path)
    if want is None:
        assert {"tts_gather", "base", "warmup", "summarize"} <= got, got
    else:
        assert got == want


def _run(run, command: str):
    """An audit command (``snakemake ARGS``) with the run's config files and two cores."""
    args = shlex.split(command)
    assert args[0] == "snakemake", command
    res = snakemake(run, "--cores", "2", *config_args(), *args[1:], timeout_s=1200)
    assert res.returncode == 0, f"{command}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return parse_jobs(res.stdout + res.stderr)


@pytest.mark.slow
def test_the_audit_advice_repairs_with_the_fewest_jobs(completed_run, tmp_path, monkeypatch):
    run = copy_run(completed_run, tmp_path / "run")
    monkeypatch.chdir(run)
    weights = run / "results/models/sft/adapter/adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # an edited model: a plain run does not see it
    weights.write_bytes(bytes(data))
    assert dry_run(run, tmp=tmp_path) == set()
    shard = "results/audio/shards/0.parquet"
    with open(run / shard, "ab") as f:  # a changed shard table: a plain run would use it
        f.write(b"x")
    plain = dry_run(run, tmp=tmp_path)
    assert "tts_gather" in plain and "tts_shard[k=0]" not in plain

    report = audit.audit("results/eval/gap_table.csv", "results")
    assert report.commands == [f"snakemake --forcerun {shard} -- {shard}",
                               "snakemake --forcerun results/models/sft"]
    assert _run(run, report.commands[0]) == {"tts_shard[k=0]"}
    assert _run(run, report.commands[1]) == SFT_AND_AFTER
    assert dry_run(run, tmp=tmp_path) == set()
    problems = audit.audit_all("results")
    assert problems == [], "\n".join(map(str, problems))
