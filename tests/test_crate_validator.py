"""The crate of the finished test run (tests/dagrun.py) passes roc-validator against the
Workflow Run Crate 0.5 profile with no check skipped (issue 16 §3), offline.

roc-validator runs in ``.venv-crate-check`` (``make crate-check-env``; ``make test`` builds
it first: it cannot share cordflow's venv, see pyproject.toml) through
tests/crate_validator_probe.py, which preloads its HTTP cache with the two JSON-LD contexts
a cordflow crate names (tests/data/jsonld, copies of what their w3id.org addresses serve),
validates in its offline mode and writes a JSON report. The validator checks the profile's
parents as well: RO-Crate 1.1, Process Run Crate 0.5 and Workflow RO-Crate 1.0.

A context the cache lacks is not silently passed over: the validator fails two checks and
skips most of the others, and the test below that withholds each context proves it, so
"passed with nothing skipped" can only come from a validation that had both contexts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from dagrun import completed_run  # noqa: F401

from cordflow import crate

pytestmark = pytest.mark.slow  # needs the end-to-end run of tests/dagrun.py

PROFILES = ["process-run-crate-0.5", "ro-crate-1.1", "workflow-ro-crate-1.0",
            "workflow-run-crate-0.5"]
CONTEXTS = [f"{crate.CRATE_SPEC}/context", crate.WFRUN_CONTEXT]
# What the crate does not do yet of what the profiles RECOMMEND (SHOULD); every check
# still runs at that level. Take an entry out when the crate starts to meet it.
KNOWN_SHOULDS = {
    "process-run-crate-0.5_3.2": "a rule's SoftwareApplication has no url",
    "process-run-crate-0.5_5.1": "a rule's SoftwareApplication id is local (#rule-...)",
    "process-run-crate-0.5_8.6": "no action has an agent (Person or Organization)",
    "process-run-crate-0.5_8.7": "actionStatus is an {'@id': ...} reference; the shape "
                                 "wants the plain string",
    "ro-crate-1.1_22.2": "the root has no author",
    "ro-crate-1.1_22.3": "the root has no publisher",
    "ro-crate-1.1_24.1": "a one-item object or result is written as a list",
    "workflow-ro-crate-1.0_6.1": "the crate has no README.md",
    "workflow-ro-crate-1.0_6.2": "the crate has no README.md",
    "workflow-ro-crate-1.0_8.1": "the Snakefile does not declare the Bioschemas "
                                 "ComputationalWorkflow profile",
}


def validator_python(repo):
    py = repo / ".venv-crate-check" / "bin" / "python"
    if not py.exists():
        pytest.fail(f"{py} is missing: run `make crate-check-env` (make test does it first)")
    return py


def validate(repo, crate_dir, tmp_path, *args: str) -> dict:
    """The probe's report on ``crate_dir`` (a fresh HTTP cache each time)."""
    cache, out = tmp_path / "http-cache", tmp_path / "report.json"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()
    res = subprocess.run([str(validator_python(repo)), str(repo / "tests/crate_validator_probe.py"),
                          str(crate_dir), "--cache", str(cache), "--out", str(out), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["network"] == [], "the validator tried to reach the network"
    assert report["profiles"] == PROFILES
    return report


def failures(report) -> str:
    return json.dumps({k: report[k] for k in ("checks", "issues", "skipped")}, indent=1)[-6000:]


@pytest.fixture(scope="module")
def exported(completed_run, tmp_path_factory):  # noqa: F811
    """The crate of the finished test run (its files hard-linked: do not change them)."""
    out = tmp_path_factory.mktemp("validated") / "crate"
    return crate.export_crate(completed_run.require().path / "results", out)


def test_the_crate_passes_the_workflow_run_crate_profile_with_no_check_skipped(
        repo, exported, tmp_path):
    report = validate(repo, exported, tmp_path, "--severity", "REQUIRED")
    assert report["version"] == "0.13.0"
    assert report["preloaded"] == CONTEXTS
    checks = report["checks"]
    assert report["passed"] and report["issues"] == [], failures(report)
    assert checks["skipped"] == checks["skipped_in_result"] == 0, failures(report)
    assert checks["total"] == checks["passed"] == report["by_severity"]["REQUIRED"] >= 50


def test_at_recommended_every_check_runs_and_only_the_known_shoulds_fail(
        repo, exported, tmp_path):
    report = validate(repo, exported, tmp_path, "--severity", "RECOMMENDED")
    checks = report["checks"]
    assert checks["skipped"] == checks["skipped_in_result"] == 0, failures(report)
    assert {i["severity"] for i in report["issues"]} == {"RECOMMENDED"}
    assert set(report["failed"]) == set(KNOWN_SHOULDS), failures(report)
    assert checks["passed"] + checks["failed"] == checks["total"] > report["by_severity"][
        "REQUIRED"]


@pytest.mark.parametrize("withheld", CONTEXTS, ids=["ro-crate-1.1", "workflow-run"])
def test_a_context_the_cache_lacks_fails_the_validation_and_skips_checks(
        repo, exported, tmp_path, withheld):
    """What the test above would see without a context: it cannot pass unnoticed."""
    report = validate(repo, exported, tmp_path, "--withhold", withheld)
    assert report["preloaded"] == [c for c in CONTEXTS if c != withheld]
    assert not report["passed"]
    assert report["checks"]["skipped"] > 0
    assert any(withheld in i["message"] for i in report["issues"]), failures(report)


def test_a_crate_without_a_required_property_fails(repo, exported, tmp_path):
    """The root without its license, the workflow run without its instrument."""
    tampered = tmp_path / "tampered"
    shutil.copytree(exported, tampered, copy_function=os.link)
    metadata = tampered / crate.METADATA
    doc = json.loads(metadata.read_text())
    metadata.unlink()  # a hard link to the exported crate's file: write a new one
    byid = {e["@id"]: e for e in doc["@graph"]}
    del byid["./"]["license"]
    del byid["#workflow-run"]["instrument"]
    metadata.write_text(json.dumps(doc, indent=2))
    report = validate(repo, tampered, tmp_path)
    assert not report["passed"]
    assert report["checks"]["skipped"] == 0, failures(report)
    assert set(report["failed"]) == {
        "ro-crate-1.1_8.3",  # the root MUST have a license
        "workflow-ro-crate-1.0_5.1",  # the crate must specify a license
        "process-run-crate-0.5_1.1",  # the action MUST have an instrument
        "workflow-run-crate-0.5_4.1",  # an action MUST have the mainEntity as instrument
    }, failures(report)
