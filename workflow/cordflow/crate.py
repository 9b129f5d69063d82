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
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from cordflow import __version__
from cordflow.config import REPO_DIR

if TYPE_CHECKING:
    from cordflow.audit import Auditor

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

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        builder = _CrateBuilder(tmp, results, report.auditor)
        workflow = builder.add_workflow(Path(workflow_dir))
        builder.add_profiles_and_license()
        for key, members in builder.jobs():
            builder.add_rule_run(key, members)
        builder.add_workflow_run(workflow)
        builder.crate.write(tmp)
        problems = validate_crate(tmp)
        if problems:  # nothing is left at out_dir
            raise CrateError("export-crate: the crate does not validate:\n  "
                             + "\n  ".join(problems))
    log.info("crate %s: %d files, %d rule runs", out_dir, len(builder.entities),
             len(builder.actions))
    return out_dir


class _CrateBuilder:
    """The crate of one checked run, built in the folder ``tmp`` (the crate's root).

    ``results`` is the results folder and ``auditor`` the :class:`cordflow.audit.Auditor`
    that checked it (its records and file hashes are reused). Paths in the crate are
    relative to the folder holding ``results`` (the run's working directory), so the
    results keep their own name. The ``add_*`` methods add each entity once (keyed by its
    crate path or URI in :attr:`entities`) and return it.
    """

    def __init__(self, tmp: Path, results: Path, auditor: Auditor):
        from rocrate.rocrate import ROCrate

        self.tmp = tmp
        self.results = results
        self.top = results.parent
        self.auditor = auditor
        self.records = {a: r for a, r in auditor.records.items() if results in a.parents}
        self.crate = ROCrate(version=CRATE_VERSION)
        self.crate.metadata.extra_contexts.append(WFRUN_CONTEXT)
        self.entities: dict[str, Any] = {}  # crate path or URI -> data entity
        self.tools: dict[str, Any] = {}  # rule -> its SoftwareApplication
        self.actions: list[Any] = []  # one CreateAction per rule run
        self.consumed: set = set()  # inputs of the rule runs (and the artifacts holding them)
        self.produced: dict[Path, Any] = {}  # artifact -> its entity
        self.sources: dict[Path, Any] = {}  # source path -> its entity

    def rel(self, path: Path) -> str:
        """``path`` (under the working directory) as a path in the crate."""
        return path.relative_to(self.top).as_posix()

    def add_context(self, eid: str, props: dict[str, Any]):
        """A contextual entity (not a file): a profile, the licence, a rule, a value."""
        from rocrate.model import ContextEntity

        return self.crate.add(ContextEntity(self.crate, eid, properties=props))

    # -- data entities -------------------------------------------------------------------
    def add_local(self, path: Path, sha: str, props: dict | None = None):
        """A file of the working directory, placed in the crate."""
        key = self.rel(path)
        if key not in self.entities:
            dest = self.tmp / key
            _place(path, dest)
            self.entities[key] = self.crate.add_file(dest, dest_path=key, properties={
                "name": path.name, "sha256": sha, "contentSize": str(path.stat().st_size),
                "encodingFormat": _format(path), **(props or {})})
        return self.entities[key]

    def add_local_dir(self, path: Path, files: dict[str, str], props: dict[str, Any]):
        """A folder of the working directory (``files``: its {relative path: sha256}) as a
        Dataset whose ``hasPart`` lists its files, each placed in the crate."""
        key = self.rel(path) + "/"
        if key not in self.entities:
            (self.tmp / self.rel(path)).mkdir(parents=True, exist_ok=True)
            parts = [self.add_local(path / m, sha) for m, sha in sorted(files.items())]
            self.entities[key] = self.crate.add_dataset(
                self.tmp / self.rel(path), dest_path=key,
                properties={"name": path.name, **props, "hasPart": parts})
        return self.entities[key]

    def add_artifact(self, path: Path, rec: dict[str, Any]):
        """An artifact of the results folder (a file or a directory) with its record's
        sha256."""
        if rec.get("type") == "directory":
            return self.add_local_dir(path, rec["files"], {
                "sha256": rec.get("sha256"),
                "description": f"written by rule {rec['rule']}; sha256 is the digest of its "
                               "sorted (path, sha256) listing"})
        return self.add_local(path, rec["sha256"])

    def add_source(self, path: Path, entry: dict[str, Any]):
        """An input from outside the results folder. One inside the run's working
        directory (a user QA file) is placed in the crate like the results; one
        elsewhere (staged datasets, model weights) is described, not copied."""
        if self.top not in path.parents:
            return self.add_external(path, entry)
        if entry.get("type") != "directory":
            return self.add_local(path, entry["sha256"], {"description": "source"})
        return self.add_local_dir(path, entry["files"], {"description": "source"})

    def add_external(self, path: Path, entry: dict[str, Any]):
        """A source outside the working directory: described by its ``file://`` URI and
        recorded hashes, not copied."""
        key = path.as_uri()
        if key in self.entities:
            return self.entities[key]
        if entry.get("type") == "directory":
            parts = [self.crate.add_file(
                (path / m).as_uri(), properties={"name": m, "sha256": sha,
                                                 "encodingFormat": _format(m)})
                for m, sha in sorted((entry.get("files") or {}).items())]
            self.entities[key] = self.crate.add_dataset(key + "/", properties={
                "name": path.name, "description": "source (not copied into the crate)",
                "hasPart": parts})
        else:
            self.entities[key] = self.crate.add_file(key, properties={
                "name": path.name, "sha256": entry.get("sha256"),
                "contentSize": str(entry.get("bytes")), "encodingFormat": _format(path),
                "description": "source (not copied into the crate)"})
        return self.entities[key]

    # -- the workflow definition -----------------------------------------------------------
    def add_workflow(self, workflow_dir: Path):
        """The workflow files (:data:`WORKFLOW_FILES` under ``workflow_dir``), the
        Snakefile as the crate's main ``ComputationalWorkflow`` with the others as its
        parts; its version is the code commit the records name."""
        sha256 = self.auditor.hashes.sha256
        code = next(iter(self.records.values()), {}).get("code") or {}
        wf_parts = []
        for pattern in WORKFLOW_FILES[1:]:
            for f in sorted(workflow_dir.glob(pattern)):
                if f.is_file():
                    key = f.relative_to(workflow_dir).as_posix()
                    _place(f, self.tmp / key)
                    wf_parts.append(self.crate.add_file(self.tmp / key, dest_path=key, properties={
                        "name": key, "encodingFormat": _format(f), "sha256": sha256(f)}))
        _place(workflow_dir / "Snakefile", self.tmp / "Snakefile")
        return self.crate.add_workflow(
            self.tmp / "Snakefile", dest_path="Snakefile", main=True, lang="snakemake",
            properties={
                "name": "cordflow", "version": code.get("git_commit") or __version__,
                "description": "CORD (arXiv 2601.16547): text QA -> TTS -> base -> SFT "
                               "warm-up -> CORD (+ baselines) -> audio-text gap",
                "sha256": sha256(workflow_dir / "Snakefile"),
                "encodingFormat": "text/x-snakemake", "hasPart": wf_parts})

    def add_profiles_and_license(self) -> None:
        """The profiles the crate conforms to (named in the root's ``conformsTo``) and the
        licence entity."""
        for pid, (name, version) in PROFILES.items():
            if pid not in self.crate:
                self.add_context(pid, {"@type": "CreativeWork", "name": name,
                                       "version": version})
        self.crate.root_dataset["conformsTo"] = [{"@id": p} for p in PROFILES]
        self.add_context(LICENSE, {"@type": "CreativeWork", "name": "Apache License 2.0"})

    # -- the rule runs ---------------------------------------------------------------------
    def jobs(self) -> list[tuple[str, list[tuple[Path, dict]]]]:
        """The rule runs: (job key, its (artifact, record) pairs), in the order they
        started (then by rule)."""
        jobs: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
        for artifact, rec in sorted(self.records.items()):
            jobs[_job_key(rec)].append((artifact, rec))
        return sorted(jobs.items(), key=lambda kv: (kv[1][0][1]["started"], kv[1][0][1]["rule"]))

    def add_rule_run(self, key: str, members: list[tuple[Path, dict]]):
        """The ``CreateAction`` of one rule run (``members``: the artifacts it wrote with
        their records), with the records attached to it as engine traces."""
        artifact0, rec = members[0]
        rule = rec["rule"]
        base = self.auditor.record_base(artifact0, rec)
        tool = self.rule_tool(rule, rec)
        objects = self.rule_inputs(base, rec)
        params = self.add_context(f"#params-{key}", {
            "@type": "PropertyValue", "name": "params",
            "description": f"the config slice rule {rule} ran with (JSON)",
            "value": json.dumps(rec.get("params"), sort_keys=True)})
        results = []
        for a, r in members:
            self.produced[a] = self.add_artifact(a, r)
            results.append(self.produced[a])
        results += [self.add_local(self.auditor.resolve(base, c["path"]), c["sha256"])
                    for c in rec.get("companions") or []]
        props = {"@type": "CreateAction", "name": f"{rule}: {self.rel(artifact0)}",
                 "description": _run_description(rec), "startTime": rec["started"],
                 "endTime": rec["ended"],
                 "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"}}
        if env := self.rule_environment(key, rec):
            props["environment"] = env
        action = self.crate.add_action(tool, identifier=f"#run-{key}",
                                       object=objects + [params], result=results,
                                       properties=props)
        for a, _ in members:
            rp = a.with_name(a.name + ".prov.json")
            self.add_local(rp, self.auditor.hashes.sha256(rp), {
                "name": f"provenance record of {self.rel(a)}", "about": action})
        self.actions.append(action)
        return action

    def rule_tool(self, rule: str, rec: dict[str, Any]):
        """The rule as a ``SoftwareApplication`` (one per rule, the first run's version)."""
        if rule not in self.tools:
            self.tools[rule] = self.add_context(f"#rule-{rule}", {
                "@type": "SoftwareApplication", "name": f"rule {rule}",
                "description": f"python -m cordflow {rule.replace('_', '-')} (a thin "
                               "Snakemake shell rule)",
                "softwareVersion": (rec.get("code") or {}).get("package_version")})
        return self.tools[rule]

    def rule_inputs(self, base: Path, rec: dict[str, Any]) -> list[Any]:
        """The entities of a rule run's inputs: a recorded artifact, a file of one (a
        directory artifact's member or a listed companion), or a source."""
        objects = []
        for entry in rec.get("inputs") or []:
            p = self.auditor.resolve(base, entry["path"])
            self.consumed.add(p)
            cov = self.auditor.owner(p)
            holder = cov[0] if cov is not None else None
            self.consumed.add(holder)
            if holder in self.records and cov[1] is None:
                objects.append(self.add_artifact(holder, self.records[holder]))
            elif holder in self.records:
                sha = (self.records[holder]["files"][cov[1]] if cov[1] != "companion"
                       else self.auditor.hashes.sha256(p))
                objects.append(self.add_local(p, sha))
            else:
                self.sources[p] = self.add_source(p, entry)
                objects.append(self.sources[p])
        return objects

    def rule_environment(self, key: str, rec: dict[str, Any]) -> list[Any]:
        """The Slurm variables a rule run had (job id, array task id) as PropertyValues."""
        return [self.add_context(f"#{var}-{key}", {
                    "@type": "PropertyValue", "name": var.upper(), "value": rec[var]})
                for var in ("slurm_job_id", "slurm_array_task_id") if rec.get(var)]

    # -- the whole run ---------------------------------------------------------------------
    def add_workflow_run(self, workflow) -> Any:
        """The ``CreateAction`` of the whole run (the Snakefile as instrument, the sources
        as object, the outputs no rule run read as result) and the root's description."""
        starts = [r["started"] for r in self.records.values()]
        ends = [r["ended"] for r in self.records.values()]
        finals = [e for a, e in sorted(self.produced.items()) if a not in self.consumed]
        run = self.crate.add_action(workflow, identifier="#workflow-run", object=list(
            self.sources.values()), result=finals, properties={
            "@type": "CreateAction", "name": f"cordflow run of {self.results.name}/",
            "startTime": min(starts) if starts else None,
            "endTime": max(ends) if ends else None,
            "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
            "description": f"{len(self.actions)} rule runs; checked by cordflow audit before "
                           "export"})
        root = self.crate.root_dataset
        root["name"] = f"cordflow run: {self.results.name}/"
        root["description"] = (
            "Workflow Run RO-Crate of a cordflow run: every file with its sha256 and the "
            "provenance record of the job that wrote it.")
        root["datePublished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        root["license"] = {"@id": LICENSE}
        root["mentions"] = [run, *self.actions]
        return run


def _run_description(rec: dict[str, Any]) -> str:
    """Where and with what a rule run ran: host, python, GPU, code commit, seed."""
    code = rec.get("code") or {}
    return (f"host {rec.get('host')}; python {rec.get('python')}; GPU "
            f"{rec.get('gpu_model') or 'none'}; code {code.get('git_commit')}"
            f"{' (dirty)' if code.get('dirty') else ''}; seed {rec.get('seed')}")


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
    crate_dir = Path(crate_dir)
    try:
        doc = json.loads((crate_dir / METADATA).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{crate_dir / METADATA}: unreadable ({e})"]
    context = doc.get("@context")
    context = context if isinstance(context, list) else [context]
    problems = [f"@context lacks {want}" for want in (f"{CRATE_SPEC}/context", WFRUN_CONTEXT)
                if want not in context]
    graph = doc.get("@graph") or []
    byid = {e.get("@id"): e for e in graph}
    problems += _check_references(graph, byid)
    problems += _check_root(byid)
    listed = _reachable(byid.get("./", {}), byid)
    for e in graph:
        problems += _check_entity(e, crate_dir, listed)
    return problems


def _check_references(graph: list[dict], byid: dict[str, dict]) -> list[str]:
    """Duplicate ids, and references that resolve to no entity of the graph (web links in
    :data:`LINKS` properties, or anywhere in the metadata descriptor, excepted)."""
    counts = Counter(e.get("@id") for e in graph)
    problems = [f"id {dup} is defined more than once"
                for dup in sorted(i for i, n in counts.items() if n > 1)]
    for e in graph:
        for key, value in e.items():
            for ref in _refs(value) if not key.startswith("@") else ():
                web = urlsplit(ref).scheme in ("http", "https")
                if ref in byid or (web and (key in LINKS or e.get("@id") == METADATA)):
                    continue
                problems.append(f"{e.get('@id')}: {key} {ref} does not resolve")
    return problems


def _check_root(byid: dict[str, dict]) -> list[str]:
    """The metadata descriptor conforms to RO-Crate 1.1 and is about the root; the root
    names every profile and has the workflow, with its language, as ``mainEntity``."""
    problems = []
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
    return problems


def _reachable(root: dict, byid: dict[str, dict]) -> set[str]:
    """The ids listed by the root's ``hasPart``, directly or through Datasets' ``hasPart``."""
    listed, todo = set(), list(_refs(root.get("hasPart")))
    while todo:
        i = todo.pop()
        if i not in listed:
            listed.add(i)
            todo.extend(_refs(byid.get(i, {}).get("hasPart")))
    return listed


def _check_entity(e: dict, crate_dir: Path, listed: set[str]) -> list[str]:
    """One entity: a File has a sha256 and, when local, is in the crate with it; a local
    Dataset's folder is in the crate; a local data entity is reachable from the root
    (``listed``); a CreateAction has an instrument, start and end times."""
    from cordflow.io import sha256_file

    problems = []
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
    if ("Dataset" in types and local and eid != "./"
            and not (crate_dir / unquote(eid)).is_dir()):
        problems.append(f"{eid}: Dataset folder not in the crate")
    if ("File" in types or "Dataset" in types) and local and eid not in (
            "./", METADATA) and eid not in listed:
        problems.append(f"{eid}: data entity not reachable from the root's hasPart")
    if "CreateAction" in types:
        for k in ("instrument", "startTime", "endTime"):
            if not e.get(k):
                problems.append(f"{eid}: CreateAction without {k}")
    return problems
