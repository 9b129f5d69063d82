"""The Coqui backend (tts.backend: coqui).

For real: tiny random-weight multi-speaker VITS models are built in the test from Coqui's
own config classes and loaded through Coqui's public local-path API by the real backend,
in ``.venv-coqui`` (``make coqui-env``; ``make test`` builds it first), as subprocesses
with ``PYTHONPATH=workflow``: tests/coqui_probe.py reports what the backend did, and the
``tts-shard`` command runs as the rule runs it. The what-to-stage errors for missing
files come before Coqui is imported, so they are tested here in the main environment.
XTTS needs real weights and is not tested here.
"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from cordflow.tts import read_clips, tts_config
from cordflow.tts.backends import BackendError, Voice, get_backend
from cordflow.tts.schema import PLAN_ARROW, write_table
from cordflow.tts.voices import pick


def coqui_python(repo):
    py = repo / ".venv-coqui" / "bin" / "python"
    if not py.exists():
        pytest.fail(f"{py} is missing: run `make coqui-env` (make test does it first)")
    return py


def in_coqui_env(repo, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(repo / "workflow"))
    return subprocess.run([str(coqui_python(repo)), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def backend_for(coqui: dict):
    return get_backend(tts_config({"tts": {"backend": "coqui", "coqui": coqui}}))


# ---------------------------------------------------------------- the real model

def test_vits_speaks_every_speaker_deterministically_through_the_public_api(repo, tmp_path):
    res = in_coqui_env(repo, repo / "tests" / "coqui_probe.py", tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])

    # the backend, its version (store key) and its voice specs
    assert (r["class"], r["name"], r["sample_rate"]) == ("CoquiBackend", "coqui", 16000)
    assert r["version"].startswith("coqui-tts 0.28.0, torch 2.13.0")
    assert " vits " in r["version"]
    assert (r["train"], r["heldout"]) == (["alice", "bob", "carol"], ["dave"])

    # one real clip per speaker: float32 mono, finite, in [-1, 1], about a second long
    clips = r["clips"]
    assert sorted(clips) == ["alice", "bob", "carol", "dave"]
    for spec, c in clips.items():
        assert (c["dtype"], c["ndim"], c["sample_rate"], c["finite"]) == (
            "float32", 1, 16000, True), spec
        assert 0.3 * 16000 < c["n"] < 5 * 16000, spec
        assert -1.0 <= c["min"] < c["max"] <= 1.0 and c["rms"] > 1e-3, spec
    # speakers sound different; the same text and voice give the same samples, also
    # after other utterances and from a fresh model instance loaded as a model_dir
    assert len({c["sha256"] for c in clips.values()}) == 4
    assert r["again"] == clips["alice"]
    assert r["dir_item_clip"] == r["item_clip"]
    assert r["empty_clip"]["n"] == 0

    # voices follow the item id alone (the stage's pick over the backend's voice set)
    train = [Voice(n) for n in r["train"]]
    for item, spec in r["picked"]["train"].items():
        assert spec == pick(item, 7, train).spec, item
    assert set(r["picked"]["train"].values()) == {"alice", "bob", "carol"}
    assert set(r["picked"]["test"].values()) == {"dave"}  # held-out split, held-out voice

    # the speakers file came from tts.coqui.speakers_file_path (config.json names a path
    # from the training machine); the staged config.json is left as it was
    assert r["staged_config_unchanged"]
    # the version hashes file contents: same files elsewhere, same version; other weights,
    # another version (so stored clips are never reused across models)
    assert r["dir_version"] == r["version"]
    assert r["other_version"] != r["version"]

    assert r["unknown_voice_error"].startswith(
        "config key 'tts.voices.heldout[1]': the Coqui model has no speaker 'zed' "
        "(its speakers: alice, bob, carol, dave)")
    assert "/trained/elsewhere/speaker_ids.json, which does not exist" in r[
        "stale_speakers_error"]
    assert "set tts.coqui.speakers_file_path" in r["stale_speakers_error"]
    assert r["xtts_missing_error"] == (
        f"config key 'tts.coqui.model_dir': {tmp_path / 'xtts'} lacks vocab.json; an XTTS "
        "folder holds config.json, model.pth, vocab.json (speakers_xtts.pth optional): "
        "stage them there")


def test_tts_shard_command_runs_coqui_as_the_rule_does(repo, tmp_path):
    res = in_coqui_env(repo, repo / "tests" / "coqui_tiny_vits.py", tmp_path / "model",
                       cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    items = [(f"q{i:02d}", "test" if i % 4 == 0 else "train", text) for i, text in
             enumerate(["What is two plus two?", "Is seven larger than three?",
                        "How many days are in a week?", "What is ten minus four?",
                        "Name a colour of the sky.", "What is six times one?"])]
    write_table(pd.DataFrame(items, columns=["id", "split", "spoken"]),
                tmp_path / "plan.parquet", PLAN_ARROW)
    voices = {"train": ["alice", "bob", "carol"], "heldout": ["dave"]}
    params = json.dumps({"seed": 11, "tts": {"backend": "coqui", "voices": voices,
                                             "coqui": {"model_dir": str(tmp_path / "model")}}})
    tables = []
    for run in ("a", "b"):  # two processes, two empty stores
        res = in_coqui_env(repo, "-m", "cordflow", "tts-shard", "--params", params,
                           "--plan", "plan.parquet", "--out", f"{run}.parquet",
                           "--store", f"store-{run}", "--threads", "2", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-4000:]
        tables.append(read_clips(tmp_path / f"{run}.parquet"))
    table = tables[0]
    assert list(table["id"]) == [i for i, _, _ in items]
    assert set(table["backend"]) == {"coqui"}
    assert table["backend_version"].str.startswith("coqui-tts 0.28.0").all()
    for item, split, voice in table[["id", "split", "voice"]].itertuples(index=False):
        names = voices["heldout"] if split == "test" else voices["train"]
        assert voice == pick(item, 11, [Voice(n) for n in names]).spec, item
    assert (table["sample_rate"] == 16000).all()
    assert all((tmp_path / p).is_file() for p in table["path"])
    # the same clips from another process (sha256 of the FLAC files)
    assert list(tables[1]["sha256"]) == list(table["sha256"])
    prov = json.loads((tmp_path / "a.parquet.prov.json").read_text())
    assert prov["packages"]["coqui-tts"] == "0.28.0"


def test_the_coqui_env_has_the_pins_of_envs_coqui_yaml(repo, tmp_path):
    import yaml

    deps = yaml.safe_load((repo / "envs" / "coqui.yaml").read_text())["dependencies"]
    pins = dict(p.split("==") for p in next(d["pip"] for d in deps if isinstance(d, dict)))
    code = ("import json, sys; from importlib.metadata import version; "
            "print(json.dumps({n: version(n) for n in sys.argv[1:]}))")
    res = in_coqui_env(repo, "-c", code, *pins, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    installed = json.loads(res.stdout)
    # torch is the CPU build on this disk where there is one ("2.13.0+cpu")
    assert {n: v.split("+")[0] for n, v in installed.items()} == pins


# ---------------------------------------------------------------- what to stage where
# (checked before Coqui is imported: these run in the main environment)

def test_no_model_configured_says_what_to_stage(tmp_path):
    with pytest.raises(BackendError) as e:
        backend_for({})
    msg = str(e.value)
    for part in ("tts.coqui.model_path", "tts.coqui.config_path", "tts.coqui.model_dir",
                 "tts.coqui.model_name", "tts.coqui.tts_home", "TTS_HOME",
                 "config.json, model.pth, vocab.json", "Nothing is downloaded"):
        assert part in msg, part


def test_a_missing_model_path_fails_naming_the_file_and_key(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    missing = tmp_path / "vctk" / "model_file.pth"
    with pytest.raises(BackendError) as e:
        backend_for({"model_path": str(missing), "config_path": str(tmp_path / "config.json")})
    assert str(e.value) == (
        f"config key 'tts.coqui.model_path': {missing} does not exist; stage the model "
        "checkpoint (e.g. a VITS model_file.pth) there (or point tts.coqui.model_path at it)")


def test_model_path_needs_its_config_and_speakers_files(tmp_path):
    model = tmp_path / "model_file.pth"
    model.write_bytes(b"weights")
    with pytest.raises(BackendError, match="'tts.coqui.config_path' is empty"):
        backend_for({"model_path": str(model)})
    with pytest.raises(BackendError, match=r"'tts.coqui.config_path': .*config.json does not"):
        backend_for({"model_path": str(model), "config_path": str(tmp_path / "config.json")})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackendError, match=r"'tts.coqui.speakers_file_path': .*ids.json"):
        backend_for({"model_path": str(model), "config_path": str(tmp_path / "config.json"),
                     "speakers_file_path": str(tmp_path / "ids.json")})


def test_an_unstaged_model_name_names_the_folder_to_fill(tmp_path, monkeypatch):
    folder = tmp_path / "home" / "tts" / "tts_models--en--vctk--vits"
    with pytest.raises(BackendError) as e:
        backend_for({"model_name": "tts_models/en/vctk/vits", "tts_home": str(tmp_path / "home")})
    assert f"put its files (config.json and the checkpoint, plus its speaker/language files) " \
           f"in {folder}/" in str(e.value)
    # without tts.coqui.tts_home, the TTS_HOME environment variable (as Coqui does)
    monkeypatch.setenv("TTS_HOME", str(tmp_path / "env-home"))
    with pytest.raises(BackendError, match="env-home/tts/tts_models--en--vctk--vits/"):
        backend_for({"model_name": "tts_models/en/vctk/vits"})
    with pytest.raises(BackendError, match="is not a Coqui model name"):
        backend_for({"model_name": "vctk-vits"})


def test_a_model_dir_without_checkpoint_or_config_says_which(tmp_path):
    with pytest.raises(BackendError, match="is not a folder; stage the model folder there"):
        backend_for({"model_dir": str(tmp_path / "xtts")})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackendError) as e:
        backend_for({"model_dir": str(tmp_path)})
    assert "has no model checkpoint (looked for model_file.pth, model_file.pth.tar, " \
           "model.pth, checkpoint.pth or a single *.pth; found none)" in str(e.value)
    (tmp_path / "a.pth").write_bytes(b"")
    (tmp_path / "b.pth").write_bytes(b"")
    with pytest.raises(BackendError, match="found several: a.pth, b.pth"):
        backend_for({"model_dir": str(tmp_path)})


def test_one_model_source_only_and_reference_wavs_must_exist(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(BackendError, match="tts.coqui.model_path, tts.coqui.model_dir: set only"):
        backend_for({"model_dir": str(tmp_path), "model_path": str(tmp_path / "model.pth"),
                     "config_path": str(tmp_path / "config.json")})
    with pytest.raises(BackendError) as e:
        backend_for({"model_dir": str(tmp_path), "speaker_wavs": {"anna": "voices/anna.wav"}})
    assert str(e.value).startswith("config key 'tts.coqui.speaker_wavs.anna': ")
    assert "anna.wav does not exist; stage the reference recording of voice 'anna'" in str(e.value)


def test_without_coqui_installed_it_says_which_environment_to_use(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.pth").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "TTS", None)  # as in an environment without coqui-tts
    with pytest.raises(BackendError) as e:
        backend_for({"model_dir": str(tmp_path)})
    assert "needs coqui-tts" in str(e.value)
    assert "`make coqui-env` builds .venv-coqui" in str(e.value)
    assert "envs/coqui.yaml" in str(e.value)
