"""The one interface every speech-synthesis backend implements, and :func:`get_backend`.

A backend turns ``(text, voice)`` into mono float audio at its own sample rate; the stage
does everything else (voice choice, post-processing, quality checks, the store). Contract:

- ``Backend(tts_cfg)`` takes the whole ``tts`` config section (defaults filled in) and may
  load a model; it must not touch the network, and loads weights with safetensors or the
  library's own local-file path only. Construction fails fast (:class:`BackendError`) with
  a message naming the config key to fix.
- :meth:`Backend.voice_set` turns the configured voice names (``tts.voices.train`` or
  ``tts.voices.heldout``) into a list of :class:`Voice`; an unknown name raises
  :class:`VoiceError` naming the key (e.g. ``tts.voices.heldout[1]``). The list order is
  the configured order: voice choice indexes into it, so it must be deterministic.
- :meth:`Backend.synthesize` is deterministic: the same text and voice give the same
  samples (float32, 1-D, in [-1, 1]) at :attr:`Backend.sample_rate`. Dataset text is
  passed as data (never through a shell). An empty result is allowed (the quality checks
  reject it); an exception is a bug or a broken model, and fails the shard.
- :attr:`Backend.version` identifies everything that changes the sound apart from the
  text and the voice (package version, model files' hash): it is part of the store key, so
  a new model never reuses old clips.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# The backend registry: ``tts.backend`` value -> the class (imported only when used, so an
# environment needs only the packages of the backend it runs) and -> the conda environment
# (envs/<env>.yaml) its ``tts_shard`` jobs run in. A new backend is one entry in each, a
# module with its Backend subclass, and the schema's ``tts.backend`` enum (README
# "Extending cordflow"; tests/test_registries.py keeps them in step).
BACKEND_CLASSES: dict[str, str] = {
    "espeak": "cordflow.tts.espeak:EspeakBackend",
    "coqui": "cordflow.tts.coqui:CoquiBackend",
    "piper": "cordflow.tts.piper:PiperBackend",
}
BACKEND_ENVS: dict[str, str] = {
    "espeak": "tts",
    "coqui": "coqui",
    "piper": "tts",
}
BACKENDS = tuple(BACKEND_CLASSES)
MAIN_VOICING = "main"  # the voicing of tts.backend and tts.voices (every split)


class BackendError(RuntimeError):
    """The backend cannot start (missing library, model files, bad settings)."""


class VoiceError(ValueError):
    """A configured voice does not exist in the backend; the message names the config key."""


@dataclass(frozen=True, order=True)
class Voice:
    """One synthesis voice. ``name`` is an espeak voice id or a Coqui speaker name;
    ``variant``, ``pitch`` (0-99) and ``rate`` (words/min) are espeak's and left empty/None
    by backends without them."""

    name: str
    variant: str = ""
    pitch: int | None = None
    rate: int | None = None

    @property
    def spec(self) -> str:
        """Canonical text recorded per clip and hashed into the store key:
        ``en-us+m1,pitch=50,rate=175``; a Coqui speaker is just its name."""
        out = self.name + (f"+{self.variant}" if self.variant else "")
        if self.pitch is not None:
            out += f",pitch={self.pitch}"
        if self.rate is not None:
            out += f",rate={self.rate}"
        return out


class Audio(NamedTuple):
    """Raw backend output: float32 mono samples in [-1, 1] and their sample rate."""

    samples: np.ndarray
    sample_rate: int


class Backend(abc.ABC):
    """Base class of the speech-synthesis backends (see the module docstring)."""

    #: the ``tts.backend`` value that selects this class
    name: str = ""

    def __init__(self, tts_cfg: dict):
        self.cfg = tts_cfg

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """What identifies the sound apart from text and voice (in the store key)."""

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Sample rate of what :meth:`synthesize` returns."""

    @abc.abstractmethod
    def voice_set(self, names: list[str], voices_cfg: dict, key: str) -> list[Voice]:
        """The voices built from ``names`` (and, where the backend has them, the
        variants, pitches and rates of ``voices_cfg``, i.e. ``tts.voices``), in a fixed
        order. ``key`` is the config key of ``names`` for error messages. Raise
        :class:`VoiceError` for a name the backend does not have."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: Voice) -> Audio:
        """Speak ``text`` with ``voice`` (deterministic)."""

    def close(self) -> None:  # noqa: B027 (optional: most backends hold nothing to release)
        """Release the library or model (called once, at the end of a shard)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def used_backends(tts_cfg: dict) -> dict[str, str]:
    """``voicing -> backend`` of every voicing: ``main`` (``tts.backend``) and each of
    ``tts.voicings``."""
    return {MAIN_VOICING: tts_cfg.get("backend", "espeak"),
            **{name: v["backend"] for name, v in sorted((tts_cfg.get("voicings") or {}).items())}}


def shard_env(tts_cfg: dict) -> str:
    """The one environment (envs/<env>.yaml) a ``tts_shard`` job runs in: every backend it
    speaks with (``tts.backend`` and the voicings') must live there."""
    used = used_backends(tts_cfg)
    for voicing, name in used.items():
        if name not in BACKEND_ENVS:
            key = "tts.backend" if voicing == MAIN_VOICING else f"tts.voicings.{voicing}.backend"
            raise BackendError(f"config key '{key}': unknown backend {name!r}; use one of "
                               f"{', '.join(BACKENDS)}")
    envs = {BACKEND_ENVS[name] for name in used.values()}
    if len(envs) > 1:
        which = ", ".join(f"{v}: {b} (envs/{BACKEND_ENVS[b]}.yaml)" for v, b in used.items())
        raise BackendError("config keys 'tts.backend' and 'tts.voicings': a tts_shard job "
                           f"runs in one environment, but the voicings need several ({which});"
                           " use backends of one environment")
    return envs.pop()


def get_backend(tts_cfg: dict) -> Backend:
    """The backend ``tts_cfg["backend"]`` names, constructed. Backends import lazily, so
    an environment only needs the packages of the backend it runs."""
    import importlib

    name = tts_cfg.get("backend", "espeak")
    if name not in BACKEND_CLASSES:
        raise BackendError(f"config key 'tts.backend': unknown backend {name!r}; "
                           f"use one of {', '.join(BACKENDS)}")
    module, cls = BACKEND_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)(tts_cfg)
