"""Errors that name the thing (issue 16 section 2): a clip that cannot be decoded during
training names the file and the item; a full disk or a folder that cannot be written
names the output being written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cordflow import io


# -- writes ------------------------------------------------------------------------------
def _no_space(*args, **kw):
    """What write(2) on a full disk gives: ENOSPC, naming no file."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_output_being_written(tmp_path):
    out = tmp_path / "results" / "qa" / "train.parquet"
    with pytest.raises(OSError) as e, io.atomic_path(out) as tmp:
        tmp.write_bytes(b"partial")
        _no_space()
    assert e.value.errno == errno.ENOSPC
    assert str(out) in str(e.value) and "disk is full" in str(e.value)
    assert not out.exists() and list(out.parent.iterdir()) == []  # nothing half-written


def test_a_parquet_write_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """pyarrow's own ENOSPC error, as it raises it (errno 28 in the message too)."""
    import pyarrow.parquet as pq

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No "
                                    "space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    out = tmp_path / "eval" / "base" / "builtin.parquet"
    with pytest.raises(OSError) as e:
        io.write_parquet(pd.DataFrame({"a": range(10)}), out)
    assert e.value.errno == errno.ENOSPC and str(out) in str(e.value)


def test_a_folder_that_cannot_be_written_names_the_output(tmp_path, monkeypatch):
    out = tmp_path / "results" / "models" / "sft"

    def denied(*args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkdtemp", denied)
    with pytest.raises(PermissionError) as e:
        io.write_text_atomic(out, "x")
    assert str(out) in str(e.value) and "permission" in str(e.value)


def test_a_read_only_file_system_names_the_output():
    target = Path("/sys/cordflow-test/results/summary.csv")
    try:
        os.mkdir(target.parents[1])
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EPERM, errno.EACCES):
            pytest.skip(f"/sys is writable here ({e})")
    else:
        os.rmdir(target.parents[1])
        pytest.skip("/sys is writable here")
    with pytest.raises(OSError) as e:
        io.write_text_atomic(target, "x")
    assert str(target) in str(e.value)


def test_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(ValueError, match="^boom$"), io.atomic_path(tmp_path / "x") as _:
        raise ValueError("boom")
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere")
    assert io.write_error(missing, tmp_path / "x") is missing
    # a permission error about another file (an input read on the way) names that file
    other = PermissionError(errno.EACCES, "Permission denied", "/data/qa.jsonl")
    assert io.write_error(other, tmp_path / "x") is other


def test_a_full_store_names_the_clip(tmp_path, monkeypatch):
    from cordflow.tts import store

    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        write = staticmethod(_no_space)

    monkeypatch.setattr(store.os, "fdopen", Full)
    s = store.Store(tmp_path / "store")
    with pytest.raises(OSError) as e:
        s.put("ab" + "0" * 62, b"fLaC" * 2048, {"loudness_lufs": -23.0, "peak_dbfs": -1.0})
    assert e.value.errno == errno.ENOSPC and "ab" + "0" * 62 + ".flac" in str(e.value)
    assert list((tmp_path / "store" / "ab").iterdir()) == []  # no temporary file left


# -- clips in training ---------------------------------------------------------------------
def _damaged_flac(path: Path) -> Path:
    import soundfile as sf

    sf.write(path, (0.5 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    data = bytearray(path.read_bytes())
    data[200:-10] = b"\x55" * (len(data) - 210)
    path.write_bytes(bytes(data))
    return path


def test_a_clip_that_cannot_be_decoded_names_the_file_and_the_item(tmp_path):
    """What the training stages feed the model (infer.prompts, as train/step.py and
    base.py call it): the item's clip from the manifest's ``path`` column."""
    import soundfile as sf
    import tiny

    from cordflow import infer

    good, bad = tmp_path / "good.flac", _damaged_flac(tmp_path / "bad.flac")

    sf.write(good, tiny.tone(1.0, 440.0), 16000)
    rows = pd.DataFrame({"id": ["0123456789abcdef", "fedcba9876543210"], "take": [0, 2],
                         "question": ["What is 1 plus 1?"] * 2,
                         "audio_path": [str(good), str(bad)]})
    with pytest.raises(infer.ClipError) as e:  # clips are read before the model is used
        infer.prompts(None, rows, "audio")
    message = str(e.value)
    assert str(bad) in message and "item fedcba9876543210 take 2" in message
    assert str(good) not in message


def test_store_clips_are_as_readable_as_the_umask_allows(tmp_path):
    """A lab's shared cluster: clips written through mkstemp (0600) get the user's umask
    mode, so the group can read them where the umask says so (and the crate's hard links
    with them)."""
    from cordflow.io import FILE_MODE
    from cordflow.tts import store

    s = store.Store(tmp_path / "store")
    key = "cd" + "1" * 62
    s.put(key, b"fLaC" * 16, {"loudness_lufs": -23.0, "peak_dbfs": -1.0})
    mask = os.umask(0)
    os.umask(mask)
    assert 0o666 & ~mask == FILE_MODE
    for path in (s.flac_path(key), s.meta_path(key)):
        assert path.stat().st_mode & 0o777 == FILE_MODE
