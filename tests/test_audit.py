"""`cordflow audit`, the report's provenance summary and `cordflow export-crate`, on a real
run: the source and TTS stages run through the CLI as the rules call them, chaining their
records; every test works on its own copy of that run (so also in a folder other than the
one the jobs ran in)."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from rich.console import Console

from cordflow import audit, crate, provenance_summary
from cordflow.io import sha256_file
from cordflow.provenance import is_record, read_record, record_path

SOURCE = {"seed": 3, "source": {
    "splits": ["train", "test"],
    "builtin": {"families": ["addition"], "n_per_family": {"train": 6, "test": 2}},
    "files": [{"path": "data/extra.jsonl", "split": "test"}],
}}
TTS = {"seed": 3, "tts": {"n_shards": 2, "heldout_splits": ["test"]}}
MANIFEST = "results/audio/manifest.parquet"
SUMMARY = "results/provenance/summary.csv"


def start(repo, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    return subprocess.Popen([sys.executable, "-m", "cordflow", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def cordflow(repo, *args, cwd):
    return finish(start(repo, *args, cwd=cwd))


def ok(res):
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def built(repo, tmp_path_factory):
    """A run as Snakemake would make it: source -> tts plan -> 2 shards -> gather ->
    provenance summary, in one working directory."""
    w = tmp_path_factory.mktemp("built")
    (w / "data").mkdir()
    (w / "data" / "extra.jsonl").write_text(
        json.dumps({"question": "What is 20 plus 1?", "answer": "21"}) + "\n"
        + json.dumps({"question": "Which is larger, 7 or 9?", "answer": "9"}) + "\n")
    ok(cordflow(repo, "source", "--params", json.dumps(SOURCE), "--out-dir", "results/qa",
                cwd=w))
    ok(cordflow(repo, "tts-plan", "--params", json.dumps(TTS), "--qa", "results/qa/train.parquet",
                "--qa", "results/qa/test.parquet", "--out-dir", "results/audio/plan", cwd=w))
    # The two shards run at once into one store, as Snakemake runs them.
    shards = [start(repo, "tts-shard", "--params", json.dumps(TTS), "--plan",
                    f"results/audio/plan/{k}.parquet", "--out", f"results/audio/shards/{k}.parquet",
                    "--store", "results/audio/store", cwd=w) for k in (0, 1)]
    for proc in shards:
        ok(finish(proc))
    ok(cordflow(repo, "tts-gather", "--params", "{}", "--shards", "results/audio/shards/0.parquet",
                "--shards", "results/audio/shards/1.parquet", "--out", MANIFEST, cwd=w))
    ok(cordflow(repo, "provenance-summary", "--params", "{}", "--target", MANIFEST,
                "--out", SUMMARY,
                cwd=w))
    return w


@pytest.fixture
def run(built, tmp_path, monkeypatch):
    """A private copy of the built run; the working directory is its root."""
    w = tmp_path / "copy"
    shutil.copytree(built, w, symlinks=True)
    monkeypatch.chdir(w)
    return w


def text(node) -> str:
    console = Console(record=True, width=300, no_color=True)
    console.print(audit.tree(node))
    return console.export_text()


def kinds(problems):
    return {(p.path, p.kind) for p in problems}


def store_clips(w):
    return sorted((w / "results/audio/store").rglob("*.flac"))


def test_clean_run_audits_clean_and_the_tree_shows_the_lineage(run, built):
    assert read_record(run / MANIFEST.replace(".parquet", ".parquet.prov.json"))["cwd"] == str(
        built)  # the jobs ran elsewhere: paths resolve from where the records lie now
    report = audit.audit(MANIFEST, "results")
    assert report.problems == []
    lines = text(report.root).splitlines()
    first = {name: next(i for i, line in enumerate(lines) if name in line) for name in (
        MANIFEST, "results/audio/shards/0.parquet", "results/audio/plan/0.parquet",
        "rule tts_plan", "results/qa/train.parquet", "data/extra.jsonl")}
    # Each step of the lineage sits below the one made from it.
    order = list(first.values())
    assert order == sorted(order), lines
    assert "rule tts_gather" in lines[0] and "ok" in lines[0]
    assert "source (outside the results" in lines[first["data/extra.jsonl"]]
    n_clips = len(store_clips(run))
    assert any("results/audio/store/" in line and "run-time files, all match" in line
               for line in lines)
    assert report.files_hashed >= n_clips * 2  # clips and their JSON, each once


def test_cli_audit_prints_the_tree_and_exits_zero(repo, run):
    res = ok(cordflow(repo, "audit", SUMMARY, cwd=run))
    assert "results/qa/train.parquet" in res.stdout and "rule provenance" in res.stdout
    assert "all consistent" in res.stdout
    # From elsewhere, by absolute path: the results folder is the one the file is in.
    res = ok(cordflow(repo, "audit", str(run / SUMMARY), cwd=run.parent))
    assert "all consistent" in res.stdout


def test_all_passes_on_a_clean_run_and_covers_every_file(repo, run):
    report = audit.audit_all_report("results")
    assert report.problems == []
    data = [f for f in (run / "results").rglob("*") if f.is_file() and not is_record(f)]
    assert report.files_hashed == len(data) + 1  # each once, and the one source
    assert ok(cordflow(repo, "audit", "--all", cwd=run)).stdout.rstrip().endswith(
        "all consistent")


def test_an_unchanged_run_is_audited_from_the_stat_cache_and_tampering_still_caught(repo, run):
    """cordflow audit keeps each file's sha256 by its stat (size, mtime, ctime, inode): an
    unchanged run reads no file the second time; a file changed even with its size and mtime
    put back (`touch -r`) is read again and caught; --deep reads everything."""
    first = audit.audit_all_report("results", deep=False)
    assert first.problems == [] and first.files_hashed > 0
    again = audit.audit_all_report("results", deep=False)
    assert again.problems == [] and again.files_hashed == 0
    assert not any((run / "results").rglob("*.sqlite"))  # the cache is not in the results
    assert ", 0 files read (0.0 MB)" in ok(cordflow(repo, "audit", "--all", cwd=run)).stdout
    assert f", {first.files_hashed} files read" in ok(
        cordflow(repo, "audit", "--all", "--deep", cwd=run)).stdout
    shard = run / "results/audio/shards/0.parquet"
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    assert shard.stat().st_size == st.st_size and shard.stat().st_mtime_ns == st.st_mtime_ns
    tampered = audit.audit_all_report("results", deep=False)
    assert ("results/audio/shards/0.parquet", "changed") in kinds(tampered.problems)
    assert tampered.files_hashed == 1
    deep = audit.audit_all_report("results")  # --deep (and export-crate): every file read
    assert deep.files_hashed == first.files_hashed


def test_a_tampered_upstream_artifact_fails_naming_it(repo, run):
    with open(run / "results/qa/train.parquet", "ab") as f:
        f.write(b"\0")
    problems = audit.audit(MANIFEST, "results").problems
    assert ("results/qa/train.parquet", "changed") in kinds(problems)
    res = cordflow(repo, "audit", MANIFEST, cwd=run)
    assert res.returncode == 1
    assert "results/qa/train.parquet: changed" in res.stderr
    # the one job that makes it again (issue 16: not every job of the rule)
    fix = "snakemake --forcerun results/qa/train.parquet -- results/qa/train.parquet"
    assert f"rerun it: {fix}" in res.stderr and "run in this order" in res.stderr


def test_a_deleted_upstream_file_fails_naming_it(repo, run):
    (run / "results/audio/plan/1.parquet").unlink()  # a file inside a directory artifact
    problems = audit.audit(MANIFEST, "results").problems
    assert ("results/audio/plan/1.parquet", "missing") in kinds(problems)
    (run / "results/qa/test.parquet").unlink()
    res = cordflow(repo, "audit", "--all", cwd=run)
    assert res.returncode == 1
    assert "results/qa/test.parquet: missing" in res.stderr


def test_an_unrecorded_workflow_artifact_fails(repo, run):
    record_path(run / "results/qa/test.parquet").unlink()
    problems = audit.audit(MANIFEST, "results").problems
    assert kinds(problems) == {("results/qa/test.parquet", "unrecorded")}
    (run / "results/audio/notes.txt").write_text("written by hand\n")
    all_problems = audit.audit_all("results")
    assert ("results/audio/notes.txt", "unrecorded") in kinds(all_problems)
    assert ("results/qa/test.parquet", "unrecorded") in kinds(all_problems)
    # An excluded file is left out (e.g. the Snakemake report).
    assert ("results/audio/notes.txt", "unrecorded") not in kinds(
        audit.audit_all("results", exclude=["audio/notes.txt"]))


def test_a_file_added_to_a_directory_artifact_is_unrecorded(run):
    (run / "results/audio/plan/2.parquet").write_bytes(b"stray")
    assert ("results/audio/plan/2.parquet", "unrecorded") in kinds(audit.audit_all("results"))


def test_a_changed_audio_clip_is_caught_through_the_shard_record(run):
    clip = store_clips(run)[0]
    clip.write_bytes(clip.read_bytes()[:-10])
    problems = audit.audit(MANIFEST, "results").problems
    assert kinds(problems) == {(clip.relative_to(run).as_posix(), "changed")}
    meta = clip.with_suffix(".json")
    meta.unlink()
    assert (meta.relative_to(run).as_posix(), "missing") in kinds(audit.audit_all("results"))


def test_a_changed_source_fails_but_sources_need_no_record(run):
    assert audit.audit(MANIFEST, "results").problems == []
    assert not record_path(run / "data/extra.jsonl").exists()
    with open(run / "data/extra.jsonl", "a") as f:
        f.write(json.dumps({"question": "What is 1 plus 1?", "answer": "2"}) + "\n")
    problems = audit.audit(MANIFEST, "results").problems
    assert kinds(problems) == {("data/extra.jsonl", "changed")}
    assert "was made from" in problems[0].detail and "(rule source)" in problems[0].detail


def test_a_rerun_upstream_stage_makes_its_consumers_stale(repo, run):
    """The producer ran again (new tables, new records) but its consumers did not."""
    ok(cordflow(repo, "source", "--params", json.dumps({**SOURCE, "seed": 4}), "--out-dir",
                "results/qa", cwd=run))
    problems = audit.audit(MANIFEST, "results").problems
    assert ("results/qa/train.parquet", "changed") in kinds(problems)
    assert all("results/audio/plan (rule tts_plan) was made from" in p.detail
               for p in problems), problems


SHARD = "results/audio/shards/0.parquet"


def test_a_changed_shard_is_repaired_by_its_one_job(repo, run):
    """Issue 16: the advice was `--forcerun tts_shard` (every shard and all after them);
    the shard's own job makes it again (the same bytes: its consumers stay valid)."""
    with open(run / SHARD, "ab") as f:
        f.write(b"x")
    report = audit.audit(MANIFEST, "results")
    fix = f"snakemake --forcerun {SHARD} -- {SHARD}"
    assert [p.detail.split("; ")[-1] for p in report.problems] == [f"rerun it: {fix}"]
    assert report.commands == [fix]
    res = cordflow(repo, "audit", MANIFEST, cwd=run)
    assert res.returncode == 1 and f"    {fix}\n" in res.stderr
    assert "--forcerun tts_shard" not in res.stderr


def test_a_changed_clip_is_repaired_by_the_shard_that_lists_it(run):
    clip = store_clips(run)[0]
    clip.write_bytes(clip.read_bytes()[:-10])
    shard = next(s for s in (SHARD, "results/audio/shards/1.parquet")
                 if any(c["path"].endswith(clip.name)
                        for c in read_record(record_path(run / s))["companions"]))
    assert audit.audit(MANIFEST, "results").commands == [
        f"snakemake --forcerun {shard} -- {shard}"]


def test_a_changed_folder_reruns_with_what_was_made_from_it(run):
    """A folder artifact (a model, the shard plans) is made again with its consumers:
    Snakemake would rerun them anyway for the folder's new time."""
    (run / "results/audio/plan/1.parquet").write_bytes(b"edited")
    report = audit.audit(MANIFEST, "results")
    assert report.commands == ["snakemake --forcerun results/audio/plan"]
    # its consumer (the shard job that read the file) needs no command of its own
    read = [p for n in report.auditor._nodes.values() if n.rule == "tts_shard"
            for child in n.children for p in child.problems]
    assert read and all("is itself changed" in p.detail for p in read)


def test_a_stale_consumer_is_rerun_with_what_was_made_from_it(repo, run):
    ok(cordflow(repo, "source", "--params", json.dumps({**SOURCE, "seed": 4}), "--out-dir",
                "results/qa", cwd=run))
    report = audit.audit(MANIFEST, "results")
    assert report.commands == ["snakemake --forcerun results/audio/plan"]
    # from elsewhere: the command says where to run it
    os.chdir(run.parent)
    assert audit.audit(run / MANIFEST).commands == [
        f"cd {run} && snakemake --forcerun results/audio/plan"]


def test_an_unreadable_record_is_a_problem(run):
    record_path(run / "results/audio/shards/0.parquet").write_text("{not json")
    assert ("results/audio/shards/0.parquet.prov.json", "bad-record") in kinds(
        audit.audit(MANIFEST, "results").problems)


def test_leftovers_of_an_interrupted_job_are_named_as_such(run):
    tmp = run / "results/audio/.manifest.parquet.k3j2a_x.tmp"
    tmp.mkdir()
    (tmp / "manifest.parquet").write_bytes(b"half")
    [problem] = audit.audit_all("results")
    assert "interrupted job" in problem.detail


def test_a_training_jobs_resume_folder_is_skipped_not_a_problem(repo, run, tmp_path):
    """An unfinished (or killed) training job's resume folder beside its output is not an
    artifact: audit --all and export-crate pass, the audit names it and never advises
    deleting it."""
    work = run / "results/models/.cord.work-0123456789abcdef"
    (work / "ckpt" / "step-2").mkdir(parents=True)
    (work / "ckpt" / "step-2" / "trainable.safetensors").write_bytes(b"weights")
    (work / "train_log.jsonl").write_text('{"step": 1}\n')
    report = audit.audit_all_report("results")
    assert report.problems == [] and report.resume_folders == [work]
    res = ok(cordflow(repo, "audit", "--all", cwd=run))
    assert "skipped results/models/.cord.work-0123456789abcdef" in res.stdout
    assert "delete" not in res.stdout and "all consistent" in res.stdout
    crate.export_crate(run / "results", tmp_path / "crate")
    assert ".cord.work" not in (tmp_path / "crate" / crate.METADATA).read_text()


def test_a_job_that_starts_removes_the_record_of_its_previous_output(run):
    """A forced rerun that is killed leaves no record beside its (deleted) output."""
    from cordflow.stage import stage_run

    out = run / "results/qa/test.parquet"
    assert record_path(out).is_file()
    out.unlink()  # what Snakemake does before it reruns the job
    with pytest.raises(KeyboardInterrupt), stage_run("source", {}, [], [out]):
        raise KeyboardInterrupt  # killed
    assert not record_path(out).exists()


def test_summary_lists_every_artifact_behind_the_targets(run):
    with open(run / SUMMARY, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == provenance_summary.COLUMNS
    by_path = {r["artifact"]: r for r in rows}
    artifacts = sorted(str(p.relative_to(run))[: -len(".prov.json")]
                       for p in (run / "results").rglob("*.prov.json"))
    assert sorted(k for k, r in by_path.items() if r["kind"] == "artifact") == [
        a for a in artifacts if a != SUMMARY]  # rejected tables too: jobs' other outputs
    for path, row in by_path.items():
        if row["kind"] == "artifact":
            rec = read_record(record_path(run / path))
            assert (row["rule"], row["sha256"], row["started"], row["host"]) == (
                rec["rule"], rec["sha256"], rec["started"], rec["host"])
            assert row["check"] == "ok"
    assert by_path["data/extra.jsonl"]["kind"] == "source"
    assert by_path["data/extra.jsonl"]["sha256"] == sha256_file(run / "data/extra.jsonl")
    shards = [r for r in rows if r["rule"] == "tts_shard"]
    assert sum(int(r["companions"]) for r in shards) == 2 * len(store_clips(run))
    # The summary's own record chains it to everything it lists.
    assert audit.audit(SUMMARY, "results").problems == []


def test_summary_check_column_shows_a_mismatch(run):
    with open(run / "results/qa/test.parquet", "ab") as f:
        f.write(b"\0")
    rows = {r["artifact"]: r for r in provenance_summary.rows([MANIFEST], "results")}
    assert rows["results/qa/test.parquet"]["check"].startswith("results/qa/test.parquet: changed")
    assert rows["results/qa/train.parquet"]["check"] == "ok"


# -- RO-Crate ---------------------------------------------------------------------------
def graph(crate_dir):
    doc = json.loads((crate_dir / crate.METADATA).read_text())
    return {e["@id"]: e for e in doc["@graph"]}


def test_export_crate_writes_a_valid_workflow_run_crate(repo, run):
    ok(cordflow(repo, "export-crate", "results", "--out", "crate", cwd=run))
    c = run / "crate"
    assert crate.validate_crate(c) == []
    g = graph(c)
    assert {"@id": "https://w3id.org/ro/wfrun/workflow/0.5"} in g["./"]["conformsTo"]
    assert g["./"]["mainEntity"] == {"@id": "Snakefile"}
    # One CreateAction per rule run (records of one job share it) plus the whole run.
    jobs = {read_record(p)["run_id"] for p in (run / "results").rglob("*.prov.json")}
    actions = {i: e for i, e in g.items() if e["@type"] == "CreateAction"}
    assert len(actions) == len(jobs) + 1
    assert actions["#workflow-run"]["instrument"] == {"@id": "Snakefile"}
    source_run = next(e for e in actions.values() if e.get("instrument") == {"@id": "#rule-source"})
    assert {r["@id"] for r in source_run["result"]} == {
        "results/qa/train.parquet", "results/qa/test.parquet", "results/qa/rejected.parquet",
        "results/qa/rejected.html"}
    # Every file under results/ is in the crate with its sha256; sources are described.
    for f in (run / "results").rglob("*"):
        if f.is_file():
            e = g[f.relative_to(run).as_posix()]
            assert e["sha256"] == sha256_file(f) == sha256_file(c / f.relative_to(run))
    # A source inside the working directory travels with the crate.
    extra = g["data/extra.jsonl"]
    assert extra["sha256"] == sha256_file(run / "data/extra.jsonl") == sha256_file(
        c / "data/extra.jsonl")
    assert {"@id": "data/extra.jsonl"} in source_run["object"]
    # The crate's results folder is itself auditable.
    assert audit.audit_all(c / "results") == []


def test_export_crate_refuses_results_that_do_not_check_out(repo, run):
    with open(run / "results/qa/train.parquet", "ab") as f:
        f.write(b"\0")
    res = cordflow(repo, "export-crate", "results", "--out", "crate", cwd=run)
    assert res.returncode == 1
    assert "results/qa/train.parquet: changed" in res.stderr
    assert not (run / "crate").exists()


def test_validate_crate_catches_broken_crates(run):
    c = crate.export_crate("results", run / "crate")
    metadata = c / crate.METADATA
    doc = json.loads(metadata.read_text())
    target = next(e for e in doc["@graph"] if e["@id"] == "results/qa/train.parquet")
    doc["@graph"].remove(target)
    metadata.write_text(json.dumps(doc))
    assert any("results/qa/train.parquet does not resolve" in p for p in crate.validate_crate(c))
    doc["@graph"] += [target, target]
    metadata.write_text(json.dumps(doc))
    assert "id results/qa/train.parquet is defined more than once" in crate.validate_crate(c)
    clip = store_clips(c)[0]
    clip.unlink()
    clip.write_bytes(b"other audio")  # a new file: the results' copy is left alone
    assert any(p.endswith("sha256 differs from the file in the crate")
               for p in crate.validate_crate(c))
