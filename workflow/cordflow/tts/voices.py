"""Deterministic voice choice: the same item id always gets the same voice.

Training splits draw from ``tts.voices.train``, the splits in ``tts.heldout_splits`` from
``tts.voices.heldout`` (voices never heard in training). Each set is the backend's
:meth:`~cordflow.tts.backends.Backend.voice_set` (for espeak: every name x variant x pitch
x rate); an item's voice is ``set[h % len(set)]`` with ``h`` from sha256 of the seed and
the item id, so it does not depend on the shard, the order or the other items.

Questions of the train split get ``tts.train_takes`` clips, in as many different voices:
take 0 is :func:`pick`'s voice, the others follow in a seeded order of the rest of the set
(:func:`picks`).

Voicings (``tts.voicings``): a voicing speaks the questions of its splits once more, with
its own backend and voices (e.g. the test questions in a real neural voice, a benchmark
paired with the main one). Its clip is the item's next take after the main voicing's (one
per voicing, in name order), its voice chosen from its own list by a hash of the voicing
and the id. Training reads only the main voicing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cordflow.tts.backends import MAIN_VOICING, Backend, Voice, VoiceError


def pick(item_id: str, seed: int, voices: list[Voice]) -> Voice:
    """The voice of ``item_id`` among ``voices`` (a stable hash, not Python's ``hash``)."""
    digest = hashlib.sha256(f"cordflow-voice:{seed}:{item_id}".encode()).digest()
    return voices[int.from_bytes(digest[:8], "big") % len(voices)]


def picks(item_id: str, seed: int, voices: list[Voice], k: int) -> list[Voice]:
    """``k`` different voices for ``item_id``: :func:`pick`'s first, then the others ranked by
    a stable hash of (seed, id, voice)."""
    if not 1 <= k <= len(voices):
        raise ValueError(f"{k} takes from a set of {len(voices)} voices")
    first = pick(item_id, seed, voices)

    def rank(v: Voice) -> bytes:
        return hashlib.sha256(f"cordflow-take:{seed}:{item_id}:{v.spec}".encode()).digest()

    return [first, *sorted((v for v in voices if v != first), key=rank)[:k - 1]]


class VoiceChooser:
    """Both voice sets, and each voicing's, checked against the backends up front (an
    unknown voice fails before anything is synthesised, naming its config key).

    ``backend`` speaks the main voicing; ``backends`` maps a backend name to the backend
    that speaks the voicings of that name (missing: ``backend`` if it has that name, else
    the voicing's voices are taken by name, unchecked)."""

    def __init__(self, backend: Backend, tts_cfg: dict, seed: int,
                 backends: Mapping[str, Backend] | None = None):
        cfg = tts_cfg["voices"]
        self.seed = seed
        self.heldout_splits = set(tts_cfg["heldout_splits"])
        self.train = backend.voice_set(cfg["train"], cfg, "tts.voices.train")
        self.heldout = backend.voice_set(cfg["heldout"], cfg, "tts.voices.heldout")
        self.train_takes = int(tts_cfg["train_takes"])
        if self.train_takes > len(self.train):
            raise VoiceError(f"config key 'tts.train_takes' is {self.train_takes} but "
                             f"'tts.voices.train' gives {len(self.train)} voices; lower it or "
                             "add voices (names, variants, pitch, rate)")
        shared = sorted(set(cfg["train"]) & set(cfg["heldout"]))
        if shared:
            raise VoiceError("config keys 'tts.voices.train' and 'tts.voices.heldout' share "
                             f"{', '.join(shared)}: held-out voices must be unseen in training")
        backends = dict(backends or {})
        if getattr(backend, "name", None):
            backends.setdefault(backend.name, backend)
        # voicing -> (its splits, its voices), in name order
        self.voicings: dict[str, tuple[frozenset[str], list[Voice]]] = {}
        for name, v in sorted((tts_cfg.get("voicings") or {}).items()):
            key = f"tts.voicings.{name}.voices"
            if name == MAIN_VOICING:
                raise VoiceError(f"config key 'tts.voicings.{name}': '{MAIN_VOICING}' is the "
                                 "voicing of tts.backend and tts.voices; name it otherwise")
            speaker = backends.get(v["backend"])
            voices = (speaker.voice_set(list(v["voices"]), cfg, key) if speaker is not None
                      else [Voice(n) for n in v["voices"]])
            self.voicings[name] = (frozenset(v["splits"]), voices)

    def voices_for(self, split: str) -> list[Voice]:
        return self.heldout if split in self.heldout_splits else self.train

    def takes(self, split: str) -> int:
        return self.train_takes if split == "train" else 1

    def __call__(self, item_id: str, split: str) -> Voice:
        """The voice of take 0 of ``item_id``."""
        return pick(item_id, self.seed, self.voices_for(split))

    def voices_of(self, item_id: str, split: str) -> list[Voice]:
        """The voice of each take of ``item_id`` in the main voicing (one take for every
        split but train)."""
        return picks(item_id, self.seed, self.voices_for(split), self.takes(split))

    def clips_of(self, item_id: str, split: str) -> list[tuple[str, Voice]]:
        """``(voicing, voice)`` of every take of ``item_id``, in take order: the main
        voicing's (:meth:`voices_of`), then one per voicing that speaks ``split``."""
        out = [(MAIN_VOICING, v) for v in self.voices_of(item_id, split)]
        out += [(name, pick(f"{name}:{item_id}", self.seed, voices))
                for name, (splits, voices) in self.voicings.items() if split in splits]
        return out
