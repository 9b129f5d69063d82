"""Provenance records as `stage_run` writes them: what each holds, directories hashed per
file, run-time files listed in the record instead of a sidecar each, nothing on failure."""

import datetime as dt
import json
import socket
from pathlib import Path

import pytest

from cordflow import __version__, audit, crate
from cordflow.io import sha256_file
from cordflow.provenance import read_record, record_path, tree_digest
from cordflow.stage import stage_run


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    return tmp_path


def write(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_record_holds_what_the_spec_asks_for(work, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    src = write("data/qa.jsonl", b'{"question": "q", "answer": "1"}\n')
    params = {"seed": 7, "source": {"splits": ["train"]}}
    with stage_run("source", params, [src], ["results/qa/train.parquet",
                                             "results/qa/rejected.parquet"]):
        write("results/qa/train.parquet", b"train")
        write("results/qa/rejected.parquet", b"rejected")
    train = read_record(record_path("results/qa/train.parquet"))
    rejected = read_record(record_path("results/qa/rejected.parquet"))
    assert train["artifact"] == "results/qa/train.parquet"
    assert (train["type"], train["sha256"], train["bytes"]) == (
        "file", sha256_file("results/qa/train.parquet"), 5)
    assert train["inputs"] == [{"path": "data/qa.jsonl", "type": "file",
                                "sha256": sha256_file(src), "bytes": src.stat().st_size,
                                "record": None, "has_record": False}]
    assert (train["rule"], train["params"], train["seed"]) == ("source", params, 7)
    assert train["slurm_job_id"] == "4242" and train["host"] == socket.gethostname()
    assert train["packages"]["cordflow"] == __version__
    assert set(train["code"]) == {"git_commit", "dirty", "package_version"}
    assert len(train["rule_code"]) == 16
    started, ended = (dt.datetime.fromisoformat(train[k]) for k in ("started", "ended"))
    assert started <= ended and started.tzinfo is not None
    # Both outputs come from one job.
    assert train["run_id"] == rejected["run_id"]
    assert train["outputs"] == rejected["outputs"] == [
        "results/qa/train.parquet", "results/qa/rejected.parquet"]


def test_directories_are_hashed_per_file_and_inputs_point_at_their_record(work):
    with stage_run("tts_plan", {}, [], ["results/audio/plan"]):
        write("results/audio/plan/0.parquet", b"zero")
        write("results/audio/plan/sub/1.parquet", b"one")
    plan = read_record(record_path("results/audio/plan"))
    files = {"0.parquet": sha256_file("results/audio/plan/0.parquet"),
             "sub/1.parquet": sha256_file("results/audio/plan/sub/1.parquet")}
    assert (plan["type"], plan["files"], plan["sha256"], plan["bytes"]) == (
        "directory", files, tree_digest(files), 7)
    # Snakemake touches its timestamp file in a directory output after the job: not part
    # of the artifact, and covered.
    write("results/audio/plan/.snakemake_timestamp", b"")
    assert audit.audit_all("results") == []
    with stage_run("tts_shard", {}, ["results/audio/plan/0.parquet"],
                   ["results/audio/shards/0.parquet"]):
        write("results/audio/shards/0.parquet", b"clips")
    [entry] = read_record(record_path("results/audio/shards/0.parquet"))["inputs"]
    assert entry["record"] == "results/audio/plan.prov.json"  # the folder's record


def test_run_time_files_are_listed_in_the_record_not_given_a_sidecar(work):
    with stage_run("tts_shard", {"seed": 1}, [], ["results/audio/shards/0.parquet"]) as extra:
        clips = [write(f"results/audio/store/ab/ab{i}.flac", bytes([i]) * 100) for i in range(3)]
        write("results/audio/shards/0.parquet", b"table")
        extra.extend(clips)
        extra.append(clips[0])  # listed twice: recorded once
    rec = read_record(record_path("results/audio/shards/0.parquet"))
    assert rec["companions"] == [{"path": str(c), "sha256": sha256_file(c), "bytes": 100}
                                 for c in clips]
    assert not any(record_path(c).exists() for c in clips)
    assert audit.audit_all("results") == []
    clips[1].write_bytes(b"other")
    assert [(p.path, p.kind) for p in audit.audit_all("results")] == [
        ("results/audio/store/ab/ab1.flac", "changed")]


def test_nothing_is_recorded_when_the_stage_fails(work):
    with pytest.raises(RuntimeError), stage_run("source", {}, [], ["results/qa/train.parquet"]):
        write("results/qa/train.parquet", b"half")
        raise RuntimeError("boom")
    assert not record_path("results/qa/train.parquet").exists()


def test_a_declared_output_that_was_not_written_is_an_error(work):
    outputs = ["results/qa/train.parquet", "results/qa/test.parquet"]
    with (pytest.raises(FileNotFoundError, match="results/qa/test.parquet"),
          stage_run("source", {}, [], outputs)):
        write("results/qa/train.parquet", b"x")


def test_records_are_json_with_sorted_keys_and_stable_fields(work):
    with stage_run("summarize", {"seed": 1}, [], ["results/eval/gap_table.csv"]):
        write("results/eval/gap_table.csv", b"model,gap\n")
    text = record_path("results/eval/gap_table.csv").read_text()
    rec = json.loads(text)
    assert list(rec) == sorted(rec) and rec["schema"] == 2


def test_sources_outside_the_working_directory_are_described_not_copied(tmp_path, monkeypatch):
    staged = tmp_path / "staged" / "weights"
    write(staged / "model.safetensors", b"\1" * 64)
    write(staged / "config.json", b"{}")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with stage_run("base", {"seed": 1}, [staged], ["results/models/base"]):
        write("results/models/base/model.safetensors", b"\2" * 64)
    assert audit.audit("results/models/base").problems == []
    out = crate.export_crate("results", "crate")
    assert crate.validate_crate(out) == []
    g = {e["@id"]: e for e in json.loads((out / crate.METADATA).read_text())["@graph"]}
    source = g[staged.as_uri() + "/"]
    assert source["@type"] == "Dataset"
    members = [g[p["@id"]] for p in source["hasPart"]]
    assert {m["sha256"] for m in members} == {sha256_file(staged / "model.safetensors"),
                                               sha256_file(staged / "config.json")}
    assert sorted(p.name for p in out.rglob("*.safetensors")) == ["model.safetensors"]
    assert (out / "results/models/base/model.safetensors").read_bytes() == b"\2" * 64
    # Changing the staged weights breaks the base model's lineage.
    write(staged / "config.json", b'{"changed": true}')
    assert [(p.path, p.kind) for p in audit.audit("results/models/base").problems] == [
        (str(staged), "changed")]
