"""Rule ``provenance``: the report's provenance summary, ``results/provenance/summary.csv``.

One row per artifact in the lineage of the rule's inputs (the workflow's final outputs)
and per other output of the jobs in it, then one per source, sorted by path, with the
``check`` column from :class:`cordflow.audit.Auditor` ("ok", or what fails). Columns
(:data:`COLUMNS`):
``artifact``, ``kind`` (artifact | source), ``rule``, ``type`` (file | directory),
``sha256`` (a directory's: the digest of its listing), ``files``, ``companions`` (run-time
files the job listed, e.g. audio clips), ``bytes``, ``code_commit``, ``dirty``,
``rule_code``, ``started``, ``ended``, ``host``, ``slurm_job_id``, ``gpu_model``, ``check``.

A problem is a row's ``check`` and a warning in the log, not a failure: the report is
still written, so the mismatch is visible in it (``cordflow audit`` is the strict check).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from pathlib import Path

from cordflow.io import write_text_atomic

log = logging.getLogger("cordflow.provenance")

COLUMNS = ["artifact", "kind", "rule", "type", "sha256", "files", "companions", "bytes",
           "code_commit", "dirty", "rule_code", "started", "ended", "host", "slurm_job_id",
           "gpu_model", "check"]


def rows(targets: Iterable[str | Path], results_dir: str | Path = "results") -> list[dict]:
    """The summary rows for the lineage of ``targets``."""
    from cordflow.audit import Auditor, shown

    auditor = Auditor(results_dir)
    for t in targets:
        auditor.artifact(t)
    # Jobs in the lineage may have written more than the output read downstream
    # (rejected-row tables): list those too.
    done: set = set()
    while todo := [a for a in auditor.records if a not in done]:
        for artifact in todo:
            done.add(artifact)
            rec = auditor.records[artifact]
            base = auditor.record_base(artifact, rec)
            for sibling in rec.get("outputs") or []:
                auditor.artifact(auditor.resolve(base, sibling))
    out = []
    for artifact, rec in sorted(auditor.records.items()):
        code = rec.get("code") or {}
        problems = auditor.by_artifact.get(artifact, [])
        out.append({
            "artifact": shown(artifact), "kind": "artifact", "rule": rec.get("rule"),
            "type": rec.get("type"), "sha256": rec.get("sha256"),
            "files": len(rec.get("files") or {}) if rec.get("type") == "directory" else 1,
            "companions": len(rec.get("companions") or []), "bytes": rec.get("bytes"),
            "code_commit": code.get("git_commit") or code.get("package_version"),
            "dirty": code.get("dirty"), "rule_code": rec.get("rule_code"),
            "started": rec.get("started"), "ended": rec.get("ended"), "host": rec.get("host"),
            "slurm_job_id": rec.get("slurm_job_id") or "", "gpu_model": rec.get("gpu_model") or "",
            "check": "; ".join(f"{p.path}: {p.kind}: {p.detail}" for p in problems) or "ok",
        })
    for path, entry in sorted(auditor.sources.items()):
        out.append({
            "artifact": shown(path), "kind": "source", "type": entry.get("type"),
            "sha256": entry.get("sha256"), "bytes": entry.get("bytes"),
            "files": len(entry.get("files") or {}) if entry.get("type") == "directory" else 1,
            "check": "; ".join(f"{p.path}: {p.kind}: {p.detail}" for p in auditor.problem_list()
                               if p.path == shown(path)) or "ok",
        })
    for problem in auditor.problem_list():
        log.warning("provenance: %s", problem)
    return out


def run(params: dict, targets: list[str | Path], out: str | Path,
        results_dir: str | Path = "results") -> None:
    table = rows(targets, results_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_text_atomic(out, buf.getvalue())
    bad = sum(r["check"] != "ok" for r in table)
    log.info("provenance: %d artifacts, %d sources, %d with problems -> %s",
             sum(r["kind"] == "artifact" for r in table),
             sum(r["kind"] == "source" for r in table), bad, out)
