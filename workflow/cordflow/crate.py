"""``cordflow export-crate``: a run's results as a Workflow Run RO-Crate.

:func:`export_crate` first checks the results folder with :func:`cordflow.audit.audit_all`
(a crate of a run that does not check out is refused, naming each problem), then writes a
crate (https://w3id.org/ro/wfrun/workflow/0.5, which extends Process Run Crate 0.5 and
Workflow RO-Crate 1.0; RO-Crate 1.1) with the ``rocrate`` library:

- the results folder at its own name inside the crate (``results/...``), each file
  hard-linked where the file system allows (cordflow replaces files, never edits them in
  place, so the link stays the run's version), else copied, with every ``.prov.json``
  record beside its artifact, so ``cordflow audit --all crate/results`` works on the crate;
- the workflow definition (``Snakefile`` as the main ``ComputationalWorkflow``, the rule
  files, config, envs, report captions and the ``cordflow`` package source);
- one ``CreateAction`` per rule run (the records of one job share a ``run_id``): its
  ``instrument`` is the rule (a ``SoftwareApplication``), ``object`` its inputs and a
  ``PropertyValue`` holding the config slice it ran with, ``result`` its outputs and
  run-time files, ``startTime``/``endTime``, Slurm variables as ``environment``; the job's
  records are attached to it (``about``) as engine traces;
- one ``CreateAction`` for the whole run, with the Snakefile as ``instrument``, the
  sources as ``object`` and the final outputs (those no job read) as ``result``;
- every ``File`` with ``sha256`` (the workflow-run term) and ``contentSize``; a directory
  artifact is a ``Dataset`` whose ``hasPart`` lists its files. Sources (inputs from outside
  the results folder) inside the run's working directory, such as user QA files, are
  placed in the crate at the same relative path; sources elsewhere (staged datasets,
  model weights) are not copied: they are described by absolute ``file://`` URIs with
  their recorded sha256.

:func:`validate_crate` checks a crate structurally: every reference resolves, every file
has its sha256 and the file in the crate has it, the profiles are declared.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from cordflow import __version__
from cordflow.config import REPO_DIR

log = logging.getLogger("cordflow.crate")

CRATE_VERSION = "1.1"
CRATE_SPEC = f"https://w3id.org/ro/crate/{CRATE_VERSION}"
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": ("Process Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/workflow/0.5": ("Workflow Run Crate", "0.5"),
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": ("Workflow RO-Crate", "1.0"),
}
WFRUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"
METADATA = "ro-crate-metadata.json"
LICENSE = "http://spdx.org/licenses/Apache-2.0"
# Properties whose web references are links (a page, a term), not entities of the crate;
# every other reference (and every local or file:// one) must resolve in the graph.
LINKS = {"actionStatus", "citation", "identifier", "sameAs", "url"}
# The workflow definition, relative to the repository root.
WORKFLOW_FILES = ("Snakefile", "rules/*.smk", "config/*.yaml", "envs/*.yaml", "report/*.rst",
                  "profiles/*/config.yaml", "pyproject.toml", "workflow/cordflow/**/*.py")
FORMATS = {
    ".parquet": "application/vnd.apache.parquet", ".csv": "text/csv", ".png": "image/png",
    ".flac": "audio/flac", ".json": "application/json", ".jsonl": "application/jsonl",
    ".html": "text/html", ".txt": "text/plain", ".yaml": "application/yaml",
    ".smk": "text/x-snakemake", ".py": "text/x-python", ".rst": "text/x-rst",
    ".toml": "application/toml", ".safetensors": "application/octet-stream",
}


class CrateError(RuntimeError):
    pass


def _format(path: str | Path) -> str:
    name = Path(path).name
    if name.endswith(".prov.json"):
        return "application/json"
    return FORMATS.get(Path(path).suffix.lower(), "application/octet-stream")


def _place(src: Path, dest: Path) -> None:
    """Hard-link ``src`` to ``dest`` (same file system), else copy it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _job_key(rec: dict[str, Any]) -> str:
    """Records of one job share a run_id (older records: rule + times + host)."""
    return rec.get("run_id") or "-".join(
        str(rec.get(k)) for k in ("rule", "started", "ended", "host")).replace(":", "")


def export_crate(results_dir: str | Path, out_dir: str | Path,
                 exclude: Iterable[str] = (), workflow_dir: str | Path = REPO_DIR) -> Path:
    """Write the crate of the run in ``results_dir`` to ``out_dir`` (which must not exist
    or be empty); return ``out_dir``. Raises :class:`CrateError` naming every problem
    if the results do not check out."""
    from rocrate.model import ContextEntity
    from rocrate.rocrate import ROCrate

    from cordflow.audit import audit_all_report, norm
    from cordflow.io import atomic_path

    results = norm(results_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CrateError(f"export-crate: {out_dir} exists and is not empty; remove it or "
                         "choose another --out")
    report = audit_all_report(results, exclude)
    if report.problems:
        raise CrateError("export-crate: the results do not check out, so no crate was "
                         "written:\n  " + "\n  ".join(map(str, report.problems)))
    auditor = report.auditor
    top = results.parent
    records = {a: r for a, r in auditor.records.items() if results in a.parents}

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        crate = ROCrate(version=CRATE_VERSION)
        crate.metadata.extra_contexts.append(WFRUN_CONTEXT)
        entities: dict[str, Any] = {}

        def rel(path: Path) -> str:
            return path.relative_to(top).as_posix()

        def add_local(path: Path, sha: str, props: dict | None = None):
            """A file of the results folder, placed in the crate."""
            key = rel(path)
            if key not in entities:
                dest = tmp / key
                _place(path, dest)
                entities[key] = crate.add_file(dest, dest_path=key, properties={
                    "name": path.name, "sha256": sha, "contentSize": str(path.stat().st_size),
                    "encodingFormat": _format(path), **(props or {})})
            return entities[key]

        def add_source(path: Path, entry: dict[str, Any]):
            """An input from outside the results folder. One inside the run's working
            directory (a user QA file) is placed in the crate like the results; one
            elsewhere (staged datasets, model weights) is described, not copied."""
            if top not in path.parents:
                return add_external(path, entry)
            if entry.get("type") != "directory":
                return add_local(path, entry["sha256"], {"description": "source"})
            key = rel(path) + "/"
            if key not in entities:
                (tmp / rel(path)).mkdir(parents=True, exist_ok=True)
                parts = [add_local(path / m, sha) for m, sha in sorted(entry["files"].items())]
                entities[key] = crate.add_dataset(tmp / rel(path), dest_path=key, properties={
                    "name": path.name, "description": "source", "hasPart": parts})
            return entities[key]

        def add_external(path: Path, entry: dict[str, Any]):
            """A source outside the working directory: described, not copied."""
            key = path.as_uri()
            if key in entities:
                return entities[key]
            if entry.get("type") == "directory":
                parts = [crate.add_file(
                    (path / m).as_uri(), properties={"name": m, "sha256": sha,
                                                     "encodingFormat": _format(m)})
                    for m, sha in sorted((entry.get("files") or {}).items())]
                entities[key] = crate.add_dataset(key + "/", properties={
                    "name": path.name, "description": "source (not copied into the crate)",
                    "hasPart": parts})
            else:
                entities[key] = crate.add_file(key, properties={
                    "name": path.name, "sha256": entry.get("sha256"),
                    "contentSize": str(entry.get("bytes")), "encodingFormat": _format(path),
                    "description": "source (not copied into the crate)"})
            return entities[key]

        def add_artifact(path: Path, rec: dict[str, Any]):
            if rec.get("type") == "directory":
                key = rel(path) + "/"
                if key not in entities:
                    (tmp / rel(path)).mkdir(parents=True, exist_ok=True)
                    parts = [add_local(path / m, sha) for m, sha in sorted(rec["files"].items())]
                    entities[key] = crate.add_dataset(tmp / rel(path), dest_path=key, properties={
                        "name": path.name, "sha256": rec.get("sha256"), "hasPart": parts,
                        "description": f"written by rule {rec['rule']}; sha256 is the digest "
                                       "of its sorted (path, sha256) listing"})
                return entities[key]
            return add_local(path, rec["sha256"])

        # The workflow definition.
        workflow_dir = Path(workflow_dir)
        code = next(iter(records.values()), {}).get("code") or {}
        wf_parts = []
        for pattern in WORKFLOW_FILES[1:]:
            for f in sorted(workflow_dir.glob(pattern)):
                if f.is_file():
                    key = f.relative_to(workflow_dir).as_posix()
                    _place(f, tmp / key)
                    wf_parts.append(crate.add_file(tmp / key, dest_path=key, properties={
                        "name": key, "encodingFormat": _format(f),
                        "sha256": auditor.hashes.sha256(f)}))
        _place(workflow_dir / "Snakefile", tmp / "Snakefile")
        workflow = crate.add_workflow(tmp / "Snakefile", dest_path="Snakefile", main=True,
                                      lang="snakemake", properties={
            "name": "cordflow", "version": code.get("git_commit") or __version__,
            "description": "CORD (arXiv 2601.16547): text QA -> TTS -> base -> SFT warm-up "
                           "-> CORD (+ baselines) -> audio-text gap",
            "sha256": auditor.hashes.sha256(workflow_dir / "Snakefile"),
            "encodingFormat": "text/x-snakemake", "hasPart": wf_parts})

        # Profiles, licence.
        for pid, (name, version) in PROFILES.items():
            if pid not in crate:
                crate.add(ContextEntity(crate, pid, properties={
                    "@type": "CreativeWork", "name": name, "version": version}))
        crate.root_dataset["conformsTo"] = [{"@id": p} for p in PROFILES]
        crate.add(ContextEntity(crate, LICENSE, properties={
            "@type": "CreativeWork", "name": "Apache License 2.0"}))

        # One CreateAction per job.
        jobs: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
        for artifact, rec in sorted(records.items()):
            jobs[_job_key(rec)].append((artifact, rec))
        tools: dict[str, Any] = {}
        actions, consumed, produced, sources = [], set(), {}, {}
        for key, members in sorted(jobs.items(), key=lambda kv: (kv[1][0][1]["started"],
                                                                  kv[1][0][1]["rule"])):
            artifact0, rec = members[0]
            rule = rec["rule"]
            if rule not in tools:
                tools[rule] = crate.add(ContextEntity(crate, f"#rule-{rule}", properties={
                    "@type": "SoftwareApplication", "name": f"rule {rule}",
                    "description": f"python -m cordflow {rule.replace('_', '-')} (a thin "
                                   "Snakemake shell rule)",
                    "softwareVersion": (rec.get("code") or {}).get("package_version")}))
            base = auditor._base(artifact0, rec)
            objects = []
            for entry in rec.get("inputs") or []:
                p = auditor._resolve(base, entry["path"])
                consumed.add(p)
                cov = auditor.owner(p)
                holder = cov[0] if cov is not None else None
                consumed.add(holder)
                if holder in records and cov[1] is None:
                    objects.append(add_artifact(holder, records[holder]))
                elif holder in records:
                    rec_h = records[holder]
                    objects.append(add_local(p, rec_h["files"][cov[1]]) if cov[1] != "companion"
                                   else add_local(p, auditor.hashes.sha256(p)))
                else:
                    sources[p] = add_source(p, entry)
                    objects.append(sources[p])
            params = crate.add(ContextEntity(crate, f"#params-{key}", properties={
                "@type": "PropertyValue", "name": "params",
                "description": f"the config slice rule {rule} ran with (JSON)",
                "value": json.dumps(rec.get("params"), sort_keys=True)}))
            results_ = [add_artifact(a, r) for a, r in members]
            for a, _ in members:
                produced[a] = entities[rel(a) + ("/" if records[a].get("type") == "directory"
                                                 else "")]
            results_ += [add_local(auditor._resolve(base, c["path"]), c["sha256"])
                         for c in rec.get("companions") or []]
            env = []
            for var in ("slurm_job_id", "slurm_array_task_id"):
                if rec.get(var):
                    env.append(crate.add(ContextEntity(crate, f"#{var}-{key}", properties={
                        "@type": "PropertyValue", "name": var.upper(), "value": rec[var]})))
            code_r = rec.get("code") or {}
            desc = (f"host {rec.get('host')}; python {rec.get('python')}; GPU "
                    f"{rec.get('gpu_model') or 'none'}; code {code_r.get('git_commit')}"
                    f"{' (dirty)' if code_r.get('dirty') else ''}; seed {rec.get('seed')}")
            props = {"@type": "CreateAction", "name": f"{rule}: {rel(artifact0)}",
                     "description": desc, "startTime": rec["started"], "endTime": rec["ended"],
                     "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"}}
            if env:
                props["environment"] = env
            action = crate.add_action(tools[rule], identifier=f"#run-{key}",
                                      object=objects + [params], result=results_,
                                      properties=props)
            for a, _ in members:
                rp = a.with_name(a.name + ".prov.json")
                add_local(rp, auditor.hashes.sha256(rp), {
                    "name": f"provenance record of {rel(a)}", "about": action})
            actions.append(action)

        starts = [r["started"] for r in records.values()]
        ends = [r["ended"] for r in records.values()]
        finals = [e for a, e in sorted(produced.items()) if a not in consumed]
        run = crate.add_action(workflow, identifier="#workflow-run", object=list(
            sources.values()), result=finals, properties={
            "@type": "CreateAction", "name": f"cordflow run of {results.name}/",
            "startTime": min(starts) if starts else None, "endTime": max(ends) if ends else None,
            "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
            "description": f"{len(actions)} rule runs; checked by cordflow audit before export"})
        crate.root_dataset["name"] = f"cordflow run: {results.name}/"
        crate.root_dataset["description"] = (
            "Workflow Run RO-Crate of a cordflow run: every file with its sha256 and the "
            "provenance record of the job that wrote it.")
        crate.root_dataset["datePublished"] = dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds")
        crate.root_dataset["license"] = {"@id": LICENSE}
        crate.root_dataset["mentions"] = [run, *actions]
        crate.write(tmp)
        problems = validate_crate(tmp)
        if problems:  # nothing is left at out_dir
            raise CrateError("export-crate: the crate does not validate:\n  "
                             + "\n  ".join(problems))
    log.info("crate %s: %d files, %d rule runs", out_dir, len(entities), len(actions))
    return out_dir


def _refs(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        if set(value) == {"@id"}:
            yield value["@id"]
        else:
            for v in value.values():
                yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


def _types(entity: dict) -> set[str]:
    t = entity.get("@type", [])
    return set(t if isinstance(t, list) else [t])


def validate_crate(crate_dir: str | Path) -> list[str]:
    """Structural problems of the crate at ``crate_dir`` (empty: it validates).

    Checks: the metadata file parses and names RO-Crate 1.1 and the workflow-run context;
    ids are unique and every reference resolves to an entity of the graph (web links in
    :data:`LINKS` properties and the descriptor's spec excepted); the root conforms to the
    Workflow Run Crate 0.5 profile (and Process Run Crate, Workflow RO-Crate), has a
    ``mainEntity`` that is a ComputationalWorkflow with a programming language, and lists
    every local data entity (directly or through a Dataset's ``hasPart``); every ``File``
    has a sha256 and, when local, exists with that sha256; every ``CreateAction`` has an
    instrument, start and end times.
    """
    from cordflow.io import sha256_file

    crate_dir = Path(crate_dir)
    try:
        doc = json.loads((crate_dir / METADATA).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{crate_dir / METADATA}: unreadable ({e})"]
    problems = []
    context = doc.get("@context")
    context = context if isinstance(context, list) else [context]
    for want in (f"{CRATE_SPEC}/context", WFRUN_CONTEXT):
        if want not in context:
            problems.append(f"@context lacks {want}")
    graph = doc.get("@graph") or []
    ids = [e.get("@id") for e in graph]
    byid = {e.get("@id"): e for e in graph}
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"id {dup} is defined more than once")
    for e in graph:
        for key, value in e.items():
            for ref in _refs(value) if not key.startswith("@") else ():
                web = urlsplit(ref).scheme in ("http", "https")
                if ref in byid or (web and (key in LINKS or e.get("@id") == METADATA)):
                    continue
                problems.append(f"{e.get('@id')}: {key} {ref} does not resolve")
    desc, root = byid.get(METADATA, {}), byid.get("./", {})
    if CRATE_SPEC not in set(_refs(desc.get("conformsTo"))):
        problems.append(f"{METADATA} does not conform to {CRATE_SPEC}")
    if (desc.get("about") or {}).get("@id") != "./":
        problems.append(f"{METADATA} is not about the root dataset ./")
    conforms = set(_refs(root.get("conformsTo")))
    for p in PROFILES:
        if p not in conforms:
            problems.append(f"root dataset does not name profile {p} in conformsTo")
    main = byid.get((root.get("mainEntity") or {}).get("@id"), {})
    if not {"File", "SoftwareSourceCode", "ComputationalWorkflow"} <= _types(main):
        problems.append("root mainEntity is not a File/SoftwareSourceCode/ComputationalWorkflow")
    elif not main.get("programmingLanguage"):
        problems.append(f"{main['@id']}: no programmingLanguage")
    listed, todo = set(), list(_refs(root.get("hasPart")))
    while todo:
        i = todo.pop()
        if i not in listed:
            listed.add(i)
            todo.extend(_refs(byid.get(i, {}).get("hasPart")))
    for e in graph:
        eid, types = e.get("@id"), _types(e)
        local = not urlsplit(eid or "").scheme
        if "File" in types:
            sha = e.get("sha256")
            if not (isinstance(sha, str) and len(sha) == 64):
                problems.append(f"{eid}: File without a sha256")
            if local and eid != METADATA:
                f = crate_dir / unquote(eid)
                if not f.is_file():
                    problems.append(f"{eid}: not in the crate")
                elif isinstance(sha, str) and sha256_file(f) != sha:
                    problems.append(f"{eid}: sha256 differs from the file in the crate")
        if "Dataset" in types and local and eid != "./":
            if not (crate_dir / unquote(eid)).is_dir():
                problems.append(f"{eid}: Dataset folder not in the crate")
        if ("File" in types or "Dataset" in types) and local and eid not in (
                "./", METADATA) and eid not in listed:
            problems.append(f"{eid}: data entity not reachable from the root's hasPart")
        if "CreateAction" in types:
            for k in ("instrument", "startTime", "endTime"):
                if not e.get(k):
                    problems.append(f"{eid}: CreateAction without {k}")
    return problems
