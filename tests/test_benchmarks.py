"""Benchmark loaders on small fixture datasets built here in the real formats (nothing is
downloaded): our QA split spoken by the TTS stage, VoiceBench parquet files with the HF
Audio feature (the hub layout and a save_to_disk copy), and MMAU's JSON + audio folder."""

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from cordflow.audio import SAMPLE_RATE
from cordflow.evaluate import items as bm
from cordflow.evaluate import staged

datasets = pytest.importorskip("datasets")


def tone(freq, rate, seconds=0.5, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def encoded(x, rate, fmt="WAV"):
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt)
    return buf.getvalue()


def peak_hz(x, rate=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))]


AUDIO_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
VB_FEATURES = datasets.Features({"audio": datasets.Audio(sampling_rate=16000),
                                 "prompt": datasets.Value("string"),
                                 "reference": datasets.Value("string")})


def vb_table(rows):
    """A VoiceBench split as the hub's parquet files hold it (Audio feature metadata)."""
    table = pa.table({
        "audio": pa.array([{"bytes": a, "path": f"{i}.wav"} for i, (a, _, _) in enumerate(rows)],
                          type=AUDIO_STRUCT),
        "prompt": [p for _, p, _ in rows],
        "reference": [r for _, _, r in rows],
    })
    meta = {"huggingface": json.dumps({"info": {"features": VB_FEATURES.to_dict()}})}
    return table.replace_schema_metadata(meta)


OBQA = [
    (encoded(tone(440, 24000, channels=2), 24000),
     "Which of these conducts heat best?\nA. a wool sock\nB. a steel spoon\nC. a paper cup\n"
     "D. a cotton hat", "B"),
    (encoded(tone(880, 16000, seconds=0.8), 16000, "FLAC"),
     "What do plants need to grow? A) sunlight B) darkness C) sand D) noise", "a"),
    (encoded(tone(440, 16000), 16000), "Why is the sky blue?", "A"),
    (encoded(tone(440, 16000), 16000), "Pick one. A. red B. green", "E"),
    (b"this is not audio", "Pick one. A. red B. green", "A"),
]
MMSU = {
    "law": [(encoded(tone(300, 22050), 22050), "Vitamin A. is a name. Which is a court?\n"
             "A. a bench\nB. a field\nC. a river\nD. a cloud", "A")],
    "physics": [(encoded(tone(500, 22050), 22050), "What is heavier? (A) lead (B) air", "A"),
                (encoded(tone(600, 22050), 22050), "What is faster? (A) light (B) sound", "A")],
}


@pytest.fixture
def voicebench(tmp_path):
    """hlt-lab/voicebench's layout: one folder per subset, one parquet file per split."""
    root = tmp_path / "voicebench"
    (root / "openbookqa").mkdir(parents=True)
    pq.write_table(vb_table(OBQA), root / "openbookqa" / "test-00000-of-00001.parquet")
    (root / "mmsu").mkdir()
    for split, rows in MMSU.items():
        pq.write_table(vb_table(rows), root / "mmsu" / f"{split}-00000-of-00001.parquet")
    return root


def test_voicebench_items_answers_options_and_exclusions(voicebench):
    b = bm.load({"name": "openbookqa", "kind": "voicebench", "path": str(voicebench),
                 "subset": "openbookqa"})
    assert list(b.items.columns) == bm.ITEM_COLUMNS and b.has_text
    assert b.items["id"].tolist() == ["test:0", "test:1"]
    assert b.items["answer"].tolist() == ["B", "A"]  # "a" read as the letter A
    assert b.items["choices"].tolist() == [
        ["a wool sock", "a steel spoon", "a paper cup", "a cotton hat"],
        ["sunlight", "darkness", "sand", "noise"]]
    assert b.items["question"].iloc[0] == OBQA[0][1]  # the text prompt is the prompt itself
    assert b.items["audio_text"].isna().all() and set(b.items["answer_type"]) == {"choice"}
    assert b.items["category"].tolist() == ["test", "test"]
    assert b.items["duration"].round(3).tolist() == [0.5, 0.8]
    assert b.excluded["id"].tolist() == ["test:2", "test:3", "test:4"]
    assert b.counts() == {"bad_answer": 1, "bad_audio": 1, "no_options": 1}
    assert "5 rows in = 2 items + 3 excluded" in b.summary()


def test_voicebench_audio_is_16k_mono_float32_with_its_pitch(voicebench):
    b = bm.load({"name": "obqa", "kind": "voicebench", "path": str(voicebench),
                 "subset": "openbookqa"})
    stereo_24k, flac_16k = (clip.load() for clip in b.items["audio"])
    assert stereo_24k.dtype == np.float32 and stereo_24k.ndim == 1
    assert len(stereo_24k) == 8000 and len(flac_16k) == 12800  # 0.5 s and 0.8 s at 16 kHz
    assert abs(peak_hz(stereo_24k) - 440) <= 2 and abs(peak_hz(flac_16k) - 880) <= 2
    assert 0.25 < np.abs(stereo_24k).max() < 0.35  # channels averaged, level kept


def test_mmsu_domains_are_splits_and_can_be_chosen(voicebench):
    every = bm.load({"name": "mmsu", "kind": "voicebench", "path": str(voicebench),
                     "subset": "mmsu"})
    assert sorted(every.items["id"]) == ["law:0", "physics:0", "physics:1"]
    law = every.items.set_index("id").loc["law:0"]
    assert law["choices"] == ["a bench", "a field", "a river", "a cloud"]  # not "is a name"
    assert law["category"] == "law"
    physics = bm.load({"name": "mmsu", "kind": "voicebench", "path": str(voicebench),
                       "subset": "mmsu", "splits": ["physics"], "limit": 1})
    assert physics.items["id"].tolist() == ["physics:0"]
    assert physics.items["choices"].iloc[0] == ["lead", "air"]
    with pytest.raises(bm.BenchmarkError, match=r"no split\(s\) \['chemistry'\]"):
        bm.load({"name": "mmsu", "kind": "voicebench", "path": str(voicebench),
                 "subset": "mmsu", "splits": ["chemistry"]})


def test_a_save_to_disk_copy_reads_the_same(voicebench, tmp_path):
    table = pq.read_table(voicebench / "openbookqa" / "test-00000-of-00001.parquet")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset(
        table.replace_schema_metadata(None), info=datasets.DatasetInfo(features=VB_FEATURES))
    }).save_to_disk(str(saved / "openbookqa"))
    a = bm.load({"name": "o", "kind": "voicebench", "path": str(saved), "subset": "openbookqa"})
    b = bm.load({"name": "o", "kind": "voicebench", "path": str(voicebench),
                 "subset": "openbookqa"})
    cols = ["id", "question", "answer", "choices", "duration"]
    pd.testing.assert_frame_equal(a.items[cols], b.items[cols])
    assert np.array_equal(a.items["audio"].iloc[0].load(), b.items["audio"].iloc[0].load())


def test_mapping_overrides_and_a_choices_column(tmp_path):
    rows = {"wav": [{"bytes": encoded(tone(440, 16000), 16000), "path": None}],
            "text": ["Which is a fruit?"], "gold": ["an apple"],
            "options": [["a stone", "an apple"]], "key": ["q-1"]}
    pq.write_table(pa.table(rows), tmp_path / "custom.parquet")
    b = bm.load({"name": "c", "kind": "voicebench", "path": str(tmp_path / "custom.parquet"),
                 "mapping": {"audio": "wav", "question": "text", "answer": "gold",
                             "choices": "options", "id": "key"}})
    assert b.items[["id", "answer"]].values.tolist() == [["q-1", "B"]]
    assert b.items["choices"].iloc[0] == ["a stone", "an apple"]
    with pytest.raises(bm.BenchmarkError, match=r"mapping.question: column 'prompt' is not"):
        bm.load({"name": "c", "kind": "voicebench", "path": str(tmp_path / "custom.parquet"),
                 "mapping": {"audio": "wav"}})


def test_a_dataset_that_is_not_staged_says_what_to_stage_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(bm.NotStaged) as e:
        bm.load({"name": "mmsu", "kind": "voicebench", "path": "data/voicebench",
                 "subset": "mmsu"})
    msg = str(e.value)
    assert "evaluate.benchmarks['mmsu']" in msg and "not staged" in msg
    assert "load_dataset('hlt-lab/voicebench', 'mmsu').save_to_disk('data/voicebench/mmsu')" in msg
    with pytest.raises(bm.NotStaged, match=r"mmau-test-mini.json .*github.com/Sakshi113/MMAU"):
        bm.load({"name": "mmau", "kind": "mmau", "path": "data/mmau/mmau-test-mini.json"})


def test_every_item_excluded_fails_naming_the_benchmark(tmp_path):
    root = tmp_path / "vb" / "openbookqa"
    root.mkdir(parents=True)
    pq.write_table(vb_table(OBQA[2:3]), root / "test-00000-of-00001.parquet")
    with pytest.raises(bm.BenchmarkError, match=r"'bad'.*1 excluded \(no_options: 1\).*no "
                                                r"usable item"):
        bm.load({"name": "bad", "kind": "voicebench", "path": str(tmp_path / "vb"),
                 "subset": "openbookqa"})


# ----------------------------------------------------------------------------- mmau

@pytest.fixture
def mmau(tmp_path):
    """The official release: mmau-test-mini.json and test-mini-audios/ beside it."""
    root = tmp_path / "mmau"
    (root / "test-mini-audios").mkdir(parents=True)
    items = [
        ("m1", ["Piano", "Violin", "Drum", "Flute"], "Violin", "music", 44100),
        ("m2", ["Rain", "Wind"], "Thunder", "sound", 16000),  # answer not an option
        ("m3", ["Man", "Woman"], "woman", "speech", 22050),   # missing audio file below
        ("m4", ["Man", "Woman"], "woman", "speech", 8000),
    ]
    rows = []
    for i, (key, choices, answer, task, rate) in enumerate(items):
        if key != "m3":
            sf.write(root / "test-mini-audios" / f"{key}.wav", tone(200 + 100 * i, rate), rate)
        rows.append({"id": key, "audio_id": f"./test-mini-audios/{key}.wav",
                     "question": f"Question {key}?", "choices": choices, "answer": answer,
                     "dataset": "fixture", "task": task, "split": "test-mini",
                     "category": "Reasoning", "sub-category": "x", "difficulty": "easy"})
    (root / "mmau-test-mini.json").write_text(json.dumps(rows, indent=1))
    return root / "mmau-test-mini.json"


def test_mmau_is_audio_only_with_the_question_beside_the_clip(mmau):
    b = bm.load({"name": "mmau", "kind": "mmau", "path": str(mmau)})
    assert not b.has_text
    assert b.items["id"].tolist() == ["m1", "m4"]
    assert b.items["question"].isna().all()  # no text-only counterpart
    assert b.items["audio_text"].tolist() == [
        "Question m1? A: Piano, B: Violin, C: Drum, D: Flute", "Question m4? A: Man, B: Woman"]
    assert b.items["answer"].tolist() == ["B", "B"] and b.items["category"].tolist() == [
        "music", "speech"]
    assert b.excluded["id"].tolist() == ["m2", "m3"]
    assert b.excluded["reason"].iloc[0].startswith("bad_answer: answer 'Thunder'")
    assert b.excluded["reason"].iloc[1].startswith("bad_audio: audio file")
    x44, x8 = (c.load() for c in b.items["audio"])
    assert len(x44) == len(x8) == 8000 and abs(peak_hz(x44) - 200) <= 2
    assert abs(peak_hz(x8) - 500) <= 2


# ----------------------------------------------------------------------------- qa_split

@pytest.fixture
def spoken_test_split(tmp_path):
    """A small built-in test split spoken by the real TTS stage (espeak)."""
    from cordflow import source
    from cordflow.tts import gather, plan, read_manifest, shard
    from cordflow.tts.schema import CLIP_ARROW, write_table

    source.run({"seed": 1, "source": {"splits": ["train", "test"], "builtin": {
        "families": ["addition", "choice"], "n_per_family": {"train": 0, "test": 3}}}},
        tmp_path / "qa")
    tts = {"seed": 1, "tts": {"n_shards": 1}}
    plan.run(tts, [tmp_path / "qa" / "test.parquet"], tmp_path / "plan")
    shard.run(tts, tmp_path / "plan" / "0.parquet", tmp_path / "shards" / "0.parquet",
              tmp_path / "store")
    gather.run(tts, [tmp_path / "shards" / "0.parquet"], tmp_path / "manifest.parquet")
    manifest = read_manifest(tmp_path / "manifest.parquet")
    # One clip rejected by the quality checks, one item with no clip at all.
    rejected, missing = manifest["id"].iloc[0], manifest["id"].iloc[1]
    manifest.loc[0, ["status", "reason"]] = ["rejected", "too_fast: 0.01 s per character"]
    manifest.at[0, "flags"] = ["too_fast"]
    manifest = manifest.drop(index=1).reset_index(drop=True)
    write_table(manifest, tmp_path / "manifest.parquet", CLIP_ARROW)
    return tmp_path / "qa" / "test.parquet", tmp_path / "manifest.parquet", rejected, missing


def test_qa_split_joins_the_manifest_and_counts_unusable_clips(spoken_test_split):
    from cordflow import source
    from cordflow.tts import read_manifest

    qa_path, manifest_path, rejected, missing = spoken_test_split
    qa, manifest = source.read_qa(qa_path), read_manifest(manifest_path)
    b = bm.load({"name": "builtin", "kind": "qa_split", "split": "test"},
                {"qa": qa_path, "manifest": manifest_path})
    assert len(b.items) + len(b.excluded) == len(qa) == 6
    assert b.counts() == {"no_clip": 1, "tts_rejected": 1}
    why = dict(zip(b.excluded["id"], b.excluded["reason"], strict=True))
    assert why[rejected] == "tts_rejected: too_fast: 0.01 s per character"
    assert why[missing].startswith("no_clip: ") and missing not in set(b.items["id"])
    kept = qa.set_index("id").loc[b.items["id"]]
    assert b.items["question"].tolist() == kept["question"].tolist()
    assert b.items["answer"].tolist() == kept["answer"].tolist()
    assert b.items["category"].tolist() == manifest.set_index("id").loc[b.items["id"],
                                                                         "voice"].tolist()
    x = b.items["audio"].iloc[0].load()
    assert x.dtype == np.float32 and len(x) == round(b.items["duration"].iloc[0] * 16000)
    with pytest.raises(bm.BenchmarkError, match="split is 'train' but .* holds split"):
        bm.load({"name": "builtin", "kind": "qa_split", "split": "train"},
                {"qa": qa_path, "manifest": manifest_path})
    with pytest.raises(bm.BenchmarkError, match="needs --qa results/qa/test.parquet"):
        bm.load({"name": "builtin", "kind": "qa_split", "split": "test"}, {"qa": qa_path})


# ----------------------------------------------------------------------------- entries

def test_entries_are_checked_per_kind_and_found_by_name():
    with pytest.raises(bm.BenchmarkError, match="'path' is a required property"):
        bm.entry_config({"name": "mmsu", "kind": "voicebench"})
    with pytest.raises(bm.BenchmarkError, match="voicebench and mmau take path, not split"):
        bm.entry_config({"name": "mmsu", "kind": "voicebench", "path": "x", "split": "test"})
    params = {"evaluate": {"benchmarks": [{"name": "builtin", "kind": "qa_split",
                                           "split": "test"}]}}
    assert bm.find(params, "builtin")["mapping"] == {}
    with pytest.raises(bm.BenchmarkError, match=r"no benchmark named 'mmsu'.*\['builtin'\]"):
        bm.find(params, "mmsu")


@pytest.mark.parametrize("prompt, options", [
    ("Q?\nA. x\nB. y", ["x", "y"]),
    ("Q? (A) one (B) two (C) three", ["one", "two", "three"]),
    ("Q? A: x, B: y", ["x", "y"]),  # our own QA format
    ("Take vitamin A. Then? A) eat B) sleep", ["eat", "sleep"]),
    ("Q? A. only one", None),
    ("No options here.", None),
])
def test_split_options(prompt, options):
    found = staged.split_options(prompt)
    assert (found[1] if found else None) == options
