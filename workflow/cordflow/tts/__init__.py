"""Speech synthesis: the questions spoken, as 16 kHz mono FLAC clips and a manifest.

Three rules (there is no single ``tts`` rule; ``tts`` is the config section they read).
``tts_plan`` (a checkpoint) deals the items of every QA table to ``tts.n_shards`` plans
by a hash of the id (``plan/{k}.parquet``: ``id``, ``split``, ``spoken``); a new question
changes one plan, and unchanged plans keep their bytes, so only that shard runs again.
``tts_shard`` speaks one plan into the content-addressed store (:mod:`cordflow.tts.store`;
a clip already there is reused) and writes ``shards/{k}.parquet``. ``tts_gather`` writes
``manifest.parquet`` and ``rejected.parquet``.

Each item's voice is chosen from its id (:mod:`cordflow.tts.voices`; held-out splits use
the held-out voices; train questions get ``tts.train_takes`` clips in different voices),
spoken by the backend (:mod:`cordflow.tts.backends`: ``espeak`` by default, in-process;
``piper``; ``coqui``), and once more per ``tts.voicings`` entry of the item's split (its own
backend and voices, e.g. Piper's neural voice for the test questions), post-processed
(:mod:`cordflow.tts.post`: trim, 16 kHz, -23 LUFS, peak cap, pad, FLAC) and checked
(:mod:`cordflow.tts.quality`). Two runs give byte-identical clips and tables.

The manifest (:data:`CLIP_SCHEMA`; shard tables have the same columns), one row per clip of
every item of every QA table, sorted by ``id`` and ``take``:

- ``id``, ``split``, ``spoken`` (the text read), as in the QA tables; ``take`` (0, and for
  train questions 1 .. ``tts.train_takes`` - 1; then one per voicing of the split);
  ``voicing``: ``main`` (``tts.backend``, ``tts.voices``) or a ``tts.voicings`` name;
- ``status``: ``ok`` | ``flagged`` (usable, worth a look) | ``rejected`` (do not use);
  ``flags``: list of problem codes; ``reason``: ``"code: detail; ..."`` ("" when ok);
- ``voice``: the voice spec (espeak ``en-us+m1,pitch=50,rate=175``; a Coqui speaker; a
  Piper voice such as ``en_US-joe-medium``);
  ``backend``, ``backend_version``;
- ``path``: the FLAC file (under the ``--store`` folder as given, normally
  ``results/audio/store/..``, relative to the workflow's working directory); ``sha256`` of
  the file; ``sample_rate`` (Hz), ``n_samples``, ``duration`` (s, padding included);
- measurements: ``speech_duration`` (s, without the padding), ``silence_ratio``,
  ``clip_ratio`` (raw output at full scale), ``loudness_lufs`` and ``peak_dbfs`` of the
  clip (``-inf`` when silent); ``asr_wer`` and ``asr_heard``: an offline recogniser's
  word error rate against ``spoken`` and what it heard (``tts.quality.asr``; NaN and ""
  when it is off, :mod:`cordflow.tts.asr`).

Rejected clips are kept (in the manifest and in ``rejected.parquet``, same columns, with
their audio) and clips in = ok + flagged + rejected, per shard and in total, or the stage
fails. Downstream stages read the manifest with ``read_manifest(path, usable=True)`` (or
``read_manifest(path)`` and the mask ``usable(manifest)``).
"""

from __future__ import annotations

__all__ = ["CLIP_SCHEMA", "PLAN_SCHEMA", "read_clips", "read_manifest", "tts_config", "usable"]
_FROM_SCHEMA = {"CLIP_SCHEMA", "PLAN_SCHEMA", "read_clips", "read_manifest", "usable"}


def __getattr__(name: str):
    """The table contract from :mod:`cordflow.tts.schema`, imported on first use (pandas),
    so the DAG's import of :mod:`cordflow.tts.backends` stays light."""
    if name in _FROM_SCHEMA:
        from cordflow.tts import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'cordflow.tts' has no attribute {name!r}")


def tts_config(params: dict) -> dict:
    """The ``tts`` section validated against config/schema.yaml, defaults filled in (so
    ``--params`` given by hand may leave keys out)."""
    from cordflow.config import section

    return section(params, "tts")
