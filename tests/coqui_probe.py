"""Drives the real Coqui backend inside ``.venv-coqui`` and prints what it saw, as JSON.

Started by tests/test_tts_coqui.py (``.venv-coqui/bin/python tests/coqui_probe.py WORK``
with ``PYTHONPATH=workflow``); the assertions are the test's. Models are tiny random-weight
VITS (tests/coqui_tiny_vits.py) loaded through Coqui's public local-path API:

- ``a``: ``model_path`` + ``config_path`` + ``speakers_file_path`` (the speakers file kept
  away from the model, so only that key can find it; config.json names a stale path);
- ``dir``: the same files as a ``model_dir`` with speaker_ids.json beside the model;
- ``other``: the same architecture with other random weights;
- ``xtts``: an XTTS folder (Coqui's own XttsConfig) that lacks vocab.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from coqui_tiny_vits import build

from cordflow.tts import tts_config
from cordflow.tts.backends import BackendError, VoiceError, get_backend
from cordflow.tts.voices import VoiceChooser

SPEAKERS = ["alice", "bob", "carol", "dave"]
VOICES = {"train": ["alice", "bob", "carol"], "heldout": ["dave"]}
TEXT = "What is seven plus five?"
ITEM_TEXT = "How many legs does a spider have?"
SEED = 7
ITEMS = [f"item-{i}" for i in range(24)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clip(backend, text, voice) -> dict:
    audio = backend.synthesize(text, voice)
    s = audio.samples
    return {"sha256": sha(s.tobytes()), "n": int(s.size), "ndim": s.ndim, "dtype": str(s.dtype),
            "min": float(s.min()) if s.size else 0.0, "max": float(s.max()) if s.size else 0.0,
            "rms": float(np.sqrt(np.mean(s.astype(np.float64) ** 2))) if s.size else 0.0,
            "finite": bool(np.isfinite(s).all()), "sample_rate": audio.sample_rate}


def config(coqui: dict) -> dict:
    return tts_config({"tts": {"backend": "coqui", "voices": VOICES, "coqui": coqui}})


def main(work: Path) -> dict:
    a = build(work / "a", SPEAKERS, seed=0)
    side = work / "side"
    side.mkdir()
    speakers_file = side / "ids.json"
    shutil.move(a / "speaker_ids.json", speakers_file)
    staged_sha = sha((a / "config.json").read_bytes())
    report: dict = {"speakers_file": str(speakers_file)}

    cfg = config({"model_path": str(a / "model.pth"), "config_path": str(a / "config.json"),
                  "speakers_file_path": str(speakers_file)})
    with get_backend(cfg) as backend:
        chooser = VoiceChooser(backend, cfg, SEED)
        report |= {"class": type(backend).__name__, "name": backend.name,
                   "version": backend.version, "sample_rate": backend.sample_rate,
                   "train": [v.spec for v in chooser.train],
                   "heldout": [v.spec for v in chooser.heldout]}
        report["clips"] = {v.spec: clip(backend, TEXT, v)
                           for v in chooser.train + chooser.heldout}
        report["again"] = clip(backend, TEXT, chooser.train[0])  # after the others
        report["picked"] = {split: {i: chooser(i, split).spec for i in ITEMS}
                            for split in ("train", "test")}
        report["item_clip"] = clip(backend, ITEM_TEXT, chooser(ITEMS[3], "train"))
        report["empty_clip"] = clip(backend, "  ", chooser.train[0])
        try:
            backend.voice_set(["alice", "zed"], cfg["voices"], "tts.voices.heldout")
        except VoiceError as e:
            report["unknown_voice_error"] = str(e)
    report["staged_config_unchanged"] = sha((a / "config.json").read_bytes()) == staged_sha

    folder = work / "dir"
    shutil.copytree(a, folder)
    shutil.copy(speakers_file, folder / "speaker_ids.json")
    cfg = config({"model_dir": str(folder)})
    with get_backend(cfg) as backend:
        report["dir_version"] = backend.version
        report["dir_item_clip"] = clip(backend, ITEM_TEXT,
                                       VoiceChooser(backend, cfg, SEED)(ITEMS[3], "train"))

    other = build(work / "other", SPEAKERS, seed=1)
    with get_backend(config({"model_dir": str(other)})) as backend:
        report["other_version"] = backend.version
    (other / "speaker_ids.json").unlink()  # now only the stale path in config.json is left
    try:
        get_backend(config({"model_dir": str(other)}))
    except BackendError as e:
        report["stale_speakers_error"] = str(e)

    # an XTTS folder without its vocabulary fails before any weights are read
    from TTS.tts.configs.xtts_config import XttsConfig

    xtts = work / "xtts"
    xtts.mkdir()
    XttsConfig().save_json(str(xtts / "config.json"))
    (xtts / "model.pth").write_bytes(b"")
    try:
        get_backend(config({"model_dir": str(xtts), "language": "en"}))
    except BackendError as e:
        report["xtts_missing_error"] = str(e)
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
