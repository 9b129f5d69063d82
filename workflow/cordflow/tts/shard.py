"""Rule ``tts_shard``: speak one plan into the store and write its clip table.

For every plan row and take (train questions get ``tts.train_takes`` clips, each in another
voice; the splits of a ``tts.voicings`` entry one more clip each, in that voicing's backend
and voices; :mod:`cordflow.tts.voices`), look the clip up in the store by its key
(:mod:`cordflow.tts.store`), and only if it is missing synthesise and post-process it;
then run the quality checks (:mod:`cordflow.tts.quality`). The table
(:data:`~cordflow.tts.CLIP_SCHEMA`, sorted by id and take) depends only on the plan and the
config, never on what the store already held. With ``threads >= 2`` the backend speaks the
next clips in a second thread while this one post-processes (espeak and the audio
libraries release the GIL); the output is the same either way. The workflow profile gives
a shard one thread: two shards side by side finish sooner than one with a look-ahead.
Every backend a shard speaks with (``tts.backend`` and the voicings') is started once per
shard, in this one process.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from cordflow.tts import post, quality
from cordflow.tts.backends import MAIN_VOICING, Audio, Backend, Voice, get_backend, used_backends
from cordflow.tts.schema import CLIP_ARROW, CLIP_SCHEMA, clip_frame, read_plan, write_table
from cordflow.tts.store import MEASUREMENTS, Store, clip_key, code_hash
from cordflow.tts.voices import VoiceChooser

log = logging.getLogger("cordflow.tts")
LOOKAHEAD = 8  # clips synthesised ahead of post-processing (bounds memory)


class ShardStats(NamedTuple):
    items: int
    clips: int
    ok: int
    flagged: int
    rejected: int
    synthesised: int
    reused: int


class Job(NamedTuple):
    key: str
    text: str
    voice: Voice
    backend: Backend


class Clip(NamedTuple):
    """One row of the shard table to be: an item's take and the store key of its audio."""
    item_id: str
    take: int
    split: str
    text: str
    key: str
    voice: Voice
    voicing: str
    backend: Backend


def sound_code(backend: Backend) -> str:
    """Hash of the code that shapes a clip's sound: the backend module and post.py."""
    return code_hash(inspect.getsourcefile(type(backend)), inspect.getsourcefile(post))


def synthesised(jobs: list[Job], threads: int) -> Iterator[tuple[Job, Audio]]:
    """``(job, raw audio)`` in job order, each spoken by its job's backend; with
    ``threads >= 2`` up to :data:`LOOKAHEAD` clips are synthesised ahead in a worker
    thread."""
    if threads < 2:
        for job in jobs:
            yield job, job.backend.synthesize(job.text, job.voice)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-synth") as pool:
        todo = iter(jobs)
        pending = deque((job, pool.submit(job.backend.synthesize, job.text, job.voice))
                        for job in islice(todo, LOOKAHEAD))
        while pending:
            job, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(nxt.backend.synthesize, nxt.text, nxt.voice)))
            yield job, future.result()


def speak_all(jobs: list[Job], store: Store, post_cfg: dict, metas: dict[str, dict],
              threads: int = 1, progress=None) -> dict[str, dict]:
    """Synthesise, post-process and store ``jobs`` (distinct keys); key -> stored record.
    ``metas``: backend name -> what the store records of it."""
    out = {}
    for job, audio in synthesised(jobs, threads):
        clip = post.process(audio.samples, audio.sample_rate, post_cfg)
        measured = {k: getattr(clip, k) for k in MEASUREMENTS}
        out[job.key] = store.put(job.key, clip.flac, {**metas[job.backend.name],
                                                      "text": job.text,
                                                      "voice": job.voice.spec, **measured})
        if progress is not None:
            progress.update(1)
    return out


def run(params: dict, plan_path: str | Path, out: str | Path, store_dir: str | Path,
        threads: int = 1) -> ShardStats:
    """Speak the plan at ``plan_path`` into ``store_dir``; write the clip table ``out``."""
    from tqdm import tqdm

    from cordflow.tts import tts_config

    cfg = tts_config(params)
    seed = int(params.get("seed", 0))
    plan = read_plan(plan_path)
    name = f"tts shard {Path(plan_path).stem}"
    with ExitStack() as stack:
        # one backend object per backend name (the main voicing's and the voicings')
        speakers: dict[str, Backend] = {}
        for backend_name in dict.fromkeys(used_backends(cfg).values()):
            speakers[backend_name] = stack.enter_context(
                get_backend({**cfg, "backend": backend_name}))
        main = speakers[cfg["backend"]]
        choose = VoiceChooser(main, cfg, seed, speakers)
        metas = {b.name: {"backend": b.name, "backend_version": b.version,
                          "post": cfg["post"], "code": sound_code(b)}
                 for b in speakers.values()}
        store = Store(store_dir)
        clips, jobs, records = [], [], {}
        for item_id, split, text in plan[["id", "split", "spoken"]].itertuples(index=False):
            for take, (voicing, voice) in enumerate(choose.clips_of(item_id, split)):
                backend = main if voicing == MAIN_VOICING else speakers[
                    cfg["voicings"][voicing]["backend"]]
                meta = metas[backend.name]
                key = clip_key(text, voice.spec, backend.name, meta["backend_version"],
                               cfg["post"], meta["code"])
                clips.append(Clip(item_id, take, split, text, key, voice, voicing, backend))
                if key not in records:
                    found = store.get(key)
                    if found is None:
                        records[key] = None
                        jobs.append(Job(key, text, voice, backend))
                    else:
                        records[key] = found
        reused = sum(r is not None for r in records.values())
        with tqdm(total=len(clips), initial=len(clips) - len(jobs), desc=name, unit="clip",
                  file=sys.stderr, mininterval=1.0) as bar:
            records.update(speak_all(jobs, store, cfg["post"], metas, threads, bar))

    heard = {}
    if cfg["quality"]["asr"]["enabled"]:  # intelligibility: each distinct clip heard once
        from cordflow.tts import asr

        todo = {c.key: (records[c.key]["path"], c.text) for c in clips}
        with tqdm(total=len(todo), desc=f"{name}: asr", unit="clip", file=sys.stderr,
                  mininterval=1.0) as bar:
            heard = asr.transcribe(todo, bar)
    rows = []
    for c in clips:
        rec = records[c.key]
        if c.key in heard:
            rec = {**rec, "asr_wer": heard[c.key].wer, "asr_heard": heard[c.key].heard}
        verdict = quality.check(rec, c.text, cfg["quality"])
        rows.append({
            "id": c.item_id, "take": c.take, "split": c.split, "voicing": c.voicing,
            "status": verdict.status, "voice": c.voice.spec, "path": rec["path"],
            "sha256": rec["sha256"], "duration": rec["duration"],
            "sample_rate": rec["sample_rate"], "n_samples": rec["n_samples"],
            "backend": c.backend.name,
            "backend_version": metas[c.backend.name]["backend_version"],
            "flags": verdict.flags, "reason": verdict.reason,
            "spoken": c.text,
            **{k: rec[k] for k in ("speech_duration", "silence_ratio", "clip_ratio",
                                   "loudness_lufs", "peak_dbfs")},
            "asr_wer": rec.get("asr_wer", float("nan")), "asr_heard": rec.get("asr_heard", ""),
        })
    table = CLIP_SCHEMA.validate(clip_frame(rows))
    counts = table["status"].value_counts()
    ok, flagged, rejected = (int(counts.get(s, 0)) for s in ("ok", "flagged", "rejected"))
    if ok + flagged + rejected != len(clips):
        raise RuntimeError(f"{name}: {len(clips)} clips planned but {ok + flagged + rejected} "
                           "out")
    write_table(table, out, CLIP_ARROW)
    log.info("%s: %d items, %d clips = %d ok + %d flagged + %d rejected (synthesised %d, "
             "reused %d)", name, len(plan), len(clips), ok, flagged, rejected, len(jobs), reused)
    return ShardStats(len(plan), len(clips), ok, flagged, rejected, len(jobs), reused)
