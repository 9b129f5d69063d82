"""Shards for real (espeak): the store reuses clips, runs are byte-identical, quality
verdicts keep rejected clips, and the gather's counts add up."""

import shutil

import pandas as pd
import pytest

from cordflow import source
from cordflow.tts import gather, plan, read_manifest, shard, usable
from cordflow.tts.schema import CLIP_ARROW, PLAN_ARROW, read_clips, write_table

PARAMS = {"seed": 1234, "tts": {"n_shards": 2}}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plans")
    source.run({"seed": 3, "source": {"builtin": {"n_per_family": {"train": 4, "test": 2}}}},
               tmp / "qa")
    plan.run(PARAMS, [tmp / "qa" / "train.parquet", tmp / "qa" / "test.parquet"], tmp / "plan")
    return [tmp / "plan" / "0.parquet", tmp / "plan" / "1.parquet"]


def run(plan_path, tmp_path, params=PARAMS, name="0", threads=1):
    out = tmp_path / "shards" / f"{name}.parquet"
    return shard.run(params, plan_path, out, tmp_path / "store", threads=threads), out


def flacs(store):
    return {p.relative_to(store): p.read_bytes() for p in sorted(store.rglob("*.flac"))}


def test_a_shard_speaks_every_item_and_a_rerun_synthesises_nothing(plans, tmp_path):
    stats, out = run(plans[0], tmp_path)
    items = pd.read_parquet(plans[0])
    table = read_clips(out)
    assert stats.items == len(table) == len(items) and stats.synthesised == len(items)
    assert list(table["id"]) == list(items["id"])
    assert (table["status"] == "ok").all() and (table["sample_rate"] == 16000).all()
    assert all((tmp_path / "store").joinpath(*p.split("/")[-2:]).is_file()
               for p in table["path"])
    first = out.read_bytes()
    again, out = run(plans[0], tmp_path)
    assert (again.synthesised, again.reused) == (0, len(items))
    assert out.read_bytes() == first


def test_runs_are_byte_identical_from_scratch_and_with_two_threads(plans, tmp_path):
    _, out = run(plans[1], tmp_path)
    table, clips = out.read_bytes(), flacs(tmp_path / "store")
    shutil.rmtree(tmp_path / "store")
    _, out = run(plans[1], tmp_path, threads=2)
    assert out.read_bytes() == table and flacs(tmp_path / "store") == clips


def test_held_out_split_is_spoken_with_held_out_voices(plans, tmp_path):
    cfg_heldout = ("en-gb-x-rp", "en-us-nyc")
    tables = [read_clips(run(p, tmp_path, name=str(k))[1]) for k, p in enumerate(plans)]
    rows = pd.concat(tables)
    test, train = rows[rows["split"] == "test"], rows[rows["split"] == "train"]
    assert len(test) and test["voice"].str.split(r"[+,]", regex=True).str[0].isin(
        cfg_heldout).all()
    assert not train["voice"].str.split(r"[+,]", regex=True).str[0].isin(cfg_heldout).any()


def test_a_damaged_clip_is_synthesised_again(plans, tmp_path):
    _, out = run(plans[0], tmp_path)
    path = tmp_path / "store" / read_clips(out)["path"].iloc[0].split("store/")[-1]
    good = path.read_bytes()
    path.write_bytes(good[:100])
    stats, _ = run(plans[0], tmp_path)
    assert stats.synthesised == 1 and path.read_bytes() == good


def test_new_quality_thresholds_reuse_the_store_and_keep_rejected_clips(plans, tmp_path):
    run(plans[0], tmp_path)
    strict = {**PARAMS, "tts": {**PARAMS["tts"], "quality": {"max_duration_s": 0.5}}}
    stats, out = run(plans[0], tmp_path, strict)
    table = read_clips(out)
    assert stats.synthesised == 0 and stats.rejected == stats.items == len(table)
    assert table["reason"].str.startswith("too_long: ").all()
    assert table["flags"].map(lambda f: f == ["too_long"]).all()


def test_new_post_settings_make_new_clips(plans, tmp_path):
    first, out = run(plans[0], tmp_path)
    padded = {**PARAMS, "tts": {**PARAMS["tts"], "post": {"pad_ms": 300}}}
    stats, out2 = run(plans[0], tmp_path, padded, name="b")
    assert stats.synthesised == first.items
    a, b = read_clips(out), read_clips(out2)
    assert ((b["n_samples"] - a["n_samples"]) == 2 * (4800 - 1600)).all()


def test_unsayable_text_is_rejected_as_empty_and_kept(tmp_path):
    rows = pd.DataFrame({"id": ["a1", "b2"], "split": ["train", "train"],
                         "spoken": ["...", "What is two plus two?"]})
    write_table(rows, tmp_path / "plan.parquet", PLAN_ARROW)
    stats, out = run(tmp_path / "plan.parquet", tmp_path)
    table = read_clips(out)
    assert (stats.ok, stats.flagged, stats.rejected) == (1, 0, 1)
    empty = table.iloc[0]
    assert empty["status"] == "rejected" and list(empty["flags"]) == ["empty"]
    assert empty["speech_duration"] == 0 and (tmp_path / "store").exists()


def test_gather_writes_the_manifest_and_the_rejected_rows(plans, tmp_path):
    ok = run(plans[0], tmp_path, name="0")[1]
    strict = {**PARAMS, "tts": {**PARAMS["tts"], "quality": {"max_duration_s": 0.5}}}
    bad = run(plans[1], tmp_path, strict, name="1")[1]
    gather.run({}, [ok, bad], tmp_path / "audio" / "manifest.parquet")
    manifest = read_manifest(tmp_path / "audio" / "manifest.parquet")
    rejected = read_clips(tmp_path / "audio" / "rejected.parquet")
    n_ok, n_bad = len(read_clips(ok)), len(read_clips(bad))
    assert len(manifest) == n_ok + n_bad and manifest["id"].is_monotonic_increasing
    assert (manifest["status"] == "ok").sum() == n_ok
    assert sorted(rejected["id"]) == sorted(read_clips(bad)["id"])
    assert rejected["reason"].str.startswith("too_long: ").all()
    kept = read_manifest(tmp_path / "audio" / "manifest.parquet", usable=True)
    assert sorted(kept["id"]) == sorted(read_clips(ok)["id"])
    assert list(manifest.loc[usable(manifest), "id"]) == list(kept["id"])


def test_gather_fails_when_a_clip_file_is_missing(plans, tmp_path):
    _, out = run(plans[0], tmp_path)
    (tmp_path / "store" / read_clips(out)["path"].iloc[0].split("store/")[-1]).unlink()
    with pytest.raises(FileNotFoundError, match="clip file"):
        gather.run({}, [out], tmp_path / "manifest.parquet")
    assert not (tmp_path / "manifest.parquet").exists()


def test_an_empty_plan_gives_an_empty_table(tmp_path):
    write_table(pd.DataFrame({"id": [], "split": [], "spoken": []}), tmp_path / "plan.parquet",
                PLAN_ARROW)
    stats, out = run(tmp_path / "plan.parquet", tmp_path)
    assert stats.items == 0 and len(read_clips(out)) == 0
    gather.run({}, [out], tmp_path / "manifest.parquet")
    assert len(read_manifest(tmp_path / "manifest.parquet")) == 0


TAKES = {**PARAMS, "tts": {**PARAMS["tts"], "train_takes": 3}}


def test_train_questions_get_a_clip_per_take_each_in_another_voice(plans, tmp_path):
    single = read_clips(run(plans[0], tmp_path, name="one")[1])
    stats, out = run(plans[0], tmp_path, TAKES, name="three")
    table, items = read_clips(out), pd.read_parquet(plans[0])
    n_train = int((items["split"] == "train").sum())
    assert n_train and stats.clips == len(table) == 3 * n_train + len(items) - n_train
    for _, clips in table.groupby("id"):
        takes = 3 if clips["split"].iloc[0] == "train" else 1
        assert list(clips["take"]) == list(range(takes)) and clips["voice"].is_unique
    # Take 0 is the single-take clip, reused from the store: only the new takes are spoken.
    first = table[table["take"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, single)
    assert stats.synthesised == 2 * n_train


def test_spoken_pairs_give_a_row_per_usable_take_and_keep_a_rejected_one(plans, tmp_path):
    from cordflow import data

    _, out = run(plans[0], tmp_path, TAKES, name="0")
    _, other = run(plans[1], tmp_path, TAKES, name="1")
    table = read_clips(out)
    bad = table.index[(table["split"] == "train") & (table["take"] == 1)][0]
    table.loc[bad, ["status", "reason"]] = ["rejected", "too_long: 9.0 s > 8.0 s"]
    table.at[bad, "flags"] = ["too_long"]
    write_table(table, out, CLIP_ARROW)
    gather.run({}, [out, other], tmp_path / "manifest.parquet")
    qa = plans[0].parents[1] / "qa" / "train.parquet"
    pairs = data.spoken_pairs(qa, tmp_path / "manifest.parquet")
    assert len(pairs.items) == 3 * len(pd.read_parquet(qa)) - 1
    assert pairs.items.groupby("id")["voice"].nunique().max() == 3
    assert pairs.excluded.to_dict("records") == [
        {"id": table.at[bad, "id"], "take": 1, "reason": "tts_rejected: too_long: 9.0 s > 8.0 s"}]
