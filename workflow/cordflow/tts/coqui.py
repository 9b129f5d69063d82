"""Coqui TTS (``coqui-tts``, the maintained fork, imported as ``TTS``) from local files only.

It runs in its own environment (``make coqui-env`` builds ``.venv-coqui``; Snakemake's
``--sdm conda`` uses ``envs/coqui.yaml``): see README "Coqui voices".

The model, from exactly one of these ``tts.coqui`` keys (nothing is ever downloaded):

- ``model_path`` + ``config_path`` (+ ``speakers_file_path`` for a multi-speaker model):
  a checkpoint file, e.g. a VITS ``model_file.pth`` and its ``config.json``;
- ``model_dir``: a model folder with ``config.json`` and the checkpoint (``model.pth``,
  ``model_file.pth``, ``checkpoint.pth`` or a single ``*.pth``); an XTTS folder holds
  ``config.json``, ``model.pth`` and ``vocab.json`` (``speakers_xtts.pth`` optional);
- ``model_name`` (e.g. ``tts_models/en/vctk/vits``): a model of Coqui's catalogue staged
  where Coqui itself keeps downloads, ``<TTS_HOME>/tts/tts_models--en--vctk--vits/``, with
  ``<TTS_HOME>`` from ``tts_home``, else ``$TTS_HOME``, else ``$XDG_DATA_HOME``, else
  ``~/.local/share``. It is then loaded like ``model_dir``.

Missing files fail at construction (:class:`BackendError`), before Coqui is imported, with
what to stage where and which key names it. A staged ``config.json`` usually names side
files by the trainer's paths (``speakers_file``, ``d_vector_file``, ``language_ids_file``,
``audio.stats_path``, speaker encoder files); the backend loads a private copy of it with
those pointing at ``speakers_file_path`` or at the same-named (or Coqui's default-named)
file beside the model, as Coqui does after a download. The staged files are never written.

Voices: each name in ``tts.voices.train`` / ``tts.voices.heldout`` is a key of
``tts.coqui.speaker_wavs`` (voice cloning from that reference recording: XTTS) or a speaker
of the model (multi-speaker VITS; XTTS's built-in speakers). ``language`` is required by
multilingual models (XTTS) and ignored by the others.

Determinism: VITS and XTTS sample noise, so torch is seeded from the backend version, the
voice and the text before every utterance; the same clip comes out in any order, shard or
process (on the same device and library versions). Output: float32 mono, clipped to
[-1, 1] (the quality checks flag clips that hit the limits), with Coqui's trailing
sentence padding (exact zeros) removed. :attr:`CoquiBackend.version` names coqui-tts,
torch and a sha256 over the model's files (the original config included), the side files
and the reference recordings, so different weights or voices never share stored clips.

Dataset text is passed to Coqui as a Python string: no shell is involved. Checkpoints are
read by Coqui's own loader (``torch.load(weights_only=True)`` on torch >= 2.4).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cordflow.tts.backends import Audio, Backend, BackendError, Voice, VoiceError

log = logging.getLogger("cordflow.tts")

CONFIG = "config.json"
# Checkpoint names Coqui looks for in a model folder (TTS.utils.manage.ModelManager).
CHECKPOINT_NAMES = ("model_file.pth", "model_file.pth.tar", "model.pth", "checkpoint.pth")
XTTS_FILES = ("config.json", "model.pth", "vocab.json")
# Config fields that name side files -> the names Coqui gives them in a model folder.
SIDE_FILES = {
    "speakers_file": ("speaker_ids.json", "speaker_ids.pth"),
    "d_vector_file": ("speakers.json", "speakers.pth"),
    "language_ids_file": ("language_ids.json",),
    "speaker_encoder_model_path": ("model_se.pth", "model_se.pth.tar"),
    "speaker_encoder_config_path": ("config_se.json",),
    "audio.stats_path": ("scale_stats.npy",),
}
STAGE_HINT = (
    "set one of tts.coqui.model_path (+ tts.coqui.config_path: a checkpoint file such as "
    "a VITS model_file.pth and its config.json; + tts.coqui.speakers_file_path for a "
    "multi-speaker model), tts.coqui.model_dir (a model folder: config.json + model.pth; "
    "XTTS: config.json, model.pth, vocab.json), or tts.coqui.model_name (e.g. "
    "tts_models/en/vctk/vits, staged in <TTS_HOME>/tts/tts_models--en--vctk--vits/, "
    "TTS_HOME from tts.coqui.tts_home or the TTS_HOME environment variable). "
    "Nothing is downloaded"
)


# ---------------------------------------------------------------- locating the files
# (plain Python: runs before Coqui is imported, so a missing file fails in any env)

def tts_home(cfg: dict) -> Path:
    """Where Coqui keeps models: ``<home>/tts`` (trainer.io.get_user_data_dir's order)."""
    for base in (cfg.get("tts_home"), os.environ.get("TTS_HOME"),
                 os.environ.get("XDG_DATA_HOME")):
        if base:
            return Path(base).expanduser().resolve() / "tts"
    return Path.home() / ".local" / "share" / "tts"


def staged_folder(model_name: str, home: Path) -> Path:
    """The folder Coqui downloads ``type/lang/dataset/model`` to, under ``home``."""
    parts = model_name.split("/")
    if len(parts) != 4 or not all(parts) or parts[0] != "tts_models":
        raise BackendError(f"config key 'tts.coqui.model_name': {model_name!r} is not a "
                           "Coqui model name like tts_models/en/vctk/vits")
    return home / "--".join(parts)


def checkpoint_in(folder: Path, key: str) -> Path:
    """The checkpoint file of a model folder (Coqui's names, else the only ``*.pth``)."""
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.pth"))
    if len(found) == 1:
        return found[0]
    what = "several: " + ", ".join(p.name for p in found) if found else "none"
    raise BackendError(f"config key '{key}': {folder} has no model checkpoint "
                       f"(looked for {', '.join(CHECKPOINT_NAMES)} or a single *.pth; "
                       f"found {what}); stage the model's checkpoint there")


def _need_file(path: Path, key: str, what: str) -> Path:
    if not path.is_file():
        raise BackendError(f"config key '{key}': {path} does not exist; stage {what} there "
                           f"(or point {key} at it)")
    return path


def locate(cfg: dict) -> dict:
    """Where the model is, from ``tts.coqui`` (see the module docstring):
    ``{"kind": "file"|"dir", "checkpoint", "config", "folder", "speakers_file",
    "key"}`` with absolute paths. Raises :class:`BackendError` saying what to stage."""
    chosen = [k for k in ("model_path", "model_dir", "model_name") if cfg.get(k)]
    if not chosen:
        raise BackendError(f"tts.backend 'coqui' has no model: {STAGE_HINT}")
    if len(chosen) > 1:
        raise BackendError(f"config keys {', '.join('tts.coqui.' + k for k in chosen)}: "
                           "set only one of them")
    key = f"tts.coqui.{chosen[0]}"
    speakers = cfg.get("speakers_file_path")
    speakers = _need_file(Path(speakers).resolve(), "tts.coqui.speakers_file_path",
                          "the model's speakers file (speaker_ids.json or speakers.pth)"
                          ) if speakers else None
    if chosen[0] == "model_path":
        if not cfg.get("config_path"):
            raise BackendError("config key 'tts.coqui.config_path' is empty: "
                               "tts.coqui.model_path needs the model's config.json")
        checkpoint = _need_file(Path(cfg["model_path"]).resolve(), key,
                                "the model checkpoint (e.g. a VITS model_file.pth)")
        config = _need_file(Path(cfg["config_path"]).resolve(), "tts.coqui.config_path",
                            "the model's config.json")
        return {"kind": "file", "checkpoint": checkpoint, "config": config,
                "folder": checkpoint.parent, "speakers_file": speakers, "key": key}
    if chosen[0] == "model_dir":
        folder = Path(cfg["model_dir"]).resolve()
        if not folder.is_dir():
            raise BackendError(f"config key '{key}': {folder} is not a folder; stage the "
                               "model folder there (config.json + model.pth; XTTS: "
                               f"{', '.join(XTTS_FILES)})")
    else:
        folder = staged_folder(cfg["model_name"], tts_home(cfg))
        if not folder.is_dir():
            raise BackendError(
                f"config key '{key}': {cfg['model_name']} is not staged: put its files "
                f"(config.json and the checkpoint, plus its speaker/language files) in "
                f"{folder}/ (the folder is <TTS_HOME>/tts/<type>--<lang>--<dataset>--"
                f"<model>; TTS_HOME comes from tts.coqui.tts_home, else the TTS_HOME "
                f"environment variable). Nothing is downloaded")
    config = _need_file(folder / CONFIG, key, "the model's config.json")
    return {"kind": "dir", "checkpoint": checkpoint_in(folder, key), "config": config,
            "folder": folder, "speakers_file": speakers, "key": key}


def reference_wavs(cfg: dict) -> dict[str, Path]:
    """``tts.coqui.speaker_wavs`` as absolute paths, each checked to exist."""
    out = {}
    for name, path in sorted((cfg.get("speaker_wavs") or {}).items()):
        out[name] = _need_file(Path(path).resolve(), f"tts.coqui.speaker_wavs.{name}",
                               f"the reference recording of voice {name!r} (a few "
                               "seconds of clean speech, wav/flac)")
    return out


def files_sha(paths: list[tuple[str, Path]]) -> str:
    """sha256 (16 hex) over ``(label, file content)`` pairs, in the order given."""
    h = hashlib.sha256()
    for label, path in paths:
        h.update(label.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


def utterance_seed(version: str, voice: str, text: str) -> int:
    digest = hashlib.sha256(f"{version}\0{voice}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


# ---------------------------------------------------------------- the backend

class CoquiBackend(Backend):
    """A Coqui model loaded through ``TTS.api.TTS`` from local files (module docstring)."""

    name = "coqui"

    def __init__(self, tts_cfg: dict):
        super().__init__(tts_cfg)
        cfg = tts_cfg.get("coqui") or {}
        self.where = locate(cfg)
        self.wavs = reference_wavs(cfg)
        self.language = cfg.get("language")
        self._tmp = Path(tempfile.mkdtemp(prefix="cordflow-coqui-"))
        try:
            self._load(cfg.get("device", "auto"))
        except BaseException:
            self.close()
            raise

    def _load(self, device: str) -> None:
        try:
            import torch
            import TTS
            from TTS.api import TTS as CoquiTTS
            from TTS.config import load_config
        except ImportError as e:
            raise BackendError(
                f"tts.backend 'coqui' needs coqui-tts, which is not importable here ({e}). "
                "Run it in the Coqui environment: `make coqui-env` builds .venv-coqui "
                "(README: Coqui voices), Snakemake --sdm conda uses envs/coqui.yaml") from e
        for name in ("TTS", "trainer"):  # Coqui logs every input sentence at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise BackendError("config key 'tts.coqui.device' is 'cuda' but torch sees no "
                               "GPU here; use auto or cpu")
        self.torch = torch

        config = load_config(str(self.where["config"]))
        xtts = str(config.get("model", "")).lower() == "xtts"
        side = self._resolve_side_files(config, xtts)
        local_config = self._tmp / CONFIG
        config.save_json(str(local_config))
        hashed = [("config", self.where["config"])]
        if xtts:
            folder = self.where["folder"]
            if self.where["kind"] != "dir":
                raise BackendError(f"config key '{self.where['key']}': an XTTS model loads "
                                   "from its folder; set tts.coqui.model_dir instead")
            missing = [n for n in XTTS_FILES if not (folder / n).is_file()]
            if missing:
                raise BackendError(
                    f"config key '{self.where['key']}': {folder} lacks {', '.join(missing)}; "
                    f"an XTTS folder holds {', '.join(XTTS_FILES)} (speakers_xtts.pth "
                    "optional): stage them there")
            hashed += [(n, folder / n) for n in ("model.pth", "vocab.json",
                                                 "speakers_xtts.pth") if (folder / n).is_file()]
            model_path = folder
        else:
            hashed.append(("checkpoint", self.where["checkpoint"]))
            model_path = self.where["checkpoint"]
        hashed += [(f"side:{field}", path) for field, path in side]
        hashed += [(f"wav:{name}", path) for name, path in self.wavs.items()]
        model_sha = files_sha(hashed)
        if self.wavs:
            self._check_audio_io()

        self.tts = CoquiTTS(model_path=str(model_path), config_path=str(local_config),
                            progress_bar=False).to(device)
        self.device = device
        self._speakers = list(self.tts.speakers or []) if self.tts.is_multi_speaker else []
        self._multilingual = bool(self.tts.is_multi_lingual)
        if self._multilingual:
            languages = list(self.tts.languages or [])
            if not self.language:
                raise BackendError("config key 'tts.coqui.language' is empty: this model is "
                                   f"multilingual; choose one of {', '.join(languages)}")
            if languages and self.language not in languages:
                raise BackendError(f"config key 'tts.coqui.language': {self.language!r} is "
                                   f"not a language of this model ({', '.join(languages)})")
        self._sample_rate = int(self.tts.synthesizer.output_sample_rate)
        language = f", language {self.language}" if self._multilingual else ""
        self._version = (f"coqui-tts {TTS.__version__}, torch {torch.__version__}, "
                         f"{config.get('model', '?')} {model_sha}{language}")
        log.info("coqui: %s on %s (%d speakers, %d reference voices)", self._version,
                 device, len(self._speakers), len(self.wavs))

    def _resolve_side_files(self, config, xtts: bool) -> list[tuple[str, Path]]:
        """Point the side-file fields of ``config`` (a Coqpit, edited in place) at files
        that exist, and return ``(field, path)`` for each one in use. The speaker field
        the model uses (``d_vector_file`` with d-vectors, else ``speakers_file``) takes
        ``speakers_file_path`` when it is set; any other named file is looked for as
        written, then by its name beside the model, then by Coqui's default name there."""
        folder = self.where["folder"]
        chosen = self.where["speakers_file"]
        dvec = bool(_get(config, "model_args.use_d_vector_file")
                    or _get(config, "use_d_vector_file"))
        speaker_field = "d_vector_file" if dvec else "speakers_file"
        used: dict[str, Path] = {}
        for field, defaults in SIDE_FILES.items():
            places = [field] if field.startswith("audio.") else [field, f"model_args.{field}"]
            for dotted in places:
                if not _has(config, dotted):
                    continue
                value = _get(config, dotted)
                value = (value[0] if value else None) if isinstance(value, list) else value
                if chosen is not None and field == speaker_field:
                    path = chosen
                elif not value:
                    continue
                else:
                    candidates = (Path(value), folder / Path(value).name,
                                  *(folder / d for d in defaults))
                    path = next((p for p in candidates if p.is_file()), None)
                    if path is None:
                        fix = ("set tts.coqui.speakers_file_path" if field == speaker_field
                               else "stage it there")
                        raise BackendError(
                            f"{self.where['config']}: field {dotted} names {value}, which "
                            f"does not exist, nor does {Path(value).name} beside the model "
                            f"in {folder}/; {fix}")
                _set(config, dotted, str(path))
                used[field] = path.resolve()
        speakers = dvec or _get(config, "model_args.use_speaker_embedding") or _get(
            config, "use_speaker_embedding")
        if speakers and not xtts and speaker_field not in used and not _get(config, "speakers"):
            raise BackendError(
                f"{self.where['config']}: a multi-speaker model but no speakers file is named; "
                "set tts.coqui.speakers_file_path (speaker_ids.json, or speakers.pth with "
                "d-vectors)")
        return sorted(used.items())

    @staticmethod
    def _check_audio_io() -> None:
        """Reference recordings are read by torchaudio, which needs torchcodec + FFmpeg."""
        try:
            import torchcodec.decoders  # noqa: F401
        except Exception as e:  # ImportError, or RuntimeError when FFmpeg is missing
            raise BackendError(
                "tts.coqui.speaker_wavs: Coqui reads reference recordings with torchaudio, "
                f"whose decoder torchcodec cannot load here ({type(e).__name__}: most likely "
                "no FFmpeg). Install FFmpeg's shared libraries (Debian: apt-get install "
                "libavcodec59 libavformat59 libavutil57 libswresample4 libswscale6 "
                "libavdevice59 libavfilter8; envs/coqui.yaml has ffmpeg)") from e

    @property
    def version(self) -> str:
        return self._version

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def voice_set(self, names: list[str], voices_cfg: dict, key: str) -> list[Voice]:
        if not names:
            raise VoiceError(f"config key '{key}': the voice list is empty")
        for i, name in enumerate(names):
            if name in self.wavs or name in self._speakers:
                continue
            known = (f"its speakers: {', '.join(self._speakers[:30])}"
                     + (" ..." if len(self._speakers) > 30 else "")
                     if self._speakers else "it is a single-speaker model")
            raise VoiceError(f"config key '{key}[{i}]': the Coqui model has no speaker "
                             f"{name!r} ({known}); or give {name!r} a reference "
                             "recording in tts.coqui.speaker_wavs")
        return [Voice(name) for name in names]

    def synthesize(self, text: str, voice: Voice) -> Audio:
        if not text.strip():
            return Audio(np.zeros(0, dtype=np.float32), self._sample_rate)
        kwargs: dict = {}
        if voice.name in self.wavs:
            kwargs["speaker_wav"] = str(self.wavs[voice.name])
        elif voice.name in self._speakers:
            kwargs["speaker"] = voice.name
        else:
            raise VoiceError(f"the Coqui model has no speaker {voice.name!r}")
        if self._multilingual:
            kwargs["language"] = self.language
        self.torch.manual_seed(utterance_seed(self._version, voice.spec, text))
        with self.torch.inference_mode():
            wav = self.tts.tts(text=text, **kwargs)
        samples = np.asarray(wav, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise BackendError(f"coqui: the model produced non-finite samples for {text!r}")
        samples = np.trim_zeros(samples, "b")  # Coqui pads each sentence with zeros
        return Audio(np.clip(samples, -1.0, 1.0), self._sample_rate)

    def close(self) -> None:
        self.tts = None
        torch = getattr(self, "torch", None)
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _has(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if node is None or part not in node:
            return False
        node = node[part]
    return True


def _get(config, dotted: str):
    return _walk(config, dotted) if _has(config, dotted) else None


def _walk(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(config, dotted: str, value: str) -> None:
    """Set the existing field ``dotted`` (a list field stays a list)."""
    *parents, last = dotted.split(".")
    node = _walk(config, ".".join(parents)) if parents else config
    node[last] = [value] if isinstance(node[last], list) else value
