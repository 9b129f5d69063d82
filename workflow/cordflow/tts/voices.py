"""Deterministic voice choice: the same item id always gets the same voice.

Training splits draw from ``tts.voices.train``, the splits in ``tts.heldout_splits`` from
``tts.voices.heldout`` (voices never heard in training). Each set is the backend's
:meth:`~cordflow.tts.backends.Backend.voice_set` (for espeak: every name x variant x pitch
x rate); an item's voice is ``set[h % len(set)]`` with ``h`` from sha256 of the seed and
the item id, so it does not depend on the shard, the order or the other items.
"""

from __future__ import annotations

import hashlib

from cordflow.tts.backends import Backend, Voice, VoiceError


def pick(item_id: str, seed: int, voices: list[Voice]) -> Voice:
    """The voice of ``item_id`` among ``voices`` (a stable hash, not Python's ``hash``)."""
    digest = hashlib.sha256(f"cordflow-voice:{seed}:{item_id}".encode()).digest()
    return voices[int.from_bytes(digest[:8], "big") % len(voices)]


class VoiceChooser:
    """Both voice sets, checked against the backend up front (an unknown voice fails
    before anything is synthesised, naming its config key)."""

    def __init__(self, backend: Backend, tts_cfg: dict, seed: int):
        cfg = tts_cfg["voices"]
        self.seed = seed
        self.heldout_splits = set(tts_cfg["heldout_splits"])
        self.train = backend.voice_set(cfg["train"], cfg, "tts.voices.train")
        self.heldout = backend.voice_set(cfg["heldout"], cfg, "tts.voices.heldout")
        shared = sorted(set(cfg["train"]) & set(cfg["heldout"]))
        if shared:
            raise VoiceError("config keys 'tts.voices.train' and 'tts.voices.heldout' share "
                             f"{', '.join(shared)}: held-out voices must be unseen in training")

    def voices_for(self, split: str) -> list[Voice]:
        return self.heldout if split in self.heldout_splits else self.train

    def __call__(self, item_id: str, split: str) -> Voice:
        return pick(item_id, self.seed, self.voices_for(split))
